//! Against a real Keycloak (realm `keycloak/celine-realm.json`): tokens from its token endpoint
//! map to the expected subjects and get the expected decisions through the host, which knows
//! the realm only by `--issuer` (OIDC discovery); expiry; key rotation without a restart; and
//! Keycloak going away.
//!
//! Needs the Keycloak distribution and a JDK: `cargo xtask keycloak` (or `cargo xtask test`)
//! downloads, caches and points these tests at them (`MQTT_POLICY_KEYCLOAK_HOME`,
//! `MQTT_POLICY_KEYCLOAK_JAVA_HOME`).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
use common::*;
use test_support::keycloak::Keycloak;

fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn subject_of(token: &str) -> Value {
    serde_json::to_value(policy_core::subject_from_claims_json(&claims_of(token).to_string()).unwrap())
        .unwrap()
}

/// go-auth's http backend, as an MQTT client connects: the JWT as the password, the username
/// naming the token's subject (its `preferred_username`; for a service
/// `service-account-<client>`).
fn connect(s: &Server, token: &str, clientid: &str) -> Reply {
    let username = claims_of(token)["preferred_username"].as_str().unwrap_or_default().to_string();
    json_call(
        s,
        reqwest::Method::POST,
        "/mqtt/user",
        &json!({"username": username, "password": token, "clientid": clientid}),
    )
}

/// go-auth's http backend's ACL call: only the username and client id, never a token.
fn session_acl(s: &Server, username: &str, clientid: &str, topic: &str, acc: u32) -> Reply {
    json_call(
        s,
        reqwest::Method::POST,
        "/mqtt/acl",
        &json!({"username": username, "clientid": clientid, "topic": topic, "acc": acc}),
    )
}

/// go-auth's jwt backend (remote mode): the token as Bearer on every call.
fn acl(s: &Server, token: &str, clientid: &str, topic: &str, acc: u32) -> Reply {
    bearer_call(s, "/mqtt/acl", token, &json!({"clientid": clientid, "topic": topic, "acc": acc}).to_string())
}

fn superuser(s: &Server, token: &str) -> Reply {
    bearer_call(s, "/mqtt/superuser", token, "null")
}

const READ: u32 = 1;
const WRITE: u32 = 2;
const SUBSCRIBE: u32 = 4;

