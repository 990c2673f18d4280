//! What one ACL check costs Mosquitto's thread, all of it: the plugin's `check` as `entry.rs`
//! calls it (connection lookup, binding, generation, residual or decision, metrics), for the
//! clients of `cargo xtask bench-broker` under its policy. The broker benchmark measures the
//! same path inside Mosquitto, where it is a few percent of the broker's time and hard to
//! see in a profile; this one isolates it. Also the broker's tick, which Mosquitto 2.0 sends
//! on every pass of its event loop (about one per ten deliveries under the broker benchmark's
//! load).
//!
//! Inside Mosquitto a check costs about four times what it costs here in a loop: between two
//! checks the broker's and the kernel's work evict from the CPU's caches what a check uses.
//! The `evicted` benchmarks model that: before each check they write over a buffer larger than
//! the cache level named, untimed, so that the check finds its own data (with L2 evicted, its
//! code too) only further out. What a change saves there is the cache lines it stops
//! touching. Each sample includes reading the clock twice (about 20 ns), alike for every
//! build compared.

use std::time::{Duration, Instant};

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
    // Larger than L1 (tens of KiB on current x86), and than L2 (1–2 MiB).
    for (name, bytes) in [("L1", 256 << 10), ("L2", 4 << 20)] {
        let mut evictor = vec![0u8; bytes];
        group.bench_function(format!("read, a new device topic each check, {name} evicted first"), |b| {
            b.iter_custom(|checks| {
                let mut spent = Duration::ZERO;
                for _ in 0..checks {
                    n = (n + 1) % devices.len();
                    evict(&mut evictor);
                    let started = Instant::now();
                    std::hint::black_box(plugin.check(
                        &editor,
                        access::READ,
                        std::hint::black_box(devices[n].as_bytes()),
                        AclMessage::default(),
                    ));
                    spent += started.elapsed();
                }
                spent
            })
        });
    }
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
    // The same with L1 evicted before each tick, as the broker's work between two ticks does:
    // each eviction takes microseconds, so here about one tick in a few thousand does the
    // timed work, which raises the average a little.
    let mut evictor = vec![0u8; 256 << 10];
    c.bench_function("plugin tick, eight clients, nothing due, L1 evicted first", |b| {
        b.iter_custom(|ticks| {
            let mut spent = Duration::ZERO;
            for _ in 0..ticks {
                evict(&mut evictor);
                let started = Instant::now();
                plugin.tick();
                spent += started.elapsed();
            }
            spent
        })
    });
}

/// Writes one byte per cache line of `buffer`, so that what was cached before is gone.
fn evict(buffer: &mut [u8]) {
    for line in buffer.chunks_mut(64) {
        line[0] = line[0].wrapping_add(1);
    }
    std::hint::black_box(&buffer);
}

criterion_group!(benches, checks);
criterion_main!(benches);
