//! The policy module (WASM, through wasmtime) must decide exactly as `policy-core` does
//! natively: same allow, same rule, same reason, same load diagnostics, same subject from
//! claims. Checked on the whole decision corpus and on random requests. And a generation of
//! the built-in module, which decides natively (a subject prepared once, or not), must decide
//! exactly as a call into its module: that is what lets the broker skip the call.

use std::path::PathBuf;
use std::sync::Arc;

use policy_core::{Json, Policy, parse_request};
use policy_engine::{
    Action, Generation, LoadError, Module, Request, Runtime, Subject, SubjectError, embedded_module,
};
use proptest::prelude::*;
use serde_json::Value;

/// This package's folder, read at run time: one target directory may serve two checkouts.
fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
fn module() -> Arc<Module> {
    let bytes =
        embedded_module().expect("this test needs the built-in policy module: run `cargo xtask build` first");
    Runtime::new(None).unwrap().module(bytes).unwrap()
}

fn corpus() -> Vec<Value> {
    let dir = package_dir().join("../corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<Value>>()
        })
        .collect()
}

fn native_decision(d: policy_core::Decision) -> (bool, Option<String>, String) {
    (d.allow, d.rule, d.reason)
}

fn wasm_decision(d: policy_engine::Decision) -> (bool, Option<String>, String) {
    (d.allow, d.rule, d.reason)
}

#[test]
fn the_module_decides_the_whole_corpus_as_the_core_does() {
    let module = module();
    let cases = corpus();
    assert!(cases.len() >= 104);
    for case in &cases {
        let note = case["note"].as_str().unwrap_or("");
        let text = case["policy"].to_string();
        let native = Policy::load(&text);
        let wasm = Generation::new(Arc::clone(&module), &text);
        let (native, generation) = match (native, wasm) {
            (Ok(n), Ok(w)) => (n, w),
            (Err(nd), Err(e)) => {
                let wd = &e.downcast_ref::<LoadError>().expect("a load error, not a fault").0;
                let n: Vec<(String, String)> =
                    nd.iter().map(|d| (d.path.clone(), d.message.clone())).collect();
                let w: Vec<(String, String)> =
                    wd.iter().map(|d| (d.path.clone(), d.message.clone())).collect();
                assert_eq!(n, w, "{note}: load diagnostics differ");
                continue;
            }
            (n, w) => panic!("{note}: native loads: {}, module loads: {}", n.is_ok(), w.is_ok()),
        };
        assert_eq!(generation.rule_count as usize, native.rules().len());
        let request = parse_request(&Json::parse(&case["request"].to_string()).unwrap()).unwrap();
        if let Some(claims) = case["request"].get("claims") {
            let from_module = generation.module_subject_from_claims(&claims.to_string()).unwrap();
            assert_eq!(
                generation.subject_from_claims(&claims.to_string()).unwrap(),
                from_module,
                "{note}: natively"
            );
            assert_eq!(from_module, Subject::from(request.subject.clone()), "{note}: claims map differently");
        }
        assert!(generation.decides_natively(), "{note}: the built-in module decides natively");
        let subject = Subject::from(request.subject.clone());
        let expected = native_decision(native.evaluate(&request));
        let Some(action) = request.ask.action() else {
            assert_eq!(wasm_decision(generation.module_superuser(&subject)), expected, "{note}: the module");
            assert_eq!(wasm_decision(generation.superuser(&subject)), expected, "{note}: natively");
            continue;
        };
        let req = Request {
            subject: subject.clone(),
            topic: request.topic.clone(),
            action: Action::from(action),
            clientid: request.clientid.clone(),
            username: request.username.clone(),
            qos: request.message.qos,
            retain: request.message.retain,
        };
        assert_eq!(wasm_decision(generation.module_check(&req).unwrap()), expected, "{note}: the module");
        assert_eq!(wasm_decision(generation.try_check(&req).unwrap()), expected, "{note}: natively");
        let prepared = generation.prepare(&subject, &req.clientid, &req.username);
        assert!(prepared.is_some());
        let got = generation.try_check_prepared(prepared.as_ref(), &req).unwrap();
        assert_eq!(wasm_decision(got), expected, "{note}: natively, prepared");
    }
}

