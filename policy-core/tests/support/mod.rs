//! What the property tests of `diff` and `verify` share: random rules and roles over a small
//! vocabulary, and a brute-force universe of requests over the same vocabulary.
#![allow(dead_code)] // each test binary uses its own part of it

use policy_core::{Ask, EvalRequest, Message, Policy, Subject, SubjectType};
use proptest::prelude::*;
use serde_json::{Value, json};

pub const GROUPS: [&str; 2] = ["g1", "g2"];
pub const SCOPE_PATTERNS: [&str; 3] = ["a.*", "a.x", "b"];
pub const SCOPE_KEYS: [&str; 2] = ["a.x", "b"];
pub const PERMS: [&str; 4] = ["subscribe", "read", "publish", "superuser"];

pub fn level() -> impl Strategy<Value = &'static str> {
    prop::sample::select(&["a", "b", "+", "+", "${username}", "${clientid}", "${subject.id}", "$s"][..])
}

pub fn pattern() -> impl Strategy<Value = String> {
    (prop::collection::vec(level(), 0..3), any::<bool>())
        .prop_map(|(mut l, hash)| {
            if hash || l.is_empty() {
                l.push("#");
            }
            l.join("/")
        })
        .prop_filter("a '$' level only first", |p| !p.contains("/$s"))
}

pub fn some_of(items: &'static [&'static str]) -> impl Strategy<Value = Option<Vec<&'static str>>> {
    prop::option::of(prop::sample::subsequence(items, 1..=items.len()))
}

/// A rule's conditions on the message: none mostly, else some QoS levels and/or a retain flag.
pub fn conditions() -> impl Strategy<Value = (Option<Vec<u8>>, Option<bool>)> {
    prop_oneof![
        3 => Just((None, None)),
        1 => (
            prop::option::of(prop::sample::subsequence(&[0u8, 1, 2][..], 0..=3)),
            prop::option::of(any::<bool>()),
        ),
    ]
}

pub fn with_conditions(mut rule: Value, (qos, retain): (Option<Vec<u8>>, Option<bool>)) -> Value {
    if let Some(q) = qos {
        rule["qos"] = json!(q);
    }
    if let Some(r) = retain {
        rule["retain"] = json!(r);
    }
    rule
}

pub fn rule() -> impl Strategy<Value = Value> {
    (plain_rule(), conditions()).prop_map(|(r, c)| with_conditions(r, c))
}

pub fn plain_rule() -> impl Strategy<Value = Value> {
    (
        (some_of(&["user", "service", "device"]), some_of(&["u1"]), some_of(&GROUPS), some_of(&SCOPE_PATTERNS)),
        prop_oneof![4 => prop::collection::vec(pattern(), 1..3).prop_map(|p| json!(p)), 1 => Just(json!("*"))],
        prop_oneof![3 => some_of(&["subscribe", "read", "publish"]).prop_map(|a| match a {
            Some(a) => json!(a),
            None => json!("*"),
        })],
        any::<bool>(),
    )
        .prop_map(|((types, ids, groups, scopes), topics, actions, deny)| {
            let mut subjects = serde_json::Map::new();
            for (k, v) in [("types", types), ("ids", ids), ("groups", groups), ("scopes", scopes)] {
                if let Some(v) = v {
                    subjects.insert(k.into(), json!(v));
                }
            }
            json!({"subjects": subjects, "topics": topics, "actions": actions,
                   "effect": if deny { "deny" } else { "allow" }})
        })
}

pub fn roles() -> impl Strategy<Value = Option<Value>> {
    prop::option::of(
        (
            prop::collection::vec(prop::sample::subsequence(&PERMS[..], 0..=4), 2),
            prop::collection::vec(prop::sample::subsequence(&PERMS[..], 0..=4), 2),
        )
            .prop_map(|(g, s)| {
                json!({
                    "group_permissions": {GROUPS[0]: g[0], GROUPS[1]: g[1]},
                    "scope_permissions": {SCOPE_KEYS[0]: s[0], SCOPE_KEYS[1]: s[1]},
                })
            }),
    )
}

pub fn document(rules: Vec<Value>, roles: Option<Value>) -> Value {
    let mut celine = json!({"mqtt": {"acl": {"rules": rules}}});
    if let Some(r) = roles {
        celine["roles"] = r;
    }
    json!({ "celine": celine })
}

pub fn load(doc: &Value) -> Policy {
    Policy::load(&doc.to_string()).unwrap_or_else(|e| panic!("{doc}: {e:?}"))
}

pub fn subsets(items: &[&str]) -> Vec<Vec<String>> {
    (0..1usize << items.len())
        .map(|m| {
            items.iter().enumerate().filter(|(i, _)| m & (1 << i) != 0).map(|(_, s)| s.to_string()).collect()
        })
        .collect()
}

/// Every request of a small universe: subjects over the vocabulary and a stranger,
/// names and filters over the literal levels and a fresh one, three usernames.
pub fn universe() -> &'static [EvalRequest] {
    static UNIVERSE: std::sync::OnceLock<Vec<EvalRequest>> = std::sync::OnceLock::new();
    UNIVERSE.get_or_init(build_universe)
}

pub fn build_universe() -> Vec<EvalRequest> {
    let mut subjects = Vec::new();
    for kind in SubjectType::ALL {
        for id in ["u1", "zz"] {
            for groups in subsets(&GROUPS) {
                for scopes in subsets(&["a.x", "a.y", "b"]) {
                    subjects.push(Subject { id: id.into(), kind, groups: groups.clone(), scopes });
                }
            }
        }
    }
    let words = ["a", "b", "zz", "u1", "c1"];
    let mut names: Vec<String> = vec!["$s".into(), "$s/a".into()];
    let mut filters: Vec<String> = vec!["#".into(), "+".into(), "$s/#".into(), "a/#".into(), "+/#".into()];
    for a in words {
        names.push(a.into());
        for b in words {
            names.push(format!("{a}/{b}"));
            names.push(format!("{a}/{b}/zz"));
        }
    }
    for a in ["a", "u1", "+"] {
        for b in ["a", "zz", "+", "#"] {
            filters.push(format!("{a}/{b}"));
            if b != "#" {
                filters.push(format!("{a}/{b}/#"));
            }
        }
    }
    let mut out = Vec::new();
    for s in &subjects {
        for username in ["u1", "zz", ""] {
            let mut req = |ask: Ask, topic: &str| {
                out.push(EvalRequest {
                    subject: s.clone(),
                    ask,
                    topic: topic.into(),
                    clientid: "c1".into(),
                    username: username.into(),
                    message: Message::UNKNOWN,
                })
            };
            for t in &names {
                req(Ask::Publish, t);
                req(Ask::Read, t);
                req(Ask::Subscribe, t);
            }
            for f in &filters {
                req(Ask::Subscribe, f);
            }
            if username == "u1" {
                req(Ask::Superuser, "");
            }
        }
    }
    out
}

/// Every message a condition can tell apart, for `ask`.
pub fn messages(ask: Ask) -> Vec<Message> {
    let qos = [Some(0), Some(1), Some(2), None];
    let retain: &[Option<bool>] = match ask {
        Ask::Subscribe => &[None],
        _ => &[Some(false), Some(true), None],
    };
    qos.iter().flat_map(|&qos| retain.iter().map(move |&retain| Message { qos, retain })).collect()
}
