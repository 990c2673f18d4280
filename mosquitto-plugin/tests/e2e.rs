//! The plugin inside a real Mosquitto (Debian's), with real MQTT clients (rumqttc, 3.1.1 and
//! 5). Every scenario is asserted from the clients' side: CONNACK and SUBACK codes, what is
//! delivered and what is not.
//!
//! Each test starts its own broker on a free loopback port, with the policy in
//! `tests/e2e/policy.json` (the default policy plus editors on twin events, per-user inboxes)
//! and its test cases, keys from a JWKS file. Started as root, Mosquitto drops to its own
//! user, as in production: the plugin and its files sit in a world-readable directory.
//!
//! Needs `mosquitto` and the plugin built: `cargo xtask e2e` installs and builds both.

use std::time::Duration;

use identity::devkey::{DevKey, TokenSpec, claims};
use identity::now;
use serde_json::json;
use test_support::mosquitto::{Broker, Setup, write_readable};
use test_support::{free_port, http, wait_for};

mod common;
mod mqtt;
use common::{ISSUER, Issuer, POLICY, SWAP_WAIT, broker, broker_with};
use mqtt::enhanced::{JwtClient, Seen};
use mqtt::{Client, Event, Version, WillClient};

#[test]
fn a_twin_event_reaches_entitled_subscribers_and_a_viewers_publish_reaches_nobody() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let editor =
        Client::connected(Version::V311, b.port, "erin-1", "erin", &issuer.user("erin", &["editors"]));
    let admin = Client::connected(Version::V5, b.port, "adam-1", "adam", &issuer.user("adam", &["admins"]));
    let viewer =
        Client::connected(Version::V311, b.port, "vera-1", "vera", &issuer.user("vera", &["viewers"]));
    let twin = Client::connected(
        Version::V311,
        b.port,
        "twin-1",
        "svc-digital-twin",
        &issuer.service("svc-digital-twin", &["mqtt.write"]),
    );
    assert_eq!(editor.subscribe("celine/digital-twin/events/#"), 1, "editors may follow twin events");
    assert_eq!(admin.subscribe("#"), 1, "admins are superusers");

    twin.publish("celine/digital-twin/events/pump/p1", "started");
    assert_eq!(editor.message(), ("celine/digital-twin/events/pump/p1".into(), "started".into()));
    assert_eq!(admin.message(), ("celine/digital-twin/events/pump/p1".into(), "started".into()));

    // The viewer's publish is acknowledged (3.1.1 cannot refuse one) and dropped: neither
    // subscriber sees it before the service's next event.
    viewer.publish("celine/digital-twin/events/pump/p1", "forged");
    twin.publish("celine/digital-twin/events/pump/p1", "marker");
    assert!(editor.messages_until("marker").is_empty(), "the editor got the viewer's publish");
    assert!(admin.messages_until("marker").is_empty(), "the admin on # got the viewer's publish");
    let denied =
        b.wait_for_record_after(0, "publish", "celine/digital-twin/events/pump/p1", "deny", mqtt::WAIT);
    assert_eq!(
        (&denied["subject"], &denied["subject_type"], &denied["clientid"]),
        (&"vera".into(), &"user".into(), &"vera-1".into()),
        "{denied}"
    );
    assert_eq!(denied["endpoint"], "acl");

    // A viewer receives telemetry.
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    admin.publish("celine/telemetry/meter/m1/readings", "42 kWh");
    assert_eq!(viewer.message(), ("celine/telemetry/meter/m1/readings".into(), "42 kWh".into()));
}

#[test]
fn denied_subscriptions_get_0x80_in_mqtt_311_and_0x87_in_mqtt_5() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let token = issuer.user("vera", &["viewers"]);
    let v311 = Client::connected(Version::V311, b.port, "vera-311", "vera", &token);
    let v5 = Client::connected(Version::V5, b.port, "vera-5", "vera", &token);
    for filter in ["celine/telemetry/#", "celine/system/alerts/critical", "celine/system/alerts/#", "#"] {
        assert_eq!(v311.subscribe(filter), 0x80, "{filter} (3.1.1)");
        assert_eq!(v5.subscribe(filter), 0x87, "{filter} (5)");
    }
    assert_eq!(v5.subscribe("celine/telemetry/+/+/readings"), 1, "an allowed one still is");
}

#[test]
fn a_shared_subscription_is_decided_on_its_filter_and_shares_the_messages() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let token = issuer.user("vera", &["viewers"]);
    let one = Client::connected(Version::V5, b.port, "share-1", "vera", &token);
    let two = Client::connected(Version::V311, b.port, "share-2", "vera", &token);
    assert_eq!(one.subscribe("$share/meters/celine/telemetry/+/+/readings"), 1);
    assert_eq!(two.subscribe("$share/meters/celine/telemetry/+/+/readings"), 1);
    assert_eq!(
        one.subscribe("$share/meters/celine/telemetry/#"),
        0x87,
        "the filter inside $share/ is checked"
    );
    let admin =
        Client::connected(Version::V311, b.port, "adam-share", "adam", &issuer.user("adam", &["admins"]));
    for i in 0..10 {
        admin.publish(&format!("celine/telemetry/meter/m{i}/readings"), &i.to_string());
    }
    let mut got = Vec::new();
    wait_for("all 10 shared messages", mqtt::WAIT, || {
        while let Some(Event::Message { payload, .. }) =
            one.next_within(Duration::ZERO).or_else(|| two.next_within(Duration::ZERO))
        {
            got.push(String::from_utf8(payload).unwrap());
        }
        got.len() >= 10
    });
    got.sort_by_key(|p| p.parse::<u32>().unwrap());
    assert_eq!(
        got,
        (0..10).map(|i| i.to_string()).collect::<Vec<_>>(),
        "each message once, to one of the group"
    );
}

#[test]
fn per_user_topics_reach_only_their_user() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let alice =
        Client::connected(Version::V311, b.port, "alice-1", "alice", &issuer.user("alice", &["users"]));
    let bob = Client::connected(Version::V5, b.port, "bob-1", "bob", &issuer.user("bob", &["users"]));
    assert_eq!(alice.subscribe("celine/users/alice/#"), 1);
    assert_eq!(bob.subscribe("celine/users/bob/#"), 1);
    assert_eq!(alice.subscribe("celine/users/bob/#"), 0x80, "not someone else's inbox");
    assert_eq!(alice.subscribe("celine/users/+/inbox"), 0x80, "not everyone's inboxes");
    let twin = Client::connected(
        Version::V311,
        b.port,
        "twin-inbox",
        "svc-digital-twin",
        &issuer.service("svc-digital-twin", &["mqtt.write"]),
    );
    twin.publish("celine/users/alice/inbox", "for alice");
    twin.publish("celine/users/bob/inbox", "for bob");
    twin.publish("celine/users/alice/inbox", "end");
    twin.publish("celine/users/bob/inbox", "end");
    assert_eq!(
        alice.messages_until("end"),
        vec![("celine/users/alice/inbox".to_string(), "for alice".to_string())]
    );
    assert_eq!(
        bob.messages_until("end"),
        vec![("celine/users/bob/inbox".to_string(), "for bob".to_string())]
    );
}

