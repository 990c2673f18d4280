//! Hot swap on a running server: new policies and modules go live without a restart and
//! without a wrong or failed answer; bad candidates never replace a good policy.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::*;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const TELEMETRY_READ: &str = r#"{"clientid":"c1","topic":"celine/telemetry/meter/m1/readings","acc":1}"#;
const HEALTH_READ: &str = r#"{"clientid":"c1","topic":"celine/system/health/pipelines","acc":1}"#;

fn module(name: &str) -> Vec<u8> {
    std::fs::read(built_module(name)).unwrap()
}

/// A dev-mode server with the admin endpoints on, plus extra arguments.
fn admin_server(extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut args = vec!["--dev", "--admin-token-file", token_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    (Server::start(&args), dir)
}

fn admin(s: &Server, method: reqwest::Method, path: &str, body: Vec<u8>) -> Reply {
    send(client().request(method, s.ops(path)).bearer_auth(ADMIN_TOKEN).body(body))
}

fn status(s: &Server) -> Value {
    admin(s, reqwest::Method::GET, "/admin/status", vec![]).json()
}

fn default_policy() -> Value {
    serde_json::from_str(include_str!("../../policies/celine.json")).unwrap()
}

/// The default policy plus a rule letting viewers read service health.
fn policy_with_health() -> Value {
    let mut p = default_policy();
    p["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "id": "health-viewers", "subjects": {"groups": ["viewers"]},
        "topics": ["celine/system/health/+"], "actions": ["subscribe", "read"]}));
    p["celine"]["mqtt"]["limits"][0]["max_subscriptions"] = json!(50);
    p
}

#[test]
fn admin_endpoints_need_the_token() {
    let (s, _dir) = admin_server(&[]);
    assert_eq!(send(client().get(s.ops("/admin/status"))).status, 401);
    assert_eq!(send(client().get(s.ops("/admin/status")).bearer_auth("wrong-token-0123456789")).status, 401);
    assert_eq!(admin(&s, reqwest::Method::GET, "/admin/status", vec![]).status, 200);
    // Without a configured token the admin endpoints do not exist.
    let plain = Server::start(&["--dev"]);
    assert_eq!(send(client().get(plain.ops("/admin/status")).bearer_auth(ADMIN_TOKEN)).status, 404);
}

#[test]
fn the_broker_facing_listener_serves_only_go_auth_and_healthz() {
    let (s, _dir) = admin_server(&[]);
    assert_ne!(s.ops_url, s.url);
    // What a broker (or anyone who can reach go-auth's address) may call.
    assert_eq!(send(client().get(s.url("/healthz"))).status, 200);
    let token = dev_token(&s, &["--sub", "alice", "--groups", "viewers"]);
    let acl = send(client().post(s.url("/mqtt/acl")).bearer_auth(&token).body(TELEMETRY_READ));
    assert_eq!(acl.status, 200, "{}", acl.body);
    for path in ["/admin/status", "/metrics", "/readyz"] {
        let r = send(client().get(s.url(path)).bearer_auth(ADMIN_TOKEN));
        assert_eq!(r.status, 404, "{path} on the broker-facing listener: {}", r.body);
    }
    // The operations listener has them, and not go-auth's endpoints.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(send(client().get(s.ops(path))).status, 200, "{path}");
    }
    assert_eq!(admin(&s, reqwest::Method::GET, "/admin/status", vec![]).status, 200);
    assert_eq!(send(client().get(s.ops("/admin/status"))).status, 401);
    let on_ops = send(client().post(s.ops("/mqtt/acl")).bearer_auth(&token).body(TELEMETRY_READ));
    assert_eq!(on_ops.status, 404);
}

