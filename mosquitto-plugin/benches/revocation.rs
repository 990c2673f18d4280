//! What a swap's revocation pass costs the broker thread: 10,000 connected viewers, each
//! holding two subscriptions, and a swap that takes one of them away (and the next swap that
//! gives it back). Measured: the broker time of the ticks that decide every held subscription
//! again and report the result, from the moment the new generation is live until the pass is
//! done (the swap itself runs on a background thread and is not counted). Each tick gives the
//! pass at most 2 ms, so the count of ticks it spans is the total divided by about 2 ms.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use mqtt_policy_mosquitto::{AclMessage, Admission, PlainClient, access};

mod support;

const CLIENTS: usize = 10_000;

fn revocation(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let granting = support::e2e_policy();
    let narrowed =
        granting.replace("\"celine/telemetry/+/+/readings\"", "\"celine/telemetry/meter/+/readings\"");
    assert_ne!(granting, narrowed);
    let (plugin, policy) = support::start(state.path(), &granting, &[("sys_interval", "0")]);
    let token = support::user_token(state.path(), "vera", &["viewers"]);
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
                let deadline = swap_to(&plugin, &policy, &documents[swaps % 2]);
                swaps += 1;
                // The tick's timed work (every 10 ms, on a clock of a few ms) starts the pass:
                // ticks waiting for it are not the pass's cost.
                std::thread::sleep(Duration::from_millis(15));
                while plugin.revocation_pending() {
                    let started = Instant::now();
                    plugin.tick();
                    spent += started.elapsed();
                }
                // The background thread's report of whom the swap reaches runs after the
                // pass: let it end before the next swap (on two cores it would compete).
                while plugin.live().status()["last_swap"]["identities"].is_null() {
                    assert!(Instant::now() < deadline, "the report did not come within 30 s");
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            spent
        })
    });
    // The report of whom a swap reaches, as the background thread makes it once the pass
    // has listed the connected clients: every change of the swap asked again as each client.
    let viewers: Vec<policy_engine::Identity> = (0..CLIENTS)
        .map(|n| policy_engine::Identity {
            label: format!("viewer-{n}"),
            subject: policy_core::Subject {
                id: "vera".into(),
                kind: policy_core::SubjectType::User,
                groups: vec!["viewers".into()],
                scopes: vec![],
            },
            username: "vera".into(),
            clientid: Some(format!("viewer-{n}")),
        })
        .collect();
    group.bench_function("whom a swap reaches, 10,000 connected clients (background thread)", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                swap_to(&plugin, &policy, &documents[swaps % 2]);
                swaps += 1;
                let started = Instant::now();
                plugin.live().report_identities(plugin.live().current().id, &viewers);
                spent += started.elapsed();
                while plugin.revocation_pending() {
                    plugin.tick();
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

/// Writes `document` as the policy, reloads, and waits until the new generation is live;
/// returns the deadline the waits after it keep to.
fn swap_to(plugin: &mqtt_policy_mosquitto::Plugin, policy: &std::path::Path, document: &str) -> Instant {
    std::fs::write(policy, document).unwrap();
    let before = plugin.live().current().id;
    plugin.reload();
    let deadline = Instant::now() + Duration::from_secs(30);
    while plugin.live().current().id == before {
        assert!(Instant::now() < deadline, "the swap did not happen within 30 s");
        std::thread::sleep(Duration::from_millis(2));
    }
    deadline
}

criterion_group!(benches, revocation);
criterion_main!(benches);
