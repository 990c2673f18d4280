//! Injected identity-provider faults: the key-set endpoint slow (beyond go-auth's 5 s
//! timeout), answering 500, answering garbage, sending an enormous key set, or vanishing
//! mid-response. Through each, the service stays up, answers every go-auth call within 5 s
//! (a token by an unknown key is refused, tokens by known keys keep working), logs the fault
//! once rather than per request, and picks up a rotated-in key by itself once the provider
//! is healthy again.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::idp::{Idp, Mode, key_set};
use common::*;
use serde_json::json;

/// A token no earlier request has shown (so its verification is not cached).
fn fresh_token(key_file: &str, kid: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut claims = viewer_claims();
    claims["jti"] = json!(format!("fault-test-{}", N.fetch_add(1, Ordering::Relaxed)));
    sign(key_file, kid, &claims)
}

/// A user call with `token`: its reply and how long it took.
fn timed_user_call(s: &Server, token: &str) -> (Reply, Duration) {
    let started = Instant::now();
    let r = bearer_call(s, "/mqtt/user", token, "null");
    (r, started.elapsed())
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb / 1024
}

/// go-auth's own timeout for a backend call.
const GO_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn identity_provider_faults_cost_no_answer_and_heal_by_themselves() {
    let idp = Idp::start(&key_set(&["jwks-a.json"]));
    let log = tempfile::NamedTempFile::new().unwrap();
    let s = Server::start_logged(
        &["--jwks-url", &idp.url, "--issuer", ISSUER, "--jwks-min-refresh", "1"],
        log.path(),
    );
    assert!(timed_user_call(&s, &fresh_token("rsa-a.pem", "key-a")).0.allowed(), "healthy start");

    for fault in [Mode::Slow, Mode::Status500, Mode::Garbage, Mode::Enormous, Mode::Vanish] {
        idp.set(fault);
        let asked_before = idp.requests.load(Ordering::Relaxed);
        // A rotated-in key the service has not seen: it must ask the provider, and cannot get
        // an answer in time. Asked repeatedly, as clients retrying would, until the provider
        // has been asked in this mode (a slow answer of the previous one may still be awaited).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attempt = 0;
        while attempt < 6 || idp.requests.load(Ordering::Relaxed) == asked_before {
            assert!(Instant::now() < deadline, "{fault:?}: the provider was never asked");
            attempt += 1;
            let (r, took) = timed_user_call(&s, &fresh_token("rsa-b.pem", "key-b"));
            assert_eq!(r.status, 403, "{fault:?}, attempt {attempt}: {}", r.body);
            assert!(took < GO_AUTH_TIMEOUT, "{fault:?}, attempt {attempt}: answered after {took:?}");
            let reason = r.json()["error"].as_str().unwrap().to_string();
            assert!(
                reason.contains("unknown signing key") || reason.contains("could not be fetched"),
                "{fault:?}: {reason}"
            );
            // Known keys keep working meanwhile, without waiting for the provider.
            let (r, took) = timed_user_call(&s, &fresh_token("rsa-a.pem", "key-a"));
            assert!(r.allowed(), "{fault:?}, attempt {attempt}: {}", r.body);
            assert!(took < Duration::from_secs(1), "{fault:?}: a known key waited {took:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(send(client().get(s.url("/healthz"))).status, 200, "{fault:?}: still up");
    }
    // An enormous key set is refused while it arrives, not held in memory whole.
    let peak = peak_rss_mib(s.child.id());
    assert!(peak < 160, "peak RSS {peak} MiB after a 256 MiB key set");

    // The provider heals and publishes key B: the service trusts it without a restart.
    idp.set_keys(&key_set(&["jwks-a.json", "jwks-b.json"]));
    idp.set(Mode::Healthy);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (r, took) = timed_user_call(&s, &fresh_token("rsa-b.pem", "key-b"));
        assert!(took < GO_AUTH_TIMEOUT, "answered after {took:?}");
        if r.allowed() {
            break;
        }
        assert!(Instant::now() < deadline, "key B was never picked up: {}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = send(client().get(s.ops("/readyz")));
    assert_eq!(ready.status, 200, "{}", ready.body);

    // Each fault was logged once, not once per request or per refresh attempt; and the
    // recovery once.
    // (Log lines reach the file within a fraction of a second: wait for the recovery's.)
    let read_log = || std::fs::read_to_string(log.path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read_log().contains("key set refresh works again") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = read_log();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("key set refresh failed")).collect();
    assert_eq!(failures.len(), 5, "one line per fault:\n{}", failures.join("\n"));
    assert_eq!(log.lines().filter(|l| l.contains("key set refresh works again")).count(), 1, "{log}");
    assert!(!log.contains("eyJ"), "no token in the log");
}

/// A service that starts before its identity provider can answer (a compose stack, a pod
/// whose Keycloak is still starting) becomes ready within seconds of the provider, without
/// a client asking: while it holds no key, it tries again every `--jwks-min-refresh`, not
/// once per `--jwks-refresh` (five minutes by default).
#[test]
fn a_service_started_before_its_identity_provider_is_ready_soon_after_it() {
    let idp = Idp::start(&key_set(&["jwks-a.json"]));
    idp.set(Mode::Status500);
    let s = Server::start(&["--jwks-url", &idp.url, "--issuer", ISSUER, "--jwks-min-refresh", "1"]);
    let ready = send(client().get(s.ops("/readyz")));
    assert_eq!(ready.status, 503, "no keys yet: {}", ready.body);
    idp.set(Mode::Healthy);
    let asked_before = idp.requests.load(Ordering::Relaxed);
    test_support::wait_for("/readyz to answer 200", Duration::from_secs(10), || {
        send(client().get(s.ops("/readyz"))).status == 200
    });
    assert!(idp.requests.load(Ordering::Relaxed) > asked_before, "the provider was asked again");
    assert!(timed_user_call(&s, &fresh_token("rsa-a.pem", "key-a")).0.allowed());
}