/// A native refusal as the module answers it.
fn refused(e: policy_core::Invalid) -> SubjectError {
    SubjectError::Refused(e.0)
}

#[test]
fn certificate_names_map_to_the_same_subjects() {
    let doc = r#"{"celine": {"mqtt": {"acl": {"rules": []}, "certificates": [
        {"names": ["meter-*"], "groups": ["meters"]}, {"names": ["meter-7", "gw"], "groups": ["special", "meters"]},
        {"names": ["*"], "groups": ["any"]}]}}}"#;
    let generation = Generation::new(module(), doc).unwrap();
    let native = Policy::load(doc).unwrap();
    for name in ["meter-1", "meter-7", "gw", "meter", "", "x/y", "$SYS", "meter-\u{0}"] {
        for kind in policy_core::SubjectType::ALL {
            let want = native.certificate_subject(name, kind).map(Subject::from).map_err(refused);
            assert_eq!(
                generation.module_certificate_subject(name, kind.into()),
                want,
                "{name:?} as {kind:?}"
            );
            assert_eq!(
                generation.certificate_subject(name, kind.into()),
                want,
                "{name:?} as {kind:?}, natively"
            );
        }
    }
    let none = Generation::new(module(), r#"{"celine": {"mqtt": {"acl": {"rules": []}}}}"#).unwrap();
    let e = none.certificate_subject("meter-1", policy_engine::SubjectType::Device).unwrap_err();
    assert!(matches!(e, SubjectError::Refused(_)), "{e}");
}

#[test]
fn lint_and_claims_errors_match() {
    let module = module();
    let generation =
        Generation::new(Arc::clone(&module), include_str!("../../policies/celine.json")).unwrap();
    for claims in [r#"{"groups":["/a"]}"#, "[]", "{", r#"{"client_id": 7}"#] {
        let native = policy_core::subject_from_claims_json(claims).map(Subject::from).map_err(refused);
        assert_eq!(generation.module_subject_from_claims(claims), native, "{claims}");
        assert_eq!(generation.subject_from_claims(claims), native, "{claims}, natively");
    }
}

fn subject_strategy() -> impl Strategy<Value = policy_core::Subject> {
    (
        prop::sample::select(&["u1", "svc-pipelines", "svc-digital-twin", "user-789", "$x", "a/b"][..]),
        prop::sample::select(&policy_core::SubjectType::ALL[..]),
        prop::collection::vec(prop::sample::select(&["viewers", "admins", "editors", "x"][..]), 0..3),
        prop::collection::vec(
            prop::sample::select(&["mqtt.read", "mqtt.write", "mqtt.admin", "y"][..]),
            0..3,
        ),
    )
        .prop_map(|(id, kind, groups, scopes)| policy_core::Subject {
            id: id.into(),
            kind,
            groups: groups.into_iter().map(String::from).collect(),
            scopes: scopes.into_iter().map(String::from).collect(),
        })
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(
            &[
                "celine",
                "telemetry",
                "digital-twin",
                "events",
                "state",
                "pipelines",
                "status",
                "system",
                "alerts",
                "critical",
                "nudging",
                "user-789",
                "+",
                "#",
                "",
                "$SYS",
                "$share",
                "g",
                "m1",
                "readings",
            ][..],
        ),
        1..7,
    )
    .prop_map(|l| l.join("/"))
}

