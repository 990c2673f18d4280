//! A policy module for tests only: it decides like the real one (`policy-wasm`), except on
//! topics that ask it to misbehave, so the host's limits can be seen to work:
//!
//! - `fault/loop`: never returns (the host's time limit must stop it);
//! - `fault/slow`: returns after a few milliseconds of work (a thread starved of CPU, as in a
//!   throttled container, must still get its answer);
//! - `fault/panic`: panics (a trap);
//! - `fault/oom`: asks for 1 GiB of memory, beyond the host's limit;
//! - a policy document containing `"trap-on-load"`: panics while loading;
//! - the limits of a subject with the id `fault-limits`: panics.

use policy_wasm::LoadedPolicy;
use policy_wasm::celine::mqtt_policy::types::{Decision, Diagnostic, Limits, Request, Subject, SubjectType};
use policy_wasm::exports::celine::mqtt_policy::engine::{Guest, GuestPolicy, Policy as PolicyHandle};

pub struct FaultyModule;

/// `fault/slow`'s work: about 15 ms of CPU (longer than a scheduler slice).
const SLOW_ITERATIONS: u64 = 30_000_000;

pub struct Faulty(LoadedPolicy);

impl GuestPolicy for Faulty {
    fn load(document: String) -> Result<PolicyHandle, Vec<Diagnostic>> {
        assert!(!document.contains("trap-on-load"), "asked to trap while loading");
        policy_wasm::load(&document).map(|p| PolicyHandle::new(Faulty(p)))
    }

    fn check(&self, req: Request) -> Decision {
        match req.topic.as_str() {
            "fault/loop" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "fault/slow" => {
                let mut n: u64 = 0;
                for _ in 0..SLOW_ITERATIONS {
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
        self.0.check(req)
    }

    fn superuser(&self, who: Subject) -> Decision {
        self.0.superuser(who)
    }

    fn limits(&self, who: Subject) -> Limits {
        assert!(who.id != "fault-limits", "asked to trap on this subject's limits");
        self.0.limits(who)
    }

    fn rule_count(&self) -> u32 {
        self.0.rule_count()
    }

    fn certificate_subject(&self, name: String, kind: SubjectType) -> Result<Subject, String> {
        self.0.certificate_subject(name, kind)
    }
}

impl Guest for FaultyModule {
    type Policy = Faulty;

    fn subject_from_claims(claims_json: String) -> Result<Subject, String> {
        policy_wasm::Module::subject_from_claims(claims_json)
    }

    fn lint(document: String) -> Vec<Diagnostic> {
        policy_wasm::Module::lint(document)
    }

    fn version() -> String {
        "faulty-module (tests only)".into()
    }
}

policy_wasm::export!(FaultyModule with_types_in policy_wasm);