#[test]
fn rejected_candidates_leave_the_live_policy_untouched() {
    let (s, _dir) = admin_server(&[]);
    let viewer = dev_token(&s, &["--sub", "vera", "--groups", "viewers"]);
    let before = status(&s);
    let core_module = {
        let p = built_modules().join("../wasm/wasm32-unknown-unknown/wasm-release/policy_wasm.wasm");
        std::fs::read(p).unwrap()
    };
    let mut typo = default_policy();
    typo["celine"]["mqtt"]["acl"]["rules"][0]["subject"] = json!({"groups": ["viewers"]});
    let mut without_telemetry = default_policy();
    without_telemetry["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().remove(3);
    let mut viewer_nudges = default_policy();
    viewer_nudges["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "subjects": {"groups": ["viewers"]}, "topics": ["celine/nudges/#"], "actions": ["read"]}));
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("not wasm", "/admin/module", b"definitely not wasm".to_vec(), "not a valid WebAssembly component"),
        ("a core module, not a component", "/admin/module", core_module, "not a valid WebAssembly component"),
        // A valid component (the empty one: magic, component version 0x0d, layer 1) that
        // exports nothing.
        (
            "a component of another world",
            "/admin/module",
            vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00],
            "does not implement the policy-module world",
        ),
        (
            "a policy with a typo",
            "/admin/policy",
            typo.to_string().into_bytes(),
            "celine.mqtt.acl.rules[0].subject: unknown field",
        ),
        ("a policy that is not JSON", "/admin/policy", b"{".to_vec(), "invalid JSON"),
        (
            "a policy failing its test cases",
            "/admin/policy",
            without_telemetry.to_string().into_bytes(),
            "policy test cases fail",
        ),
        (
            "a policy breaking an invariant it states",
            "/admin/policy",
            viewer_nudges.to_string().into_bytes(),
            "invariant 'nudges-are-private' does not hold",
        ),
    ];
    for (name, path, body, why) in cases {
        let r = admin(&s, reqwest::Method::PUT, path, body);
        assert_eq!(r.status, 422, "{name}: {}", r.body);
        let reason = r.json()["rejected"]["reason"].as_str().unwrap().to_string();
        assert!(reason.contains(why), "{name}: {reason}");
        let now = status(&s);
        assert_eq!(now["generation"], before["generation"], "{name}: the live generation changed");
        assert_eq!(now["last_rejected"]["reason"], json!(reason), "{name}");
        assert!(bearer_call(&s, "/mqtt/acl", &viewer, TELEMETRY_READ).allowed(), "{name}: decisions changed");
    }
    // A module that traps while loading the policy: go live with the faulty module (it
    // decides normally), then propose a policy that makes it trap in load().
    let r = admin(&s, reqwest::Method::PUT, "/admin/module", module("faulty.wasm"));
    assert_eq!(r.status, 200, "{}", r.body);
    let live = status(&s);
    let mut trap = default_policy();
    trap["celine"]["mqtt"]["acl"]["rules"][0]["description"] = json!("trap-on-load");
    let r = admin(&s, reqwest::Method::PUT, "/admin/policy", trap.to_string().into_bytes());
    assert_eq!(r.status, 422, "{}", r.body);
    assert!(r.json()["rejected"]["reason"].as_str().unwrap().contains("trapped"), "{}", r.body);
    assert_eq!(status(&s)["generation"], live["generation"]);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, TELEMETRY_READ).allowed());

    // A module that traps while the gate decides the candidate's invariants (the faulty module
    // panics on the topic `fault/panic`, which the invariant's witnesses ask about): refused,
    // never taken for "no counterexample".
    let mut probed = default_policy();
    probed["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "subjects": {"groups": ["viewers"]}, "topics": ["fault/#"], "actions": ["publish"]}));
    probed["celine"]["mqtt"]["invariants"].as_array_mut().unwrap().push(json!({
        "id": "fault-probe", "only": [{"groups": ["admins"]}, {"scopes": ["mqtt.admin"]}],
        "actions": ["publish"], "topics": ["fault/panic"]}));
    let r = admin(&s, reqwest::Method::PUT, "/admin/policy", probed.to_string().into_bytes());
    assert_eq!(r.status, 422, "{}", r.body);
    let reason = r.json()["rejected"]["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("the module faulted while deciding the policy's invariants"), "{reason}");
    assert_eq!(status(&s)["generation"], live["generation"]);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, TELEMETRY_READ).allowed());
}

