//! A policy module for tests only: it decides like `policy-core`, except on topics that ask
//! it to misbehave, so the host's limits can be seen to work:
//!
//! - `fault/loop`: never returns (the host's epoch deadline must stop it);
//! - `fault/panic`: panics (a trap);
//! - `fault/oom`: asks for 1 GiB of memory, beyond the host's limit;
//! - a policy document containing `"trap-on-load"`: panics while loading.

wit_bindgen::generate!({
    path: "../../wit",
    world: "policy-module",
});

use celine::mqtt_policy::types::{Action, Decision, Diagnostic, Request, Subject, SubjectType};
use exports::celine::mqtt_policy::engine::{Guest, GuestPolicy, Policy as PolicyHandle};

struct Module;

pub struct Faulty(policy_core::Policy);

fn core_subject(s: Subject) -> policy_core::Subject {
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

fn decision(d: policy_core::Decision) -> Decision {
    Decision { allow: d.allow, rule: d.rule, reason: d.reason }
}

impl GuestPolicy for Faulty {
    fn load(document: String) -> Result<PolicyHandle, Vec<Diagnostic>> {
        assert!(!document.contains("trap-on-load"), "asked to trap while loading");
        policy_core::Policy::load(&document).map(|p| PolicyHandle::new(Faulty(p))).map_err(|ds| {
            ds.into_iter()
                .map(|d| Diagnostic { error: d.is_error(), path: d.path, message: d.message })
                .collect()
        })
    }

    fn check(&self, req: Request) -> Decision {
        match req.topic.as_str() {
            "fault/loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "fault/panic" => panic!("asked to panic"),
            "fault/oom" => {
                // One request beyond the host's limit: memory.grow is refused, the
                // allocation fails, and Rust aborts (a trap).
                let hog: Vec<u8> = Vec::with_capacity(1 << 30);
                std::hint::black_box(&hog);
            }
            _ => {}
        }
        let subject = core_subject(req.subject);
        let action = match req.action {
            Action::Subscribe => policy_core::Action::Subscribe,
            Action::Read => policy_core::Action::Read,
            Action::Publish => policy_core::Action::Publish,
        };
        decision(self.0.check(&policy_core::Query {
            subject: &subject,
            action,
            topic: &req.topic,
            clientid: &req.clientid,
            username: &req.username,
        }))
    }

    fn superuser(&self, who: Subject) -> Decision {
        decision(self.0.superuser(&core_subject(who)))
    }

    fn rule_count(&self) -> u32 {
        self.0.rules().len() as u32
    }
}

impl Guest for Module {
    type Policy = Faulty;

    fn subject_from_claims(claims_json: String) -> Result<Subject, String> {
        let s = policy_core::subject_from_claims_json(&claims_json)?;
        Ok(Subject {
            id: s.id,
            type_: match s.kind {
                policy_core::SubjectType::User => SubjectType::User,
                policy_core::SubjectType::Service => SubjectType::Service,
            },
            groups: s.groups,
            scopes: s.scopes,
        })
    }

    fn lint(_document: String) -> Vec<Diagnostic> {
        Vec::new()
    }

    fn version() -> String {
        "faulty-module (tests only)".into()
    }
}

export!(Module);
