//! An example policy module that changes the *logic*, not the data: the convention CELINE
//! later adopted, where a topic `celine/<service>/<resource>/...` is granted by the OAuth scope
//! `<service>.<resource>.read` (subscribe, read) or `<service>.<resource>.write` (publish).
//!
//! The policy document still applies first, unchanged: what it allows stays allowed, and what
//! one of its deny rules denies stays denied (deny overrides). Only a request the document
//! would deny for want of an allow rule or a capability is then granted by a matching scope.
//! An invalid topic is never granted; wildcards are allowed in a subscription only below
//! `<resource>` (`celine/digital-twin/events/#` needs `digital-twin.events.read`).
//!
//! Build it with `cargo xtask build` (→ `target/policy-module/scope-convention.wasm`) and roll
//! it out with `PUT /admin/module`.

use policy_wasm::LoadedPolicy;
use policy_wasm::celine::mqtt_policy::types::{
    Action, Decision, Diagnostic, Limits, Request, Subject, SubjectType,
};
use policy_wasm::exports::celine::mqtt_policy::engine::{Guest, GuestPolicy, Policy as PolicyHandle};

pub struct ScopeConvention;

pub struct Convention(LoadedPolicy);

/// The scope that grants this request under the convention, if the topic follows it.
fn granting_scope(action: Action, topic: &str) -> Option<String> {
    let topic = match action {
        Action::Subscribe => policy_core::topic::subscription_filter(topic).ok()?,
        Action::Read | Action::Publish => {
            policy_core::topic::validate_name(topic).ok()?;
            topic
        }
    };
    let mut levels = topic.split('/');
    let (root, service, resource) = (levels.next()?, levels.next()?, levels.next()?);
    let literal = |l: &str| !l.is_empty() && l != "+" && l != "#" && !l.starts_with('$');
    if root != "celine" || !literal(service) || !literal(resource) {
        return None;
    }
    let access = if action == Action::Publish { "write" } else { "read" };
    Some(format!("{service}.{resource}.{access}"))
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Subscribe => "subscribe",
        Action::Read => "read",
        Action::Publish => "publish",
    }
}

impl GuestPolicy for Convention {
    fn load(document: String) -> Result<PolicyHandle, Vec<Diagnostic>> {
        policy_wasm::load(&document).map(|p| PolicyHandle::new(Convention(p)))
    }

    fn check(&self, req: Request) -> Decision {
        let (action, topic) = (req.action, req.topic.clone());
        let has = |scope: &str| req.subject.scopes.iter().any(|s| s == scope);
        let scope = granting_scope(action, &topic).filter(|s| has(s));
        let by_document = self.0.check(req);
        // Allowed by the document, or denied by one of its deny rules: that stands.
        if by_document.allow || by_document.rule.is_some() {
            return by_document;
        }
        match scope {
            Some(scope) => Decision {
                allow: true,
                rule: Some("scope-convention".into()),
                reason: format!(
                    "scope '{scope}' grants {} on {} (scope convention)",
                    action_name(action),
                    policy_core::quote(&topic)
                ),
            },
            None => by_document,
        }
    }

    fn superuser(&self, who: Subject) -> Decision {
        self.0.superuser(who)
    }

    fn limits(&self, who: Subject) -> Limits {
        self.0.limits(who)
    }

    fn rule_count(&self) -> u32 {
        self.0.rule_count()
    }

    fn certificate_subject(&self, name: String, kind: SubjectType) -> Result<Subject, String> {
        self.0.certificate_subject(name, kind)
    }
}

impl Guest for ScopeConvention {
    type Policy = Convention;

    fn subject_from_claims(claims_json: String) -> Result<Subject, String> {
        policy_wasm::Module::subject_from_claims(claims_json)
    }

    fn lint(document: String) -> Vec<Diagnostic> {
        policy_wasm::Module::lint(document)
    }

    fn version() -> String {
        format!("scope-convention {} (policy-core {})", env!("CARGO_PKG_VERSION"), policy_core::VERSION)
    }
}

policy_wasm::export!(ScopeConvention with_types_in policy_wasm);