#[test]
fn a_policy_swap_and_a_module_swap_change_decisions_without_a_restart() {
    let (s, _dir) = admin_server(&[]);
    let viewer = dev_token(&s, &["--sub", "vera", "--groups", "viewers"]);
    let meters = dev_token(&s, &["--client-id", "svc-dashboards", "--scopes", "telemetry.meter.read"]);
    assert!(!bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    let r = admin(&s, reqwest::Method::PUT, "/admin/policy", policy_with_health().to_string().into_bytes());
    assert_eq!(r.status, 200, "{}", r.body);
    let rules = policy_with_health()["celine"]["mqtt"]["acl"]["rules"].as_array().unwrap().len();
    assert_eq!(r.json()["policy"]["rules"], rules);
    assert_eq!(r.json()["policy"]["source"], "uploaded");
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed(), "the new rule is live");

    // A module that changes the logic: scopes <service>.<resource>.read grant celine/<service>/<resource>/...
    assert!(!bearer_call(&s, "/mqtt/acl", &meters, TELEMETRY_READ).allowed());
    let r = admin(&s, reqwest::Method::PUT, "/admin/module", module("scope-convention.wasm"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["module"]["version"].as_str().unwrap().starts_with("scope-convention"), "{}", r.body);
    assert!(
        bearer_call(&s, "/mqtt/acl", &meters, TELEMETRY_READ).allowed(),
        "granted by the scope convention"
    );
    let publish = r#"{"clientid":"c1","topic":"celine/telemetry/meter/m1/readings","acc":2}"#;
    assert!(!bearer_call(&s, "/mqtt/acl", &meters, publish).allowed(), "read scope, not write");
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed(), "the swapped policy stays live");
    let st = status(&s);
    assert_eq!(st["swaps"], 2);
    assert!(st["last_rejected"].is_null());
    // The same module again changes nothing: same generation, no swap, caches kept.
    let r = admin(&s, reqwest::Method::PUT, "/admin/module", module("scope-convention.wasm"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["generation"], st["generation"]);
    assert_eq!(status(&s)["swaps"], 2);
}

#[test]
fn a_dry_run_reports_the_diff_without_swapping_and_every_swap_reports_its_diff() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, ADMIN_TOKEN).unwrap();
    let log = dir.path().join("log");
    let s = Server::start_logged(&["--dev", "--admin-token-file", token_file.to_str().unwrap()], &log);
    let viewer = dev_token(&s, &["--sub", "vera", "--groups", "viewers"]);
    // A go-auth session: vera's username bound to her token (a live identity of the service).
    let user =
        form_call(&s, "/mqtt/user", &[("username", "vera"), ("password", &viewer), ("clientid", "dash")]);
    assert!(user.allowed(), "{}", user.body);
    let before = status(&s);
    let candidate = policy_with_health().to_string().into_bytes();

    let r = admin(&s, reqwest::Method::PUT, "/admin/policy?dry_run=true", candidate.clone());
    assert_eq!(r.status, 200, "{}", r.body);
    let dry = r.json();
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["tested"], true, "the candidate went through the policy test cases");
    let diff = &dry["diff"];
    assert!(diff["counts"]["read"]["gained"].as_u64().unwrap() > 0, "{dry}");
    assert!(diff["counts"]["subscribe"]["gained"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(diff["counts"]["publish"], Value::Null, "nothing about publishing changes: {dry}");
    assert_eq!(
        diff["limits"],
        json!(["limits entry 'subscriptions-per-connection' changed: max_subscriptions 100 -> 50"]),
        "{dry}"
    );
    let first = &diff["first"][0];
    assert_eq!(first["old"]["allow"], false);
    assert_eq!(first["new"]["rule"], "health-viewers", "{dry}");
    assert!(first["request"]["subject"]["groups"].as_array().unwrap().contains(&json!("viewers")));
    // Whom it reaches: the one session, which gains health reads, as vera would ask them.
    let reached = &dry["identities"];
    assert_eq!((reached["identities"].as_u64(), reached["affected"].as_u64()), (Some(1), Some(1)), "{dry}");
    assert_eq!((reached["gained"].as_u64(), reached["lost"].as_u64()), (Some(1), Some(0)), "{dry}");
    let vera = &reached["first"][0];
    assert_eq!(vera["identity"], "vera");
    assert_eq!(vera["gained"][0]["username"], "vera");
    assert_eq!(vera["gained"][0]["subject"]["id"], "vera");
    assert!(reached["by_change"][0]["new"].as_str().unwrap().contains("health-viewers"), "{dry}");
    // Nothing went live.
    let after = status(&s);
    assert_eq!(
        (after["generation"].clone(), after["swaps"].clone()),
        (before["generation"].clone(), json!(0))
    );
    assert!(!bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());

    // A candidate that would be rejected: 422, and not counted as a rejection.
    let r = admin(&s, reqwest::Method::PUT, "/admin/policy?dry_run=true", b"{".to_vec());
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["dry_run"], true);
    assert!(r.json()["rejected"]["reason"].as_str().unwrap().contains("invalid JSON"), "{}", r.body);
    assert_eq!(status(&s)["rejections"], 0);
    let r = admin(&s, reqwest::Method::PUT, "/admin/policy?dry_run=maybe", candidate.clone());
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("dry_run=true|false"), "{}", r.body);

    // The swap itself reports the same diff, in its answer, the status and the log.
    let r = admin(&s, reqwest::Method::PUT, "/admin/policy", candidate);
    assert_eq!(r.status, 200, "{}", r.body);
    let last = &r.json()["last_swap"];
    assert_eq!(last["previous"], before["generation"]);
    assert_eq!(last["candidate"], "policy (uploaded)");
    assert_eq!(last["diff"]["counts"], diff["counts"]);
    assert_eq!(last["diff"]["first"], diff["first"]);
    assert_eq!(last["identities"]["affected"], 1, "{last}");
    assert_eq!(last["identities"]["first"][0]["identity"], "vera");
    assert_eq!(status(&s)["last_swap"], *last);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    wait_for("the diff in the log", || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("what the new generation changes") && text.contains("celine/system/health/")
    });
    wait_for("whom it reaches in the log", || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("which live identities the new generation's changes reach")
            && text.contains("affected=1")
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("limits changed: limits entry 'subscriptions-per-connection' changed"), "{text}");
    assert!(text.contains("the policy's limits are not applied to go-auth requests"), "{text}");
    assert!(!text.contains(&viewer), "never log a token");
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_changed_policy_file_or_sighup_reloads_and_a_half_written_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policy.json");
    std::fs::write(&file, default_policy().to_string()).unwrap();
    let tests = test_support::repository().join("policies/tests");
    let (s, _admin_dir) =
        admin_server(&["--policy", file.to_str().unwrap(), "--tests", tests.to_str().unwrap()]);
    let viewer = dev_token(&s, &["--sub", "vera", "--groups", "viewers"]);
    let g0 = status(&s)["generation"].as_u64().unwrap();
    assert!(!bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());

    // An edit on disk goes live by itself.
    std::fs::write(&file, policy_with_health().to_string()).unwrap();
    wait_for("the edited file to go live", || status(&s)["generation"].as_u64().unwrap() > g0);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    let g1 = status(&s)["generation"].as_u64().unwrap();

    // A file caught half-written (an editor or a copy still writing it) is refused; the last
    // good policy keeps answering; the finished file then goes live by itself.
    let whole = default_policy().to_string();
    let (first, rest) = whole.split_at(whole.len() / 2);
    std::fs::write(&file, first).unwrap();
    wait_for("the half-written file to be rejected", || !status(&s)["last_rejected"].is_null());
    assert_eq!(status(&s)["generation"].as_u64().unwrap(), g1);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(rest.as_bytes()).unwrap();
    wait_for("the finished file to go live", || status(&s)["generation"].as_u64().unwrap() > g1);
    assert!(!bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    let g2 = status(&s)["generation"].as_u64().unwrap();

    // SIGHUP re-reads the files (here: the health policy again, written as a new file).
    let replacement = dir.path().join("policy.json.new");
    std::fs::write(&replacement, policy_with_health().to_string()).unwrap();
    std::fs::rename(&replacement, &file).unwrap();
    let hup = Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    wait_for("the reload", || status(&s)["generation"].as_u64().unwrap() > g2);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
}