#[test]
fn bad_tokens_are_refused_at_connack_and_never_logged() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let good = issuer.user("vera", &["viewers"]);
    let mut tampered: Vec<char> = good.chars().collect();
    let i = good.find('.').unwrap() + 5;
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let mut expired = issuer.claims(Some("vera"), None, &["viewers"], &[], 60);
    expired["exp"] = json!(now() - 120);
    let expired = issuer.sign(&expired);
    let unknown_key = Issuer::new().user("vera", &["viewers"]);
    let mut other_issuer = issuer.claims(Some("vera"), None, &["viewers"], &[], 60);
    other_issuer["iss"] = json!("https://evil.test/realms/celine");
    let other_issuer = issuer.sign(&other_issuer);
    let bad = [
        ("garbage", "garbage".to_string(), "the password is not a JWT"),
        ("tampered", tampered, "invalid signature"),
        ("expired", expired, "expired"),
        ("unknown key", unknown_key, "unknown signing key"),
        ("other issuer", other_issuer, "wrong issuer"),
    ];
    for (what, token, reason) in &bad {
        for (version, code) in [(Version::V311, 5), (Version::V5, 0x87)] {
            let mark = b.log_mark();
            let id = format!("bad-{}-{version:?}", what.replace(' ', "-"));
            let (_c, first) = Client::connect(version, b.port, &id, "vera", token);
            assert_eq!(first, Event::Refused(code), "{what} ({version:?})");
            let line = b.wait_for_log_after(mark, &format!("refused client \"{id}\""), mqtt::WAIT);
            assert!(line.contains(reason), "{what}: {line}");
        }
    }
    // No token at all.
    let (_c, first) = Client::connect(Version::V311, b.port, "no-token", "vera", "");
    assert_eq!(first, Event::Refused(5));
    let log = b.log();
    for (what, token, _) in &bad {
        if token.len() > 20 {
            assert!(!log.contains(&token[token.len() - 20..]), "the log holds the {what} token");
        }
    }
    assert!(!log.contains(&good[good.len() - 20..]));
}

#[test]
fn the_seed_client_connects_with_an_empty_username_and_tokens_work_as_usernames() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let token = issuer.user("vera", &["viewers"]);
    // The seed's client code (paho): username "", the JWT as the password. Mosquitto passes
    // NULL for the empty username. (rumqttc leaves an empty username out, which MQTT 3.1.1
    // forbids with a password, so mosquitto_sub stands in for paho here.)
    let sub = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.port.to_string(), "-V", "mqttv311", "-i", "seed-client", "-u", ""])
        .args(["-P", &token, "-t", "celine/telemetry/+/+/readings", "-C", "1", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mosquitto_sub (apt-get install mosquitto-clients; cargo xtask e2e installs it)");
    b.wait_for_log_after(0, "connected client \"seed-client\"", mqtt::WAIT);
    b.wait_for_log_after(0, "seed-client 0 celine/telemetry/+/+/readings", mqtt::WAIT);
    let admin =
        Client::connected(Version::V311, b.port, "adam-seed", "adam", &issuer.user("adam", &["admins"]));
    admin.publish("celine/telemetry/meter/m3/readings", "3");
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    // MQTT 5 allows a password without a username.
    let no_username = Client::connected(Version::V5, b.port, "no-username", "", &token);
    assert_eq!(no_username.subscribe("celine/telemetry/+/+/readings"), 1);
    // go-auth's jwt-backend convention: the JWT as the username, no password.
    let as_username = Client::connected(Version::V5, b.port, "jwt-username", &token, "");
    assert_eq!(as_username.subscribe("celine/telemetry/+/+/readings"), 1);
    assert!(!b.log().contains(&token[token.len() - 20..]), "a token in the log");
}

#[test]
fn two_connections_of_one_identity_both_work() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let token = issuer.user("vera", &["viewers"]);
    let first = Client::connected(Version::V311, b.port, "vera-laptop", "vera", &token);
    let second = Client::connected(Version::V5, b.port, "vera-phone", "vera", &token);
    assert_eq!(first.subscribe("celine/telemetry/+/+/readings"), 1);
    assert_eq!(second.subscribe("celine/telemetry/+/+/readings"), 1);
    let admin = Client::connected(Version::V311, b.port, "adam-2", "adam", &issuer.user("adam", &["admins"]));
    admin.publish("celine/telemetry/meter/m7/readings", "7");
    assert_eq!(first.message().1, "7");
    assert_eq!(second.message().1, "7");
}

#[test]
fn a_client_id_taken_over_never_carries_the_previous_connections_rights() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let admin =
        Client::connected(Version::V311, b.port, "console", "adam", &issuer.user("adam", &["admins"]));
    assert_eq!(admin.subscribe("celine/system/alerts/critical"), 1);
    // A viewer takes the admin's client id: Mosquitto disconnects the admin.
    let viewer =
        Client::connected(Version::V311, b.port, "console", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(viewer.subscribe("celine/system/alerts/critical"), 0x80, "the viewer got the admin's rights");
    assert_eq!(viewer.subscribe("celine/#"), 0x80);
    let twin = Client::connected(
        Version::V311,
        b.port,
        "twin-2",
        "svc-digital-twin",
        &issuer.service("svc-digital-twin", &["mqtt.write"]),
    );
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    viewer.publish("celine/digital-twin/events/x", "forged");
    let record = b.wait_for_record_after(0, "publish", "celine/digital-twin/events/x", "deny", mqtt::WAIT);
    assert_eq!(
        (&record["subject"], &record["subject_type"]),
        (&"vera".into(), &"user".into()),
        "decided as {record}"
    );
    drop(twin);
}

/// The default telemetry rule widened to every telemetry topic.
fn widened_policy() -> String {
    POLICY.replace("\"celine/telemetry/+/+/readings\"", "\"celine/telemetry/#\"")
}

