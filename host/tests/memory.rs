//! One client flooding unique, long topics must not grow the service beyond its cache budget
//! (`--cache-memory`): the caches are bounded in bytes, not in entries. Measured before the
//! budget: 6,000 ACL calls with 60 KB unique topics grew the server from 29 MB to 387 MB.

mod common;
use common::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_flood_of_long_unique_topics_stays_within_the_cache_budget() {
    let s = Server::rsa(&["--cache-memory", "16"]);
    let viewer = sign("rsa-a.pem", "key-a", &viewer_claims());
    let http = client();
    let call = |topic: &str| {
        let body = serde_json::json!({"clientid": "flood", "topic": topic, "acc": 1}).to_string();
        let r = http
            .post(s.url("/mqtt/acl"))
            .bearer_auth(&viewer)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert!(r.status().as_u16() < 500, "{}", r.status());
    };
    // Warm up (allocator arenas, instance pool), then measure.
    for i in 0..50 {
        call(&format!("celine/telemetry/warm-{i}/readings"));
    }
    let before = rss_kib(s.child.id());
    let filler = "x".repeat(60_000);
    for i in 0..3_000 {
        call(&format!("celine/telemetry/{i}-{filler}/readings"));
    }
    let after = rss_kib(s.child.id());
    let grown_mib = after.saturating_sub(before) / 1024;
    // 3,000 entries of ~60 KB would be ~180 MB unbounded; the budget is 16 MiB (plus what the
    // allocator keeps).
    assert!(grown_mib < 64, "the server grew by {grown_mib} MiB ({before} KiB → {after} KiB)");
    let metrics = http.get(s.ops("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("mqtt_policy_decision_cache_total"), "the cache was used");
}
