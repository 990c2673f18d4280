//! What one ACL check costs Mosquitto's thread, all of it: the plugin's `check` as `entry.rs`
//! calls it (connection lookup, binding, generation, residual or decision, metrics), for the
//! clients of `cargo xtask bench-broker` under its policy. The broker benchmark measures the
//! same path inside Mosquitto, where it is a few percent of the broker's time and hard to
//! see in a profile; this one isolates it.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use identity::devkey::{DevKey, TokenSpec, claims};
use mqtt_policy_mosquitto::{AclMessage, Admission, Broker, Options, PlainClient, Plugin, access};

struct Quiet;

impl Broker for Quiet {
    fn log(&self, _: tracing::Level, _: &str) {}
    fn publish_retained(&self, _: &str, _: &[u8]) {}
    fn kick(&self, _: &str, _: bool) -> bool {
        false
    }
}

fn checks(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let policy = state.path().join("policy.json");
    let e2e = std::fs::read_to_string(test_support::package_dir().join("tests/e2e/policy.json")).unwrap();
    std::fs::write(&policy, e2e.replace("celine/digital-twin/events/#", "bench/#")).unwrap();
    let pairs: Vec<(String, String)> = [
        ("policy", policy.display().to_string()),
        ("dev", "true".into()),
        ("state_dir", state.path().display().to_string()),
        ("watch", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let plugin = Plugin::start(Options::parse(&pairs).unwrap(), Arc::new(Quiet)).unwrap();
    let key = DevKey::load_or_create(state.path()).unwrap();
    let token = key
        .sign(&claims(&TokenSpec::dev_user("editor-0", &["editors"], 3600), identity::now()).unwrap())
        .unwrap();
    let editor = PlainClient::new(1, "sub-0", Some("editor-0"));
    let admitted = plugin.authenticate(&editor, Some(b"editor-0"), Some(token.as_bytes()));
    assert!(matches!(admitted, Admission::Admitted { .. }), "the editor was not admitted");

    let devices: Vec<String> =
        (0..12_000).map(|n| format!("bench/telemetry/meter-type-{}/device-{n}/readings", n % 8)).collect();
    assert!(
        devices.iter().all(|t| plugin.check(&editor, access::READ, t.as_bytes(), AclMessage::default())),
        "a read was denied"
    );
    let mut group = c.benchmark_group("plugin check");
    let mut n = 0;
    group.bench_function("read, a new device topic each check (fan-in)", |b| {
        b.iter(|| {
            n = (n + 1) % devices.len();
            plugin.check(
                &editor,
                access::READ,
                std::hint::black_box(devices[n].as_bytes()),
                AclMessage::default(),
            )
        })
    });
    group.bench_function("read, one topic", |b| {
        b.iter(|| {
            plugin.check(
                &editor,
                access::READ,
                std::hint::black_box(devices[0].as_bytes()),
                AclMessage::default(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, checks);
criterion_main!(benches);
