//! What one ACL check costs Mosquitto's thread, all of it: the plugin's `check` as `entry.rs`
//! calls it (connection lookup, binding, generation, residual or decision, metrics), for the
//! clients of `cargo xtask bench-broker` under its policy. The broker benchmark measures the
//! same path inside Mosquitto, where it is a few percent of the broker's time and hard to
//! see in a profile; this one isolates it. Also the broker's tick, which Mosquitto 2.0 sends
//! on every pass of its event loop (about one per ten deliveries under the broker benchmark's
//! load).

use criterion::{Criterion, criterion_group, criterion_main};
use mqtt_policy_mosquitto::{AclMessage, Admission, PlainClient, access};

mod support;

fn checks(c: &mut Criterion) {
    let state = tempfile::tempdir().unwrap();
    let policy = support::e2e_policy().replace("celine/digital-twin/events/#", "bench/#");
    let (plugin, _) = support::start(state.path(), &policy, &[]);
    let token = support::user_token(state.path(), "editor-0", &["editors"]);
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

    // Eight connected clients, as in the broker benchmark, and nothing to do but the tick's
    // own bookkeeping: the estimate is the average, which includes the timed work (every
    // 10 ms: about one tick in 10^5 here).
    for i in 2..9 {
        let client = PlainClient::new(i, &format!("sub-{i}"), Some("editor-0"));
        let admitted = plugin.authenticate(&client, Some(b"editor-0"), Some(token.as_bytes()));
        assert!(matches!(admitted, Admission::Admitted { .. }), "a client was not admitted");
    }
    c.bench_function("plugin tick, eight clients, nothing due", |b| b.iter(|| plugin.tick()));
}

criterion_group!(benches, checks);
criterion_main!(benches);
