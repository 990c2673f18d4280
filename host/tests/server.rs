//! `mqtt-policy serve` as mosquitto-go-auth sees it: the real binary on a free loopback port,
//! requests shaped exactly as go-auth sends them (docs/go-auth-protocol.md), and the
//! JWT failure matrix. Each test starts its own server and stops it (by PID) when done.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

mod common;
use common::*;

#[test]
fn http_backend_json_mode_binds_a_username_that_names_the_token() {
    let s = Server::rsa(&[]);
    let token = sign("rsa-a.pem", "key-a", &viewer_claims());
    // The viewer's token: sub "u-viewer", preferred_username "vera". ACL calls, as go-auth
    // sends them, carry the username and client id and no token.
    for method in [reqwest::Method::POST, reqwest::Method::GET, reqwest::Method::PUT] {
        let clientid = format!("dash-{method}");
        let user = json_call(
            &s,
            method.clone(),
            "/mqtt/user",
            &json!({"username": "vera", "password": token, "clientid": clientid}),
        );
        assert!(user.allowed(), "{method} user: {}", user.body);
        let acl = |topic: &str, acc: u32| {
            json_call(
                &s,
                method.clone(),
                "/mqtt/acl",
                &json!({"acc": acc, "clientid": clientid, "topic": topic, "username": "vera"}),
            )
        };
        assert!(acl("celine/telemetry/meter/meter-001/readings", 4).allowed(), "{method} subscribe");
        assert!(acl("celine/telemetry/meter/meter-001/readings", 1).allowed(), "{method} read");
        let deny = acl("celine/telemetry/meter/meter-001/readings", 2);
        assert_eq!((deny.status, deny.json()["ok"].clone()), (403, json!(false)));
        assert!(deny.json()["error"].as_str().unwrap().contains("missing capability 'publish'"));
        assert!(!acl("celine/system/alerts/#", 4).allowed(), "{method} deny rule by overlap");
        let su = json_call(&s, method.clone(), "/mqtt/superuser", &json!({"username": "vera"}));
        assert_eq!(su.status, 403, "a viewer is no superuser: {}", su.body);
    }
    // The subject id names the subject too.
    let by_id = json_call(
        &s,
        reqwest::Method::POST,
        "/mqtt/user",
        &json!({"username": "u-viewer", "password": token, "clientid": "by-id"}),
    );
    assert!(by_id.allowed(), "{}", by_id.body);
}

#[test]
fn a_username_that_does_not_name_the_token_is_refused_and_says_what_to_use() {
    let s = Server::rsa(&[]);
    let token = sign("rsa-a.pem", "key-a", &viewer_claims());
    // The seed's client sends an empty username (go-auth itself refuses it before asking
    // us, see go-auth-protocol.md); anything that is not the token's subject is refused too.
    for username in ["", "adam", "u-admin"] {
        let r =
            form_call(&s, "/mqtt/user", &[("username", username), ("password", &token), ("clientid", "c")]);
        assert_eq!(r.status, 403, "{username:?}: {}", r.body);
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains("connect with the username 'vera' or 'u-viewer'"), "{username:?}: {err}");
    }
    // No session came of it.
    let acl = form_call(
        &s,
        "/mqtt/acl",
        &[("acc", "1"), ("clientid", "c"), ("topic", "celine/telemetry/m/1/readings"), ("username", "adam")],
    );
    assert!(acl.json()["error"].as_str().unwrap().contains("no session"), "{}", acl.body);
}

#[test]
fn http_backend_form_mode_sessions_belong_to_the_identity() {
    let s = Server::rsa(&[]);
    let twin = sign("rsa-a.pem", "key-a", &service_claims());
    // A service is named by its client id (or its preferred_username, service-account-...).
    assert!(
        form_call(
            &s,
            "/mqtt/user",
            &[("username", "svc-digital-twin"), ("password", &twin), ("clientid", "twin-1")]
        )
        .allowed()
    );
    let acl = |username: &str, clientid: &str, topic: &str, acc: &str| {
        form_call(
            &s,
            "/mqtt/acl",
            &[("acc", acc), ("clientid", clientid), ("topic", topic), ("username", username)],
        )
    };
    assert!(acl("svc-digital-twin", "twin-1", "celine/digital-twin/events/pump/pump-001", "2").allowed());
    assert!(!acl("svc-digital-twin", "twin-1", "celine/digital-twin/commands/pump/pump-001", "2").allowed());
    // Another connection of the same identity: its session is the identity's.
    assert!(acl("svc-digital-twin", "twin-2", "celine/digital-twin/events/pump/pump-001", "2").allowed());
    // A username nobody connected with has no session: denied, and it says why.
    let other = acl("svc-pipelines", "twin-1", "celine/digital-twin/events/pump/pump-001", "2");
    assert_eq!(other.status, 403);
    assert!(other.json()["error"].as_str().unwrap().contains("no session"), "{}", other.body);
    // A failed user call neither creates nor replaces a binding.
    let bad = form_call(
        &s,
        "/mqtt/user",
        &[("username", "svc-digital-twin"), ("password", "not-a-token"), ("clientid", "twin-1")],
    );
    assert_eq!(bad.status, 403);
    assert!(
        acl("svc-digital-twin", "twin-1", "celine/digital-twin/events/pump/pump-001", "2").allowed(),
        "the old binding stays"
    );
    // The query string works too (a GET with parameters in the URL).
    let q = send(client().get(s.url(
        "/mqtt/acl?username=svc-digital-twin&clientid=twin-1&topic=celine/digital-twin/state/p/1&acc=2",
    )));
    assert!(q.allowed(), "{}", q.body);
}