#[test]
fn a_changed_policy_file_decides_the_next_check_and_a_broken_one_changes_nothing() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let policy = b.setup.dir.path().join("policy.json");
    let viewer =
        Client::connected(Version::V311, b.port, "vera-swap", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(viewer.subscribe("celine/telemetry/#"), 0x80);

    let mark = b.log_mark();
    write_readable(&policy, widened_policy().as_bytes());
    b.wait_for_log_after(mark, "swapped in a new generation", SWAP_WAIT);
    assert_eq!(
        viewer.subscribe("celine/telemetry/#"),
        1,
        "the connected client's next check follows the file"
    );

    // Not JSON: refused, the live policy stays.
    let mark = b.log_mark();
    write_readable(&policy, b"{ \"celine\": ");
    let line = b.wait_for_log_after(mark, "rejected a candidate", SWAP_WAIT);
    assert!(line.contains("does not load"), "{line}");
    assert_eq!(viewer.subscribe("celine/telemetry/#"), 1, "still the last good policy");

    // Loads, but fails the policy's own test cases (alice's inbox goes): refused too.
    let mark = b.log_mark();
    write_readable(
        &policy,
        widened_policy().replace("celine/users/${subject.id}/#", "celine/nobody/#").as_bytes(),
    );
    let line = b.wait_for_log_after(mark, "rejected a candidate", SWAP_WAIT);
    assert!(line.contains("policy test cases fail"), "{line}");

    // Passes its cases, but breaks an invariant it states (viewers may now subscribe to all
    // telemetry): refused, with the counterexample.
    let mut guarded: serde_json::Value = serde_json::from_str(&widened_policy()).unwrap();
    guarded["celine"]["mqtt"]["invariants"] = json!([{
        "id": "telemetry-firehose", "only": {"groups": ["admins"]},
        "actions": ["subscribe"], "topics": ["celine/telemetry/#"], "filters": "covering"}]);
    let mark = b.log_mark();
    write_readable(&policy, guarded.to_string().as_bytes());
    let line = b.wait_for_log_after(mark, "rejected a candidate", SWAP_WAIT);
    assert!(line.contains("invariant 'telemetry-firehose' does not hold"), "{line}");
    assert!(line.contains("counterexample {"), "{line}");
    let alice =
        Client::connected(Version::V5, b.port, "alice-swap", "alice", &issuer.user("alice", &["users"]));
    assert_eq!(alice.subscribe("celine/users/alice/#"), 1);
    assert_eq!(viewer.subscribe("celine/telemetry/#"), 1);
}

#[test]
fn sighup_reloads_the_policy_when_files_are_not_watched() {
    let issuer = Issuer::new();
    let b = broker_with(&issuer, |s| s.option("watch", "false"));
    let policy = b.setup.dir.path().join("policy.json");
    let token = issuer.user("vera", &["viewers"]);
    let viewer = Client::connected(Version::V5, b.port, "vera-hup", "vera", &token);
    assert_eq!(viewer.subscribe("celine/telemetry/#"), 0x87);
    // The broker knows a client that sent its token as the username by its subject id (its
    // log never shows the token), and still readmits it when it re-checks clients on reload.
    let by_username = Client::connected(Version::V311, b.port, "vera-jwt-user", &token, "");
    let line = b.wait_for_log_after(0, "as vera-jwt-user (", mqtt::WAIT);
    assert!(line.ends_with("u'vera')."), "{line}");
    write_readable(&policy, widened_policy().as_bytes());
    let mark = b.log_mark();
    b.hang_up();
    let line = b.wait_for_log_after(mark, "swapped in a new generation", SWAP_WAIT);
    assert!(line.contains("generation=2"), "{line}");
    assert_eq!(viewer.subscribe("celine/telemetry/#"), 1);
    // Mosquitto re-authenticates every client after a reload; both stay, on the new policy.
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    assert_eq!(by_username.subscribe("celine/telemetry/#"), 1);
    assert!(!b.log().contains(&token[token.len() - 20..]), "a token in the log");
}

/// Readiness follows the signing keys: a broker whose key set cannot be fetched refuses every
/// token, and its `/readyz` says so (what an orchestrator's readiness probe asks). Started
/// before its identity provider (a compose stack), it is ready within seconds of the
/// provider answering, without a client asking: while it holds no key it tries again every
/// `jwks_min_refresh`, not once per `jwks_refresh`.
#[test]
fn readyz_is_unavailable_until_there_are_signing_keys_and_follows_them_soon() {
    let (metrics_port, keys_port) = (free_port(), free_port());
    let setup = Setup::new();
    let policy = setup.file("policy.json", POLICY);
    let b = Broker::start(
        setup
            .option("policy", policy.display().to_string())
            .option("jwks_url", format!("http://127.0.0.1:{keys_port}/jwks.json"))
            .option("jwks_min_refresh", "1")
            .option("issuer", ISSUER)
            .option("metrics_listen", format!("127.0.0.1:{metrics_port}")),
    );
    let readyz = || http().get(format!("http://127.0.0.1:{metrics_port}/readyz")).send().unwrap();
    let ready = readyz();
    assert_eq!(ready.status(), 503);
    let said = ready.text().unwrap();
    assert!(said.starts_with("not ready: no signing keys: "), "{said}");
    let issuer = Issuer::new();
    let token = issuer.user("vera", &["viewers"]);
    let (_, refused) = Client::connect(Version::V311, b.port, "vera-r", "vera", &token);
    assert_eq!(refused, Event::Refused(5), "CONNACK: not authorised without keys");

    let _keys = test_support::document::Document::serve(keys_port, issuer.jwks());
    wait_for("/readyz to answer 200", Duration::from_secs(10), || readyz().status() == 200);
    let (_, accepted) = Client::connect(Version::V311, b.port, "vera-r2", "vera", &token);
    assert_eq!(accepted, Event::Connected);
}

/// A scrape never waits behind slow background work: while a bundle pull hangs on a server
/// that never answers (up to a minute), `/readyz` and `/metrics` answer at once.
#[test]
fn readiness_answers_while_a_bundle_pull_hangs() {
    let issuer = Issuer::new();
    let metrics_port = free_port();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bundle_url = format!("http://{}/bundle", silent.local_addr().unwrap());
    let _b = broker_with(&issuer, |s| {
        s.option("metrics_listen", format!("127.0.0.1:{metrics_port}"))
            .option("policy_url", &bundle_url)
            .option("insecure_unsigned_bundles", "true")
    });
    // The pull has begun once it connects; it then waits for an answer that never comes.
    let (_held, _) = silent.accept().unwrap();
    let quick = test_support::http_within(Duration::from_secs(3));
    for path in ["/readyz", "/metrics"] {
        let answer = quick.get(format!("http://127.0.0.1:{metrics_port}{path}")).send();
        assert!(answer.is_ok_and(|r| r.status() == 200), "{path} waited behind the pull");
    }
}

