//! The `mqtt-policy` binary as a user runs it: exit codes, output shapes, and the whole
//! decision corpus through `mqtt-policy eval`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    test_support::repository()
}

/// The binary, run from the repository root (so `policies/celine.json` is the default).
fn mqtt_policy() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"));
    c.current_dir(root()).env_remove("MQTT_POLICY_POLICY");
    c
}

#[test]
fn output_whose_reader_stops_early_ends_the_command_quietly() {
    // A who-can tree far larger than a pipe's buffer, read up to its first line (`| head -1`).
    let dir = tempfile::tempdir().unwrap();
    let rules: Vec<Value> = (0..3000)
        .map(|i| {
            serde_json::json!({"id": format!("r{i}"), "subjects": {"groups": ["g"]},
                "topics": [format!("a/{i}/#")], "actions": ["read", "subscribe"], "effect": "allow"})
        })
        .collect();
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, serde_json::json!({"celine": {"mqtt": {"acl": {"rules": rules}}}}).to_string())
        .unwrap();
    let mut child = mqtt_policy()
        .args(["who-can", "--policy", policy.to_str().unwrap(), "--subject"])
        .arg(r#"{"id": "u", "type": "user", "groups": ["g"]}"#)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut first)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(first.starts_with("user 'u'"), "{first}");
    assert_eq!(out.status.code(), Some(141), "what a shell says of `cat` ended by the closed pipe");
    assert_eq!(stderr(&out), "", "no panic, nothing to say");
}