#[test]
#[ignore = "needs Keycloak: run by `cargo xtask keycloak` and `cargo xtask test`"]
fn keycloak_tokens_discovery_rotation_and_outage() {
    let mut kc = Keycloak::start();
    let issuer = kc.issuer();
    // Only the issuer: keys come from OIDC discovery. No leeway, so expiry is exact.
    let s = Server::start(&["--issuer", &issuer, "--jwks-min-refresh", "1", "--leeway", "0"]);

    // --- services: client_credentials -------------------------------------------------------
    let pipelines = kc.service_token("svc-pipelines", None);
    let subject = subject_of(&pipelines);
    assert_eq!((&subject["id"], &subject["type"]), (&json!("svc-pipelines"), &json!("service")), "{subject}");
    assert!(subject["scopes"].as_array().unwrap().contains(&json!("mqtt.write")), "{subject}");
    assert_eq!(subject["groups"], json!([]), "a service has no groups: {subject}");
    assert!(connect(&s, &pipelines, "etl-1").allowed());
    assert!(acl(&s, &pipelines, "etl-1", "celine/pipelines/status/etl-daily", WRITE).allowed());
    assert!(
        !acl(&s, &pipelines, "etl-1", "celine/pipelines/status/#", SUBSCRIBE).allowed(),
        "mqtt.write grants only publish"
    );
    assert!(!superuser(&s, &pipelines).allowed());

    let twin = kc.service_token("svc-digital-twin", None);
    assert_eq!(subject_of(&twin)["id"], "svc-digital-twin");
    assert!(acl(&s, &twin, "dt-1", "celine/digital-twin/events/pump/pump-001", WRITE).allowed());
    assert!(acl(&s, &twin, "dt-1", "celine/digital-twin/state/pump/pump-001", WRITE).allowed());
    let r = acl(&s, &twin, "dt-1", "celine/pipelines/status/etl-daily", WRITE);
    assert!(!r.allowed() && r.status == 403, "{}", r.body);
    // An optional scope, asked for: mqtt.admin makes it a superuser.
    let twin_admin = kc.service_token("svc-digital-twin", Some("mqtt.admin"));
    assert!(subject_of(&twin_admin)["scopes"].as_array().unwrap().contains(&json!("mqtt.admin")));
    assert!(superuser(&s, &twin_admin).allowed());

    // --- people: password grant on the public client ----------------------------------------
    let alice = kc.user_token("alice");
    let subject = subject_of(&alice);
    assert_eq!(subject["type"], "user");
    assert_eq!(subject["id"], claims_of(&alice)["sub"], "a user's id is sub");
    assert!(subject["groups"].as_array().unwrap().contains(&json!("viewers")), "{subject}");
    assert!(connect(&s, &alice, "dash-alice").allowed());
    // The http backend's ACL calls find alice by her username, whatever the client id.
    assert!(
        session_acl(&s, "alice", "dash-alice-2", "celine/telemetry/meter/meter-001/readings", SUBSCRIBE)
            .allowed()
    );
    assert!(!session_acl(&s, "alice", "dash-alice", "celine/telemetry/#", SUBSCRIBE).allowed());
    assert!(acl(&s, &alice, "dash-alice", "celine/telemetry/meter/meter-001/readings", SUBSCRIBE).allowed());
    assert!(acl(&s, &alice, "dash-alice", "celine/telemetry/meter/meter-001/readings", READ).allowed());
    assert!(!acl(&s, &alice, "dash-alice", "celine/telemetry/#", SUBSCRIBE).allowed());
    assert!(!acl(&s, &alice, "dash-alice", "celine/telemetry/meter/meter-001/readings", WRITE).allowed());
    assert!(!acl(&s, &alice, "dash-alice", "celine/system/alerts/critical", SUBSCRIBE).allowed());
    assert!(!superuser(&s, &alice).allowed());
    let adam = kc.user_token("adam");
    assert!(subject_of(&adam)["groups"].as_array().unwrap().contains(&json!("admins")));
    assert!(superuser(&s, &adam).allowed());
    assert!(acl(&s, &adam, "ops", "anything/at/all", WRITE).allowed());
    let nina = kc.user_token("nina");
    assert!(connect(&s, &nina, "n").allowed(), "a valid token connects");
    assert!(
        !acl(&s, &nina, "n", "celine/telemetry/meter/meter-001/readings", SUBSCRIBE).allowed(),
        "no groups, no rights"
    );

    // --- expiry: a client whose tokens live 2 seconds -----------------------------------------
    let clients = kc.admin(reqwest::Method::GET, "/clients?clientId=svc-pipelines", None);
    let id = clients[0]["id"].as_str().unwrap().to_string();
    let mut rep = kc.admin(reqwest::Method::GET, &format!("/clients/{id}"), None);
    rep["attributes"]["access.token.lifespan"] = json!("2");
    kc.admin(reqwest::Method::PUT, &format!("/clients/{id}"), Some(rep.clone()));
    let short = kc.service_token("svc-pipelines", None);
    let exp = claims_of(&short)["exp"].as_u64().unwrap();
    assert!(exp <= now() + 3, "the lifespan took effect");
    assert!(
        acl(&s, &short, "etl-2", "celine/pipelines/status/etl-daily", WRITE).allowed(),
        "valid before exp"
    );
    while now() <= exp {
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = acl(&s, &short, "etl-2", "celine/pipelines/status/etl-daily", WRITE);
    assert!(!r.allowed() && r.json()["error"].as_str().unwrap().contains("expired"), "{}", r.body);
    assert!(!connect(&s, &short, "etl-2").allowed());
    rep["attributes"]["access.token.lifespan"] = json!("");
    kc.admin(reqwest::Method::PUT, &format!("/clients/{id}"), Some(rep));

    // --- key rotation -------------------------------------------------------------------------
    let before_seen = kc.service_token("svc-pipelines", None); // presented before the rotation
    let before_unseen = kc.service_token("svc-digital-twin", None); // first presented after it
    let old_kid = kid_of(&before_seen);
    assert!(acl(&s, &before_seen, "etl-3", "celine/pipelines/status/etl-daily", WRITE).allowed());
    let realm = kc.admin(reqwest::Method::GET, "", None);
    let providers = kc.admin(reqwest::Method::GET, "/components?type=org.keycloak.keys.KeyProvider", None);
    let old = providers
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["providerId"] == "rsa-generated")
        .expect("the realm's generated RSA key")
        .clone();
    kc.admin(
        reqwest::Method::POST,
        "/components",
        Some(json!({"name": "rsa-rotated", "providerId": "rsa-generated", "providerType": "org.keycloak.keys.KeyProvider",
                    "parentId": realm["id"], "config": {"priority": ["500"], "enabled": ["true"], "active": ["true"],
                    "keySize": ["2048"], "algorithm": ["RS256"]}})),
    );
    let mut disabled = old.clone();
    disabled["config"]["enabled"] = json!(["false"]);
    disabled["config"]["active"] = json!(["false"]);
    kc.admin(reqwest::Method::PUT, &format!("/components/{}", old["id"].as_str().unwrap()), Some(disabled));
    let after = kc.service_token("svc-pipelines", None);
    assert_ne!(kid_of(&after), old_kid, "Keycloak signs with the new key");
    // The host has never seen this kid: it refreshes its keys and accepts, without a restart.
    assert!(acl(&s, &after, "etl-4", "celine/pipelines/status/etl-daily", WRITE).allowed());
    // Tokens of the removed key are refused, also one the host had verified and cached.
    let r = acl(&s, &before_unseen, "dt-2", "celine/digital-twin/events/pump/p1", WRITE);
    assert!(
        !r.allowed() && r.json()["error"].as_str().unwrap().contains("unknown signing key"),
        "{}",
        r.body
    );
    let r = acl(&s, &before_seen, "etl-3", "celine/pipelines/status/etl-daily", WRITE);
    assert!(!r.allowed(), "a cached verification ends with its key: {}", r.body);

    // --- Keycloak goes away -------------------------------------------------------------------
    let known_unseen = kc.service_token("svc-digital-twin", None);
    kc.stop();
    // Known keys keep working, for cached and for new tokens.
    assert!(acl(&s, &after, "etl-4", "celine/pipelines/status/etl-daily", WRITE).allowed());
    assert!(acl(&s, &known_unseen, "dt-3", "celine/digital-twin/events/pump/p1", WRITE).allowed());
    // A token with a kid the host does not know makes it ask Keycloak (at most once per
    // --jwks-min-refresh), which fails: refused every time, and /readyz says why.
    let started = Instant::now();
    let body = loop {
        let r = acl(&s, &before_unseen, "dt-2", "celine/digital-twin/events/pump/p1", WRITE);
        assert!(!r.allowed(), "{}", r.body);
        let ready = send(client().get(s.ops("/readyz")));
        assert_eq!(ready.status, 200, "known keys still verify: {}", ready.body);
        let body = ready.json();
        if body["keys"]["last_error"].is_string() {
            break body;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no refresh error reported: {body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = body["keys"]["last_error"].as_str().unwrap();
    assert!(err.contains("127.0.0.1"), "the error names what failed: {err}");
    // Nothing that should not be allowed is.
    assert!(!acl(&s, &after, "etl-4", "celine/pipelines/status/#", SUBSCRIBE).allowed());
    assert!(!acl(&s, &nina, "n", "celine/telemetry/meter/meter-001/readings", SUBSCRIBE).allowed());
    assert!(!superuser(&s, &alice).allowed());
}
