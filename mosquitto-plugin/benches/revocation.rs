//! What a swap's revocation pass costs the broker thread: 10,000 connected viewers, each
//! holding two subscriptions, and a swap that takes one of them away (and the next swap that
//! gives it back). Measured: the broker time of the ticks that decide every held subscription
//! again and report the result, from the moment the new generation is live until the pass is
//! done (the swap itself runs on a background thread and is not counted). Each tick gives the
//! pass at most 2 ms, so the count of ticks it spans is the total divided by about 2 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

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

const CLIENTS: usize = 10_000;

fn revocation(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let policy = state.path().join("policy.json");
    let granting =
        std::fs::read_to_string(test_support::package_dir().join("tests/e2e/policy.json")).unwrap();
    let narrowed =
        granting.replace("\"celine/telemetry/+/+/readings\"", "\"celine/telemetry/meter/+/readings\"");
    assert_ne!(granting, narrowed);
    std::fs::write(&policy, &granting).unwrap();
    let pairs: Vec<(String, String)> = [
        ("policy", policy.display().to_string()),
        ("dev", "true".into()),
        ("state_dir", state.path().display().to_string()),
        ("watch", "false".into()),
        ("sys_interval", "0".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let plugin = Plugin::start(Options::parse(&pairs).unwrap(), Arc::new(Quiet)).unwrap();
    let key = DevKey::load_or_create(state.path()).unwrap();
    let token = key
        .sign(&claims(&TokenSpec::dev_user("vera", &["viewers"], 3600), identity::now()).unwrap())
        .unwrap();
    for n in 0..CLIENTS {
        let client = PlainClient::new(n + 1, &format!("viewer-{n}"), Some("vera"));
        let admitted = plugin.authenticate(&client, Some(b"vera"), Some(token.as_bytes()));
        assert!(matches!(admitted, Admission::Admitted { .. }), "viewer {n} was not admitted");
        for filter in ["celine/telemetry/+/+/readings", "celine/users/vera/#"] {
            let granted = plugin.check(&client, access::SUBSCRIBE, filter.as_bytes(), AclMessage::default());
            assert!(granted, "viewer {n} may not subscribe to {filter}");
        }
    }
    let documents = [narrowed, granting];
    let mut swaps = 0usize;
    let mut group = c.benchmark_group("revocation");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("10,000 connected clients, 2 subscriptions each, after a swap", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                std::fs::write(&policy, &documents[swaps % 2]).unwrap();
                swaps += 1;
                let before = plugin.live().current().id;
                plugin.reload();
                let deadline = Instant::now() + Duration::from_secs(30);
                while plugin.live().current().id == before {
                    assert!(Instant::now() < deadline, "the swap did not happen within 30 s");
                    std::thread::sleep(Duration::from_millis(2));
                }
                while plugin.revocation_pending() {
                    let started = Instant::now();
                    plugin.tick();
                    spent += started.elapsed();
                }
            }
            spent
        })
    });
    group.finish();
    let revoked = plugin.stats().revoked_subscriptions.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        revoked as usize >= CLIENTS,
        "every narrowing swap revokes one subscription per client ({revoked})"
    );
}

criterion_group!(benches, revocation);
criterion_main!(benches);