#[test]
fn with_go_auths_cache_no_client_is_decided_as_someone_else() {
    // go-auth's cache answers a repeated CONNECT without asking us (no user call) and keys ACL
    // answers by (username, topic, clientid, acc): what the service sees is below.
    let s = Server::rsa(&[]);
    let admin = sign("rsa-a.pem", "key-a", &admin_claims()); // sub u-admin, group admins
    let viewer = sign("rsa-a.pem", "key-a", &viewer_claims()); // preferred_username vera
    let user = |username: &str, token: &str, clientid: &str| {
        form_call(&s, "/mqtt/user", &[("username", username), ("password", token), ("clientid", clientid)])
    };
    let acl = |username: &str, clientid: &str, topic: &str, acc: &str| {
        form_call(
            &s,
            "/mqtt/acl",
            &[("acc", acc), ("clientid", clientid), ("topic", topic), ("username", username)],
        )
    };
    // Measured failure 1: the viewer connected once; the admin connects as "console"; the
    // viewer reconnects with the admin's client id, its CONNECT answered from go-auth's cache.
    assert!(user("vera", &viewer, "vera-1").allowed());
    assert!(user("u-admin", &admin, "console").allowed());
    let as_console = acl("vera", "console", "celine/system/alerts/critical", "4");
    assert!(!as_console.allowed(), "the viewer was decided as the admin: {}", as_console.body);
    assert!(acl("u-admin", "console", "celine/system/alerts/critical", "4").allowed(), "the admin still is");
    // Measured failure 2: a second connection of the same identity, its CONNECT cached.
    assert!(acl("vera", "vera-phone", "celine/telemetry/meter/m1/readings", "4").allowed());
    // Borrowing a name takes the token: the viewer's token cannot connect as the admin.
    assert!(!user("u-admin", &viewer, "vera-2").allowed());
    // The superuser call carries only the username; the session proves who it is.
    assert!(form_call(&s, "/mqtt/superuser", &[("username", "u-admin")]).allowed());
    assert!(!form_call(&s, "/mqtt/superuser", &[("username", "vera")]).allowed());
    // `${username}` is the proven name, never a borrowed one.
    assert!(acl("u-admin", "console", "any/topic", "2").allowed(), "admins-all");
}

#[test]
fn the_newest_token_of_an_identity_decides_for_its_username_at_once() {
    // The viewer reconnects with a refreshed token that lost the viewers group: from that user
    // call on, every ACL call for the username is decided with the new token, on whichever
    // worker thread it lands (each keeps near caches of sessions and decisions).
    let s = Server::rsa(&[]);
    let before = sign("rsa-a.pem", "key-a", &viewer_claims());
    let mut narrower = viewer_claims();
    narrower["groups"] = json!([]);
    narrower["jti"] = json!("refreshed");
    let after = sign("rsa-a.pem", "key-a", &narrower);
    let user = |token: &str| {
        form_call(&s, "/mqtt/user", &[("username", "vera"), ("password", token), ("clientid", "v")])
    };
    let read = || {
        form_call(
            &s,
            "/mqtt/acl",
            &[
                ("acc", "1"),
                ("clientid", "v"),
                ("topic", "celine/telemetry/meter/m1/readings"),
                ("username", "vera"),
            ],
        )
    };
    assert!(user(&before).allowed());
    for _ in 0..20 {
        assert!(read().allowed(), "the viewer reads telemetry");
    }
    assert!(user(&after).allowed());
    for i in 0..20 {
        let r = read();
        assert!(!r.allowed(), "call {i} after the rebind was decided with the old token: {}", r.body);
    }
    // And back: the newest binding again decides.
    assert!(user(&before).allowed());
    assert!(read().allowed());
}

