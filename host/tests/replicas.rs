//! Several service replicas, one policy: an upload on one reaches the others through
//! `GET /bundle` (signed with the operator's key) and `--policy-url`, a bundle that fails a
//! replica's own pipeline, or that no trusted key signed, is refused there (the last good
//! policy stays), and uploads survive a restart.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::idp::{Idp, key_set};
use common::*;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const BUNDLE_TOKEN: &str = "test-bundle-token-0123456789";
const HEALTH_READ: &str = r#"{"clientid":"c1","topic":"celine/system/health/pipelines","acc":1}"#;

/// The default policy plus a rule letting viewers read service health.
fn policy_with_health() -> Value {
    let mut p: Value = serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
    p["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "id": "health-viewers", "subjects": {"groups": ["viewers"]},
        "topics": ["celine/system/health/+"], "actions": ["subscribe", "read"]}));
    p
}

struct Secrets {
    dir: tempfile::TempDir,
}

impl Secrets {
    fn new() -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
        std::fs::write(dir.path().join("bundle-token"), BUNDLE_TOKEN).unwrap();
        Secrets { dir }
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

fn keys() -> Vec<String> {
    let jwks = fixtures().join("jwks-a.json");
    vec!["--jwks-file".into(), jwks.to_str().unwrap().into(), "--issuer".into(), ISSUER.into()]
}

fn start(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// A replica taking admin uploads and publishing its live generation at `GET /bundle`,
/// signed with the operator's key.
fn source(secrets: &Secrets) -> Server {
    let mut args = keys();
    let (signing, _, _) = test_support::bundle_keys();
    args.extend(
        [
            "--admin-token-file",
            &secrets.path("admin-token"),
            "--bundle-token-file",
            &secrets.path("bundle-token"),
            "--bundle-signing-key",
            signing.to_str().unwrap(),
        ]
        .map(String::from),
    );
    start(&args)
}

/// `--bundle-public-key` with the operator's public key.
fn trusting_the_operator() -> [String; 2] {
    let (_, public, _) = test_support::bundle_keys();
    ["--bundle-public-key".into(), public.to_str().unwrap().into()]
}

fn admin_put(s: &Server, path: &str, body: &Value) -> Reply {
    send(client().put(s.ops(path)).bearer_auth(ADMIN_TOKEN).body(body.to_string()))
}

fn status(s: &Server) -> Value {
    send(client().get(s.ops("/admin/status")).bearer_auth(ADMIN_TOKEN)).json()
}

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    test_support::wait_for(what, Duration::from_secs(30), done);
}

#[test]
fn an_upload_on_one_replica_reaches_the_others_and_a_refused_bundle_leaves_the_last_good_one() {
    let secrets = Secrets::new();
    let a = source(&secrets);
    let url = a.ops("/bundle");
    let follower = |extra: &[String]| {
        let mut args = keys();
        args.extend(
            [
                "--policy-url",
                &url,
                "--policy-poll",
                "1",
                "--bundle-token-file",
                &secrets.path("bundle-token"),
                "--admin-token-file",
                &secrets.path("admin-token"),
            ]
            .map(String::from),
        );
        args.extend(trusting_the_operator());
        args.extend_from_slice(extra);
        start(&args)
    };
    let b = follower(&[]);
    // C guards itself with a case of its own: viewers never read service health.
    let strict = secrets.dir.path().join("strict.json");
    std::fs::write(
        &strict,
        json!({"cases": [{"name": "viewers do not read health",
        "subject": {"id": "u1", "type": "user", "groups": ["viewers"]}, "action": "read",
        "topic": "celine/system/health/pipelines", "expect": "deny"}]})
        .to_string(),
    )
    .unwrap();
    let c = follower(&["--tests".into(), strict.to_str().unwrap().into()]);

    // Publishing needs the bundle token; the answer has an ETag and honours If-None-Match.
    assert_eq!(send(client().get(&url)).status, 401);
    assert_eq!(send(client().get(&url).bearer_auth("wrong-token-0123456789")).status, 401);
    assert_eq!(send(client().get(b.ops("/bundle")).bearer_auth(BUNDLE_TOKEN)).status, 200, "B publishes too");
    let resp = client().get(&url).bearer_auth(BUNDLE_TOKEN).send().unwrap();
    let etag = resp.headers()["etag"].to_str().unwrap().to_string();
    let bundle: Value = resp.json().unwrap();
    assert_eq!(bundle["format"], "mqtt-policy-bundle/1");
    assert!(bundle["tests"]["cases"].as_array().unwrap().len() > 10, "A's test cases travel with it");
    let again = client().get(&url).bearer_auth(BUNDLE_TOKEN).header("If-None-Match", &etag).send().unwrap();
    assert_eq!(again.status(), 304);

    let viewer = sign("rsa-a.pem", "key-a", &viewer_claims());
    for s in [&a, &b, &c] {
        assert!(!bearer_call(s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    }
    let r = admin_put(&a, "/admin/policy", &policy_with_health());
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(bearer_call(&a, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    wait_for("B to pull the upload", || bearer_call(&b, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    let st = status(&b);
    assert_eq!(st["policy"]["source"], format!("bundle {url}"));
    assert_eq!(st["policy"]["hash"], status(&a)["policy"]["hash"]);
    assert!(st["bundle_pull"]["last_error"].is_null(), "{st}");
    assert_eq!(
        st["last_swap"]["diff"]["counts"]["read"]["gained"].as_u64().map(|n| n > 0),
        Some(true),
        "{st}"
    );

    // C refuses the bundle its own case fails, says why, and keeps deciding as before.
    wait_for("C to refuse the bundle", || status(&c)["bundle_pull"]["last_error"].is_string());
    let st = status(&c);
    let why = st["bundle_pull"]["last_error"].as_str().unwrap();
    assert!(why.contains("viewers do not read health"), "{why}");
    assert_eq!(st["rejections"], 1);
    assert!(!bearer_call(&c, "/mqtt/acl", &viewer, HEALTH_READ).allowed());

    // The next upload (the default again) reaches both, in order.
    let default: Value = serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
    assert_eq!(admin_put(&a, "/admin/policy", &default).status, 200);
    wait_for("B to follow back", || !bearer_call(&b, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    wait_for("C to take the good bundle", || status(&c)["bundle_pull"]["last_error"].is_null());
    // B's first pull adopted A's (same) policy as its source, then both uploads, in order.
    assert_eq!(status(&b)["swaps"], 3, "B went through every generation");
    assert_eq!(status(&c)["policy"]["hash"], status(&a)["policy"]["hash"]);
}

#[test]
fn a_replica_restarted_keeps_its_upload_unless_a_policy_file_is_named() {
    let secrets = Secrets::new();
    let state = tempfile::tempdir().unwrap();
    let log = secrets.dir.path().join("log");
    let mut args = keys();
    args.extend(["--admin-token-file", &secrets.path("admin-token")].map(String::from));
    let viewer = sign("rsa-a.pem", "key-a", &viewer_claims());
    let run = |extra: &[&str]| {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(extra);
        Server::start_in(state.path(), &all, &log)
    };

    let s = run(&[]);
    assert_eq!(admin_put(&s, "/admin/policy", &policy_with_health()).status, 200);
    drop(s);

    let s = run(&[]);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed(), "the upload survived the restart");
    let st = status(&s);
    let kept = state.path().join("live/policy.json");
    assert_eq!(st["policy"]["source"], format!("restored from {}", kept.display()));
    assert!(st["notes"][0].as_str().unwrap().contains("restored from the last upload"), "{st}");
    drop(s);

    let s = run(&["--policy", "policies/celine.json"]);
    assert!(!bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed(), "a named file wins");
    let st = status(&s);
    assert!(st["notes"][0].as_str().unwrap().contains("wins over the upload kept in"), "{st}");
    drop(s);
    // Naming a file once does not throw the upload away.
    let s = run(&[]);
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
}

fn user_call(s: &Server, username: &str, token: &str) -> Reply {
    json_call(
        s,
        reqwest::Method::POST,
        "/mqtt/user",
        &json!({"username": username, "password": token, "clientid": "c1"}),
    )
}

/// An ACL call as go-auth's http backend makes it: the username, no token.
fn acl_call(s: &Server, username: &str) -> Reply {
    json_call(
        s,
        reqwest::Method::POST,
        "/mqtt/acl",
        &json!({"username": username, "clientid": "c1", "topic": "celine/telemetry/meter/m1/readings", "acc": 1}),
    )
}

fn readyz(s: &Server) -> (u16, Value) {
    let r = send(client().get(s.ops("/readyz")));
    (r.status, r.json())
}

#[test]
fn replicas_share_http_backend_sessions_through_redis_and_survive_it_going_away() {
    let mut redis = test_support::redis::Redis::start();
    let url = redis.url();
    let shared = |s: &str| {
        let mut args = keys();
        args.extend(["--sessions".to_string(), s.to_string()]);
        start(&args)
    };
    let (a, b, c) = (shared(&url), shared(&url), shared(&url));
    let alone = start(&keys());
    let viewer = sign("rsa-a.pem", "key-a", &viewer_claims());

    // The user call on A; the ACL and superuser calls on B decide as one service would.
    assert!(user_call(&a, "vera", &viewer).allowed());
    for (i, r) in [&b, &c, &b, &c].into_iter().enumerate() {
        assert!(acl_call(r, "vera").allowed(), "call {i}: the other replicas find the session A recorded");
    }
    let su = json_call(&b, reqwest::Method::POST, "/mqtt/superuser", &json!({"username": "vera"}));
    assert_eq!(su.status, 403);
    assert!(su.json()["error"].as_str().unwrap().contains("not a superuser"), "{}", su.body);
    let r = acl_call(&alone, "vera");
    assert!(!r.allowed() && r.body.contains("no token and no session"), "without --sessions: {}", r.body);
    assert_eq!(
        readyz(&b).1["sessions"],
        json!({"backend": "redis", "url": url, "reachable": true, "error": null})
    );

    // Redis goes away: no new binding can be shared (the CONNECT is refused), a replica says
    // so at /readyz, and once its short-lived copy is gone it denies with the reason.
    redis.stop();
    let r = user_call(&a, "vera", &viewer);
    assert!(!r.allowed() && r.body.contains("the session could not be recorded"), "{}", r.body);
    wait_for("B's readiness to report Redis", || readyz(&b).0 == 503);
    assert_eq!(readyz(&b).1["sessions"]["reachable"], false);
    wait_for("B's copy of the session to lapse", || {
        let r = acl_call(&b, "vera");
        !r.allowed() && r.body.contains("is unreachable")
    });

    // Redis comes back (empty: no persistence here): the replicas recover by themselves.
    redis.restart();
    wait_for("B's readiness to recover", || readyz(&b).0 == 200);
    assert!(user_call(&a, "vera", &viewer).allowed());
    assert!(acl_call(&b, "vera").allowed());
}

#[test]
fn a_broker_running_the_plugin_pulls_an_upload_made_on_a_service_replica() {
    use test_support::mosquitto::{Broker, Setup};
    let secrets = Secrets::new();
    let a = source(&secrets);
    let setup = Setup::new();
    let policy = setup.file("policy.json", include_str!("../../policies/celine.json"));
    let jwks = setup.file("jwks.json", std::fs::read(fixtures().join("jwks-a.json")).unwrap());
    let token = setup.file("bundle-token", BUNDLE_TOKEN);
    let public = setup.file("operator.pub.pem", std::fs::read(test_support::bundle_keys().1).unwrap());
    let broker = Broker::start(
        setup
            .option("policy", policy.display().to_string())
            .option("jwks_file", jwks.display().to_string())
            .option("issuer", ISSUER)
            .option("policy_url", a.ops("/bundle"))
            .option("policy_poll", "1")
            .option("bundle_token_file", token.display().to_string())
            .option("bundle_public_key", public.display().to_string()),
    );
    let mark = broker.log_mark();
    let r = admin_put(&a, "/admin/policy", &policy_with_health());
    assert_eq!(r.status, 200, "{}", r.body);
    let hash = r.json()["policy"]["hash"].as_str().unwrap()[..16].to_string();
    let line = broker.wait_for_log_after(mark, &format!("policy_hash={hash}"), Duration::from_secs(30));
    assert!(line.contains("swapped in a new generation"), "{line}");
    let generation = line.split(" generation=").nth(1).and_then(|g| g.split(' ').next()).unwrap().to_string();
    // The broker's own report of what changed: viewers gained reads of service health.
    let line = broker.wait_for_log_after(
        mark,
        &format!("has them) generation={generation} "),
        Duration::from_secs(10),
    );
    assert!(line.contains("counts=read ") && line.contains("celine/system/health/"), "{line}");
}

#[test]
fn a_key_withdrawn_by_the_identity_provider_is_distrusted_by_every_replica_within_the_refresh_bound() {
    let idp = Idp::start(&key_set(&["jwks-a.json", "jwks-b.json"]));
    const REFRESH: u64 = 2;
    let replica = || {
        start(
            &["--jwks-url", &idp.url, "--issuer", ISSUER, "--jwks-refresh", &REFRESH.to_string()]
                .map(String::from),
        )
    };
    let replicas = [replica(), replica()];
    let by_a = sign("rsa-a.pem", "key-a", &viewer_claims());
    let by_b = sign("rsa-b.pem", "key-b", &viewer_claims());
    const READ: &str = r#"{"clientid":"c1","topic":"celine/telemetry/meter/m1/readings","acc":1}"#;
    for r in &replicas {
        assert!(bearer_call(r, "/mqtt/acl", &by_a, READ).allowed());
        assert!(bearer_call(r, "/mqtt/acl", &by_b, READ).allowed());
    }
    // Key a is withdrawn: cached verifications and decisions made with it end everywhere
    // within the refresh interval plus one fetch.
    idp.set_keys(&key_set(&["jwks-b.json"]));
    let withdrawn = Instant::now();
    for r in &replicas {
        wait_for("the withdrawn key to be distrusted", || {
            !bearer_call(r, "/mqtt/acl", &by_a, READ).allowed()
        });
    }
    let took = withdrawn.elapsed();
    assert!(took <= Duration::from_secs(REFRESH + 10), "took {took:?}");
    for r in &replicas {
        assert!(bearer_call(r, "/mqtt/acl", &by_b, READ).allowed(), "the other key stays trusted");
    }
}

/// A plain HTTP server for one file whose contents the test changes: a static web server or
/// object store (no ETag).
struct StaticFile {
    url: String,
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl StaticFile {
    fn start() -> StaticFile {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/bundle.json", listener.local_addr().unwrap());
        let body = std::sync::Arc::new(std::sync::Mutex::new(b"{}".to_vec()));
        let served = std::sync::Arc::clone(&body);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let _ = std::io::Read::read(&mut stream, &mut buf);
                let body = served.lock().unwrap().clone();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = std::io::Write::write_all(&mut stream, head.as_bytes());
                let _ = std::io::Write::write_all(&mut stream, &body);
            }
        });
        StaticFile { url, body }
    }

    fn serve(&self, bytes: Vec<u8>) {
        *self.body.lock().unwrap() = bytes;
    }
}

/// `mqtt-policy bundle` with `args`; panics with its output if it fails.
fn bundle_cli(args: &[&str]) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .current_dir(test_support::repository())
        .arg("bundle")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "mqtt-policy bundle {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn pulls(s: &Server) -> (u64, u64) {
    let p = status(s)["bundle_pull"].clone();
    (p["pulls"].as_u64().unwrap_or(0), p["results"]["untrusted"].as_u64().unwrap_or(0))
}

#[test]
fn unsigned_wrongly_signed_and_tampered_bundles_are_refused_and_a_signed_one_goes_live_within_a_poll() {
    let secrets = Secrets::new();
    let dir = secrets.dir.path();
    // The operator's key and another, made as the documentation says.
    let (operator, operator_pub) = test_support::openssl_ed25519(dir, "operator");
    let (stranger, _) = test_support::openssl_ed25519(dir, "stranger");
    let policy = dir.join("health.json");
    std::fs::write(&policy, policy_with_health().to_string()).unwrap();
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let p = policy.to_str().unwrap();
    bundle_cli(&["--policy", p, "-o", &path("unsigned.json")]);
    bundle_cli(&[
        "--sign",
        operator.to_str().unwrap(),
        "--from",
        &path("unsigned.json"),
        "-o",
        &path("signed.json"),
    ]);
    bundle_cli(&["--policy", p, "--sign", stranger.to_str().unwrap(), "-o", &path("stranger.json")]);
    // Tampered in transit: every viewer reads everything, the policy's hash made to match;
    // the signature still covers the old hash.
    let mut tampered: Value = serde_json::from_slice(&std::fs::read(path("signed.json")).unwrap()).unwrap();
    let mut wide = policy_with_health();
    wide["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "subjects": {"groups": ["viewers"]}, "topics": ["#"], "actions": "*"}));
    let wide = wide.to_string();
    tampered["policy_sha256"] = json!(sha256_hex(wide.as_bytes()));
    tampered["policy"] = json!(wide);

    let file = StaticFile::start();
    let log = dir.join("replica.log");
    let mut args = keys();
    args.extend(
        ["--policy-url", &file.url, "--policy-poll", "1", "--admin-token-file", &secrets.path("admin-token")]
            .map(String::from),
    );
    args.extend(["--bundle-public-key".to_string(), operator_pub.to_str().unwrap().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let replica = Server::start_logged(&args, &log);
    let hash = status(&replica)["policy"]["hash"].clone();
    let viewer = sign("rsa-a.pem", "key-a", &viewer_claims());

    let cases = [
        ("unsigned", std::fs::read(path("unsigned.json")).unwrap(), "is not signed"),
        ("signed by another key", std::fs::read(path("stranger.json")).unwrap(), "not by a trusted key"),
        ("tampered", tampered.to_string().into_bytes(), "not by a trusted key"),
    ];
    for (n, (what, bytes, why)) in cases.into_iter().enumerate() {
        file.serve(bytes);
        wait_for(&format!("the {what} bundle's refusal"), || pulls(&replica).1 > n as u64);
        let st = status(&replica);
        let error = st["bundle_pull"]["last_error"].as_str().unwrap_or_default().to_string();
        assert!(error.contains(why), "{what}: {error}");
        assert_eq!(st["policy"]["hash"], hash, "{what}: the live policy changed");
        assert!(!bearer_call(&replica, "/mqtt/acl", &viewer, HEALTH_READ).allowed(), "{what}");
    }
    let metrics = send(client().get(replica.ops("/metrics"))).body;
    assert!(metrics.contains("mqtt_policy_bundle_pulls_total{result=\"untrusted\"} 3"), "{metrics}");

    // Signed by the operator's own key, but its policy lets viewers read everyone's nudges,
    // which an invariant the policy states forbids: the gate every swap passes refuses it.
    // (`mqtt-policy bundle` would not pack it; `--sign --from` signs what it is given.)
    let mut leaky: Value = serde_json::from_slice(&std::fs::read(path("unsigned.json")).unwrap()).unwrap();
    let mut breaking = policy_with_health();
    breaking["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "subjects": {"groups": ["viewers"]}, "topics": ["celine/nudges/#"], "actions": ["read"]}));
    let breaking = breaking.to_string();
    leaky["policy_sha256"] = json!(sha256_hex(breaking.as_bytes()));
    leaky["policy"] = json!(breaking);
    std::fs::write(path("leaky-unsigned.json"), leaky.to_string()).unwrap();
    bundle_cli(&[
        "--sign",
        operator.to_str().unwrap(),
        "--from",
        &path("leaky-unsigned.json"),
        "-o",
        &path("leaky.json"),
    ]);
    file.serve(std::fs::read(path("leaky.json")).unwrap());
    wait_for("the refusal of the bundle breaking an invariant", || {
        status(&replica)["bundle_pull"]["results"]["rejected"].as_u64().unwrap_or(0) > 0
    });
    let st = status(&replica);
    let error = st["bundle_pull"]["last_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("invariant 'nudges-are-private' does not hold"), "{error}");
    assert_eq!(st["policy"]["hash"], hash, "the live policy changed");
    let nudge = r#"{"clientid":"c1","topic":"celine/nudges/someone-else/n1","acc":1}"#;
    assert!(!bearer_call(&replica, "/mqtt/acl", &viewer, nudge).allowed(), "another user's nudge");
    // (Log lines reach the file through the service's log queue, a moment later.)
    let refusals =
        || std::fs::read_to_string(&log).unwrap().matches("a pulled policy bundle was refused").count();
    wait_for("three refusal lines", || refusals() >= 3);
    assert_eq!(refusals(), 3, "one line per refused bundle");

    // The operator's signed bundle: taken by the next pull.
    let before = pulls(&replica).0;
    file.serve(std::fs::read(path("signed.json")).unwrap());
    wait_for("the signed bundle", || bearer_call(&replica, "/mqtt/acl", &viewer, HEALTH_READ).allowed());
    let after = pulls(&replica).0;
    assert!(after <= before + 2, "it took {} pulls", after - before);
    assert!(status(&replica)["bundle_pull"]["last_error"].is_null());
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_puller_without_a_public_key_refuses_to_start_unless_told_to_take_unsigned_bundles() {
    let state = tempfile::tempdir().unwrap();
    let jwks = fixtures().join("jwks-a.json");
    let file = ["--jwks-file", jwks.to_str().unwrap()];
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
            .current_dir(test_support::repository())
            .args(["serve", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--state-dir"])
            .arg(state.path())
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[&file[..], &["--policy-url", "http://127.0.0.1:9/bundle.json"]].concat());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--policy-url needs --bundle-public-key"), "{err}");
    let (_, public, _) = test_support::bundle_keys();
    let out =
        run(&[&file[..], &["--bundle-public-key", public.to_str().unwrap(), "--insecure-unsigned-bundles"]]
            .concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot be used with"), "{err}");
    let out = run(&["--jwks-url", "http://keys.example.net/jwks.json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("plain http://"), "{err}");
}

#[test]
fn a_broker_refuses_unsigned_wrongly_signed_and_tampered_bundles_and_takes_a_signed_one() {
    use test_support::mosquitto::{Broker, Setup};
    let dir = tempfile::tempdir().unwrap();
    let (operator, _, _) = test_support::bundle_keys();
    let (stranger, _) = test_support::openssl_ed25519(dir.path(), "stranger");
    let policy = dir.path().join("health.json");
    std::fs::write(&policy, policy_with_health().to_string()).unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let p = policy.to_str().unwrap();
    bundle_cli(&["--policy", p, "-o", &path("unsigned.json")]);
    bundle_cli(&["--policy", p, "--sign", stranger.to_str().unwrap(), "-o", &path("stranger.json")]);
    bundle_cli(&["--policy", p, "--sign", operator.to_str().unwrap(), "-o", &path("signed.json")]);
    let mut tampered: Value = serde_json::from_slice(&std::fs::read(path("signed.json")).unwrap()).unwrap();
    let wide = policy_with_health().to_string().replace("celine/system/health/+", "#");
    tampered["policy_sha256"] = json!(sha256_hex(wide.as_bytes()));
    tampered["policy"] = json!(wide);

    let file = StaticFile::start();
    let setup = Setup::new();
    let default = setup.file("policy.json", include_str!("../../policies/celine.json"));
    let jwks = setup.file("jwks.json", std::fs::read(fixtures().join("jwks-a.json")).unwrap());
    let public = setup.file("operator.pub.pem", std::fs::read(test_support::bundle_keys().1).unwrap());
    let metrics = test_support::free_port();
    let broker = Broker::start(
        setup
            .option("policy", default.display().to_string())
            .option("jwks_file", jwks.display().to_string())
            .option("issuer", ISSUER)
            .option("policy_url", &file.url)
            .option("policy_poll", "1")
            .option("bundle_public_key", public.display().to_string())
            .option("metrics_listen", format!("127.0.0.1:{metrics}")),
    );
    let scrape = || send(client().get(format!("http://127.0.0.1:{metrics}/metrics"))).body;
    for (n, (what, bytes, why)) in [
        ("unsigned", std::fs::read(path("unsigned.json")).unwrap(), "is not signed"),
        ("signed by another key", std::fs::read(path("stranger.json")).unwrap(), "not by a trusted key"),
        ("tampered", tampered.to_string().into_bytes(), "not by a trusted key"),
    ]
    .into_iter()
    .enumerate()
    {
        let mark = broker.log_mark();
        file.serve(bytes);
        let line =
            broker.wait_for_log_after(mark, "a pulled policy bundle was refused", Duration::from_secs(30));
        assert!(line.contains(why), "{what}: {line}");
        let counted = format!("mqtt_policy_bundle_pulls_total{{result=\"untrusted\"}} {}", n + 1);
        wait_for(&format!("the {what} bundle counted"), || scrape().contains(&counted));
    }
    assert!(!broker.log().contains("swapped in a new generation"), "a refused bundle went live");
    let mark = broker.log_mark();
    file.serve(std::fs::read(path("signed.json")).unwrap());
    let line = broker.wait_for_log_after(mark, "swapped in a new generation", Duration::from_secs(30));
    assert!(line.contains(&format!("bundle {}", file.url)), "{line}");
}
