//! `policy-core`: what every MQTT authorization decision of the CELINE policy service means.
//!
//! This crate owns the semantics (`docs/semantics.md`, normative): MQTT topic names and
//! filters (matching, containment, overlap, `$share/`), the strict policy-document loader,
//! the capability layer and rule evaluation with deny-overrides, superuser, explanations,
//! claims-to-subject for Keycloak tokens, lint, and policy test cases.
//!
//! It is `no_std` + `alloc` and pure: no I/O, no clock, no logging. The host (server and CLI),
//! the WASM policy module and the browser playground are front-ends that translate to and from
//! these types; none of them decides anything itself.
//!
//! ```
//! use policy_core::{Action, Message, Policy, Query, Subject, SubjectType};
//!
//! let policy = Policy::load(r#"{"celine": {"mqtt": {"acl": {"rules": [
//!     {"subjects": {"groups": ["viewers"]}, "topics": ["celine/telemetry/+/+/readings"],
//!      "actions": ["subscribe", "read"]}]}}}}"#).unwrap();
//! let viewer = Subject { id: "u1".into(), kind: SubjectType::User,
//!                        groups: vec!["viewers".into()], scopes: vec![] };
//! let q = Query { subject: &viewer, action: Action::Subscribe,
//!                 topic: "celine/telemetry/#", clientid: "c1", username: "",
//!                 message: Message::UNKNOWN };
//! let d = policy.check(&q);
//! assert!(!d.allow); // the pattern does not *contain* the wider filter
//! ```
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod certificates;
mod claims;
mod decide;
mod diff;
mod effective;
mod index;
mod invalid;
mod invariant;
mod json;
mod limits;
mod lint;
mod loader;
pub mod locate;
mod model;
mod pattern;
mod policy;
mod prepared;
mod request;
mod rule;
mod testcase;
pub mod topic;

pub use certificates::{CertificateEntry, Certificates, NamePattern};
pub use claims::{subject_from_claims, subject_from_claims_json};
pub use decide::{Explanation, PatternHit, Query, RuleTrace};
pub use diff::{
    Change, Count, Diff, Grantor, Group, MAX_SUBJECTS, Side, WhoCould, compare, diff, who_could, witnesses,
    witnesses_of,
};
pub use effective::{ActionGrants, Carve, Effective, Grant, Node, Values};
pub use invalid::Invalid;
pub use invariant::{
    Counterexample, Invariant, MAX_WITNESSES, Verdict, Verification, realizable, verify, verify_with,
};
pub use json::{Json, Path, quote};
pub use limits::{Bound, LimitEntry, Limits, Rate, RateBound, Stated, limit_changes};
pub use lint::lint;
pub use loader::closest;
pub use model::{
    Action, Decision, Diagnostic, Message, Permission, Permissions, Severity, Subject, SubjectType,
};
pub use pattern::{Bindings, Level, Pattern, Placeholder};
pub use policy::{Policy, Roles};
pub use prepared::Prepared;
pub use request::{Ask, EvalRequest, parse_request, parse_request_json, parse_subject};
pub use rule::{ConditionMiss, Conditions, Effect, Rule, ScopePattern, Sel, SubjectMismatch, Subjects};
pub use testcase::{CaseResult, TestCase, judge, parse_cases, run_case, run_cases, uncovered_rules};

/// The version of this crate, reported by modules and the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