const NUDGING: &str = r#"{"celine":{"mqtt":{"acl":{"rules":[
  {"id":"own-nudges","subjects":{"types":["user"]},"topics":["celine/nudging/+/${subject.id}","u/${username}/#","c/${clientid}"],"actions":["subscribe","read"]},
  {"id":"no-critical","subjects":{"groups":["viewers"]},"topics":["celine/system/alerts/critical","celine/nudging/${clientid}/#"],"actions":"*","effect":"deny"},
  {"subjects":{"scopes":["mqtt.*"]},"topics":"*","actions":["publish"]},
  {"id":"retained-nudges-only","subjects":{"groups":["viewers"]},"topics":["celine/nudging/#"],"actions":["read","subscribe"],"retain":false,"effect":"deny"},
  {"id":"qos-1-inbox","subjects":{"types":["user"]},"topics":["u/${username}/inbox"],"actions":"*","qos":[1]}]},
  "limits":[
  {"subjects":{"types":["user"]},"max_subscriptions":10,"publish":{"messages_per_second":5,"bytes_per_second":1000,"burst_bytes":4000}},
  {"subjects":{"groups":["viewers"]},"max_subscriptions":3,"max_payload_bytes":512,"retain":false},
  {"subjects":{"scopes":["mqtt.*"]},"publish":{"messages_per_second":"unlimited","burst_messages":"unlimited"},"retain":true},
  {"subjects":{"ids":["svc-pipelines"]},"max_subscriptions":"unlimited","max_payload_bytes":0}]}}}"#;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_requests_decide_the_same(
        subject in subject_strategy(),
        action in prop::sample::select(&policy_core::Action::ALL[..]),
        topic in topic_strategy(),
        clientid in prop::sample::select(&["c1", "", "+", "user-789", "a/b"][..]),
        username in prop::sample::select(&["", "u1", "$x"][..]),
        qos in prop::sample::select(&[None, Some(0u8), Some(1), Some(2)][..]),
        retain in prop::sample::select(&[None, Some(false), Some(true)][..]),
    ) {
        // A subscription has no retain flag.
        let retain = retain.filter(|_| action != policy_core::Action::Subscribe);
        thread_local! {
            static GENS: Vec<(Policy, Arc<Generation>)> = {
                let m = module();
                [include_str!("../../policies/celine.json"), NUDGING]
                    .into_iter()
                    .map(|t| (Policy::load(t).unwrap(), Generation::new(Arc::clone(&m), t).unwrap()))
                    .collect()
            };
        }
        GENS.with(|gens| {
            for (native, generation) in gens {
                let message = policy_core::Message { qos, retain };
                let q = policy_core::Query { subject: &subject, action, topic: &topic, clientid, username, message };
                let req = Request {
                    subject: Subject::from(subject.clone()),
                    topic: topic.clone(),
                    action: Action::from(action),
                    clientid: clientid.to_string(),
                    username: username.to_string(),
                    qos,
                    retain,
                };
                let expected = native_decision(native.check(&q));
                prop_assert_eq!(wasm_decision(generation.module_check(&req).unwrap()), expected.clone(), "the module");
                prop_assert_eq!(wasm_decision(generation.try_check(&req).unwrap()), expected.clone(), "natively");
                let prepared = generation.prepare(&req.subject, &req.clientid, &req.username).unwrap();
                let at_once = generation.allowed_as_prepared(&prepared, req.action, &req.topic);
                if let Some(rule) = at_once {
                    prop_assert_eq!(wasm_decision(generation.allowed_by(rule, req.action, &req.topic).expect("a rule from a native generation")), expected.clone(), "the residual");
                }
                prop_assert_eq!(prepared.allowed_under(generation.id, req.action, req.topic.as_bytes()), at_once, "the residual, by generation id");
                prop_assert_eq!(prepared.allowed_under(generation.id + 1, req.action, req.topic.as_bytes()), None, "another generation's id");
                let got = generation.try_check_prepared(Some(&prepared), &req).unwrap();
                prop_assert_eq!(wasm_decision(got), expected, "natively, prepared");
                let su = generation.module_superuser(&Subject::from(subject.clone()));
                prop_assert_eq!(wasm_decision(su), native_decision(native.superuser(&subject)));
                let su = generation.superuser(&Subject::from(subject.clone()));
                prop_assert_eq!(wasm_decision(su), native_decision(native.superuser(&subject)), "natively");
                let limits = native.limits(&subject);
                prop_assert_eq!(generation.module_limits(&Subject::from(subject.clone())).unwrap(), limits, "limits");
                prop_assert_eq!(generation.limits(&Subject::from(subject.clone())).unwrap(), limits, "limits, natively");
            }
            Ok(())
        })?;
    }
}