fn run_with_stdin(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Write from a thread (a large input must not deadlock against a full stdout pipe), and
    // accept a broken pipe: `eval` with a broken policy exits before reading anything.
    let input = input.to_owned();
    let writer = std::thread::spawn(move || match stdin.write_all(input.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
        _ => {}
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}
fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

const VIEWER: &str = r#"{"id":"u1","type":"user","groups":["viewers"]}"#;

#[test]
fn check_exits_0_on_allow_1_on_deny_2_on_bad_input() {
    let allow = mqtt_policy()
        .args(["check", "--subject", VIEWER, "--action", "subscribe"])
        .args(["--topic", "celine/telemetry/meter/meter-001/readings"])
        .output()
        .unwrap();
    assert_eq!(allow.status.code(), Some(0), "{}", stderr(&allow));
    assert!(stdout(&allow).starts_with("ALLOW  subscribe"), "{}", stdout(&allow));
    assert!(stdout(&allow).contains("rule:     telemetry-viewers"));

    let deny = mqtt_policy()
        .args(["check", "--subject", VIEWER, "--action", "subscribe", "--topic", "celine/system/alerts/#"])
        .output()
        .unwrap();
    assert_eq!(deny.status.code(), Some(1));
    assert!(stdout(&deny).contains("deny-critical-alerts"), "{}", stdout(&deny));

    let bad_subject = mqtt_policy()
        .args(["check", "--subject", r#"{"id":"u1","type":"users"}"#, "--action", "read", "--topic", "a"])
        .output()
        .unwrap();
    assert_eq!(bad_subject.status.code(), Some(2));
    assert!(stderr(&bad_subject).contains("unknown subject type 'users'"), "{}", stderr(&bad_subject));

    let no_subject = mqtt_policy().args(["check", "--action", "read", "--topic", "a"]).output().unwrap();
    assert_eq!(no_subject.status.code(), Some(2));

    let bad_action = mqtt_policy()
        .args(["check", "--subject", VIEWER, "--action", "write", "--topic", "a"])
        .output()
        .unwrap();
    assert_eq!(bad_action.status.code(), Some(2));
}

#[test]
fn check_json_maps_claims_and_explains() {
    let o = mqtt_policy()
        .args(["check", "--json", "--action", "publish", "--topic", "celine/pipelines/status/etl-daily"])
        .args([
            "--claims",
            r#"{"sub":"x","preferred_username":"service-account-svc-pipelines","scope":"mqtt.write"}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["rule"], "pipeline-status");
    assert_eq!(v["subject"]["id"], "svc-pipelines");
    assert_eq!(v["subject"]["type"], "service");
    let policy: Value = serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
    let rules = policy["celine"]["mqtt"]["acl"]["rules"].as_array().unwrap().len();
    assert_eq!(v["explanation"]["rules"].as_array().unwrap().len(), rules, "one trace per rule");
}

#[test]
fn who_can_answers_who_could_ever_subscribe_to_everything() {
    let o = mqtt_policy().args(["who-can", "subscribe", "#"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("who may subscribe '#'"), "{text}");
    assert!(text.contains("rule 'admins-all' allows: groups [admins]"), "{text}");
    assert!(!text.contains("telemetry-viewers"), "{text}");
    let o = mqtt_policy().args(["who-can", "subscribe", "celine/+/#", "--json"]).output().unwrap();
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let grants = v["grants"].as_array().unwrap();
    assert_eq!(grants.len(), 1, "{v}");
    assert_eq!(grants[0]["example"]["action"], "subscribe");
    let o = mqtt_policy().args(["who-can", "publish", "$SYS/broker/x"]).output().unwrap();
    let text = stdout(&o);
    assert!(
        text.starts_with("nobody may publish")
            && text.contains("superusers, whose checks a broker skips: group admins"),
        "{text}"
    );
    let o = mqtt_policy().args(["who-can", "subscribe", "a/#/b"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "an invalid filter is an error: {}", stdout(&o));
    let o = mqtt_policy().args(["who-can"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("give a subject"), "{}", stderr(&o));
}

#[test]
fn check_takes_the_message_and_refuses_what_a_request_cannot_carry() {
    let check = |extra: &[&str]| {
        mqtt_policy()
            .args(["check", "--json", "--subject", r#"{"id":"adam","type":"user","groups":["admins"]}"#])
            .args(extra)
            .output()
            .unwrap()
    };
    let reading = ["--action", "publish", "--topic", "celine/telemetry/meter/m1/readings"];
    let live = check(&[&reading[..], &["--qos", "0", "--retain", "false"]].concat());
    assert_eq!(live.status.code(), Some(0), "{}", stderr(&live));
    let retained = check(&[&reading[..], &["--qos", "0", "--retain", "true"]].concat());
    assert_eq!(retained.status.code(), Some(1), "{}", stdout(&retained));
    let v: Value = serde_json::from_str(&stdout(&retained)).unwrap();
    assert_eq!(v["rule"], "no-retained-telemetry");
    let unknown = check(&reading);
    assert_eq!(unknown.status.code(), Some(1), "an unknown retain flag meets the deny's condition");
    let bad = check(&["--action", "subscribe", "--topic", "celine/#", "--retain", "true"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("a subscription has no retain flag"), "{}", stderr(&bad));
    let bad = check(&[&reading[..], &["--qos", "3"]].concat());
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn check_superuser_needs_no_topic() {
    let o = mqtt_policy()
        .args([
            "check",
            "--action",
            "superuser",
            "--subject",
            r#"{"id":"a","type":"user","groups":["admins"]}"#,
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("superuser through group 'admins'"));
}

#[test]
fn a_policy_that_does_not_load_exits_2_with_paths_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"celine":{"mqtt":{"acl":{"rules":[{"topics":["a+"],"actions":"*"}]}}}}"#)
        .unwrap();
    let o = run_with_stdin(
        {
            let mut c = mqtt_policy();
            c.args(["eval", "--policy"]).arg(&bad);
            c
        },
        "{}\n",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stdout(&o).is_empty(), "nothing is decided with a broken policy");
    assert!(
        stderr(&o).contains("celine.mqtt.acl.rules[0].topics[0]: '+' must occupy a whole topic level"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn eval_answers_every_line_and_survives_bad_ones() {
    let input = [
        r#"{"subject":{"id":"u1","type":"user","groups":["viewers"]},"action":"read","topic":"celine/telemetry/a/b/readings"}"#,
        "this is not json",
        r#"{"subject":{"id":"u1","type":"user"},"action":"read"}"#,
        "",
        r#"{"claims":{"sub":"a","groups":["/admins"]},"action":"superuser"}"#,
    ]
    .join("\n");
    let o = run_with_stdin(
        {
            let mut c = mqtt_policy();
            c.arg("eval");
            c
        },
        &input,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["allow"], true);
    assert_eq!(lines[0]["rule"], "telemetry-viewers");
    assert!(lines[1]["error"].as_str().unwrap().starts_with("invalid JSON"));
    assert_eq!(lines[2]["error"], "missing required field 'topic'");
    assert!(lines[3]["error"].as_str().unwrap().contains("empty line"));
    assert_eq!(lines[4]["allow"], true);
    assert_eq!(lines[4]["subject"]["groups"], serde_json::json!(["admins"]));
}

#[test]
fn lint_reports_errors_and_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let warn = dir.path().join("warn.json");
    std::fs::write(
        &warn,
        r#"{"celine":{"mqtt":{"acl":{"rules":[{"subjects":{"groups":[]},"topics":["a"],"actions":"*"}]}}}}"#,
    )
    .unwrap();
    let o = mqtt_policy().args(["lint", "--policy"]).arg(&warn).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(
        stdout(&o).contains("warning: celine.mqtt.acl.rules[0].subjects.groups: empty list"),
        "{}",
        stdout(&o)
    );
    let o = mqtt_policy().args(["lint", "--deny-warnings", "--policy"]).arg(&warn).output().unwrap();
    assert_eq!(o.status.code(), Some(1));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r##"{"celine":{"mqtt":{"acl":{"rules":[{"topics":["#"],"actions":["write"]}]}}}}"##)
        .unwrap();
    let o = mqtt_policy().args(["lint", "--json", "--policy"]).arg(&bad).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let diags: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(diags[0]["path"], "celine.mqtt.acl.rules[0].actions[0]");
    assert_eq!(diags[0]["severity"], "error");

    let o = mqtt_policy().arg("lint").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "the default policy lints clean: {}", stdout(&o));
    assert!(stdout(&o).contains("0 error(s), 0 warning(s)"));
}

/// A bundle every puller's gate would refuse is not written: its policy breaks an invariant
/// it states.
#[test]
fn bundle_refuses_a_policy_that_breaks_its_own_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let mut leaky: Value = serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
    leaky["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(serde_json::json!({
        "subjects": {"groups": ["viewers"]}, "topics": ["celine/nudges/#"], "actions": ["read"]}));
    let policy = dir.path().join("leaky.json");
    std::fs::write(&policy, leaky.to_string()).unwrap();
    let out = dir.path().join("bundle.json");
    let o = mqtt_policy().args(["bundle", "--policy"]).arg(&policy).arg("-o").arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("invariant 'nudges-are-private' does not hold"), "{}", stderr(&o));
    assert!(stderr(&o).contains("no bundle written"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn verify_proves_the_default_invariants_and_prints_a_replayable_counterexample() {
    let o = mqtt_policy().arg("verify").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("3 of 3 invariants hold"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("no proof"), "the built-in module proves: {}", stdout(&o));

    // Viewers may read every nudge: "each user its own nudges" breaks, with a request that
    // `eval` (the same format) allows.
    let dir = tempfile::tempdir().unwrap();
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("policies/celine.json")).unwrap()).unwrap();
    doc["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(serde_json::json!({
        "id": "nudges-viewers", "subjects": {"groups": ["viewers"]},
        "topics": ["celine/nudges/#"], "actions": ["subscribe", "read"]}));
    let wide = dir.path().join("wide.json");
    std::fs::write(&wide, doc.to_string()).unwrap();
    let o = mqtt_policy().args(["verify", "--policy"]).arg(&wide).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("VIOLATED   nudges-are-private"), "{out}");
    assert!(out.contains("2 of 3 invariants hold"), "{out}");
    let example =
        out.lines().find_map(|l| l.trim().strip_prefix("counterexample: ")).expect(&out).to_string();
    let mut eval = mqtt_policy();
    eval.args(["eval", "--policy"]).arg(&wide);
    let answer: Value = serde_json::from_str(stdout(&run_with_stdin(eval, &example)).trim()).unwrap();
    assert_eq!(
        (answer["allow"].as_bool(), answer["rule"].as_str()),
        (Some(true), Some("nudges-viewers")),
        "{example}"
    );

    let o = mqtt_policy().args(["verify", "--json", "--policy"]).arg(&wide).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!((v["holds"].as_bool(), v["proven"].as_bool()), (Some(false), Some(true)));
    let broken: Vec<&str> = v["invariants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["holds"] == false)
        .map(|i| i["invariant"].as_str().unwrap())
        .collect();
    assert_eq!(broken, ["nudges-are-private"]);
}

#[test]
fn test_runs_the_default_cases_and_fails_on_a_wrong_expectation() {
    let o = mqtt_policy().arg("test").output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).trim_end().ends_with(" passed, 0 failed"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("no case is decided by"), "every default rule is covered: {}", stdout(&o));

    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("wrong.json");
    std::fs::write(
        &cases,
        r#"{"cases":[{"name":"viewer publishes","subject":{"id":"u1","type":"user","groups":["viewers"]},
            "action":"publish","topic":"celine/telemetry/a/b/readings","expect":"allow"}]}"#,
    )
    .unwrap();
    let o = mqtt_policy().arg("test").arg(&cases).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("FAIL  viewer publishes: expected allow, got deny (missing capability 'publish'"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).trim_end().ends_with("0 passed, 1 failed"));

    let o = mqtt_policy().args(["test", "no/such/dir"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_built_in_policy_is_used_outside_the_repository() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .current_dir(dir.path())
        .env_remove("MQTT_POLICY_POLICY")
        .args(["check", "--subject", VIEWER, "--action", "read", "--topic", "celine/telemetry/m/1/readings"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// Every corpus case through `mqtt-policy eval`, one process per distinct policy.
#[test]
fn every_corpus_case_passes_through_eval() {
    let mut by_policy: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let corpus = root().join("corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines().filter(|l| !l.trim().is_empty()) {
            let case: Value = serde_json::from_str(line).unwrap();
            by_policy.entry(case["policy"].to_string()).or_default().push(case);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut total = 0;
    for (i, (policy, cases)) in by_policy.iter().enumerate() {
        let path = dir.path().join(format!("policy-{i}.json"));
        std::fs::write(&path, policy).unwrap();
        let input: String = cases.iter().map(|c| format!("{}\n", c["request"])).collect();
        let mut cmd = mqtt_policy();
        cmd.args(["eval", "--policy"]).arg(&path);
        let o = run_with_stdin(cmd, &input);
        total += cases.len();
        if cases[0]["expect"] == "load_error" {
            check_load_error(&o, cases, &mut failures);
            continue;
        }
        assert_eq!(o.status.code(), Some(0), "policy {i} failed to load: {}", stderr(&o));
        let answers: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(answers.len(), cases.len(), "one answer per line");
        for (case, got) in cases.iter().zip(&answers) {
            if let Err(why) = compare(case, got) {
                failures.push(format!("[{}] {}: {why}", case["suite"], case["note"]));
            }
        }
    }
    assert!(total >= 104);
    assert!(failures.is_empty(), "{} of {total} failed:\n{}", failures.len(), failures.join("\n"));
}

fn check_load_error(o: &Output, cases: &[Value], failures: &mut Vec<String>) {
    let err = stderr(o);
    // Every diagnostic line names the file, a JSON path and a reason.
    let ok = o.status.code() == Some(2) && stdout(o).is_empty() && err.contains("error: ");
    if !ok || cases.iter().any(|c| c["expect"] != "load_error") {
        failures.push(format!(
            "{}: expected a load error (exit 2), got {:?}: {err}",
            cases[0]["note"],
            o.status.code()
        ));
    }
}

fn compare(case: &Value, got: &Value) -> Result<(), String> {
    if got.get("error").is_some() {
        return Err(format!("eval error: {got}"));
    }
    let want_allow = case["expect"] == "allow";
    if got["allow"] != want_allow {
        return Err(format!("expected {}, got {got}", case["expect"]));
    }
    if let Some(rule) = case.get("expect_rule")
        && &got["rule"] != rule
    {
        return Err(format!("expected rule {rule}, got {}", got["rule"]));
    }
    if let Some(want) = case.get("expect_subject") {
        let set = |v: &Value| -> std::collections::BTreeSet<String> {
            v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
        };
        let s = &got["subject"];
        if s["id"] != want["id"]
            || s["type"] != want["type"]
            || set(&s["groups"]) != set(&want["groups"])
            || set(&s["scopes"]) != set(&want["scopes"])
        {
            return Err(format!("expected subject {want}, got {s}"));
        }
    }
    Ok(())
}

/// The default policy with one rule narrowed and the viewers' `read` taken away.
fn edited_default(dir: &std::path::Path) -> PathBuf {
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(root().join("policies/celine.json")).unwrap()).unwrap();
    doc["celine"]["roles"]["group_permissions"]["viewers"] = serde_json::json!(["subscribe"]);
    let rules = doc["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap();
    rules.push(serde_json::json!({"id": "no-system", "subjects": {"groups": ["admins"]},
        "topics": ["celine/system/#"], "actions": ["publish"], "effect": "deny"}));
    let path = dir.join("new.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn eval_with(policy: &std::path::Path, line: &str) -> Value {
    let mut c = mqtt_policy();
    c.args(["eval", "--policy"]).arg(policy);
    let o = run_with_stdin(c, &format!("{line}\n"));
    serde_json::from_str(stdout(&o).trim()).unwrap()
}

#[test]
fn diff_lists_changes_that_replay_through_eval_and_exits_by_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let new = edited_default(dir.path());
    let old = root().join("policies/celine.json");

    let same = mqtt_policy().args(["diff", "policies/celine.json", "policies/celine.json"]).output().unwrap();
    assert_eq!(same.status.code(), Some(0), "{}", stderr(&same));
    assert!(stdout(&same).starts_with("no decision changes"), "{}", stdout(&same));

    let o = mqtt_policy().arg("diff").arg(&old).arg(&new).arg("--json").output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let changes: Vec<Value> = serde_json::from_str(&stdout(&o)).expect("a bare JSON array");
    assert!(
        changes.iter().any(|c| c["request"]["action"] == "read" && c["old"]["rule"] == "telemetry-viewers")
    );
    assert!(changes.iter().any(|c| c["request"]["action"] == "publish" && c["new"]["rule"] == "no-system"));
    for c in &changes {
        assert_ne!(c["old"]["allow"], c["new"]["allow"], "only real changes: {c}");
        let line = c["request"].to_string();
        for (policy, side) in [(&old, "old"), (&new, "new")] {
            let got = eval_with(policy, &line);
            assert_eq!(got["allow"], c[side]["allow"], "{line} against {side}");
            assert_eq!(got["rule"], c[side]["rule"], "{line} against {side}");
        }
    }

    let human = mqtt_policy().arg("diff").arg(&old).arg(&new).output().unwrap();
    assert_eq!(human.status.code(), Some(1));
    let text = stdout(&human);
    assert!(
        text.contains("LOST  allowed by rule 'telemetry-viewers' → denied: missing capability"),
        "{text}"
    );
    assert!(text.contains("LOST  allowed by rule 'admins-all' → denied by rule 'no-system'"), "{text}");
    assert!(text.contains("--action publish --topic 'celine/system"), "replayable arguments: {text}");

    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"celine":{"mqtt":{"acl":{"rules":[{"topics":["a/#/b"],"actions":"*"}]}}}}"#)
        .unwrap();
    let o = mqtt_policy().arg("diff").arg(&old).arg(&broken).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("rules[0].topics[0]"), "{}", stderr(&o));
}

#[test]
fn diff_also_decides_the_policy_test_cases() {
    let dir = tempfile::tempdir().unwrap();
    let new = edited_default(dir.path());
    let o = mqtt_policy()
        .args(["diff", "policies/celine.json"])
        .arg(&new)
        .args(["--json", "--tests", "policies/tests"])
        .output()
        .unwrap();
    let changes: Vec<Value> = serde_json::from_str(&stdout(&o)).unwrap();
    // A case from policies/tests: a viewer reading meter readings, under its own subject id.
    assert!(
        changes.iter().any(|c| c["request"]["subject"]["id"] == "u1" && c["request"]["action"] == "read"),
        "{changes:?}"
    );
}

#[test]
fn who_can_shows_grants_carve_outs_and_refused_actions() {
    let o = mqtt_policy().args(["who-can", "--subject", VIEWER]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("subscribe:\n  allow celine/telemetry/+/+/readings  (rule telemetry-viewers)"),
        "{text}"
    );
    assert!(text.contains("publish: nothing (missing capability 'publish'"), "{text}");
    assert!(text.contains("superuser: no"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    std::fs::write(
        &p,
        r##"{"celine":{"mqtt":{"acl":{"rules":[
            {"id":"own","subjects":{},"topics":["users/${username}/#"],"actions":["publish"]},
            {"id":"no-secrets","subjects":{},"topics":["users/+/secrets"],"actions":["publish"],"effect":"deny"}]}}}}"##,
    )
    .unwrap();
    let o = mqtt_policy()
        .args(["who-can", "--policy"])
        .arg(&p)
        .args(["--subject", VIEWER, "--username", "alice", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let publish = &v["effective"]["actions"][2];
    assert_eq!(publish["allow"][0]["pattern"], "users/alice/#");
    assert_eq!(publish["allow"][0]["except"][0]["pattern"], "users/+/secrets");
    assert_eq!(publish["allow"][0]["void"], false);

    let o = mqtt_policy().args(["who-can", "--subject", r#"{"id":"x"}"#]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--subject: missing required field 'type'"), "{}", stderr(&o));
}

/// `examples/scope-convention`, built by `cargo xtask build`: a module that changes the
/// logic (a matching OAuth scope grants what the document alone would not).
fn scope_convention() -> PathBuf {
    let p = test_support::target_dir().join("policy-module/scope-convention.wasm");
    assert!(p.exists(), "{} is missing: run `cargo xtask build` first", p.display());
    p
}

/// One case the scope convention decides otherwise than the document alone: a user with the
/// scope `digital-twin.events.read` reads twin events.
fn convention_case(dir: &std::path::Path) -> PathBuf {
    let case = serde_json::json!({"cases": [{"name": "the twin-events scope reads twin events",
        "subject": {"id": "u-9", "type": "user", "groups": [], "scopes": ["digital-twin.events.read"]},
        "action": "read", "topic": "celine/digital-twin/events/pump/p1",
        "expect": "allow", "expect_rule": "scope-convention"}]});
    let path = dir.join("convention.json");
    std::fs::write(&path, case.to_string()).unwrap();
    path
}

/// A module that changes the logic answers the same in `mqtt-policy test` (and `check`,
/// `eval`) as behind the swap gate (`serve --module M --tests T` starts only if T passes
/// through M).
#[test]
fn a_logic_changing_module_decides_the_same_in_the_cli_and_in_the_swap_gate() {
    let dir = tempfile::tempdir().unwrap();
    let cases = convention_case(dir.path());
    let module = scope_convention();
    let (m, c) = (module.to_str().unwrap(), cases.to_str().unwrap());
    let with = mqtt_policy().args(["test", "--module", m, c]).output().unwrap();
    assert_eq!(with.status.code(), Some(0), "{}{}", stdout(&with), stderr(&with));
    let without = mqtt_policy().args(["test", c]).output().unwrap();
    assert_eq!(without.status.code(), Some(1), "the built-in module denies it: {}", stdout(&without));
    let check = mqtt_policy()
        .args(["check", "--module", m, "--action", "read", "--topic", "celine/digital-twin/events/pump/p1"])
        .args(["--subject", r#"{"id":"u-9","type":"user","scopes":["digital-twin.events.read"]}"#])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));
    assert!(
        stdout(&check).contains("the module") && stdout(&check).contains("decides otherwise"),
        "{}",
        stdout(&check)
    );
    let line = r#"{"subject":{"id":"u-9","type":"user","scopes":["digital-twin.events.read"]},"action":"read","topic":"celine/digital-twin/events/pump/p1"}"#;
    let mut eval = mqtt_policy();
    eval.args(["eval", "--module", m]);
    let answer: Value = serde_json::from_str(stdout(&run_with_stdin(eval, line)).trim()).unwrap();
    assert_eq!((answer["allow"].as_bool(), answer["rule"].as_str()), (Some(true), Some("scope-convention")));

    // The swap gate: a service starts on this module and these cases, and refuses the
    // built-in module with them, as `test` said.
    let state = tempfile::tempdir().unwrap();
    let jwks = root().join("host/tests/fixtures/jwks-a.json");
    let serve = |module: Option<&str>| {
        let mut cmd = mqtt_policy();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
            .args(["--jwks-file", jwks.to_str().unwrap(), "--tests", c, "--state-dir"])
            .arg(state.path());
        if let Some(m) = module {
            cmd.args(["--module", m]);
        }
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let mut refused = serve(None);
    let status = refused.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("the twin-events scope reads twin events"), "{err}");
    let mut started = serve(Some(m));
    let mut first = String::new();
    let mut out = std::io::BufReader::new(started.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.starts_with("mqtt-policy ops listening on"), "it did not start: {first}");
    started.kill().unwrap();
    started.wait().unwrap();
}

#[test]
fn who_can_shows_a_subjects_limits_and_where_they_come_from() {
    let viewer = r#"{"id": "u1", "type": "user", "groups": ["viewers"]}"#;
    let o = mqtt_policy().args(["who-can", "--subject", viewer]).output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("limits: max_subscriptions 100 (from limits entries 'subscriptions-per-connection'"),
        "{out}"
    );
    let admin = r#"{"id": "a1", "type": "user", "groups": ["admins"]}"#;
    let o = mqtt_policy().args(["who-can", "--subject", admin, "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["limits"]["max_subscriptions"], serde_json::Value::Null, "admins-unlimited lifts it: {v}");
    assert_eq!(v["limits"]["retain"], true);
    let service = r#"{"id": "svc-x", "type": "service"}"#;
    let o = mqtt_policy().args(["who-can", "--subject", service]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("limits: none"));
}
