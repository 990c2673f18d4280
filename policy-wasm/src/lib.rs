//! The policy module: `policy-core` exported through the WIT world `policy-module`
//! (`wit/policy.wit`).
//!
//! This crate only translates between the canonical-ABI types that `wit-bindgen` generates
//! and `policy-core`'s own; it decides nothing itself. `cargo xtask build` compiles it for
//! `wasm32-unknown-unknown` and wraps the core module into a component with no imports: the
//! module can compute, and nothing else.
//!
//! Other modules can build on it: depend on it with `default-features = false` (no export of
//! its own), implement the world with the types from here (delegating to [`Module`] and
//! [`LoadedPolicy`] where they agree), and export with `policy_wasm::export!(YourModule
//! with_types_in policy_wasm)`. `testing/faulty-module` does this.

// Lets the generated `export!` name this crate the same way from inside and outside.
extern crate self as policy_wasm;

wit_bindgen::generate!({
    path: "../wit",
    world: "policy-module",
    pub_export_macro: true,
    default_bindings_module: "policy_wasm",
});

use celine::mqtt_policy::types::{Action, Decision, Diagnostic, Limits, Rate, Request, Subject, SubjectType};
use exports::celine::mqtt_policy::engine::{Guest, GuestPolicy, Policy as PolicyHandle};

/// The policy module: `policy-core`'s semantics, unchanged.
pub struct Module;

/// A loaded policy, held by the host as a resource handle.
pub struct LoadedPolicy(pub policy_core::Policy);

pub fn to_core_type(t: SubjectType) -> policy_core::SubjectType {
    match t {
        SubjectType::User => policy_core::SubjectType::User,
        SubjectType::Service => policy_core::SubjectType::Service,
        SubjectType::Device => policy_core::SubjectType::Device,
    }
}

pub fn to_core_subject(s: Subject) -> policy_core::Subject {
    policy_core::Subject { id: s.id, kind: to_core_type(s.type_), groups: s.groups, scopes: s.scopes }
}

pub fn from_core_subject(s: policy_core::Subject) -> Subject {
    Subject {
        id: s.id,
        type_: match s.kind {
            policy_core::SubjectType::User => SubjectType::User,
            policy_core::SubjectType::Service => SubjectType::Service,
            policy_core::SubjectType::Device => SubjectType::Device,
        },
        groups: s.groups,
        scopes: s.scopes,
    }
}

pub fn from_core_decision(d: policy_core::Decision) -> Decision {
    Decision { allow: d.allow, rule: d.rule, reason: d.reason }
}

pub fn from_core_limits(l: policy_core::Limits) -> Limits {
    let rate = |r: policy_core::Rate| Rate { per_second: r.per_second, burst: r.burst };
    Limits {
        max_subscriptions: l.max_subscriptions,
        max_payload_bytes: l.max_payload_bytes,
        publish_messages: l.publish_messages.map(rate),
        publish_bytes: l.publish_bytes.map(rate),
        retain: l.retain,
    }
}

pub fn from_core_diagnostics(ds: Vec<policy_core::Diagnostic>) -> Vec<Diagnostic> {
    ds.into_iter().map(|d| Diagnostic { error: d.is_error(), path: d.path, message: d.message }).collect()
}

/// Loads a document with `policy-core`'s strict loader, diagnostics in WIT form.
pub fn load(document: &str) -> Result<LoadedPolicy, Vec<Diagnostic>> {
    policy_core::Policy::load(document).map(LoadedPolicy).map_err(from_core_diagnostics)
}

impl GuestPolicy for LoadedPolicy {
    fn load(document: String) -> Result<PolicyHandle, Vec<Diagnostic>> {
        load(&document).map(PolicyHandle::new)
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
            message: policy_core::Message { qos: req.qos, retain: req.retain },
        };
        from_core_decision(self.0.check(&q))
    }

    fn superuser(&self, who: Subject) -> Decision {
        from_core_decision(self.0.superuser(&to_core_subject(who)))
    }

    fn limits(&self, who: Subject) -> Limits {
        from_core_limits(self.0.limits(&to_core_subject(who)))
    }

    fn rule_count(&self) -> u32 {
        u32::try_from(self.0.rules().len()).unwrap_or(u32::MAX)
    }

    fn certificate_subject(&self, name: String, kind: SubjectType) -> Result<Subject, String> {
        self.0.certificate_subject(&name, to_core_type(kind)).map(from_core_subject).map_err(String::from)
    }
}

impl Guest for Module {
    type Policy = LoadedPolicy;

    fn subject_from_claims(claims_json: String) -> Result<Subject, String> {
        policy_core::subject_from_claims_json(&claims_json).map(from_core_subject).map_err(String::from)
    }

    fn lint(document: String) -> Vec<Diagnostic> {
        from_core_diagnostics(policy_core::lint(&document))
    }

    fn version() -> String {
        format!("policy-core {}", policy_core::VERSION)
    }
}

#[cfg(feature = "export")]
export!(Module);
