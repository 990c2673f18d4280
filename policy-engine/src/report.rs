//! What a swap changes: the candidate against the live generation, as `policy_core::diff`
//! reports it (the policy test cases' requests included), but decided by both generations'
//! *modules* (a new module may decide the same document differently); and the changes of
//! its `limits` entries. Logged at every swap,
//! kept for `GET /admin/status`, and returned by a dry run.

use std::time::Instant;

use policy_core::{EvalRequest, Policy, compare, limit_changes, witnesses, witnesses_of};
use serde_json::{Value, json};

use crate::cases::decide;
use crate::runtime::Generation;

/// How many changed requests a report shows.
pub const FIRST: usize = 5;

/// The summary of what `new` changes against `old`: `{"changes", "probed", "counts",
/// "first", "limits", "took_ms"}`, or `{"available": false, "reason"}` when a document does not load
/// natively (a module with a format of its own).
pub fn swap_diff(
    old: &Generation,
    old_text: &str,
    new: &Generation,
    new_text: &str,
    extra: &[EvalRequest],
) -> Value {
    let started = Instant::now();
    let (old_doc, new_doc) = match (Policy::load(old_text), Policy::load(new_text)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => {
            let first = e.first().map(|d| d.to_string()).unwrap_or_default();
            return json!({"available": false, "reason": format!("the diff reads documents natively: {first}")});
        }
    };
    let mut probes: Vec<EvalRequest> = witnesses(&old_doc, &new_doc, extra);
    if old.module.hash != new.module.hash {
        // Another module: any rule may now decide differently.
        probes.extend(witnesses_of(&new_doc));
    }
    let d = compare(probes, |r| decide(old, r), |r| decide(new, r));
    let counts: serde_json::Map<String, Value> =
        d.counts().into_iter().map(|(a, c)| (a.to_string(), json!(c))).collect();
    json!({
        "changes": d.changes.len(),
        "probed": d.probed,
        "counts": counts,
        "first": d.changes.iter().take(FIRST).collect::<Vec<_>>(),
        "limits": limit_changes(&old_doc, &new_doc),
        "took_ms": started.elapsed().as_millis() as u64,
    })
}

/// One line for the log: `publish 2 gained 0 lost; subscribe 0 gained 1 lost`.
pub fn counts_line(report: &Value) -> String {
    let Some(counts) = report["counts"].as_object() else {
        return report["reason"].as_str().unwrap_or("no diff").to_string();
    };
    if counts.is_empty() {
        return "no witnessed decision changes".to_string();
    }
    counts
        .iter()
        .map(|(a, c)| format!("{a} {} gained {} lost", c["gained"], c["lost"]))
        .collect::<Vec<_>>()
        .join("; ")
}