#[test]
fn an_identity_allowed_at_once_is_allowed_only_until_its_token_expires() {
    // Reads on topics never asked before are allowed by the viewer's prepared identity (each
    // worker thread keeps its own), not by a cached decision: that must end with the token.
    let s = Server::rsa(&["--leeway", "0"]);
    let exp = now() + 4;
    let mut claims = viewer_claims();
    claims["exp"] = json!(exp);
    let token = sign("rsa-a.pem", "key-a", &claims);
    let read = |i: u64| {
        let topic = format!("celine/telemetry/meter/m{i}/readings");
        bearer_call(&s, "/mqtt/acl", &token, &json!({"acc": 1, "clientid": "v", "topic": topic}).to_string())
    };
    // Reads until a second before exp, and at least twenty (over the service's worker
    // threads), each answered before the token's exp on this clock; a read answered later
    // tells nothing and is not counted.
    let mut asked = 0;
    while now() < exp - 1 || asked < 20 {
        let r = read(asked);
        if now() >= exp {
            break;
        }
        assert!(r.allowed(), "read {asked}, answered before the token's exp: {}", r.body);
        asked += 1;
    }
    assert!(asked >= 20, "only {asked} reads were answered within the token's 3 to 4 seconds");
    while now() <= exp {
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in asked..asked + 20 {
        let r = read(i);
        assert!(!r.allowed() && r.body.contains("expired"), "read {i}, after the token's exp: {}", r.body);
    }
}

#[test]
fn superuser_through_either_backend() {
    let s = Server::rsa(&[]);
    let admin = sign("rsa-a.pem", "key-a", &admin_claims());
    // http backend: the session of the username the admin connected with.
    assert!(
        form_call(&s, "/mqtt/user", &[("username", "u-admin"), ("password", &admin), ("clientid", "a1")])
            .allowed()
    );
    assert!(form_call(&s, "/mqtt/superuser", &[("username", "u-admin")]).allowed());
    let nobody = form_call(&s, "/mqtt/superuser", &[("username", "ops")]);
    assert_eq!(nobody.status, 403);
    assert!(nobody.json()["error"].as_str().unwrap().contains("no session"), "{}", nobody.body);
    // http backend with the JWT as the username: the token is in the call.
    assert!(form_call(&s, "/mqtt/superuser", &[("username", &admin)]).allowed());
    let viewer = sign("rsa-a.pem", "key-a", &viewer_claims());
    assert!(!form_call(&s, "/mqtt/superuser", &[("username", &viewer)]).allowed());
}

#[test]
fn jwt_backend_remote_mode_with_bearer() {
    let s = Server::rsa(&[]);
    let twin = sign("rsa-a.pem", "key-a", &service_claims());
    let admin = sign("rsa-a.pem", "key-a", &admin_claims());
    // user and superuser: body `null` (jwt_params_mode json without jwt_parse_token).
    assert!(bearer_call(&s, "/mqtt/user", &twin, "null").allowed());
    assert!(!bearer_call(&s, "/mqtt/superuser", &twin, "null").allowed());
    assert!(bearer_call(&s, "/mqtt/superuser", &admin, "null").allowed());
    let acl = |topic: &str, acc: u32| {
        bearer_call(
            &s,
            "/mqtt/acl",
            &twin,
            &json!({"acc": acc, "clientid": "twin", "topic": topic}).to_string(),
        )
    };
    assert!(acl("celine/digital-twin/state/pump/pump-001", 2).allowed());
    assert!(!acl("celine/digital-twin/events/#", 4).allowed(), "mqtt.write grants no subscribe");
    // Form params with a Bearer header, and the token as the username (jwt backend's MQTT username).
    let form =
        send(client().post(s.url("/mqtt/acl")).header("Authorization", format!("Bearer {twin}")).form(&[
            ("acc", "2"),
            ("clientid", "twin"),
            ("topic", "celine/digital-twin/events/x/1"),
            ("username", &twin),
        ]));
    assert!(form.allowed(), "{}", form.body);
    let as_username = json_call(
        &s,
        reqwest::Method::POST,
        "/mqtt/user",
        &json!({"username": twin, "password": "", "clientid": "t"}),
    );
    assert!(as_username.allowed(), "{}", as_username.body);
}

#[test]
fn malformed_requests_get_400_never_5xx() {
    let s = Server::rsa(&[]);
    let token = sign("rsa-a.pem", "key-a", &viewer_claims());
    let auth = format!("Bearer {token}");
    let cases: Vec<(&str, &str, &str)> = vec![
        ("application/json", "{", "malformed JSON"),
        ("application/json", "[1,2]", "must be an object"),
        ("application/json", r#"{"topic":"a","acc":"x"}"#, "'acc' must be a bit mask"),
        ("application/json", r#"{"topic":"a","acc":0}"#, "'acc' must be a bit mask"),
        ("application/json", r#"{"topic":"a","acc":8}"#, "'acc' must be a bit mask"),
        ("application/json", r#"{"topic":"a"}"#, "missing 'acc'"),
        ("application/json", r#"{"acc":1}"#, "missing 'topic'"),
        ("application/json", r#"{"topic":{"a":1},"acc":1}"#, "must be a string"),
        ("text/xml", "<acl/>", "unsupported content type"),
        ("application/x-www-form-urlencoded", "acc=1&acc=2&topic=a", "twice"),
    ];
    for (ct, body, why) in cases {
        let r = send(
            client()
                .post(s.url("/mqtt/acl"))
                .header("Authorization", &auth)
                .header("Content-Type", ct)
                .body(body),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.json()["error"].as_str().unwrap().contains(why), "{body}: {}", r.body);
        assert_eq!(r.json()["ok"], false);
    }
    let r = send(client().post(s.url("/mqtt/acl")).header("Authorization", "Basic dTpw").body("{}"));
    assert_eq!(r.status, 400);
    let huge = "x".repeat(200_000);
    let r = send(client().post(s.url("/mqtt/acl")).header("Content-Type", "application/json").body(huge));
    assert_eq!(r.status, 413, "over the body limit");
    let r = send(client().delete(s.url("/mqtt/acl")));
    assert_eq!(r.status, 405);
    // An invalid topic is a decision (deny), not a malformed request.
    let r = send(
        client()
            .post(s.url("/mqtt/acl"))
            .header("Authorization", &auth)
            .json(&json!({"topic": "a/+b", "acc": 4})),
    );
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().starts_with("invalid topic"));
}

/// Every way a token can be wrong is a denial (403), none a 5xx, none an allow.
#[test]
fn jwt_failure_matrix() {
    let s = Server::rsa(&["--audience", "mqtt", "--leeway", "5"]);
    let good = || {
        let mut c = viewer_claims();
        c["aud"] = json!("mqtt");
        c
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good();
        f(&mut c);
        sign("rsa-a.pem", "key-a", &c)
    };
    let valid = with(&|_| {});
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let pubkey = std::fs::read(fixtures().join("rsa-a.pub.pem")).unwrap();
    let hs_with_public_key = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some("key-a".into());
        jsonwebtoken::encode(&h, &good(), &EncodingKey::from_secret(&pubkey)).unwrap()
    };
    let alg_none =
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": "key-a"})), b64(&good()));
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", with(&|c| c["exp"] = json!(now() - 120)), "expired"),
        ("not yet valid", with(&|c| c["nbf"] = json!(now() + 600)), "not valid yet"),
        (
            "no exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "no exp claim",
        ),
        ("wrong iss", with(&|c| c["iss"] = json!("https://evil.test/realms/celine")), "wrong issuer"),
        ("wrong aud", with(&|c| c["aud"] = json!("other")), "wrong audience"),
        ("an ID token", with(&|c| c["typ"] = json!("ID")), "not an access token"),
        ("unknown kid", sign("rsa-b.pem", "key-b", &good()), "unknown signing key"),
        ("known kid, other key", sign("rsa-b.pem", "key-a", &good()), "invalid signature"),
        ("alg none", alg_none, "token refused"),
        ("HS256 signed with the RSA public key", hs_with_public_key, "not accepted"),
        ("truncated", valid[..valid.len() - 20].to_string(), "token refused"),
        ("garbage", "eyJhbGciOiJSUzI1NiJ9.garbage.garbage".into(), "token refused"),
        ("empty", String::new(), ""),
        (
            "no claims for an id",
            with(&|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sub");
                o.remove("preferred_username");
            }),
            "names no user",
        ),
    ];
    assert!(bearer_call(&s, "/mqtt/user", &valid, "null").allowed(), "the valid token passes");
    for (name, token, why) in &cases {
        for (path, body) in [
            ("/mqtt/user", "null"),
            ("/mqtt/acl", r#"{"clientid":"c","topic":"celine/telemetry/m/1/readings","acc":1}"#),
        ] {
            let r = bearer_call(&s, path, token, body);
            assert!(r.status == 403 || r.status == 400, "{name} {path}: {} {}", r.status, r.body);
            assert_eq!(r.json()["ok"], false, "{name} {path}");
            let err = r.json()["error"].as_str().unwrap().to_string();
            assert!(err.contains(why), "{name} {path}: {err}");
            if token.len() > 20 {
                assert!(
                    !err.contains(&token[token.len() - 20..]),
                    "{name}: the reason must not echo the token"
                );
            }
        }
        // The same token as an http-backend password.
        let r = form_call(&s, "/mqtt/user", &[("username", "vera"), ("password", token), ("clientid", "m")]);
        assert_eq!((r.status, r.json()["ok"].clone()), (403, json!(false)), "{name} as password: {}", r.body);
    }
}

#[test]
fn an_unknown_kid_refreshes_the_key_set_so_rotation_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::copy(fixtures().join("jwks-a.json"), &jwks).unwrap();
    let s = Server::start(&[
        "--jwks-file",
        jwks.to_str().unwrap(),
        "--issuer",
        ISSUER,
        "--jwks-min-refresh",
        "1",
    ]);
    let old = sign("rsa-a.pem", "key-a", &viewer_claims());
    let new = sign("rsa-b.pem", "key-b", &viewer_claims());
    assert!(bearer_call(&s, "/mqtt/user", &old, "null").allowed());
    assert!(!bearer_call(&s, "/mqtt/user", &new, "null").allowed());
    // Rotate: the identity provider now publishes only key B.
    std::fs::copy(fixtures().join("jwks-b.json"), &jwks).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Until the rate limit lets a refresh through, key B stays unknown.
        if bearer_call(&s, "/mqtt/user", &new, "null").allowed() {
            break;
        }
        assert!(Instant::now() < deadline, "the new key was never picked up");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A token already verified stays cached until its exp; a token by the removed key that
    // was never seen is refused.
    let unseen_old = sign("rsa-a.pem", "key-a", &admin_claims());
    let r = bearer_call(&s, "/mqtt/user", &unseen_old, "null");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("unknown signing key"), "{}", r.body);
}

#[test]
fn text_response_mode_answers_ok_or_the_reason() {
    let s = Server::rsa(&["--response-mode", "text"]);
    let token = sign("rsa-a.pem", "key-a", &viewer_claims());
    let allow = bearer_call(
        &s,
        "/mqtt/acl",
        &token,
        r#"{"clientid":"c","topic":"celine/telemetry/m/1/readings","acc":1}"#,
    );
    assert_eq!((allow.status, allow.body.as_str()), (200, "ok"));
    let deny = bearer_call(
        &s,
        "/mqtt/acl",
        &token,
        r#"{"clientid":"c","topic":"celine/telemetry/m/1/readings","acc":2}"#,
    );
    assert_eq!(deny.status, 403);
    assert!(deny.body.starts_with("missing capability"), "{}", deny.body);
}

#[test]
fn dev_mode_from_nothing_to_an_allowed_and_a_denied_request() {
    let s = Server::start(&["--dev"]);
    let token = |args: &[&str]| dev_token(&s, args);
    let viewer = token(&["--sub", "alice", "--groups", "viewers"]);
    let twin = token(&["--client-id", "svc-digital-twin", "--scopes", "mqtt.write", "--ttl", "5m"]);
    let read = r#"{"clientid":"c1","topic":"celine/telemetry/meter/m1/readings","acc":1}"#;
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, read).allowed());
    // The same topic and client under another token is its own decision, cached or not.
    assert!(!bearer_call(&s, "/mqtt/acl", &twin, read).allowed());
    assert!(bearer_call(&s, "/mqtt/acl", &viewer, read).allowed(), "a repeat (decision cache hit)");
    assert!(!bearer_call(&s, "/mqtt/acl", &twin, read).allowed(), "a repeat (decision cache hit)");
    assert!(
        bearer_call(
            &s,
            "/mqtt/acl",
            &twin,
            r#"{"clientid":"t","topic":"celine/digital-twin/events/p/1","acc":2}"#
        )
        .allowed()
    );
    let jwks = send(client().get(s.url("/dev/jwks.json"))).json();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    // Operations endpoints.
    assert_eq!(send(client().get(s.url("/healthz"))).status, 200);
    let ready = send(client().get(s.ops("/readyz")));
    assert_eq!(ready.status, 200);
    let default: Value = serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
    assert_eq!(
        ready.json()["policy"]["rules"],
        default["celine"]["mqtt"]["acl"]["rules"].as_array().unwrap().len()
    );
    let metrics = send(client().get(s.ops("/metrics"))).body;
    assert!(metrics.contains(r#"mqtt_policy_requests_total{endpoint="acl",outcome="allow"} 3"#), "{metrics}");
    assert!(metrics.contains(r#"mqtt_policy_requests_total{endpoint="acl",outcome="deny"} 2"#), "{metrics}");
    // The first decision of each identity misses. A repeat is a hit, unless the viewer's
    // prepared identity on that worker thread allows it at once (then it is no lookup).
    let cache = |result: &str| -> u64 {
        let line = format!("mqtt_policy_decision_cache_total{{result=\"{result}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(line.as_str())).map_or(0, |v| v.trim().parse().unwrap())
    };
    let (hits, misses) = (cache("hit"), cache("miss"));
    assert!((1..=2).contains(&hits) && (2..=3).contains(&misses) && hits + misses <= 5, "{metrics}");
    assert!(metrics.contains("mqtt_policy_request_duration_seconds_bucket"), "{metrics}");
    assert!(metrics.contains("mqtt_policy_token_cache_total"), "{metrics}");
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let mut s = Server::start(&["--dev"]);
    assert_eq!(send(client().get(s.url("/healthz"))).status, 200);
    let pid = s.child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success());
    let status = s.child.wait().unwrap();
    assert!(status.success(), "a graceful stop exits 0, got {status:?}");
}

#[test]
fn without_any_key_source_serve_refuses_to_start() {
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .env_remove("MQTT_POLICY_DEV")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no way to verify tokens"));
}

/// A configuration `serve` refuses is a usage error (2); failing once it runs is another (3).
#[test]
fn serve_failing_after_start_up_exits_3_not_the_usage_errors_2() {
    let state = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let jwks = fixtures().join("jwks-a.json");
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .current_dir(test_support::repository())
        .args([
            "serve",
            "--listen",
            &addr,
            "--ops-listen",
            "127.0.0.1:0",
            "--jwks-file",
            jwks.to_str().unwrap(),
        ])
        .arg("--state-dir")
        .arg(state.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
}

/// Flags that contradict each other or would silently weaken a check stop `serve` before it
/// starts, naming them.
#[test]
fn contradicting_or_weakening_flags_are_refused_by_name() {
    let state = tempfile::tempdir().unwrap();
    let jwks = fixtures().join("jwks-a.json");
    let refused = |args: &[&str], says: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
            .args(["serve", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--state-dir"])
            .arg(state.path())
            .args(args)
            .env_remove("MQTT_POLICY_DEV")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{args:?}: {err}");
    };
    let file = jwks.to_str().unwrap();
    refused(&["--jwks-file", file, "--jwks-url", "https://idp/jwks"], "cannot be used with");
    refused(&["--dev", "--issuer", "https://idp/realms/celine"], "cannot be used with");
    refused(&["--jwks-file", file, "--authorized-parties", ","], "--authorized-parties: \",\" names nothing");
    refused(&["--jwks-file", file, "--username-claims", ""], "--username-claims");
    refused(&["--issuer", "http://keycloak.internal/realms/celine"], "plain http://");
}

/// A stand-in identity provider on a free loopback port: OIDC discovery and a key set, as
/// Keycloak serves them under `/realms/celine`. Answers until the test ends.
fn fake_idp() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}/realms/celine", listener.local_addr().unwrap());
    let jwks = std::fs::read_to_string(fixtures().join("jwks-a.json")).unwrap();
    let discovery =
        json!({"issuer": base, "jwks_uri": format!("{base}/protocol/openid-connect/certs")}).to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut stream, &mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = if path.ends_with("/.well-known/openid-configuration") {
                ("200 OK", discovery.clone())
            } else if path.ends_with("/protocol/openid-connect/certs") {
                ("200 OK", jwks.clone())
            } else {
                ("404 Not Found", String::new())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = std::io::Write::write_all(&mut stream, resp.as_bytes());
        }
    });
    base
}

#[test]
fn keys_come_from_oidc_discovery_on_the_issuer() {
    let issuer = fake_idp();
    let s = Server::start(&["--issuer", &issuer]);
    let mut claims = viewer_claims();
    claims["iss"] = json!(issuer);
    let token = sign("rsa-a.pem", "key-a", &claims);
    assert!(bearer_call(&s, "/mqtt/user", &token, "null").allowed());
    let ready = send(client().get(s.ops("/readyz")));
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["keys"]["count"], 1, "the encryption key is skipped: {}", ready.body);
    // The issuer is also the expected `iss`.
    let r = bearer_call(&s, "/mqtt/user", &sign("rsa-a.pem", "key-a", &viewer_claims()), "null");
    assert!(r.json()["error"].as_str().unwrap().contains("wrong issuer"), "{}", r.body);
}

#[test]
fn an_unusable_state_directory_costs_the_compiled_module_cache_not_the_service() {
    // A state directory that cannot be created: here beneath a regular file. A read-only or
    // full disk fails the same way (and root, which runs these tests, ignores permission bits).
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("a-file");
    std::fs::write(&blocker, "x").unwrap();
    let state = blocker.join("state");
    let log = dir.path().join("log");
    let jwks = fixtures().join("jwks-a.json");
    let s = Server::start_in(&state, &["--jwks-file", jwks.to_str().unwrap(), "--issuer", ISSUER], &log);
    let token = sign("rsa-a.pem", "key-a", &viewer_claims());
    let body = r#"{"clientid":"c","topic":"celine/telemetry/m/1/readings","acc":1}"#;
    assert!(bearer_call(&s, "/mqtt/acl", &token, body).allowed());
    assert_eq!(send(client().get(s.ops("/readyz"))).status, 200);
    let warned = |text: &str| text.matches("the state directory cannot be created").count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while warned(&std::fs::read_to_string(&log).unwrap()) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(warned(&std::fs::read_to_string(&log).unwrap()), 1, "logged once");
    drop(s);

    // Dev mode keeps its signing key there: without it, it cannot start, and says why.
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--state-dir"])
        .arg(&state)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("creating the state directory") && stderr.contains("dev mode"), "{stderr}");
}