#[test]
fn counters_reach_sys_topics_and_prometheus() {
    let issuer = Issuer::new();
    let metrics_port = free_port();
    let b = broker_with(&issuer, |s| {
        s.option("metrics_listen", format!("127.0.0.1:{metrics_port}")).option("sys_interval", "1")
    });
    let viewer =
        Client::connected(Version::V311, b.port, "vera-m", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(viewer.subscribe("celine/telemetry/#"), 0x80);
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    let (_refused, _) = Client::connect(Version::V311, b.port, "garbage-m", "x", "garbage");
    let metrics =
        http().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().unwrap().text().unwrap();
    for line in [
        "mqtt_policy_decisions_total{action=\"subscribe\",decision=\"allow\"} 1",
        "mqtt_policy_decisions_total{action=\"subscribe\",decision=\"deny\"} 1",
        "mqtt_policy_connections_total{result=\"refused\"} 1",
        "mqtt_policy_connections_total{result=\"accepted\"} 1",
        "mqtt_policy_generation 1",
        "mqtt_policy_swaps_total{result=\"rejected\"} 0",
        // One check in eight is timed, the first included.
        "mqtt_policy_check_duration_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    let ready = http().get(format!("http://127.0.0.1:{metrics_port}/readyz")).send().unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.text().unwrap(), "ready: policy generation 1, signing keys 1\n");
    let elsewhere = http().get(format!("http://127.0.0.1:{metrics_port}/readyzz")).send().unwrap();
    assert_eq!(elsewhere.status(), 404);
    let admin = Client::connected(Version::V5, b.port, "adam-sys", "adam", &issuer.user("adam", &["admins"]));
    assert_eq!(admin.subscribe("$SYS/broker/mqtt-policy/#"), 1);
    let mut seen = std::collections::HashMap::new();
    wait_for("the plugin's $SYS topics", mqtt::WAIT, || {
        if let Some(Event::Message { topic, payload }) = admin.next_within(Duration::from_millis(200)) {
            seen.insert(topic, String::from_utf8(payload).unwrap());
        }
        // Retained values from before the viewer's checks may come first.
        seen.get("$SYS/broker/mqtt-policy/checks/denied").is_some_and(|d| d.parse::<u64>().unwrap() >= 1)
            && seen.contains_key("$SYS/broker/mqtt-policy/generation")
    });
    assert_eq!(seen["$SYS/broker/mqtt-policy/generation"], "1");
    assert_eq!(viewer.subscribe("$SYS/broker/mqtt-policy/#"), 0x80, "only superusers read them");
}

#[test]
fn wrong_options_stop_the_broker_with_a_message_naming_the_option() {
    let issuer = Issuer::new();
    let setup = Setup::new();
    let jwks = setup.file("jwks.json", issuer.jwks());
    let policy = setup.file("policy.json", POLICY);
    let misspelt =
        setup.option("polcy", policy.display().to_string()).option("jwks_file", jwks.display().to_string());
    let (status, log) = Broker::start_failing(misspelt);
    assert!(!status.success());
    assert!(log.contains("unknown option plugin_opt_polcy; did you mean plugin_opt_policy?"), "{log}");

    let setup = Setup::new();
    let jwks = setup.file("jwks.json", issuer.jwks());
    let broken = setup.file(
        "policy.json",
        "{\"celine\": {\"mqtt\": {\"acl\": {\"rules\": [{\"topics\": [\"a/#/b\"], \"actions\": \"*\"}]}}}}",
    );
    let (status, log) = Broker::start_failing(
        setup.option("policy", broken.display().to_string()).option("jwks_file", jwks.display().to_string()),
    );
    assert!(!status.success());
    assert!(log.contains("celine.mqtt.acl.rules[0].topics[0]"), "the load error names its JSON path:\n{log}");

    let setup = Setup::new();
    let policy = setup.file("policy.json", POLICY);
    let (status, log) = Broker::start_failing(
        setup.option("policy", policy.display().to_string()).option("jwks_file", "/nonexistent/jwks.json"),
    );
    assert!(!status.success());
    assert!(log.contains("plugin_opt_jwks_file") && log.contains("/nonexistent/jwks.json"), "{log}");

    // Test cases named but none there: refused (the policy would otherwise run untested).
    let setup = Setup::new();
    let policy = setup.file("policy.json", POLICY);
    let jwks = setup.file("jwks.json", issuer.jwks());
    let empty = setup.dir.path().join("no-cases");
    std::fs::create_dir(&empty).unwrap();
    let (status, log) = Broker::start_failing(
        setup
            .option("policy", policy.display().to_string())
            .option("jwks_file", jwks.display().to_string())
            .option("tests", empty.display().to_string()),
    );
    assert!(!status.success());
    assert!(log.contains("holds no policy test cases"), "{log}");
}

#[test]
fn an_unwritable_module_cache_costs_a_compile_and_the_broker_stops_cleanly() {
    let issuer = Issuer::new();
    // Nobody can create a directory under /proc: as with a home Mosquitto's user cannot write.
    let mut b = broker_with(&issuer, |s| s.option("cache_dir", "/proc/mqtt-policy-cache"));
    b.wait_for_log_after(0, "could not cache the compiled module", mqtt::WAIT);
    let viewer =
        Client::connected(Version::V311, b.port, "vera-c", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    if rustix::process::geteuid().is_root() {
        // Started as root: Mosquitto dropped to its own user before loading the plugin.
        let status = std::fs::read_to_string(format!("/proc/{}/status", b.pid())).unwrap();
        let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_string();
        assert!(!uid.split_whitespace().skip(1).all(|u| u == "0"), "the broker still runs as root: {uid}");
    }
    drop(viewer);
    let status = b.terminate();
    assert!(
        status.success(),
        "the broker crashed on shutdown (plugin threads left running?): {status}\n{}",
        b.log()
    );
    assert!(b.log().contains("mqtt-policy: stopping"));
}

#[test]
fn dev_mode_trusts_the_dev_key_in_its_state_directory() {
    let state = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(state.path()).unwrap();
    let token = key.sign(&claims(&TokenSpec::dev_user("dana", &["viewers"], 600), now()).unwrap()).unwrap();
    let setup = Setup::new();
    let policy = setup.file("policy.json", POLICY);
    // The dev key is private (0600, root's): the broker keeps root's rights to read it.
    let b = Broker::start(
        setup
            .option("policy", policy.display().to_string())
            .option("dev", "true")
            .option("state_dir", state.path().display().to_string())
            .config("user root"),
    );
    let dana = Client::connected(Version::V5, b.port, "dana-1", "dana", &token);
    assert_eq!(dana.subscribe("celine/telemetry/+/+/readings"), 1);
}

#[test]
#[ignore = "needs Keycloak: run with `cargo xtask e2e` (it installs Keycloak and sets MQTT_POLICY_KEYCLOAK_*)"]
fn a_keycloak_client_credentials_token_connects_and_publishes() {
    let kc = test_support::keycloak::Keycloak::start();
    let setup = Setup::new();
    let policy = setup.file("policy.json", POLICY);
    let b = Broker::start(setup.option("policy", policy.display().to_string()).option("issuer", kc.issuer()));
    let service = kc.service_token("svc-digital-twin", None);
    let erin = kc.user_token("erin");
    let follower = Client::connected(Version::V311, b.port, "erin-kc", "erin", &erin);
    assert_eq!(follower.subscribe("celine/digital-twin/events/#"), 1);
    let twin = Client::connected(Version::V5, b.port, "twin-kc", "", &service);
    twin.publish("celine/digital-twin/events/pump/p9", "from keycloak");
    assert_eq!(follower.message(), ("celine/digital-twin/events/pump/p9".into(), "from keycloak".into()));
    let line = b.wait_for_log_after(0, "connected client \"twin-kc\"", mqtt::WAIT);
    assert!(line.contains("service \"svc-digital-twin\""), "{line}");
}

#[test]
fn wills_and_retained_messages_are_decided_as_the_connection_that_left_them() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let editor =
        Client::connected(Version::V311, b.port, "erin-will", "erin", &issuer.user("erin", &["editors"]));
    assert_eq!(editor.subscribe("celine/digital-twin/events/#"), 1);
    // A viewer's will on a topic it may not publish to: Mosquitto checks it when it sends it,
    // after the disconnect event, and it is dropped.
    let viewer = WillClient::connect(
        b.port,
        "vera-will",
        "vera",
        &issuer.user("vera", &["viewers"]),
        ("celine/digital-twin/events/pump/p1", "forged will"),
    );
    b.wait_for_log_after(0, "connected client \"vera-will\"", mqtt::WAIT);
    let mark = b.log_mark();
    viewer.vanish();
    let record =
        b.wait_for_record_after(mark, "publish", "celine/digital-twin/events/pump/p1", "deny", mqtt::WAIT);
    assert_eq!(record["clientid"], "vera-will", "{record}");
    // A service's will on its own namespace is delivered, after its disconnect event too.
    let twin = WillClient::connect(
        b.port,
        "twin-will",
        "svc-digital-twin",
        &issuer.service("svc-digital-twin", &["mqtt.write"]),
        ("celine/digital-twin/events/twin/status", "offline"),
    );
    b.wait_for_log_after(0, "connected client \"twin-will\"", mqtt::WAIT);
    twin.vanish();
    assert!(editor.messages_until("offline").is_empty(), "the viewer's will was delivered");

    // Retained messages are checked as deliveries when a subscription picks them up.
    let admin =
        Client::connected(Version::V5, b.port, "adam-retain", "adam", &issuer.user("adam", &["admins"]));
    admin.publish_with("celine/telemetry/meter/m9/readings", "retained 9", true);
    admin.publish_with("celine/users/alice/inbox", "retained for alice", true);
    let viewer =
        Client::connected(Version::V311, b.port, "vera-retain", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    assert_eq!(viewer.message(), ("celine/telemetry/meter/m9/readings".into(), "retained 9".into()));
    let alice =
        Client::connected(Version::V5, b.port, "alice-retain", "alice", &issuer.user("alice", &["users"]));
    assert_eq!(alice.subscribe("celine/users/alice/#"), 1);
    assert_eq!(alice.message(), ("celine/users/alice/inbox".into(), "retained for alice".into()));
}

/// Seconds since the epoch, with the fraction.
fn now_secs() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

#[test]
fn a_connection_ends_within_two_seconds_of_its_tokens_expiry_without_its_will() {
    let issuer = Issuer::new();
    let b = broker_with(&issuer, |s| s.option("leeway", "0"));
    let admin = Client::connected(Version::V5, b.port, "adam-exp", "adam", &issuer.user("adam", &["admins"]));
    assert_eq!(admin.subscribe("celine/digital-twin/events/#"), 1);
    // Long enough for the clients to connect and a message to pass on a slow machine.
    let claims = issuer.claims(Some("vera"), None, &["viewers"], &[], 5);
    let exp = claims["exp"].as_u64().expect("exp");
    let short = issuer.sign(&claims);
    let viewer = Client::connected(Version::V5, b.port, "vera-exp", "vera", &short);
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    // A service with a will on a topic it may publish to, whose token expires with the viewer's.
    let twin_token = issuer.sign(&issuer.claims(None, Some("svc-digital-twin"), &[], &["mqtt.write"], 5));
    let _twin = WillClient::connect(
        b.port,
        "twin-exp",
        "svc-digital-twin",
        &twin_token,
        ("celine/digital-twin/events/twin/status", "offline"),
    );
    b.wait_for_log_after(0, "connected client \"twin-exp\"", mqtt::WAIT);
    // Connected and receiving until the token expires, then disconnected within 2 s.
    admin.publish("celine/telemetry/meter/m1/readings", "before expiry");
    assert_eq!(viewer.message().1, "before expiry");
    let ended = loop {
        match viewer.next() {
            Some(Event::Closed(_)) => break now_secs(),
            Some(_) => continue,
            None => {
                panic!("vera-exp was still connected {WAIT:?} after its token expired", WAIT = mqtt::WAIT)
            }
        }
    };
    assert!(ended >= exp as f64 - 0.05, "ended at {ended}, before its token expired at {exp}");
    assert!(ended <= exp as f64 + 2.0, "ended at {ended}, over 2 s after its token expired at {exp}");
    let line = b.wait_for_log_after(0, "disconnected client \"twin-exp\": its token expired", mqtt::WAIT);
    assert!(line.contains("its will is not sent"), "{line}");
    b.wait_for_log_after(0, "disconnected client \"vera-exp\": its token expired", mqtt::WAIT);
    // The service's will never came: the admin sees the next message on that topic first.
    let other =
        Client::connected(Version::V311, b.port, "adam-exp-2", "adam", &issuer.user("adam", &["admins"]));
    other.publish("celine/digital-twin/events/twin/status", "marker");
    assert!(admin.messages_until("marker").is_empty(), "the will of an expired connection was sent");
}

#[test]
fn a_client_that_reauthenticates_stays_connected_past_its_first_tokens_expiry() {
    let issuer = Issuer::new();
    let b = broker_with(&issuer, |s| s.option("leeway", "0").option("watch", "false"));
    let admin = Client::connected(Version::V5, b.port, "adam-re", "adam", &issuer.user("adam", &["admins"]));
    let claims = issuer.claims(Some("vera"), None, &["viewers"], &[], 5);
    let first_exp = claims["exp"].as_u64().expect("exp");
    let short = issuer.sign(&claims);
    // No username: the broker knows the client by its subject id.
    let mut vera = JwtClient::connect(b.port, "vera-re", None, &short).expect("admitted with method jwt");
    let line = b.wait_for_log_after(0, "connected client \"vera-re\"", mqtt::WAIT);
    assert!(line.contains("user \"vera\""), "{line}");
    assert_eq!(vera.subscribe("celine/telemetry/+/+/readings"), 1);
    vera.reauthenticate(&issuer.user("vera", &["viewers"])).expect("a fresh token for the same subject");
    b.wait_for_log_after(0, "re-authenticated client \"vera-re\" as user \"vera\"", mqtt::WAIT);
    // Past the first token's expiry (and the 2 s a kick may take): still connected.
    let quiet = (first_exp as f64 + 2.5 - now_secs()).max(0.0);
    assert_eq!(vera.next(Duration::from_secs_f64(quiet)), None, "the connection ended");
    admin.publish("celine/telemetry/meter/m2/readings", "after the first expiry");
    let got = vera.next(mqtt::WAIT);
    assert_eq!(
        got,
        Some(Seen::Message {
            topic: "celine/telemetry/meter/m2/readings".into(),
            payload: "after the first expiry".into()
        })
    );
    // Mosquitto re-checks every client on reload through the basic-auth event, with no
    // password for this one: it stays.
    let policy = b.setup.dir.path().join("policy.json");
    write_readable(&policy, widened_policy().as_bytes());
    let mark = b.log_mark();
    b.hang_up();
    b.wait_for_log_after(mark, "swapped in a new generation", SWAP_WAIT);
    assert_eq!(vera.subscribe("celine/telemetry/#"), 1, "decided by the reloaded policy");
    admin.publish("celine/telemetry/meter/m2/readings", "after the reload");
    assert!(
        matches!(vera.next(mqtt::WAIT), Some(Seen::Message { payload, .. }) if payload == "after the reload")
    );
}

#[test]
fn a_reauthentication_with_another_subjects_token_or_a_bad_one_ends_the_connection() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let mut vera =
        JwtClient::connect(b.port, "vera-x", Some("vera"), &issuer.user("vera", &["viewers"])).unwrap();
    let refused = vera.reauthenticate(&issuer.user("olga", &["viewers"]));
    assert!(refused.is_err(), "another subject's token was accepted");
    assert!(matches!(vera.next(mqtt::WAIT), Some(Seen::Closed(_)) | None));
    let line = b.wait_for_log_after(0, "refused the re-authentication of client \"vera-x\"", mqtt::WAIT);
    assert!(line.contains("names user \"olga\""), "{line}");
    let mut erin = JwtClient::connect(b.port, "erin-x", None, &issuer.user("erin", &["editors"])).unwrap();
    assert!(erin.reauthenticate("not.a.token").is_err(), "a broken token was accepted");
    b.wait_for_log_after(0, "refused the re-authentication of client \"erin-x\"", mqtt::WAIT);
    // A CONNECT with method jwt and no token is refused.
    let refused = JwtClient::connect(b.port, "olga-x", None, "").err().unwrap_or_default();
    assert!(refused.contains("0x87"), "{refused}");
}

#[test]
fn a_refreshed_token_with_fewer_groups_loses_the_matching_deliveries() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let twin = Client::connected(
        Version::V311,
        b.port,
        "twin-g",
        "svc-digital-twin",
        &issuer.service("svc-digital-twin", &["mqtt.write"]),
    );
    let admin = Client::connected(Version::V5, b.port, "adam-g", "adam", &issuer.user("adam", &["admins"]));
    let mut erin =
        JwtClient::connect(b.port, "erin-g", Some("erin"), &issuer.user("erin", &["editors", "viewers"]))
            .unwrap();
    assert_eq!(erin.subscribe("celine/digital-twin/events/#"), 1);
    assert_eq!(erin.subscribe("celine/telemetry/+/+/readings"), 1);
    twin.publish("celine/digital-twin/events/pump/p1", "as an editor");
    assert!(
        matches!(erin.next(mqtt::WAIT), Some(Seen::Message { payload, .. }) if payload == "as an editor")
    );
    erin.reauthenticate(&issuer.user("erin", &["viewers"])).expect("same subject, fewer groups");
    // The very next delivery on the editors' topic is denied; telemetry still comes.
    twin.publish("celine/digital-twin/events/pump/p1", "after the refresh");
    admin.publish("celine/telemetry/meter/m3/readings", "marker");
    assert_eq!(
        erin.next(mqtt::WAIT),
        Some(Seen::Message { topic: "celine/telemetry/meter/m3/readings".into(), payload: "marker".into() }),
        "a delivery the refreshed token no longer allows came first"
    );
}

/// Threads of the broker's process.
fn threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn a_key_added_to_the_key_set_is_trusted_after_a_refresh_and_no_thread_waits_between_refreshes() {
    let (first, second) = (Issuer::new(), Issuer::new());
    let mut jwks = None;
    let b = broker_with(&first, |s| {
        jwks = Some(s.file("jwks.json", first.jwks()));
        s.option("jwks_refresh", "1").option("jwks_min_refresh", "1").option("metrics_listen", "127.0.0.1:0")
    });
    // Between refreshes (every second here) the broker runs alone: the plugin's work is done
    // on threads that end with it.
    wait_for("the broker to run on its thread alone", Duration::from_secs(20), || threads_of(b.pid()) == 1);
    let token = second.user("vera", &["viewers"]);
    let (_c, refused) = Client::connect(Version::V311, b.port, "second-key", "vera", &token);
    assert_eq!(refused, Event::Refused(5), "a key the set does not hold");
    // The identity provider publishes the second key: a refresh takes it.
    let mut both: serde_json::Value = serde_json::from_str(&first.jwks()).unwrap();
    let more: serde_json::Value = serde_json::from_str(&second.jwks()).unwrap();
    both["keys"].as_array_mut().unwrap().extend(more["keys"].as_array().unwrap().iter().cloned());
    write_readable(jwks.as_ref().unwrap(), both.to_string().as_bytes());
    wait_for("a token by the new key to connect", Duration::from_secs(20), || {
        Client::connect(Version::V311, b.port, "second-key", "vera", &token).1 == Event::Connected
    });
    wait_for("the broker to run on its thread alone again", Duration::from_secs(20), || {
        threads_of(b.pid()) == 1
    });
}

#[test]
fn a_swap_that_denies_a_topic_stops_deliveries_the_connections_residual_was_allowing() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let policy = b.setup.dir.path().join("policy.json");
    let viewer =
        Client::connected(Version::V311, b.port, "vera-residual", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    let admin =
        Client::connected(Version::V5, b.port, "adam-residual", "adam", &issuer.user("adam", &["admins"]));
    let secret = "celine/telemetry/meter/secret-1/readings";
    admin.publish(secret, "before");
    admin.publish("celine/telemetry/meter/m2/readings", "marker");
    assert_eq!(viewer.messages_until("marker"), vec![(secret.to_string(), "before".to_string())]);

    // The new policy denies viewers that one meter: the connection, still open, is prepared
    // again under the new generation, and its residual no longer covers the meter.
    let mut doc: serde_json::Value = serde_json::from_str(POLICY).unwrap();
    let rules = doc["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap();
    rules.push(json!({"id": "no-secret-meter", "subjects": {"groups": ["viewers"]},
        "topics": [secret], "actions": ["read"], "effect": "deny"}));
    let mark = b.log_mark();
    write_readable(&policy, doc.to_string().as_bytes());
    b.wait_for_log_after(mark, "swapped in a new generation", SWAP_WAIT);
    admin.publish(secret, "after");
    admin.publish("celine/telemetry/meter/m2/readings", "marker");
    assert!(viewer.messages_until("marker").is_empty(), "the denied meter's reading was delivered");
    let record = b.wait_for_record_after(mark, "read", secret, "deny", mqtt::WAIT);
    assert_eq!(record["rule"], "no-secret-meter");
}

#[test]
fn retained_telemetry_is_refused_retained_state_is_kept_and_a_qos_the_rule_does_not_grant_is_refused() {
    let issuer = Issuer::new();
    let b = broker(&issuer);
    let meter_feed = Client::connected(
        Version::V5,
        b.port,
        "ingest-1",
        "svc-ingest",
        &issuer.service("svc-ingest", &["telemetry.write"]),
    );
    let twin = Client::connected(
        Version::V5,
        b.port,
        "twin-1",
        "svc-digital-twin",
        &issuer.service("svc-digital-twin", &["mqtt.write"]),
    );
    let reading = "celine/telemetry/meter/m1/readings";
    let state = "celine/digital-twin/state/pump/p1";

    // A retained reading is refused whole: the QoS 1 publisher hears 0x87 and nothing is
    // stored. A retained state is stored. Both before anyone subscribes.
    assert_eq!(meter_feed.publish_at(reading, "retained reading", 1, true), Some(0x87));
    b.wait_for_record_after(0, "publish", reading, "deny", mqtt::WAIT);
    // Accepted: 0x10 (no matching subscribers) is a success code too.
    let accepted = |code: Option<u8>| code.is_some_and(|c| c < 0x80);
    assert!(accepted(twin.publish_at(state, "running", 1, true)));
    // State that is not retained is refused: state-retained-only.
    assert_eq!(twin.publish_at(state, "live state", 1, false), Some(0x87));

    // Late subscribers: the editor gets the stored state at once, the viewer no reading.
    let editor = Client::connected(Version::V5, b.port, "erin-1", "erin", &issuer.user("erin", &["editors"]));
    let viewer = Client::connected(Version::V5, b.port, "vera-1", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(editor.subscribe("celine/digital-twin/state/#"), 1);
    assert_eq!(
        editor.message(),
        (state.into(), "running".into()),
        "the retained state reaches a late subscriber"
    );
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    assert!(accepted(meter_feed.publish_at(reading, "live reading", 1, false)));
    assert_eq!(viewer.message(), (reading.into(), "live reading".into()), "no retained reading was stored");

    // simulation-qos0 grants QoS 0 only: a QoS 1 publish is refused (a broker cannot lower
    // it), a QoS 0 one is delivered.
    let results = "celine/digital-twin/simulation/sim-1/results";
    assert_eq!(editor.subscribe("celine/digital-twin/simulation/#"), 1);
    assert_eq!(twin.publish_at(results, "at QoS 1", 1, false), Some(0x87));
    let refused = b.wait_for_record_after(0, "publish", results, "deny", mqtt::WAIT);
    assert!(refused["reason"].as_str().unwrap_or("").contains("no rule allows"), "{refused}");
    assert_eq!(twin.publish_at(results, "at QoS 0", 0, false), None);
    assert_eq!(editor.message(), (results.into(), "at QoS 0".into()), "the QoS 1 publish was delivered");
}

#[test]
fn a_client_over_its_limits_loses_the_excess_and_keeps_its_connection() {
    let issuer = Issuer::new();
    let metrics_port = free_port();
    let b = broker_with(&issuer, |s| s.option("metrics_listen", format!("127.0.0.1:{metrics_port}")));
    let events = "celine/digital-twin/events/pump/p1";
    let editor = Client::connected(Version::V5, b.port, "erin-l", "erin", &issuer.user("erin", &["editors"]));
    assert_eq!(editor.subscribe("celine/digital-twin/events/#"), 1);
    // The policy's "throttled" limits: 1 publish a second, a burst of 3, 64-byte payloads,
    // 2 subscriptions.
    let throttled = Client::connected(
        Version::V5,
        b.port,
        "throttled-1",
        "svc-throttled",
        &issuer.service("svc-throttled", &["mqtt.write"]),
    );
    let started = std::time::Instant::now();
    let codes: Vec<u8> = (0..10)
        .map(|i| throttled.publish_at(events, &format!("m{i}"), 1, false).expect("a PUBACK at QoS 1"))
        .collect();
    let seconds = started.elapsed().as_secs();
    let accepted: Vec<usize> = (0..10).filter(|i| codes[*i] < 0x80).collect();
    assert_eq!(accepted[..3], [0, 1, 2], "the burst passes: {codes:x?}");
    assert!(accepted.len() as u64 <= 3 + seconds + 1, "{codes:x?} in {seconds} s");
    assert!(
        codes.iter().all(|c| *c < 0x80 || *c == 0x87),
        "the excess is refused as not authorized: {codes:x?}"
    );
    let refused = 10 - accepted.len();
    assert!(refused > 0, "{codes:x?}");
    // Exactly the accepted ones are delivered.
    for i in &accepted {
        assert_eq!(editor.message(), (events.to_string(), format!("m{i}")));
    }
    let record = b.wait_for_record_after(0, "publish", events, "deny", mqtt::WAIT);
    let reason = record["reason"].as_str().unwrap_or("");
    assert!(reason.contains("over its limit") && reason.contains("1 publishes a second"), "{record}");

    // A payload over max_payload_bytes is refused for its size, whatever the rate.
    let mark = b.log_mark();
    assert_eq!(throttled.publish_at(events, &"x".repeat(65), 1, false), Some(0x87));
    let record = b.wait_for_record_after(mark, "publish", events, "deny", mqtt::WAIT);
    assert!(record["reason"].as_str().unwrap_or("").contains("max_payload_bytes 64"), "{record}");

    // The client is still connected: once the rate allows, its next publish goes through.
    let mut later = Vec::new();
    wait_for("a publish within the rate again", mqtt::WAIT, || {
        let code = throttled.publish_at(events, "later", 1, false).unwrap();
        later.push(code);
        code < 0x80
    });
    assert_eq!(editor.message(), (events.to_string(), "later".to_string()));
    let also_refused = later.len() - 1;

    // Subscriptions: two are held; a third is refused (SUBACK 0x87), a held one may be
    // renewed, and leaving one makes room.
    let tess = Client::connected(Version::V5, b.port, "tess-1", "tess", &issuer.user("tess", &["editors"]));
    assert_eq!(tess.subscribe("celine/digital-twin/events/#"), 1);
    assert_eq!(tess.subscribe("celine/digital-twin/state/#"), 1);
    assert_eq!(tess.subscribe("celine/digital-twin/simulation/#"), 0x87, "over max_subscriptions 2");
    assert_eq!(tess.subscribe("celine/digital-twin/events/#"), 1, "renewing a held filter");
    tess.unsubscribe("celine/digital-twin/state/#");
    assert_eq!(tess.subscribe("celine/digital-twin/simulation/#"), 1, "room after an unsubscribe");
    // Erin has no limits.
    assert_eq!(editor.subscribe("celine/digital-twin/state/#"), 1);
    assert_eq!(editor.subscribe("celine/digital-twin/simulation/#"), 1);

    let metrics =
        http().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().unwrap().text().unwrap();
    let count = |limit: &str| -> u64 {
        let prefix = format!("mqtt_policy_limit_refusals_total{{limit=\"{limit}\"}} ");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in\n{metrics}"));
        line[prefix.len()..].parse().unwrap()
    };
    assert_eq!(count("publish_messages") as usize, refused + also_refused, "{metrics}");
    assert_eq!(count("max_payload_bytes"), 1);
    assert_eq!(count("max_subscriptions"), 1);
    assert_eq!(count("retain"), 0);
}

/// The revocation scene: a viewer (over `version`) subscribed to `filters`, a feed service,
/// and a policy file change that leaves viewers meter readings only. Returns the viewer, the
/// feed, the log mark before the change, and the log's line naming the viewer's revoked
/// filters and its summary line.
fn viewer_loses_telemetry(
    b: &Broker,
    issuer: &Issuer,
    version: Version,
    filters: &[&str],
) -> (Client, Client, usize, String, String) {
    let token = issuer.user("vera", &["viewers"]);
    let viewer = Client::connected(version, b.port, "vera-revoked", "vera", &token);
    for filter in filters {
        assert_eq!(viewer.subscribe(filter), 1, "{filter}");
    }
    let feed = Client::connected(
        Version::V5,
        b.port,
        "feed-revoked",
        "svc-feed",
        &issuer.service("svc-feed", &["telemetry.write", "mqtt.write"]),
    );
    let mark = b.log_mark();
    write_readable(
        &b.setup.dir.path().join("policy.json"),
        POLICY
            .replace("\"celine/telemetry/+/+/readings\"", "\"celine/telemetry/meter/+/readings\"")
            .as_bytes(),
    );
    b.wait_for_log_after(mark, "swapped in a new generation", SWAP_WAIT);
    let line = b.wait_for_log_after(mark, "revoked: client \"vera-revoked\"", SWAP_WAIT);
    let summary = b.wait_for_log_after(mark, "subscriptions the policy no longer grants", SWAP_WAIT);
    (viewer, feed, mark, line, summary)
}

/// `on_revoke unsubscribe` needs Mosquitto 2.1's `mosquitto_subscription_delete`. On 2.0
/// (Debian's, which the suite runs) the broker refuses to start with it; against a 2.1
/// (`MQTT_POLICY_MOSQUITTO`, CONTRIBUTING.md) the revoked subscription is removed while the
/// client stays connected.
#[test]
fn on_revoke_unsubscribe_removes_the_subscription_on_2_1_and_stops_a_2_0_broker() {
    let issuer = Issuer::new();
    if test_support::mosquitto::version() < (2, 1) {
        let setup = Setup::new();
        let policy = setup.file("policy.json", POLICY);
        let jwks = setup.file("jwks.json", issuer.jwks());
        let (status, log) = Broker::start_failing(
            setup
                .option("policy", policy.display().to_string())
                .option("jwks_file", jwks.display().to_string())
                .option("on_revoke", "unsubscribe"),
        );
        assert!(!status.success());
        assert!(
            log.contains("plugin_opt_on_revoke unsubscribe needs Mosquitto 2.1")
                && log.contains("use keep or disconnect"),
            "{log}"
        );
        return;
    }
    let metrics_port = free_port();
    let b = broker_with(&issuer, |s| {
        s.option("on_revoke", "unsubscribe").option("metrics_listen", format!("127.0.0.1:{metrics_port}"))
    });
    let (viewer, feed, mark, line, summary) = viewer_loses_telemetry(
        &b,
        &issuer,
        Version::V5,
        &[
            "celine/telemetry/+/+/readings",
            "$share/dash/celine/telemetry/+/+/readings",
            "celine/users/vera/#",
        ],
    );
    assert!(line.contains("'celine/telemetry/+/+/readings'"), "{line}");
    assert!(line.contains("'$share/dash/celine/telemetry/+/+/readings'"), "{line}");
    assert!(summary.contains("on_revoke unsubscribe"), "{summary}");
    // The subscriptions, shared one included, are gone from the broker: a reading on them is
    // not even checked, while the viewer, still connected, receives what it keeps.
    feed.publish_at("celine/telemetry/inverter/i1/readings", "revoked reading", 1, false);
    feed.publish_at("celine/users/vera/inbox", "still here", 1, false);
    assert_eq!(viewer.message(), ("celine/users/vera/inbox".to_string(), "still here".to_string()));
    // A record the broker logs after any check of that reading: once it is there, a record
    // of the reading would be too.
    viewer.publish_at("celine/telemetry/meter/m1/readings", "a viewer's reading", 0, false);
    b.wait_for_record_after(mark, "publish", "celine/telemetry/meter/m1/readings", "deny", mqtt::WAIT);
    let after = b.log();
    let asked = "\"topic\":\"celine/telemetry/inverter/i1/readings\",\"action\":\"read\"";
    assert!(!after.contains(asked), "a removed subscription is not asked about:\n{after}");
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 0x87, "refused under the new policy");
    let metrics =
        http().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("mqtt_policy_revoked_clients_total{action=\"unsubscribed\"} 1"), "{metrics}");
}

#[test]
fn a_swap_that_revokes_a_subscription_disconnects_the_client_or_keeps_it_receiving_nothing() {
    for on_revoke in ["disconnect", "keep"] {
        let issuer = Issuer::new();
        let b = broker_with(&issuer, |s| s.option("on_revoke", on_revoke));
        let token = issuer.user("vera", &["viewers"]);
        let (viewer, feed, mark, line, summary) = viewer_loses_telemetry(
            &b,
            &issuer,
            Version::V311,
            &["celine/telemetry/+/+/readings", "celine/users/vera/#"],
        );
        assert!(
            line.contains("'celine/telemetry/+/+/readings'") && !line.contains("celine/users/vera/#"),
            "{line}"
        );
        assert!(summary.contains(&format!("on_revoke {on_revoke}")), "{summary}");
        // Whom the swap's changes reach, of the two connected clients: the viewer, who loses.
        let reached =
            b.wait_for_log_after(mark, "which live identities the new generation's changes reach", SWAP_WAIT);
        assert!(reached.contains("identities=2") && reached.contains("affected=1"), "{reached}");
        assert!(reached.contains("lost=1") && reached.contains("gained=0"), "{reached}");
        if on_revoke == "disconnect" {
            wait_for("the viewer's disconnect", mqtt::WAIT, || {
                matches!(viewer.next_within(Duration::from_millis(100)), Some(Event::Closed(_)))
            });
            let again = Client::connected(Version::V311, b.port, "vera-revoked", "vera", &token);
            assert_eq!(
                again.subscribe("celine/telemetry/+/+/readings"),
                0x80,
                "refused under the new policy"
            );
        } else {
            // Still connected: a reading it may no longer read is not delivered, the next
            // message on a subscription it keeps is.
            feed.publish_at("celine/telemetry/inverter/i1/readings", "revoked reading", 1, false);
            feed.publish_at("celine/users/vera/inbox", "still here", 1, false);
            assert_eq!(viewer.message(), ("celine/users/vera/inbox".to_string(), "still here".to_string()));
        }
    }
}