/// Several clients keep asking while the policy and the module are swapped again and again:
/// not one request fails, and every answer is one that the old or the new generation gives.
#[test]
fn swaps_under_load_never_fail_a_request() {
    let (s, _dir) = admin_server(&[]);
    let viewer = dev_token(&s, &["--sub", "vera", "--groups", "viewers"]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (url, token, stop) = (s.url("/mqtt/acl"), viewer.clone(), std::sync::Arc::clone(&stop));
            std::thread::spawn(move || {
                let http = reqwest::blocking::Client::new();
                let (mut n, mut health_allowed) = (0u32, 0u32);
                // Bounded: at most 5,000 requests per worker.
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 5_000 {
                    for (body, stable) in [(TELEMETRY_READ, true), (HEALTH_READ, false)] {
                        let r =
                            http.post(&url).bearer_auth(&token).body(body).send().expect("a request failed");
                        let status = r.status().as_u16();
                        let ok = r.json::<Value>().expect("a JSON answer")["ok"] == true;
                        assert!(status == 200 || status == 403, "status {status}");
                        assert_eq!(ok, status == 200);
                        if stable {
                            assert!(ok, "telemetry is allowed by every generation");
                        } else if ok {
                            health_allowed += 1;
                        }
                        n += 1;
                    }
                }
                (n, health_allowed)
            })
        })
        .collect();
    let policies = [policy_with_health().to_string(), default_policy().to_string()];
    let modules = [module("scope-convention.wasm"), module("policy.wasm")];
    for round in 0..6 {
        let r = admin(&s, reqwest::Method::PUT, "/admin/policy", policies[round % 2].clone().into_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
        let r = admin(&s, reqwest::Method::PUT, "/admin/module", modules[round % 2].clone());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        let (n, _) = w.join().expect("a worker saw a wrong or failed answer");
        total += n;
    }
    assert!(total > 0);
    assert_eq!(status(&s)["swaps"], 12);
    // The last policy swapped in has no health rule: the answer follows it.
    assert!(!bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
}
