//! Mosquitto is debugged under valgrind, and the plugin must not crash it there. A clock read
//! through rustix finds the vDSO from the aux vector the kernel gave the process, which under
//! valgrind is valgrind's own and names a vDSO it never maps for the program it runs. So every
//! rustix in the build (the policy engine's thread CPU clock, which bounds module calls) reads
//! the aux vector the C library holds (`use-libc-auxv`); the plugin's coarse clocks are read
//! through the C library itself. This test runs itself under valgrind and reads those clocks
//! there, the thread CPU clock as `policy_engine` reads it.

use std::process::Command;

use mqtt_policy_mosquitto::sys::{CoarseClock, coarse_clock};

/// Set in the copy of this test that runs under valgrind.
const UNDER_VALGRIND: &str = "MQTT_POLICY_TEST_UNDER_VALGRIND";

#[test]
fn the_clocks_read_under_valgrind() {
    if std::env::var_os(UNDER_VALGRIND).is_some() {
        read_the_clocks();
        return;
    }
    let this_test = std::env::current_exe().expect("the test binary's path");
    let run = Command::new("valgrind")
        .args(["--tool=none", "--quiet"])
        .arg(&this_test)
        .args(["--exact", "the_clocks_read_under_valgrind", "--test-threads=1"])
        .env(UNDER_VALGRIND, "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run valgrind ({e}): install Debian's valgrind (`cargo xtask test` does)")
        });
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success() && said.contains("1 passed"),
        "under valgrind: {}\n{said}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
}

fn read_the_clocks() {
    let (since_epoch, _) = coarse_clock(CoarseClock::Realtime).expect("the coarse real-time clock");
    assert!(since_epoch > 1_700_000_000, "the coarse real-time clock says {since_epoch}");
    coarse_clock(CoarseClock::Monotonic).expect("the coarse monotonic clock");
    let cpu = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    assert!(cpu.tv_sec >= 0 && cpu.tv_nsec >= 0, "the thread CPU clock says {cpu:?}");
}
