//! Decision latency: the default policy and generated CELINE-like policies of 10, 1,000 and
//! 10,000 rules, publish/read and subscribe separately; loading; `diff` with one rule
//! changed; and `verify` of invariants.
//!
//! Run: `cargo bench -p policy-core --bench decision` (results: BENCHMARKS.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use policy_core::{Action, Message, Policy, Query, Subject, SubjectType};

/// A CELINE-shaped policy of `n` rules: an admin rule, then a repeating mix (per 10: four
/// service namespaces, one site-specific deny, three per-site telemetry viewer rules, one
/// pipeline, one per-user nudging rule with a placeholder), with roles for every group.
fn generated_policy(n: usize) -> String {
    let mut rules = vec![serde_json::json!({
        "id": "admins-all", "subjects": {"groups": ["admins"]}, "topics": ["#"], "actions": "*"})];
    let mut groups = serde_json::Map::new();
    groups.insert("admins".into(), serde_json::json!(["subscribe", "read", "publish", "superuser"]));
    let mut i = 0;
    while rules.len() < n {
        let rule = match i % 10 {
            0..=2 | 9 => serde_json::json!({
                "subjects": {"types": ["service"], "ids": [format!("svc-{i}")], "scopes": ["mqtt.write"]},
                "topics": [format!("celine/svc-{i}/events/#"), format!("celine/svc-{i}/state/#")],
                "actions": ["publish"]}),
            3 => serde_json::json!({
                "subjects": {"groups": [format!("site-{}-viewers", i + 1)]},
                "topics": [format!("celine/system/alerts/site-{}/critical", i + 1)],
                "actions": ["subscribe"], "effect": "deny"}),
            4..=6 => {
                groups.insert(format!("site-{i}-viewers"), serde_json::json!(["subscribe", "read"]));
                serde_json::json!({
                    "subjects": {"types": ["user"], "groups": [format!("site-{i}-viewers")]},
                    "topics": [format!("celine/telemetry/site-{i}/+/readings")],
                    "actions": ["subscribe", "read"]})
            }
            7 => serde_json::json!({
                "subjects": {"types": ["service"], "ids": [format!("pipe-{i}")]},
                "topics": [format!("celine/pipelines/status/pipe-{i}"), format!("celine/pipelines/events/pipe-{i}/#")],
                "actions": ["publish"]}),
            _ => {
                groups.insert(format!("grp-{i}"), serde_json::json!(["subscribe", "read"]));
                serde_json::json!({
                    "subjects": {"groups": [format!("grp-{i}")]},
                    "topics": [format!("celine/nudging/grp-{i}/${{subject.id}}")],
                    "actions": ["subscribe", "read"]})
            }
        };
        rules.push(rule);
        i += 1;
    }
    serde_json::json!({"celine": {"mqtt": {"acl": {"rules": rules}},
        "roles": {"group_permissions": groups,
                  "scope_permissions": {"mqtt.write": ["publish"], "mqtt.read": ["subscribe", "read"]}}}})
    .to_string()
}