#[test]
fn an_unreachable_identity_provider_is_not_ready_and_allows_nothing() {
    // A port that was free a moment ago: nothing answers there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{port}/realms/celine");
    let s = Server::start(&["--issuer", &issuer]);
    let ready = send(client().get(s.ops("/readyz")));
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready.json()["keys"]["error"].as_str().unwrap().contains("openid-configuration"),
        "{}",
        ready.body
    );
    let mut claims = viewer_claims();
    claims["iss"] = json!(issuer);
    let r = bearer_call(&s, "/mqtt/user", &sign("rsa-a.pem", "key-a", &claims), "null");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("unknown signing key"), "{}", r.body);
}

#[test]
fn hmac_tokens_only_with_an_explicit_development_secret() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "dev-only-shared-secret\n").unwrap();
    let s = Server::rsa(&["--hmac-secret-file", secret.to_str().unwrap()]);
    let hs = |key: &[u8]| {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &viewer_claims(), &EncodingKey::from_secret(key))
            .unwrap()
    };
    assert!(
        bearer_call(&s, "/mqtt/user", &hs(b"dev-only-shared-secret"), "null").allowed(),
        "the file's secret (trimmed)"
    );
    let wrong = bearer_call(&s, "/mqtt/user", &hs(b"another-secret"), "null");
    assert!(wrong.json()["error"].as_str().unwrap().contains("invalid signature"), "{}", wrong.body);
    // RSA tokens keep working beside it.
    assert!(bearer_call(&s, "/mqtt/user", &sign("rsa-a.pem", "key-a", &viewer_claims()), "null").allowed());
}

