//! A policy module that loops or panics costs the server one denied request: it keeps
//! answering and counts the faults in `/metrics`.

mod common;

const TELEMETRY: &str = "celine/telemetry/meter/m1/readings";

#[test]
fn the_server_stays_up_and_counts_module_faults() {
    let module = common::built_module("faulty.wasm");
    let s = common::Server::start(&["--dev", "--module", module.to_str().unwrap()]);
    let token = common::dev_token(&s, &["--sub", "u1", "--groups", "viewers"]);
    let http = reqwest::blocking::Client::new();
    let acl = |topic: &str| {
        let r = http
            .post(s.url("/mqtt/acl"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"clientid": "c", "topic": topic, "acc": 1}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let (status, body) = acl("fault/loop");
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("ran out of time"), "{body}");
    assert_eq!(acl("fault/panic").0, 403);
    assert_eq!(acl(TELEMETRY).0, 200, "the host keeps answering");
    let metrics = http.get(s.ops("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("mqtt_policy_module_traps_total 2"), "{metrics}");
}
