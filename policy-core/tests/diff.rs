//! Property tests of `diff`: every change it reports is real, and a single-rule edit (add,
//! remove, widen, narrow, flip the effect, edit the roles, change a rule's conditions on the
//! message) that changes any decision in a brute-force universe of requests is found.

mod support;

use policy_core::{Ask, EvalRequest, Policy, diff};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::*;

#[derive(Debug, Clone)]
enum Edit {
    Add(Value),
    Remove(usize),
    Widen(usize, usize),
    Narrow(usize, usize),
    Flip(usize),
    Roles(usize, usize),
    ToggleRoles,
    /// Toggles QoS level `.1 % 3` in rule `.0`'s `qos` (adding the condition if absent), or
    /// cycles its `retain` (absent, true, false) when `.1 % 4 == 3`.
    Condition(usize, usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        rule().prop_map(Edit::Add),
        any::<usize>().prop_map(Edit::Remove),
        (any::<usize>(), any::<usize>()).prop_map(|(r, l)| Edit::Widen(r, l)),
        (any::<usize>(), any::<usize>()).prop_map(|(r, l)| Edit::Narrow(r, l)),
        any::<usize>().prop_map(Edit::Flip),
        (any::<usize>(), any::<usize>()).prop_map(|(k, p)| Edit::Roles(k, p)),
        Just(Edit::ToggleRoles),
        (any::<usize>(), any::<usize>()).prop_map(|(r, c)| Edit::Condition(r, c)),
    ]
}

/// Replaces level `at` (modulo) of the rule's first pattern by `f(level)`.
fn edit_level(rule: &mut Value, at: usize, f: impl Fn(&str) -> &'static str) {
    let Some(p) = rule["topics"].get(0).and_then(Value::as_str) else { return };
    let mut levels: Vec<String> = p.split('/').map(String::from).collect();
    let i = at % levels.len();
    levels[i] = f(&levels[i]).into();
    if levels[i] == "#" {
        levels.truncate(i + 1);
    }
    if levels[0] == "$s" || levels.iter().skip(1).any(|l| l == "$s") {
        return;
    }
    rule["topics"][0] = json!(levels.join("/"));
}

