//! What a swap changes: the candidate against the live generation, as `policy_core::diff`
//! reports it (the policy test cases' requests included), but decided by both generations'
//! *modules* (a new module may decide the same document differently); the changes of its
//! `limits` entries; and which live identities (the plugin's connected clients, the
//! service's sessions) those changes reach. Logged at every swap, kept for
//! `GET /admin/status`, and returned by a dry run.

use std::time::Instant;

use std::sync::Arc;

use policy_core::{Ask, Change, Diff, EvalRequest, Policy, compare, limit_changes, witnesses, witnesses_of};
use serde_json::{Value, json};

use crate::cases::{decide, try_decide};
use crate::runtime::Generation;

/// How many changed requests a report shows.
pub const FIRST: usize = 5;

/// The summary of what `new` changes against `old`: `{"changes", "probed", "counts",
/// "first", "limits", "took_ms"}`, or `{"available": false, "reason"}` when a document does not load
/// natively (a module with a format of its own); and the changes themselves.
pub fn swap_diff(
    old: &Generation,
    old_text: &str,
    new: &Generation,
    new_text: &str,
    extra: &[EvalRequest],
) -> (Value, Vec<Change>) {
    let started = Instant::now();
    let (old_doc, new_doc) = match (Policy::load(old_text), Policy::load(new_text)) {
        (Ok(o), Ok(n)) => (o, n),
        (Err(e), _) | (_, Err(e)) => {
            let first = e.first().map(|d| d.to_string()).unwrap_or_default();
            let reason = format!("the diff reads documents natively: {first}");
            return (json!({"available": false, "reason": reason}), Vec::new());
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
    let summary = json!({
        "changes": d.changes.len(),
        "probed": d.probed,
        "counts": counts,
        "first": d.changes.iter().take(FIRST).collect::<Vec<_>>(),
        "limits": limit_changes(&old_doc, &new_doc),
        "took_ms": started.elapsed().as_millis() as u64,
    });
    (summary, d.changes)
}

/// A live identity a front end holds, as its checks are decided: a connected client (the
/// plugin) or a session bound to a token (the service).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// How an operator finds it: the client id, or the session's username.
    pub label: String,
    pub subject: policy_core::Subject,
    pub username: String,
    /// `None` when each check names its own (a go-auth session): the witness's is kept.
    pub clientid: Option<String>,
}

/// A swap's changes and the two generations that decide them, kept until the front end
/// reports which identities they reach.
pub struct SwapChanges {
    pub old: Arc<Generation>,
    pub new: Arc<Generation>,
    pub changes: Vec<Change>,
    /// The diff could be made (both documents load natively).
    pub available: bool,
}

/// The most changes each identity is tried with (the first ones of each group of changes).
pub const CHANGES_PER_IDENTITY: usize = 200;
/// The most decisions one report makes: with many identities, each is tried with fewer
/// changes (at least one of each group, as far as the budget goes).
pub const REPORT_DECISIONS: usize = 4_000_000;

/// The request of change `r` as `who` would make it: its subject, username and client id,
/// and the topic levels that held the witness's values holding `who`'s.
fn as_identity(r: &EvalRequest, who: &Identity) -> EvalRequest {
    let clientid = who.clientid.clone().unwrap_or_else(|| r.clientid.clone());
    let topic = if r.ask == Ask::Superuser {
        String::new()
    } else {
        let swap = |level: &str| -> String {
            let own =
                [(&r.subject.id, &who.subject.id), (&r.username, &who.username), (&r.clientid, &clientid)];
            own.iter()
                .find(|(w, _)| !w.is_empty() && *w == level)
                .map_or(level, |(_, v)| v.as_str())
                .to_string()
        };
        r.topic.split('/').map(swap).collect::<Vec<_>>().join("/")
    };
    EvalRequest { subject: who.subject.clone(), topic, clientid, username: who.username.clone(), ..r.clone() }
}

/// Which of `identities` the swap's changes reach: each change (up to
/// [`CHANGES_PER_IDENTITY`]) is asked again as each identity would ask it, by the old and the
/// new generation; where the two differ, the identity gained or lost that request. Every
/// reported change is real; a right reached only by a request no witness resembles is not
/// found (the diff's limits, docs/cli.md). `{"identities", "affected", "gained", "lost",
/// "by_change": [{old, new, gained, lost}], "first": [{identity, subject, gained, lost}],
/// "took_ms"}`.
pub fn affected(swap: &SwapChanges, identities: &[Identity]) -> Value {
    let started = Instant::now();
    if !swap.available {
        return json!({"available": false, "identities": identities.len(),
                      "reason": "the swap's changes are unknown: a document does not load natively"});
    }
    let groups = Diff { changes: swap.changes.clone(), probed: 0 }.groups();
    // Two decisions per change, and the superuser question twice, per identity.
    let per_identity =
        (REPORT_DECISIONS / identities.len().max(1) / 2).saturating_sub(1).clamp(1, CHANGES_PER_IDENTITY);
    let per_group = (per_identity / groups.len().max(1)).max(1);
    let tried: Vec<(usize, &Change)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, group)| group.changes.iter().take(per_group).map(move |c| (g, c)))
        .take(per_identity)
        .collect();
    let mut by_group = vec![(0usize, 0usize); groups.len()];
    let (mut affected, mut gained_any, mut lost_any) = (0usize, 0usize, 0usize);
    let mut first = Vec::new();
    for who in identities {
        let (mut gained, mut lost) = (Vec::new(), Vec::new());
        let mut groups_hit = vec![(false, false); groups.len()];
        // A superuser is asked no ACL question: it may do everything. A module fault
        // answers nothing either way, so a request that faults is left out.
        let superuser = |g: &Generation| {
            let question = EvalRequest {
                subject: who.subject.clone(),
                ask: Ask::Superuser,
                topic: String::new(),
                clientid: String::new(),
                username: who.username.clone(),
                message: policy_core::Message::UNKNOWN,
            };
            try_decide(g, &question).map(|d| d.allow)
        };
        let (Ok(super_before), Ok(super_after)) = (superuser(&swap.old), superuser(&swap.new)) else {
            continue;
        };
        for (g, change) in &tried {
            let r = as_identity(&change.request, who);
            let (Ok(before), Ok(after)) = (try_decide(&swap.old, &r), try_decide(&swap.new, &r)) else {
                continue;
            };
            let (before, after) = (super_before || before.allow, super_after || after.allow);
            if before == after {
                continue;
            }
            if after {
                groups_hit[*g].0 = true;
                gained.push(r);
            } else {
                groups_hit[*g].1 = true;
                lost.push(r);
            }
        }
        for (g, (gain, loss)) in groups_hit.iter().enumerate() {
            by_group[g].0 += usize::from(*gain);
            by_group[g].1 += usize::from(*loss);
        }
        if gained.is_empty() && lost.is_empty() {
            continue;
        }
        affected += 1;
        gained_any += usize::from(!gained.is_empty());
        lost_any += usize::from(!lost.is_empty());
        if first.len() < FIRST {
            gained.truncate(3);
            lost.truncate(3);
            first.push(
                json!({"identity": who.label, "subject": who.subject.id, "gained": gained, "lost": lost}),
            );
        }
    }
    let by_change: Vec<Value> = groups
        .iter()
        .zip(&by_group)
        .filter(|(_, (g, l))| g + l > 0)
        .map(|(group, (g, l))| {
            json!({"old": group.old.describe(), "new": group.new.describe(), "gained": g, "lost": l})
        })
        .collect();
    json!({
        "identities": identities.len(),
        "affected": affected,
        "gained": gained_any,
        "lost": lost_any,
        "by_change": by_change,
        "first": first,
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