#[test]
fn authorized_parties_restrict_which_clients_tokens_count() {
    let s = Server::rsa(&["--authorized-parties", "svc-digital-twin,mqtt-dashboard"]);
    let twin = sign("rsa-a.pem", "key-a", &service_claims()); // azp svc-digital-twin
    assert!(bearer_call(&s, "/mqtt/user", &twin, "null").allowed());
    let mut other = service_claims();
    other["azp"] = json!("some-other-app");
    let r = bearer_call(&s, "/mqtt/user", &sign("rsa-a.pem", "key-a", &other), "null");
    assert_eq!(r.status, 403);
    assert!(r.json()["error"].as_str().unwrap().contains("not to an authorized party"), "{}", r.body);
}

/// The flag's old spelling (`--authorized-party`) still works for a release, and says so.
#[test]
fn the_old_spelling_of_a_flag_works_and_warns() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let jwks = fixtures().join("jwks-a.json");
    let s = Server::start_logged(
        &["--jwks-file", jwks.to_str().unwrap(), "--issuer", ISSUER, "--authorized-party=svc-digital-twin"],
        log.path(),
    );
    let mut other = service_claims();
    other["azp"] = json!("some-other-app");
    assert!(!bearer_call(&s, "/mqtt/user", &sign("rsa-a.pem", "key-a", &other), "null").allowed());
    assert!(bearer_call(&s, "/mqtt/user", &sign("rsa-a.pem", "key-a", &service_claims()), "null").allowed());
    let text = std::fs::read_to_string(log.path()).unwrap();
    assert!(text.contains("--authorized-party is now --authorized-parties"), "{text}");
}

