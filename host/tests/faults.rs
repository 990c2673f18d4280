//! A policy module that loops, panics or exhausts memory must cost one denied request, not
//! the host: the call is stopped (epoch deadline, memory limit), the request is denied with a
//! reason, the instance is replaced, and the fault is counted.
//!
//! Uses `testing/faulty-module`, built by `cargo xtask build` next to the real module.

use std::path::PathBuf;
use std::sync::Arc;

use mqtt_policy::runtime::{Action, Generation, Module, Request, Runtime, Subject, SubjectType};

mod common;

fn faulty_module_path() -> PathBuf {
    common::built_module("faulty.wasm")
}

fn faulty() -> Arc<Module> {
    let bytes = std::fs::read(faulty_module_path()).unwrap();
    Runtime::new(None).unwrap().module(&bytes).unwrap()
}

fn viewer() -> Subject {
    Subject { id: "u1".into(), type_: SubjectType::User, groups: vec!["viewers".into()], scopes: vec![] }
}

fn read(topic: &str) -> Request {
    Request {
        subject: viewer(),
        topic: topic.into(),
        action: Action::Read,
        clientid: "c".into(),
        username: String::new(),
    }
}

const TELEMETRY: &str = "celine/telemetry/meter/m1/readings";

#[test]
fn a_looping_panicking_or_hungry_guest_costs_one_denied_request() {
    let module = faulty();
    assert_eq!(module.version, "faulty-module (tests only)");
    let generation = Generation::new(module, include_str!("../../policies/celine.json")).unwrap();
    assert!(generation.check(&read(TELEMETRY)).allow);
    for (topic, why) in
        [("fault/loop", "ran out of time"), ("fault/panic", "trapped"), ("fault/oom", "trapped")]
    {
        let d = generation.check(&read(topic));
        assert!(!d.allow, "{topic}");
        assert!(d.reason.contains(why), "{topic}: {}", d.reason);
        assert_eq!(d.rule, None);
        // The trapped instance was dropped; the next request gets a working one.
        let after = generation.check(&read(TELEMETRY));
        assert!(after.allow, "after {topic}: {}", after.reason);
    }
}

#[test]
fn a_guest_that_traps_while_loading_is_refused() {
    let err = Generation::new(faulty(), r#"{"celine":{"mqtt":{"acl":{"rules":[]}}},"x":"trap-on-load"}"#)
        .err()
        .expect("a module that traps in load() gives no generation");
    assert!(format!("{err:#}").contains("trapped"), "{err:#}");
}

#[test]
fn the_server_stays_up_and_counts_module_faults() {
    let state = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .current_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".."))
        .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--module"])
        .arg(faulty_module_path())
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

#[test]
fn compiled_modules_are_cached_in_the_state_directory() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(faulty_module_path()).unwrap();
    let first = Runtime::new(Some(dir.path().to_path_buf())).unwrap().module(&bytes).unwrap();
    let cached: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached[0].to_string_lossy().ends_with(".cwasm"));
    assert!(cached[0].file_name().unwrap().to_string_lossy().starts_with(&first.hash));
    // A new runtime (a restart) loads the cached code and works the same.
    let again = Runtime::new(Some(dir.path().to_path_buf())).unwrap().module(&bytes).unwrap();
    assert_eq!(again.version, first.version);
    let generation = Generation::new(again, include_str!("../../policies/celine.json")).unwrap();
    assert!(generation.check(&read(TELEMETRY)).allow);
    // A damaged cache entry is ignored and rewritten, not fatal.
    std::fs::write(&cached[0], b"not a compiled module").unwrap();
    let recovered = Runtime::new(Some(dir.path().to_path_buf())).unwrap().module(&bytes).unwrap();
    assert!(
        Generation::new(recovered, include_str!("../../policies/celine.json"))
            .unwrap()
            .check(&read(TELEMETRY))
            .allow
    );
    assert!(std::fs::metadata(&cached[0]).unwrap().len() > 1000, "rewritten");
}
