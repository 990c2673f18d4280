//! Runs every decision case in `corpus/*.jsonl` through the library.
//!
//! The corpus is data (format: `corpus/README.md`); `conformance.jsonl` holds the cases every
//! build must pass. The host's tests run the same files through `mqtt-policy eval`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use policy_core::{Json, Policy, Subject, parse_request};
use serde_json::Value;

/// This package's folder, read at run time: one target directory may serve two checkouts.
fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
}
fn corpus_files() -> Vec<PathBuf> {
    let dir = package_dir().join("../corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    assert!(files.iter().any(|f| f.ends_with("conformance.jsonl")), "the shared conformance copy is missing");
    files
}

fn as_set(v: &Value) -> BTreeSet<String> {
    v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn subject_matches(got: &Subject, want: &Value) -> bool {
    got.id == want["id"].as_str().unwrap()
        && got.kind.as_str() == want["type"].as_str().unwrap()
        && got.groups.iter().cloned().collect::<BTreeSet<_>>() == as_set(&want["groups"])
        && got.scopes.iter().cloned().collect::<BTreeSet<_>>() == as_set(&want["scopes"])
}

/// Runs one case; `Err` says how it failed.
fn run(case: &Value) -> Result<(), String> {
    let policy_text = case["policy"].to_string();
    let expect = case["expect"].as_str().unwrap();
    let loaded = Policy::load(&policy_text);
    if expect == "load_error" {
        return match loaded {
            Err(diags) if diags.iter().all(|d| !d.message.is_empty()) => Ok(()),
            Err(_) => Err("load error without a message".into()),
            Ok(_) => Err("policy loaded, expected a load error".into()),
        };
    }
    let policy = loaded.map_err(|d| format!("policy failed to load: {d:?}"))?;
    let request = parse_request(&Json::parse(&case["request"].to_string())?)?;
    let decision = policy.evaluate(&request);
    let want_allow = expect == "allow";
    if decision.allow != want_allow {
        return Err(format!("expected {expect}, got {decision:?}"));
    }
    if let Some(rule) = case.get("expect_rule").and_then(Value::as_str)
        && decision.rule.as_deref() != Some(rule)
    {
        return Err(format!("expected rule {rule}, got {:?}", decision.rule));
    }
    if let Some(want) = case.get("expect_subject")
        && !subject_matches(&request.subject, want)
    {
        return Err(format!("expected subject {want}, got {:?}", request.subject));
    }
    // The indexed check and the linear explanation must agree on every case.
    if let Some(q) = request.query() {
        let explained = policy.explain(&q).decision;
        if explained != decision {
            return Err(format!("explain disagrees with check: {explained:?} vs {decision:?}"));
        }
    }
    Ok(())
}

#[test]
fn every_corpus_case_passes_through_the_library() {
    let mut failures = Vec::new();
    let mut total = 0;
    for file in corpus_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            total += 1;
            let case: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", file.display(), n + 1));
            if let Err(why) = run(&case) {
                failures.push(format!(
                    "{}:{} [{}] {}: {why}",
                    file.file_name().unwrap().to_string_lossy(),
                    n + 1,
                    case["suite"].as_str().unwrap_or("?"),
                    case["note"].as_str().unwrap_or("")
                ));
            }
        }
    }
    assert!(total >= 104, "only {total} cases found");
    assert!(failures.is_empty(), "{} of {total} cases failed:\n{}", failures.len(), failures.join("\n"));
}