/// Every flag is checked before anything starts: a mistake is reported before a signing key
/// is fetched, a session store is contacted or a listener is bound.
#[test]
fn a_bad_flag_is_reported_before_anything_starts() {
    let fetches = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    fetches.set_nonblocking(true).unwrap();
    let keys = format!("http://{}/jwks", fetches.local_addr().unwrap());
    let short = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(short.path(), "too-short").unwrap();
    let state = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["--admin-token-file", short.path().to_str().unwrap()], "the admin token must be at least 16"),
        (vec!["--bundle-token-file", short.path().to_str().unwrap()], "the bundle token must be at least 16"),
        (vec!["--sessions", "not a url"], "--sessions"),
        (vec!["--hmac-secret-file", short.path().to_str().unwrap()], "the secret must be at least 16 bytes"),
        (vec!["--policy-url", "https://s/bundle"], "--policy-url needs --bundle-public-key"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
            .args(["serve", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--jwks-url", &keys])
            .arg("--state-dir")
            .arg(state.path())
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(String::from_utf8_lossy(&out.stdout).is_empty(), "{args:?}: it listened");
        assert!(
            fetches.accept().is_err(),
            "{args:?}: the key set was fetched before the mistake was reported"
        );
    }
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        0,
        "nothing was written to the state directory"
    );
}

