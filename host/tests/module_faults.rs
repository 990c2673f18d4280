//! A policy module that loops or panics costs the server one denied request: it keeps
//! answering and counts the faults in `/metrics`.

mod common;

const TELEMETRY: &str = "celine/telemetry/meter/m1/readings";

#[test]
fn the_server_stays_up_and_counts_module_faults() {
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .current_dir(test_support::repository())
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--module"])
        .arg(common::built_module("faulty.wasm"))
        .arg("--state-dir")
        .arg(state.path())
        .env("MQTT_POLICY_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let url = loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert!(n > 0, "the server exited before listening");
        if let Some(u) = line.trim().strip_prefix("mqtt-policy listening on ") {
            break u.to_string();
        }
    };
    let token = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .args(["token", "--dev", "--sub", "u1", "--groups", "viewers", "--state-dir"])
        .arg(state.path())
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let http = reqwest::blocking::Client::new();
    let acl = |topic: &str| {
        let r = http
            .post(format!("{url}/mqtt/acl"))
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
    let metrics = http.get(format!("{url}/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("mqtt_policy_module_traps_total 2"), "{metrics}");
    let _ = child.kill();
    let _ = child.wait();
}
