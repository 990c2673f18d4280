//! The two front ends share one authorizer: for the same token and the same request, the
//! broker plugin (inside a real Mosquitto) and the HTTP service (as go-auth calls it) give
//! the same decision, write the same decision record, and count it under the same metrics.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use test_support::mosquitto::{Broker, Setup};

const CLIENT: &str = "vera-1";
const USERNAME: &str = "vera";
const ALLOWED: &str = "celine/telemetry/+/+/readings";
const DENIED: &str = "celine/telemetry/#";

/// The service's decision record for `topic`: the JSON after `audit: ` on the line naming it.
fn service_record(log: &std::path::Path, topic: &str) -> Value {
    let needle = format!("\"topic\":{}", json!(topic));
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap();
        if let Some(line) = text.lines().find(|l| l.contains("audit: ") && l.contains(&needle)) {
            return serde_json::from_str(line.split_once("audit: ").unwrap().1)
                .unwrap_or_else(|e| panic!("a record that is no JSON ({e}): {line}"));
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no record for {topic} in\n{text}");
        // The log is written by its own thread: look again shortly.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A subscription through the broker with `mosquitto_sub` (MQTT 3.1.1): was it granted?
fn subscribe(port: u16, token: &str, filter: &str) -> bool {
    let out = std::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv311", "-i", CLIENT, "-u", USERNAME])
        .args(["-P", token, "-t", filter, "-E", "-W", "10"])
        .output()
        .expect("mosquitto_sub (Debian's mosquitto-clients; `cargo xtask test` installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    // It says so when the broker refused the subscription (SUBACK 0x80).
    match (out.status.code(), err.contains("denied")) {
        (_, true) => false,
        (Some(0), false) => true,
        _ => panic!("mosquitto_sub failed: {err}"),
    }
}

/// The lines of `metric` in a Prometheus text, in order.
fn lines_of(text: &str, metric: &str) -> Vec<String> {
    text.lines().filter(|l| l.starts_with(metric)).map(str::to_string).collect()
}

#[test]
fn the_plugin_and_the_service_decide_record_and_count_a_request_alike() {
    let token = sign("rsa-a.pem", "key-a", &viewer_claims());
    let setup = Setup::new();
    let policy = setup.file("policy.json", include_str!("../../policies/celine.json"));
    let jwks = setup.file("jwks.json", std::fs::read(fixtures().join("jwks-a.json")).unwrap());
    let metrics_port = test_support::free_port();
    let broker = Broker::start(
        setup
            .option("policy", policy.display().to_string())
            .option("jwks_file", jwks.display().to_string())
            .option("issuer", ISSUER)
            // Allowed checks are recorded at debug level.
            .option("log_level", "debug")
            .option("metrics_listen", format!("127.0.0.1:{metrics_port}")),
    );
    let log = tempfile::NamedTempFile::new().unwrap();
    let jwks_file = fixtures().join("jwks-a.json");
    let service = Server::start_logged(
        &["--jwks-file", jwks_file.to_str().unwrap(), "--issuer", ISSUER, "--policy", "policies/celine.json"],
        log.path(),
    );
    // go-auth's http backend: a user call binds the username, then ACL calls carry it.
    let user = json_call(
        &service,
        reqwest::Method::POST,
        "/mqtt/user",
        &json!({"username": USERNAME, "password": token, "clientid": CLIENT}),
    );
    assert!(user.allowed(), "{}", user.body);

    for (filter, granted) in [(ALLOWED, true), (DENIED, false)] {
        assert_eq!(subscribe(broker.port, &token, filter), granted, "{filter} through the broker");
        let acl = json_call(
            &service,
            reqwest::Method::POST,
            "/mqtt/acl",
            &json!({"username": USERNAME, "clientid": CLIENT, "topic": filter, "acc": 4}),
        );
        assert_eq!(acl.allowed(), granted, "{filter} through the service: {}", acl.body);
        let decision = if granted { "allow" } else { "deny" };
        let in_broker =
            broker.wait_for_record_after(0, "subscribe", filter, decision, Duration::from_secs(10));
        let in_service = service_record(log.path(), filter);
        assert_eq!(in_broker, in_service, "the same record for {filter}");
        assert_eq!(in_broker["subject"], "u-viewer");
        assert_eq!(in_broker["username"], USERNAME);
        assert_eq!(in_broker["clientid"], CLIENT);
        assert!(in_broker["rule"].is_string() && in_broker["reason"].is_string(), "{in_broker}");
        // A granted wildcard subscription is watched: both say so (and only then).
        let watched = if granted { json!("wildcard") } else { Value::Null };
        assert_eq!(in_broker.get("watch").cloned().unwrap_or(Value::Null), watched, "{in_broker}");
    }

    let plugin_metrics =
        client().get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().unwrap().text().unwrap();
    let service_metrics = send(client().get(service.ops("/metrics"))).body;
    for metric in [
        "mqtt_policy_decisions_total",
        "mqtt_policy_decision_cache_total",
        "mqtt_policy_wildcard_subscriptions_total",
    ] {
        let (plugin, service) = (lines_of(&plugin_metrics, metric), lines_of(&service_metrics, metric));
        assert!(!plugin.is_empty(), "{metric} missing in\n{plugin_metrics}");
        assert_eq!(plugin, service, "{metric}");
    }
    assert!(
        plugin_metrics.contains("mqtt_policy_decisions_total{action=\"subscribe\",decision=\"allow\"} 1")
    );
    assert!(plugin_metrics.contains("mqtt_policy_decisions_total{action=\"subscribe\",decision=\"deny\"} 1"));
    assert!(
        plugin_metrics
            .contains("mqtt_policy_wildcard_subscriptions_total{subject_type=\"user\",group=\"viewers\"} 1"),
        "{plugin_metrics}"
    );
    // One histogram, with the same buckets in both.
    let buckets = |text: &str| {
        lines_of(text, "mqtt_policy_check_duration_seconds_bucket")
            .iter()
            .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(buckets(&plugin_metrics), buckets(&service_metrics));
    assert!(!buckets(&plugin_metrics).is_empty());
}