fn subject(id: &str, kind: SubjectType, groups: &[&str], scopes: &[&str]) -> Subject {
    Subject {
        id: id.into(),
        kind,
        groups: groups.iter().map(|s| s.to_string()).collect(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
    }
}

struct Case {
    name: &'static str,
    subject: Subject,
    action: Action,
    topic: String,
    allow: bool,
}

/// Requests that land in the middle of an `n`-rule generated policy.
fn generated_cases(n: usize) -> Vec<Case> {
    let mid = n / 2 / 10 * 10; // a multiple of 10 near the middle
    let svc = format!("svc-{mid}");
    let site = format!("site-{}-viewers", mid + 4);
    let viewer = subject("u1", SubjectType::User, &[&site], &[]);
    vec![
        Case {
            name: "publish/allow",
            subject: subject(&svc, SubjectType::Service, &[], &["mqtt.write"]),
            action: Action::Publish,
            topic: format!("celine/svc-{mid}/events/pump/pump-001"),
            allow: true,
        },
        Case {
            name: "publish/deny",
            subject: subject(&svc, SubjectType::Service, &[], &["mqtt.write"]),
            action: Action::Publish,
            topic: format!("celine/svc-{}/events/pump/pump-001", mid + 1),
            allow: false,
        },
        Case {
            name: "read/allow",
            subject: viewer.clone(),
            action: Action::Read,
            topic: format!("celine/telemetry/site-{}/meter-001/readings", mid + 4),
            allow: true,
        },
        Case {
            name: "read/deny",
            subject: viewer.clone(),
            action: Action::Read,
            topic: format!("celine/telemetry/site-{}/meter-001/readings", mid + 5),
            allow: false,
        },
        Case {
            name: "subscribe/allow",
            subject: viewer.clone(),
            action: Action::Subscribe,
            topic: format!("celine/telemetry/site-{}/+/readings", mid + 4),
            allow: true,
        },
        Case {
            name: "subscribe/deny",
            subject: viewer.clone(),
            action: Action::Subscribe,
            topic: format!("celine/system/alerts/site-{}/#", mid + 4),
            allow: false,
        },
        // The index's known limit: a wildcard subscription overlapping every deny pattern
        // (one per 10 rules here) makes each of them a candidate.
        Case {
            name: "subscribe/deny-wide",
            subject: viewer,
            action: Action::Subscribe,
            topic: "celine/system/alerts/#".into(),
            allow: false,
        },
    ]
}

fn default_cases() -> Vec<Case> {
    let viewer = subject("u1", SubjectType::User, &["viewers"], &[]);
    let twin = subject("svc-digital-twin", SubjectType::Service, &[], &["mqtt.write"]);
    vec![
        Case {
            name: "publish/allow",
            subject: twin.clone(),
            action: Action::Publish,
            topic: "celine/digital-twin/events/pump/pump-001".into(),
            allow: true,
        },
        Case {
            name: "publish/deny",
            subject: twin,
            action: Action::Publish,
            topic: "celine/pipelines/status/etl-daily".into(),
            allow: false,
        },
        Case {
            name: "read/allow",
            subject: viewer.clone(),
            action: Action::Read,
            topic: "celine/telemetry/meter/meter-001/readings".into(),
            allow: true,
        },
        Case {
            name: "subscribe/allow",
            subject: viewer.clone(),
            action: Action::Subscribe,
            topic: "celine/telemetry/meter/+/readings".into(),
            allow: true,
        },
        Case {
            name: "subscribe/deny",
            subject: viewer,
            action: Action::Subscribe,
            topic: "celine/system/alerts/#".into(),
            allow: false,
        },
    ]
}

fn bench_policy(c: &mut Criterion, group: &str, policy: &Policy, cases: &[Case]) {
    let mut g = c.benchmark_group(group);
    for case in cases {
        let q = Query {
            subject: &case.subject,
            action: case.action,
            topic: &case.topic,
            clientid: "client-1",
            username: "",
            message: Message::UNKNOWN,
        };
        let d = policy.check(&q);
        assert_eq!(d.allow, case.allow, "{group} {}: {}", case.name, d.reason);
        g.bench_function(case.name, |b| b.iter(|| policy.check(black_box(&q))));
    }
    g.finish();
}

fn decisions(c: &mut Criterion) {
    let default = Policy::load(include_str!("../../policies/celine.json")).unwrap();
    bench_policy(c, "default", &default, &default_cases());
    for n in [10, 1_000, 10_000] {
        let policy = Policy::load(&generated_policy(n)).unwrap();
        assert_eq!(policy.rules().len(), n);
        bench_policy(c, &format!("rules-{n}"), &policy, &generated_cases(n));
    }
}

fn load(c: &mut Criterion) {
    for n in [1_000, 10_000] {
        let text = generated_policy(n);
        c.bench_function(&format!("load/rules-{n}"), |b| b.iter(|| Policy::load(black_box(&text)).unwrap()));
    }
}

/// `diff` of a document against itself with one rule changed: in the default policy the
/// viewers' telemetry narrowed (`+/readings` to `+/summaries`); in generated ones the viewer
/// rule nearest the middle narrowed the same way, and (the worst case: a rule that meets
/// every other) the admin rule's `#` narrowed to `celine/#`.
fn diffs(c: &mut Criterion) {
    let narrow = |text: &str, pattern: &str| {
        let edited = text.replacen(pattern, &pattern.replace("/readings", "/summaries"), 1);
        assert_ne!(edited, text, "{pattern} is in the document");
        edited
    };
    let default = include_str!("../../policies/celine.json");
    let mut pairs =
        vec![("default".to_string(), default.to_string(), narrow(default, "celine/telemetry/+/+/readings"))];
    for n in [1_000, 10_000] {
        let text = generated_policy(n);
        let mid = n / 2 / 10 * 10 + 4;
        let one = narrow(&text, &format!("celine/telemetry/site-{mid}/+/readings"));
        let wide = text.replacen(r##""topics":["#"]"##, r##""topics":["celine/#"]"##, 1);
        assert_ne!(wide, text);
        pairs.push((format!("rules-{n}"), text.clone(), one));
        pairs.push((format!("rules-{n}-wide"), text, wide));
    }
    let mut g = c.benchmark_group("diff");
    g.sample_size(10);
    for (name, old, new) in &pairs {
        let (old, new) = (Policy::load(old).unwrap(), Policy::load(new).unwrap());
        let d = policy_core::diff(&old, &new, &[]);
        assert!(!d.is_empty(), "{name}: the edit changes decisions");
        eprintln!("diff {name}: {} changes in {} witnesses", d.changes.len(), d.probed);
        g.bench_function(name.as_str(), |b| {
            b.iter(|| policy_core::diff(black_box(&old), black_box(&new), &[]))
        });
    }
    g.finish();
}

/// The generated policy of `n` rules with three invariants like the default policy's: only
/// administrators subscribe to everything, each subject's nudges are its own, only services
/// publish pipeline status. All hold, so `verify` decides every witness.
fn with_invariants(n: usize) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(&generated_policy(n)).unwrap();
    doc["celine"]["mqtt"]["invariants"] = serde_json::json!([
        {"id": "only-admins-subscribe-everything", "only": {"groups": ["admins"]},
         "actions": ["subscribe"], "topics": ["#"], "filters": "covering"},
        {"id": "nudges-are-private", "only": {"groups": ["admins"]},
         "actions": ["subscribe", "read"], "topics": ["celine/nudging/+/${subject.id}"]},
        {"id": "pipeline-status-publishers", "only": [{"types": ["service"]}, {"groups": ["admins"]}],
         "actions": ["publish"], "topics": ["celine/pipelines/status/#"]}
    ]);
    doc.to_string()
}

/// `verify`: the default policy's invariants, and three on generated policies.
fn verifies(c: &mut Criterion) {
    let mut g = c.benchmark_group("verify");
    g.sample_size(10);
    let mut docs = vec![("default".to_string(), include_str!("../../policies/celine.json").to_string())];
    for n in [1_000, 10_000] {
        docs.push((format!("rules-{n}"), with_invariants(n)));
    }
    for (name, text) in &docs {
        let policy = Policy::load(text).unwrap();
        let v = policy_core::verify(&policy);
        assert!(v.holds(), "{name}: {:?}", v.violated().collect::<Vec<_>>());
        eprintln!("verify {name}: {} invariants, {} requests decided", v.verdicts.len(), v.probed);
        g.bench_function(name.as_str(), |b| b.iter(|| policy_core::verify(black_box(&policy))));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(50);
    targets = decisions, load, diffs, verifies
}
criterion_main!(benches);
