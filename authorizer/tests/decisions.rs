//! The rules both front ends rely on the authorizer for: a module fault denies and is never
//! remembered, a check the front end refuses counts as a denial and not as a lookup, and a
//! username stands for a token's subject only when it names it and is no certificate name
//! (under the generation that asks).

use std::collections::HashMap;
use std::sync::Arc;

use authorizer::{Authorizer, DecisionCache, DecisionLookup, KeysConfig, UsernameRefused};
use identity::{Identities, Verified, Verifier};
use policy_engine::{Action, Decision, Generation, Live, Request, Runtime, Source, Subject, SubjectType};
use serde_json::json;

/// A cache that remembers everything it is given, and counts what it was given.
#[derive(Default)]
struct Remembering {
    kept: HashMap<String, Decision>,
    puts: usize,
}

impl DecisionLookup for Remembering {
    type Key = String;
    type Entry = Decision;
    fn decision(entry: &Decision) -> &Decision {
        entry
    }
    fn with<R>(&mut self, key: &String, found: impl FnOnce(&Decision) -> R) -> Option<R> {
        self.kept.get(key).map(found)
    }
}

impl DecisionCache for Remembering {
    fn put(&mut self, key: String, decision: Decision) -> Decision {
        self.puts += 1;
        self.kept.insert(key, decision.clone());
        decision
    }
    fn unremembered(&mut self, decision: Decision) -> Decision {
        decision
    }
}

fn authorizer(certificates: bool) -> Authorizer {
    let runtime = Runtime::new(None).unwrap();
    let live = Live::start(runtime, Source::BuiltIn, Source::BuiltIn, None).unwrap();
    let keys = KeysConfig {
        issuer: Some("https://idp.example/realms/celine".into()),
        jwks_file: Some("/nonexistent/jwks.json".into()),
        username_claims: "preferred_username".into(),
        certificate_subject_type: certificates.then(|| "device".into()),
        ..KeysConfig::default()
    };
    let verifier = Arc::new(Verifier::new(keys.verifier_config(None).unwrap()).unwrap());
    Authorizer::new(live, Arc::new(Identities::new(verifier, 1 << 20)), &keys)
}

fn faulty_generation() -> Arc<Generation> {
    let path = test_support::target_dir().join("policy-module/faulty.wasm");
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{} ({e}): run `cargo xtask build` first", path.display()));
    let module = Runtime::new(None).unwrap().module(&bytes).unwrap();
    Generation::new(module, include_str!("../../policies/celine.json")).unwrap()
}

fn viewer() -> Subject {
    Subject { id: "u-vera".into(), type_: SubjectType::User, groups: vec!["viewers".into()], scopes: vec![] }
}

fn read(topic: &str) -> Request {
    Request {
        subject: viewer(),
        topic: topic.into(),
        action: Action::Read,
        clientid: "c1".into(),
        username: "".into(),
        qos: None,
        retain: None,
    }
}

const TELEMETRY: &str = "celine/telemetry/meter/m1/readings";

#[test]
fn a_module_fault_denies_and_is_never_remembered() {
    let a = authorizer(false);
    let generation = faulty_generation();
    let mut cache = Remembering::default();
    let mut check = |topic: &str| {
        a.check(&generation, &read(topic), topic.to_string(), &mut cache, |d, cached| (d.clone(), cached))
    };
    let (d, cached) = check("fault/panic");
    assert!(!d.allow && d.reason.contains("trapped") && d.rule.is_none(), "{d:?}");
    assert!(!cached);
    let (again, cached) = check("fault/panic");
    assert!(!again.allow && !cached, "a fault is asked again, never answered from the cache");
    let (d, cached) = check(TELEMETRY);
    assert!(d.allow && !cached, "{d:?}");
    let (d, cached) = check(TELEMETRY);
    assert!(d.allow && cached, "a decision is remembered");
    assert_eq!((cache.puts, cache.kept.len()), (1, 1), "only the decision was remembered");
    assert_eq!(a.metrics.decisions(Action::Read, false), 2);
    assert_eq!(a.metrics.decisions(Action::Read, true), 2);
    assert_eq!(a.metrics.cache(), (1, 3));
}

#[test]
fn a_check_refused_before_the_policy_is_a_denial_not_a_lookup() {
    let a = authorizer(false);
    let mut cache = Remembering::default();
    let pending = a.lookup(Action::Publish, &"k".to_string(), &mut cache, |_| ()).unwrap_err();
    a.refused(pending);
    assert_eq!(a.metrics.decisions(Action::Publish, false), 1);
    assert_eq!(a.metrics.cache(), (0, 0));
}

#[test]
fn a_username_stands_for_a_subject_only_when_it_names_it_and_is_no_certificate_name() {
    let a = authorizer(true);
    let live = a.live.current();
    let with_certificates = {
        let mut doc: serde_json::Value =
            serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
        doc["celine"]["mqtt"]["certificates"] = json!([{"names": ["meter-*"], "groups": ["meters"]}]);
        Generation::new(Arc::clone(&live.module), &doc.to_string()).unwrap()
    };
    let subject = viewer();
    let verified = |username: &str| Verified {
        claims: json!({"sub": "u-vera", "preferred_username": username}),
        exp: identity::now() + 600,
        key: None,
        bytes: 0,
    };
    let stands = |g: &Generation, name: &str, claimed: &str| {
        a.username_stands_for(g, name, &subject, &verified(claimed))
    };
    assert_eq!(stands(&with_certificates, "vera", "vera"), Ok(()));
    assert_eq!(stands(&with_certificates, "u-vera", "vera"), Ok(()), "the subject id");
    assert_eq!(stands(&with_certificates, "olga", "vera"), Err(UsernameRefused::NotTheSubjects));
    assert_eq!(
        stands(&with_certificates, "meter-1", "meter-1"),
        Err(UsernameRefused::CertificateName),
        "a certificate name never stands for a token's subject, whatever its claims say"
    );
    assert_eq!(a.proven_username(&with_certificates, "meter-1", &subject, &verified("meter-1")), "");
    assert_eq!(a.proven_username(&with_certificates, "vera", &subject, &verified("vera")), "vera");
    // Under a generation without that certificates section, the name is free again: what a
    // name is is remembered per generation.
    assert_eq!(stands(&live, "meter-1", "meter-1"), Ok(()));
    assert_eq!(stands(&with_certificates, "meter-1", "meter-1"), Err(UsernameRefused::CertificateName));
}