fn apply(doc: &Value, e: &Edit) -> Value {
    let mut d = doc.clone();
    let rules = d["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap();
    let n = rules.len();
    match e {
        Edit::Add(r) => rules.push(r.clone()),
        Edit::Remove(i) if n > 0 => {
            rules.remove(i % n);
        }
        Edit::Widen(i, l) if n > 0 => edit_level(&mut rules[i % n], *l, |old| match old {
            "+" | "#" => "#",
            _ => "+",
        }),
        Edit::Narrow(i, l) if n > 0 => edit_level(&mut rules[i % n], *l, |old| match old {
            "#" => "+",
            "+" => "a",
            _ => "b",
        }),
        Edit::Flip(i) if n > 0 => {
            let r = &mut rules[i % n];
            r["effect"] = json!(if r["effect"] == "deny" { "allow" } else { "deny" });
        }
        Edit::Roles(k, p) => {
            if let Some(roles) = d["celine"].get_mut("roles") {
                let (table, key) = match k % 4 {
                    0 | 1 => ("group_permissions", GROUPS[k % 2]),
                    _ => ("scope_permissions", SCOPE_KEYS[k % 2]),
                };
                let perms = roles[table][key].as_array_mut().unwrap();
                let perm = json!(PERMS[p % 4]);
                match perms.iter().position(|x| *x == perm) {
                    Some(at) => {
                        perms.remove(at);
                    }
                    None => perms.push(perm),
                }
            }
        }
        Edit::Condition(i, c) if n > 0 => {
            let r = rules[i % n].as_object_mut().unwrap();
            if c % 4 == 3 {
                match r.get("retain").and_then(Value::as_bool) {
                    None => r.insert("retain".into(), json!(true)),
                    Some(true) => r.insert("retain".into(), json!(false)),
                    Some(false) => r.remove("retain"),
                };
            } else {
                let level = json!(c % 4);
                let qos = r.entry("qos").or_insert_with(|| json!([0, 1, 2])).as_array_mut().unwrap();
                match qos.iter().position(|x| *x == level) {
                    Some(at) => {
                        qos.remove(at);
                    }
                    None => qos.push(level),
                }
            }
        }
        Edit::ToggleRoles => {
            let celine = d["celine"].as_object_mut().unwrap();
            if celine.remove("roles").is_none() {
                celine.insert("roles".into(), json!({"group_permissions": {"g1": ["publish", "subscribe"]}}));
            }
        }
        _ => {}
    }
    d
}

/// A request of the universe that two policies decide differently. When either reads the
/// message, every message is tried too, for the requests of subjects with at most one scope
/// and usernames other than the stranger's (the message dimension multiplies the universe
/// twelvefold; those two dimensions are tried in full with the unknown message).
fn first_change(old: &Policy, new: &Policy) -> Option<EvalRequest> {
    let vary = old.reads_message() || new.reads_message();
    universe().iter().find_map(|r| {
        let variants = match r.ask {
            Ask::Superuser => vec![r.message],
            ask if vary && r.subject.scopes.len() <= 1 && r.username != "zz" => messages(ask),
            _ => vec![r.message],
        };
        variants
            .into_iter()
            .map(|message| EvalRequest { message, ..r.clone() })
            .find(|r| old.evaluate(r).allow != new.evaluate(r).allow)
    })
}

proptest! {
    // 128 cases here (about 30 s in a debug build); PROPTEST_CASES=N for a longer hunt.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn diff_reports_only_real_changes_and_finds_single_edits(
        rules in prop::collection::vec(rule(), 0..5),
        roles in roles(),
        e in edit(),
    ) {
        let before = document(rules, roles);
        let after = apply(&before, &e);
        let (old, new) = (load(&before), load(&after));
        let d = diff(&old, &new, &[]);
        for c in &d.changes {
            prop_assert_eq!(&old.evaluate(&c.request), &c.old);
            prop_assert_eq!(&new.evaluate(&c.request), &c.new);
            prop_assert_ne!(c.old.allow, c.new.allow);
        }
        let missed = first_change(&old, &new);
        if let Some(r) = &missed {
            prop_assert!(
                !d.is_empty(),
                "{:?} changes {} (old {:?}, new {:?}) but diff found nothing in {} witnesses\nold: {}\nnew: {}",
                e, serde_json::to_string(r).unwrap(), old.evaluate(r), new.evaluate(r), d.probed, before, after
            );
        }
    }
}

#[test]
fn the_default_policy_against_itself_changes_nothing_and_a_removed_rule_is_found() {
    // Embedded: a path compiled in would name whichever checkout built the test (CI's clone
    // and a working copy share one target directory).
    let doc: Value = serde_json::from_str(include_str!("../../policies/celine.json")).unwrap();
    let p = load(&doc);
    assert!(diff(&p, &p, &[]).is_empty());
    let rules = doc["celine"]["mqtt"]["acl"]["rules"].as_array().unwrap();
    let mut unchanged = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let after = apply(&doc, &Edit::Remove(i));
        let q = load(&after);
        let d = diff(&p, &q, &[]);
        let id = rule["id"].as_str().unwrap_or("?");
        if d.is_empty() {
            unchanged.push(id);
        } else {
            assert!(d.changes.iter().any(|c| c.old.rule.as_deref() == Some(id)), "removing {id}");
        }
        for c in &d.changes {
            assert_eq!(p.evaluate(&c.request), c.old);
            assert_eq!(q.evaluate(&c.request), c.new);
        }
    }
    // Every rule decides something of its own except one: dt-namespace-publish allows the
    // same subjects everything dt-events-publish does (and more).
    assert_eq!(unchanged, ["dt-events-publish"]);
}
