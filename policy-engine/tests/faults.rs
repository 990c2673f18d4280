//! A policy module that loops, panics or exhausts memory must cost one denied request, not
//! the host: the call is stopped (epoch deadline, memory limit), the request is denied with a
//! reason, the instance is replaced, and the fault is counted.
//!
//! Uses `testing/faulty-module`, built by `cargo xtask build` next to the real module.

use std::path::PathBuf;
use std::sync::Arc;

use policy_engine::{Action, Generation, Module, Request, Runtime, Subject, SubjectType};

/// This package's folder, read at run time: one target directory may serve two checkouts.
fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
/// Where `cargo xtask build` put the test-only module.
fn faulty_module_path() -> PathBuf {
    let root = package_dir().join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let p = target.join("policy-module/faulty.wasm");
    assert!(p.exists(), "{} is missing: run `cargo xtask build` first", p.display());
    p
}

fn faulty() -> Arc<Module> {
    let bytes = std::fs::read(faulty_module_path()).unwrap();
    Runtime::new(None).unwrap().module(&bytes).unwrap()
}

fn viewer() -> Subject {
    Subject { id: "u1".into(), type_: SubjectType::User, groups: vec!["viewers".into()], scopes: vec![] }
}

fn read(topic: &str) -> Request {
    Request {
        subject: viewer(),
        topic: topic.into(),
        action: Action::Read,
        clientid: "c".into(),
        username: String::new(),
        qos: None,
        retain: None,
    }
}

const TELEMETRY: &str = "celine/telemetry/meter/m1/readings";

#[test]
fn a_looping_panicking_or_hungry_guest_costs_one_denied_request() {
    let module = faulty();
    assert_eq!(module.version, "faulty-module (tests only)");
    let generation = Generation::new(module, include_str!("../../policies/celine.json")).unwrap();
    assert!(generation.check(&read(TELEMETRY)).allow);
    for (topic, why) in
        [("fault/loop", "ran out of time"), ("fault/panic", "trapped"), ("fault/oom", "trapped")]
    {
        let d = generation.check(&read(topic));
        assert!(!d.allow, "{topic}");
        assert!(d.reason.contains(why), "{topic}: {}", d.reason);
        assert_eq!(d.rule, None);
        // The trapped instance was dropped; the next request gets a working one.
        let after = generation.check(&read(TELEMETRY));
        assert!(after.allow, "after {topic}: {}", after.reason);
    }
}

/// A call that needs a few milliseconds of CPU gets its answer even when its thread is
/// starved of CPU, as in a throttled container: the time limit counts the thread's own CPU
/// time, so waiting for a core costs nothing. A deadline on the wall clock would deny it.
///
/// The starved thread and a busy one are pinned to one core, the starved one at the lowest
/// priority, so that no spare core (a CPU quota leaves the scheduler more cores than
/// `available_parallelism` says) can serve it. The epoch ticker runs at normal priority on any
/// core, kept alive by calls from an unpinned thread, so the call meets its deadlines on time
/// and only its own CPU time decides.
#[test]
fn a_thread_starved_of_cpu_still_gets_its_answer() {
    use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    // Every thread below starts from this one's priority: normal, or nothing can be starved.
    let this_thread = Some(rustix::thread::gettid());
    if rustix::process::getpriority_process(this_thread).expect("getpriority") > 0 {
        rustix::process::setpriority_process(this_thread, 0).unwrap_or_else(|e| {
            panic!("this test starves a thread of lower priority: run the tests un-niced (or as root): {e}")
        });
    }
    let generation = Generation::new(faulty(), include_str!("../../policies/celine.json")).unwrap();
    // Not the built-in module: every check is a call into it, never a native decision.
    assert!(!generation.decides_natively());
    assert!(generation.prepare(&read(TELEMETRY).subject, "c", "").is_none());
    let allowed = sched_getaffinity(None).expect("sched_getaffinity");
    let core = (0..CpuSet::MAX_CPU).find(|&c| allowed.is_set(c)).expect("this thread may run on some core");
    let mut one_core = CpuSet::new();
    one_core.set(core);
    let stop = Arc::new(AtomicBool::new(false));
    // Calls from a thread of normal priority, on any core: the ticker never goes idle, so the
    // starved call never starts one of its own (which would inherit its priority and core).
    let keeper = {
        let (generation, stop) = (Arc::clone(&generation), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                assert!(generation.check(&read(TELEMETRY)).allow);
                std::thread::sleep(policy_engine::runtime::TICKER_IDLE / 10);
            }
        })
    };
    assert!(generation.check(&read(TELEMETRY)).allow);
    // The busy thread is spinning on the core before the starved one starts.
    let ready = Arc::new(std::sync::Barrier::new(2));
    let hog = {
        let (stop, ready) = (Arc::clone(&stop), Arc::clone(&ready));
        std::thread::spawn(move || {
            sched_setaffinity(None, &one_core).expect("sched_setaffinity");
            ready.wait();
            let mut n: u64 = 0;
            while !stop.load(Ordering::Relaxed) {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        })
    };
    ready.wait();
    let starved = {
        let generation = Arc::clone(&generation);
        std::thread::spawn(move || {
            sched_setaffinity(None, &one_core).expect("sched_setaffinity");
            // The lowest priority, for this thread alone (a thread id is a pid to the scheduler).
            rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19).expect("setpriority");
            let started = Instant::now();
            let d = generation.check(&read("fault/slow"));
            (d, started.elapsed())
        })
    };
    let (decision, took) = starved.join().unwrap();
    let tickers_at_lowest_priority = tickers_niced_to(19);
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    keeper.join().unwrap();
    assert!(!decision.reason.contains("ran out of time"), "{took:?}: {}", decision.reason);
    assert!(decision.reason.contains("no rule allows"), "{}", decision.reason);
    assert_eq!(tickers_at_lowest_priority, 0, "the epoch ticker was starved too: this test shows nothing");
    // Longer than the whole budget on the wall clock: its first ticks, then its CPU time.
    let budget = policy_engine::runtime::TICK * policy_engine::runtime::CALL_TICKS as u32
        + policy_engine::runtime::CALL_CPU;
    assert!(
        took > 2 * budget,
        "the call was not starved (it took {took:?}): this test shows nothing on this machine"
    );
}