#[test]
fn untested_policies_say_so_and_an_empty_tests_path_is_refused() {
    // An explicitly named tests path without cases: refused at start, with the path.
    let empty = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .current_dir(test_support::repository())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .arg("--tests")
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no policy test cases") && err.contains(&*empty.path().to_string_lossy()),
        "{err}"
    );

    // A policy named without test cases runs, and everything says it is untested.
    let token = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(token.path(), "an-admin-token-of-sixteen-chars").unwrap();
    let s = Server::start(&[
        "--dev",
        "--policy",
        "policies/celine.json",
        "--admin-token-file",
        token.path().to_str().unwrap(),
    ]);
    let status =
        send(client().get(s.ops("/admin/status")).bearer_auth("an-admin-token-of-sixteen-chars")).json();
    assert_eq!(
        (status["tested"].clone(), status["cases_passed"].clone()),
        (json!(false), json!(0)),
        "{status}"
    );
    let metrics = send(client().get(s.ops("/metrics"))).body;
    assert!(metrics.contains("mqtt_policy_untested 1"), "{metrics}");
    // The default policy comes with its cases.
    let tested = Server::start(&["--dev", "--admin-token-file", token.path().to_str().unwrap()]);
    let status =
        send(client().get(tested.ops("/admin/status")).bearer_auth("an-admin-token-of-sixteen-chars")).json();
    assert_eq!(status["tested"], json!(true), "{status}");
    assert!(status["cases_passed"].as_u64().unwrap() >= 38, "{status}");
}

/// How many bytes the kernel holds unread for the server's end of a loopback connection
/// (`/proc/net/tcp`: local port `server`, remote port `client`), if it has one.
fn unread_by_server(server: u16, client: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
        if port(f.get(1)?)? != server || port(f.get(2)?)? != client {
            return None;
        }
        u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// Reads one HTTP/1.1 response (status and body, by its Content-Length) from a connection.
fn read_response(conn: &mut std::net::TcpStream) -> (u16, String, String) {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).expect("read the response");
        assert!(n > 0, "the connection closed before a whole response: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= len {
                let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
                return (status, head.to_ascii_lowercase(), body[..len].to_string());
            }
        }
    }
}

