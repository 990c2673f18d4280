//! The policy module: `policy-core` exported through the WIT world `policy-module`
//! (`wit/policy.wit`).
//!
//! This crate only translates between the canonical-ABI types that `wit-bindgen` generates
//! and `policy-core`'s own; it decides nothing itself. `cargo xtask build` compiles it for
//! `wasm32-unknown-unknown` and wraps the core module into a component with no imports: the
//! module can compute, and nothing else.

wit_bindgen::generate!({
    path: "../wit",
    world: "policy-module",
});

use celine::mqtt_policy::types::{Action, Decision, Diagnostic, Request, Subject, SubjectType};
use exports::celine::mqtt_policy::engine::{Guest, GuestPolicy, Policy as PolicyHandle};

struct Module;

/// A loaded policy, held by the host as a resource handle.
pub struct LoadedPolicy(policy_core::Policy);

fn to_core_subject(s: Subject) -> policy_core::Subject {
    policy_core::Subject {
        id: s.id,
        kind: match s.type_ {
            SubjectType::User => policy_core::SubjectType::User,
            SubjectType::Service => policy_core::SubjectType::Service,
        },
        groups: s.groups,
        scopes: s.scopes,
    }
}

fn from_core_subject(s: policy_core::Subject) -> Subject {
    Subject {
        id: s.id,
        type_: match s.kind {
            policy_core::SubjectType::User => SubjectType::User,
            policy_core::SubjectType::Service => SubjectType::Service,
        },
        groups: s.groups,
        scopes: s.scopes,
    }
}

fn from_core_decision(d: policy_core::Decision) -> Decision {
    Decision { allow: d.allow, rule: d.rule, reason: d.reason }
}

fn from_core_diagnostics(ds: Vec<policy_core::Diagnostic>) -> Vec<Diagnostic> {
    ds.into_iter().map(|d| Diagnostic { error: d.is_error(), path: d.path, message: d.message }).collect()
}

impl GuestPolicy for LoadedPolicy {
    fn load(document: String) -> Result<PolicyHandle, Vec<Diagnostic>> {
        policy_core::Policy::load(&document)
            .map(|p| PolicyHandle::new(LoadedPolicy(p)))
            .map_err(from_core_diagnostics)
    }

    fn check(&self, req: Request) -> Decision {
        let subject = to_core_subject(req.subject);
        let action = match req.action {
            Action::Subscribe => policy_core::Action::Subscribe,
            Action::Read => policy_core::Action::Read,
            Action::Publish => policy_core::Action::Publish,
        };
        let q = policy_core::Query {
            subject: &subject,
            action,
            topic: &req.topic,
            clientid: &req.clientid,
            username: &req.username,
        };
        from_core_decision(self.0.check(&q))
    }

    fn superuser(&self, who: Subject) -> Decision {
        from_core_decision(self.0.superuser(&to_core_subject(who)))
    }

    fn rule_count(&self) -> u32 {
        u32::try_from(self.0.rules().len()).unwrap_or(u32::MAX)
    }
}

impl Guest for Module {
    type Policy = LoadedPolicy;

    fn subject_from_claims(claims_json: String) -> Result<Subject, String> {
        policy_core::subject_from_claims_json(&claims_json).map(from_core_subject)
    }

    fn lint(document: String) -> Vec<Diagnostic> {
        from_core_diagnostics(policy_core::lint(&document))
    }

    fn version() -> String {
        format!("policy-core {}", policy_core::VERSION)
    }
}

export!(Module);