/// Epoch ticker threads of this process whose nice value is `nice`.
fn tickers_niced_to(nice: i64) -> usize {
    threads_named("wasm-epoch")
        .iter()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.join("stat")).ok()?;
            // After the command's closing parenthesis: state is field 3, nice is field 19.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            fields.get(16)?.parse::<i64>().ok()
        })
        .filter(|&n| n == nice)
        .count()
}

#[test]
fn a_guest_that_traps_while_loading_is_refused() {
    let err = Generation::new(faulty(), r#"{"celine":{"mqtt":{"acl":{"rules":[]}}},"x":"trap-on-load"}"#)
        .err()
        .expect("a module that traps in load() gives no generation");
    assert!(format!("{err:#}").contains("trapped"), "{err:#}");
}

#[test]
fn compiled_modules_are_cached_in_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(faulty_module_path()).unwrap();
    let first = Runtime::new(Some(dir.path().to_path_buf())).unwrap().module(&bytes).unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].to_string_lossy().ends_with(".cwasm"));
    assert!(cached[0].file_name().unwrap().to_string_lossy().starts_with(&first.hash));
    // A new runtime (a restart) loads the cached code and works the same.
    let again = Runtime::new(Some(dir.path().to_path_buf())).unwrap().module(&bytes).unwrap();
    assert_eq!(again.version, first.version);
    let generation = Generation::new(again, include_str!("../../policies/celine.json")).unwrap();
    assert!(generation.check(&read(TELEMETRY)).allow);
    // A damaged cache entry is ignored and rewritten, not fatal.
    std::fs::write(&cached[0], b"not a compiled module").unwrap();
    let recovered = Runtime::new(Some(dir.path().to_path_buf())).unwrap().module(&bytes).unwrap();
    assert!(
        Generation::new(recovered, include_str!("../../policies/celine.json"))
            .unwrap()
            .check(&read(TELEMETRY))
            .allow
    );
    assert!(std::fs::metadata(&cached[0]).unwrap().len() > 1000, "rewritten");
    // Damage that keeps the file's shape (one flipped bit in the compiled code, a torn
    // write): wasmtime would run such code as it is; the entry's checksum refuses it first.
    let good = std::fs::read(&cached[0]).unwrap();
    for damaged in [
        {
            let mut d = good.clone();
            d[good.len() / 2] ^= 0x10;
            d
        },
        good[..good.len() - 100].to_vec(),
    ] {
        std::fs::write(&cached[0], &damaged).unwrap();
        let module = Runtime::new(Some(dir.path().to_path_buf())).unwrap().module(&bytes).unwrap();
        let generation = Generation::new(module, include_str!("../../policies/celine.json")).unwrap();
        assert!(generation.check(&read(TELEMETRY)).allow);
        assert_ne!(std::fs::read(&cached[0]).unwrap(), damaged, "the damaged entry was compiled again");
    }
}

#[test]
fn faults_are_counted_by_the_runtime() {
    let module = faulty();
    let generation =
        Generation::new(Arc::clone(&module), include_str!("../../policies/celine.json")).unwrap();
    let runtime_faults = || generation.module.runtime().faults();
    let before = runtime_faults();
    assert!(!generation.check(&read("fault/panic")).allow);
    assert_eq!(runtime_faults(), before + 1);
    assert!(generation.check(&read(TELEMETRY)).allow);
    assert_eq!(runtime_faults(), before + 1, "a good call is not a fault");
}

#[test]
fn a_cache_directory_that_cannot_be_written_is_skipped() {
    // Mosquitto drops to its own user, whose home is often unreadable: the compiled-module
    // cache must then cost a compile, never the start.
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let bytes = std::fs::read(faulty_module_path()).unwrap();
    let module = Runtime::new(Some(not_a_dir.join("cache"))).unwrap().module(&bytes).unwrap();
    let generation = Generation::new(module, include_str!("../../policies/celine.json")).unwrap();
    assert!(generation.check(&read(TELEMETRY)).allow);
}

/// The `/proc` folders of this process's threads with `name`.
fn threads_named(name: &str) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| t.ok().map(|t| t.path()))
        .filter(|task| std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name))
        .collect()
}

#[test]
fn the_timer_thread_ends_when_idle_and_a_later_call_is_still_bounded() {
    use std::time::{Duration, Instant};
    let generation = Generation::new(faulty(), include_str!("../../policies/celine.json")).unwrap();
    assert!(generation.check(&read(TELEMETRY)).allow);
    // No guest code runs now: the ticker ends (a broker deciding natively keeps no thread).
    let deadline = Instant::now() + policy_engine::runtime::TICKER_IDLE + Duration::from_secs(30);
    while !threads_named("wasm-epoch").is_empty() {
        assert!(Instant::now() < deadline, "the epoch ticker is still running long after the last call");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A guest that never returns is stopped all the same: the next call starts the ticker.
    let started = Instant::now();
    let d = generation.check(&read("fault/loop"));
    assert!(!d.allow);
    assert!(d.reason.contains("ran out of time"), "{}", d.reason);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(generation.check(&read(TELEMETRY)).allow, "a new instance serves the next call");
}