#[test]
fn shutdown_answers_the_request_in_flight_and_closes_idle_connections() {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    let mut s = Server::rsa(&[]);
    let addr = s.url("").trim_start_matches("http://").trim_end_matches('/').to_string();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let token = sign("rsa-a.pem", "key-a", &viewer_claims());
    let body =
        json!({"acc": 1, "clientid": "c1", "topic": "celine/telemetry/meter/meter-001/readings"}).to_string();
    let head = format!(
        "POST /mqtt/acl HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // A keep-alive connection left idle after one answer, as go-auth's pool leaves them.
    let mut idle = TcpStream::connect(&addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    idle.write_all(format!("{head}{body}").as_bytes()).unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    // A request in flight: its headers and half its body sent, and read by the server.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    slow.write_all(format!("{head}{first}").as_bytes()).unwrap();
    let client_port = slow.local_addr().unwrap().port();
    test_support::wait_for("the server to read the request's first half", Duration::from_secs(10), || {
        unread_by_server(port, client_port) == Some(0)
    });

    let term = Command::new("kill").args(["-TERM", &s.child.id().to_string()]).status().unwrap();
    assert!(term.success());
    // The idle connection is closed: end of stream, no answer.
    let mut end = [0u8; 64];
    assert_eq!(idle.read(&mut end).expect("the idle connection closes"), 0);
    assert!(s.child.try_wait().unwrap().is_none(), "it exited with a request in flight");
    // The request in flight is answered, on a connection that then closes.
    slow.write_all(rest.as_bytes()).unwrap();
    let (status, head, answer) = read_response(&mut slow);
    assert_eq!((status, answer.as_str()), (200, r#"{"error":"","ok":true}"#));
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(slow.read(&mut end).unwrap(), 0);
    // Then the process ends, successfully.
    let mut status = None;
    test_support::wait_for("serve to exit after SIGTERM", Duration::from_secs(20), || {
        status = s.child.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// The default policy with a certificates section: meters publish their own readings.
fn policy_with_meters(dir: &std::path::Path) -> std::path::PathBuf {
    let mut p: Value = serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
    p["celine"]["mqtt"]["certificates"] = json!([{"names": ["meter-*"], "groups": ["meters"]}]);
    // Telemetry through go-auth: its requests carry no QoS and no retain flag, so the default
    // policy's telemetry conditions would refuse every reading (docs/http-service.md). A
    // go-auth deployment with device telemetry leaves them out, as here.
    let rules = p["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap();
    rules.retain(|r| r.get("qos").is_none() && r.get("retain").is_none());
    p["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "id": "meters-own-readings", "subjects": {"types": ["device"], "groups": ["meters"]},
        "topics": ["celine/telemetry/meter/${username}/readings"], "actions": ["publish"]}));
    p["celine"]["roles"]["group_permissions"]["meters"] = json!(["publish"]);
    let path = dir.join("meters.json");
    std::fs::write(&path, p.to_string()).unwrap();
    path
}

/// go-auth sends a client Mosquitto admitted by its certificate with the certificate's name
/// where a token would be: the username (http backend) or the Bearer value (jwt backend).
#[test]
fn certificate_clients_through_go_auth_are_their_certificates_subject_and_never_a_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_with_meters(dir.path());
    let jwks = fixtures().join("jwks-a.json");
    let args =
        ["--jwks-file", jwks.to_str().unwrap(), "--issuer", ISSUER, "--policy", policy.to_str().unwrap()];
    let s = Server::start(&[&args[..], &["--certificate-subject-type", "device"]].concat());
    let own = json!({"username": "meter-1", "clientid": "m1", "topic": "celine/telemetry/meter/meter-1/readings", "acc": 2});
    let other = json!({"username": "meter-1", "clientid": "m1", "topic": "celine/telemetry/meter/meter-2/readings", "acc": 2});
    assert!(json_call(&s, reqwest::Method::POST, "/mqtt/acl", &own).allowed());
    let r = json_call(&s, reqwest::Method::POST, "/mqtt/acl", &other);
    assert!(!r.allowed() && r.body.contains("no rule allows"), "{}", r.body);
    assert!(
        !json_call(&s, reqwest::Method::POST, "/mqtt/superuser", &json!({"username": "meter-1"})).allowed()
    );
    // The jwt backend: the certificate name as the Bearer value.
    let body = r#"{"clientid":"m1","topic":"celine/telemetry/meter/meter-1/readings","acc":2}"#;
    assert!(bearer_call(&s, "/mqtt/acl", "meter-1", body).allowed());
    // A name outside the section is nobody: no token, no session.
    let stranger = json!({"username": "gateway-7", "clientid": "g7", "topic": "celine/telemetry/meter/gateway-7/readings", "acc": 2});
    assert!(!json_call(&s, reqwest::Method::POST, "/mqtt/acl", &stranger).allowed());
    // A token whose subject is called like a certificate cannot bind that name as a session.
    let mut claims = viewer_claims();
    claims["sub"] = json!("meter-9");
    let token = sign("rsa-a.pem", "key-a", &claims);
    let r = json_call(
        &s,
        reqwest::Method::POST,
        "/mqtt/user",
        &json!({"username": "meter-9", "password": token, "clientid": "m9"}),
    );
    assert!(!r.allowed() && r.body.contains("is a certificate name"), "{}", r.body);
    drop(s);

    // Without the flag, such calls are denied like any call without a token.
    let s = Server::start(&args);
    let r = json_call(&s, reqwest::Method::POST, "/mqtt/acl", &own);
    assert!(!r.allowed() && r.body.contains("no token and no session"), "{}", r.body);
}
