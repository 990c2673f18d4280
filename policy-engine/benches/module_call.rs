//! What one decision costs through the policy module (wasmtime, the built-in module) beside
//! the same decision made natively by `policy-core`: the price of the sandbox, per call; and
//! what a generation of the built-in module costs when it decides natively, with the subject
//! converted per check (the service) or prepared once (the broker plugin, per connection).

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use policy_engine::{Action, Generation, Request, Runtime, Subject, SubjectType, embedded_module};

const POLICY: &str = include_str!("../../policies/celine.json");

fn viewer() -> Subject {
    Subject { id: "u-vera".into(), type_: SubjectType::User, groups: vec!["viewers".into()], scopes: vec![] }
}

fn bench(c: &mut Criterion) {
    let module = Runtime::new(None)
        .unwrap()
        .module(embedded_module().expect("run `cargo xtask build` first: the built-in module is missing"))
        .unwrap();
    let generation: Arc<Generation> = Generation::new(module, POLICY).unwrap();
    let native = policy_core::Policy::load(POLICY).unwrap();
    let native_subject = policy_core::Subject {
        id: "u-vera".into(),
        kind: policy_core::SubjectType::User,
        groups: vec!["viewers".into()],
        scopes: vec![],
    };
    let mut group = c.benchmark_group("read-allow");
    let topic = "celine/telemetry/meter/meter-001/readings";
    group.bench_function("native", |b| {
        b.iter(|| {
            let q = policy_core::Query {
                subject: &native_subject,
                action: policy_core::Action::Read,
                topic,
                clientid: "c1",
                username: "",
                message: policy_core::Message::UNKNOWN,
            };
            assert!(native.check(&q).allow);
        })
    });
    let mut req = Request {
        subject: viewer(),
        topic: topic.into(),
        action: Action::Read,
        clientid: "c1".into(),
        username: String::new(),
        qos: None,
        retain: None,
    };
    group.bench_function("module", |b| b.iter(|| assert!(generation.module_check(&req).unwrap().allow)));
    group.bench_function("generation", |b| b.iter(|| assert!(generation.try_check(&req).unwrap().allow)));
    let prepared = generation.prepare(&req.subject, &req.clientid, &req.username);
    assert!(prepared.is_some(), "the built-in module decides natively");
    group.bench_function("generation-prepared", |b| {
        b.iter(|| assert!(generation.try_check_prepared(prepared.as_ref(), &req).unwrap().allow))
    });
    req.topic = "celine/system/alerts/critical".into();
    req.action = Action::Subscribe;
    group
        .bench_function("module-deny", |b| b.iter(|| assert!(!generation.module_check(&req).unwrap().allow)));
    group.bench_function("generation-prepared-deny", |b| {
        b.iter(|| assert!(!generation.try_check_prepared(prepared.as_ref(), &req).unwrap().allow))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
