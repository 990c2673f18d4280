//! Property tests: the topic relations against a plain reference, and the index against the
//! linear reading of the rules.

use policy_core::topic::{contains, matches, overlaps, split, validate_filter, validate_name};
use policy_core::{Action, Message, Policy, Query, Subject, SubjectType};
use proptest::prelude::*;

mod reference;
use reference::reference_match;

fn m(f: &str, t: &str) -> bool {
    matches(&split(f)[..], &split(t)[..])
}

fn topic_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(&["a", "b", "", "$s", "c"][..]), 1..5)
        .prop_map(|l| l.join("/"))
        .prop_filter("a topic is non-empty", |t| !t.is_empty())
}

fn filter_strategy() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop::sample::select(&["a", "b", "", "$s", "+", "+"][..]), 0..4), any::<bool>())
        .prop_map(|(mut l, hash)| {
            if hash || l.is_empty() {
                l.push("#");
            }
            l.join("/")
        })
        .prop_filter("a filter is non-empty and valid", |f| !f.is_empty() && validate_filter(f).is_ok())
}

/// A topic the filter matches: wildcards replaced by random literals.
fn instantiate(filter: &str, picks: &[usize]) -> String {
    let mut out = Vec::new();
    for (i, l) in split(filter).iter().enumerate() {
        let pick = picks[i % picks.len()];
        match *l {
            "+" => out.push(["a", "b", "", "z"][pick % 4].to_string()),
            "#" => {
                for j in 0..(pick % 3) {
                    out.push(["a", "q", ""][(pick + j) % 3].to_string());
                }
            }
            lit => out.push(lit.to_string()),
        }
    }
    out.join("/")
}

/// Every valid topic of 1..=depth levels over the literals (plus a fresh one).
fn all_topics(depth: usize) -> Vec<String> {
    let alphabet = ["a", "b", "", "$s", "z"];
    let mut out: Vec<Vec<&str>> = vec![vec![]];
    let mut all = Vec::new();
    for _ in 0..depth {
        out = out.iter().flat_map(|p| alphabet.iter().map(move |a| [p.clone(), vec![*a]].concat())).collect();
        all.extend(out.iter().map(|l| l.join("/")).filter(|t| !t.is_empty()));
    }
    all
}

fn depth(f: &str) -> usize {
    split(f).len()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn matching_agrees_with_the_reference(f in filter_strategy(), t in topic_strategy()) {
        prop_assert!(validate_name(&t).is_ok());
        prop_assert_eq!(m(&f, &t), reference_match(&f, &t), "filter {:?} topic {:?}", f, t);
    }

    #[test]
    fn containment_is_sound(p in filter_strategy(), f in filter_strategy(), picks in prop::collection::vec(0usize..12, 1..6)) {
        let t = instantiate(&f, &picks);
        prop_assume!(!t.is_empty() && reference_match(&f, &t));
        if contains(&split(&p)[..], &split(&f)[..]) {
            prop_assert!(m(&p, &t), "{:?} contains {:?} but misses {:?}", p, f, t);
        }
    }

    #[test]
    fn overlap_is_sound(a in filter_strategy(), b in filter_strategy(), picks in prop::collection::vec(0usize..12, 1..6)) {
        let t = instantiate(&a, &picks);
        prop_assume!(!t.is_empty() && reference_match(&a, &t));
        if reference_match(&b, &t) {
            prop_assert!(overlaps(&split(&a)[..], &split(&b)[..]), "{:?} and {:?} share {:?}", a, b, t);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Containment and overlap are exact, not just sound: checked against every topic up to
    /// one level deeper than either filter (a deeper counterexample truncates to one of those).
    #[test]
    fn containment_and_overlap_are_exact(p in filter_strategy(), f in filter_strategy()) {
        let topics = all_topics(depth(&p).max(depth(&f)) + 1);
        let brute_contains = topics.iter().all(|t| !reference_match(&f, t) || reference_match(&p, t));
        let brute_overlap = topics.iter().any(|t| reference_match(&f, t) && reference_match(&p, t));
        prop_assert_eq!(contains(&split(&p)[..], &split(&f)[..]), brute_contains, "contains({:?}, {:?})", p, f);
        prop_assert_eq!(overlaps(&split(&p)[..], &split(&f)[..]), brute_overlap, "overlaps({:?}, {:?})", p, f);
    }
}

// ---- the index against the linear reading -------------------------------------------------

fn pattern_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => filter_strategy(),
        1 => (filter_strategy(), prop::sample::select(&["${username}", "${clientid}", "${subject.id}"][..]), 0usize..3)
            .prop_map(|(f, ph, at)| {
                let mut l: Vec<&str> = split(&f);
                let at = at.min(l.len().saturating_sub(1));
                if l[at] != "#" { l[at] = ph; } else { l.insert(at, ph); }
                l.join("/")
            }),
    ]
}

fn rule_strategy() -> impl Strategy<Value = serde_json::Value> {
    let list = |items: &'static [&'static str]| prop::collection::vec(prop::sample::select(items), 0..3);
    (
        prop::option::weighted(0.3, list(&["user", "service", "device"])),
        prop::option::weighted(0.2, list(&["u1", "u2", "a"])),
        prop::option::weighted(0.3, list(&["viewers", "admins"])),
        prop::option::weighted(0.2, list(&["mqtt.read", "mqtt.*", "x"])),
        prop_oneof![1 => Just(None), 6 => prop::collection::vec(pattern_strategy(), 1..3).prop_map(Some)],
        prop_oneof![1 => Just(None), 3 => list(&["subscribe", "read", "publish"]).prop_map(Some)],
        any::<bool>(),
        // Conditions on the message, on some rules.
        prop::option::weighted(0.15, prop::sample::subsequence(&[0u8, 1, 2][..], 0..=3)),
        prop::option::weighted(0.15, any::<bool>()),
    )
        .prop_map(|(types, ids, groups, scopes, topics, actions, deny, qos, retain)| {
            let mut subjects = serde_json::Map::new();
            for (k, v) in [("types", types), ("ids", ids), ("groups", groups), ("scopes", scopes)] {
                if let Some(v) = v {
                    subjects.insert(k.into(), serde_json::json!(v));
                }
            }
            let mut rule = serde_json::json!({
                "subjects": subjects,
                "topics": topics.map_or(serde_json::json!("*"), |t| serde_json::json!(t)),
                "actions": actions.map_or(serde_json::json!("*"), |a| serde_json::json!(a)),
                "effect": if deny { "deny" } else { "allow" },
            });
            if let Some(q) = qos {
                rule["qos"] = serde_json::json!(q);
            }
            if let Some(r) = retain {
                rule["retain"] = serde_json::json!(r);
            }
            rule
        })
}

fn subject_strategy() -> impl Strategy<Value = Subject> {
    (
        prop::sample::select(&["u1", "u2", "a", "$x", "a/b"][..]),
        prop::sample::select(&SubjectType::ALL[..]),
        prop::collection::vec(prop::sample::select(&["viewers", "admins", "other"][..]), 0..3),
        prop::collection::vec(prop::sample::select(&["mqtt.read", "mqtt.write", "x", "mqtt"][..]), 0..3),
    )
        .prop_map(|(id, kind, groups, scopes)| Subject {
            id: id.into(),
            kind,
            groups: groups.into_iter().map(String::from).collect(),
            scopes: scopes.into_iter().map(String::from).collect(),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// `check` (indexed) and `explain` (every rule, in order) give the same decision.
    #[test]
    fn the_index_never_changes_a_decision(
        rules in prop::collection::vec(rule_strategy(), 0..12),
        with_roles in any::<bool>(),
        subject in subject_strategy(),
        action in prop::sample::select(&[Action::Subscribe, Action::Subscribe, Action::Read, Action::Publish][..]),
        topic in prop_oneof![topic_strategy(), filter_strategy(), Just("$share/g/a/#".to_string())],
        clientid in prop::sample::select(&["a", "", "+", "b"][..]),
        username in prop::sample::select(&["a", "$s", "b"][..]),
        qos in prop::sample::select(&[None, Some(0u8), Some(1), Some(2)][..]),
        retain in prop::sample::select(&[None, Some(false), Some(true)][..]),
    ) {
        // A subscription has no retain flag. The residual knows no message: it must answer
        // what `check` answers for every one.
        let message = Message { qos, retain: retain.filter(|_| action != Action::Subscribe) };
        let mut doc = serde_json::json!({"celine": {"mqtt": {"acl": {"rules": rules}}}});
        if with_roles {
            doc["celine"]["roles"] = serde_json::json!({
                "group_permissions": {"viewers": ["subscribe", "read"], "admins": ["subscribe", "read", "publish"]},
                "scope_permissions": {"mqtt.read": ["subscribe", "read"], "mqtt.write": ["publish"]}});
        }
        let policy = Policy::load(&doc.to_string()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let q = Query { subject: &subject, action, topic: &topic, clientid, username, message };
        let explained = policy.explain(&q);
        prop_assert_eq!(policy.check(&q), explained.decision.clone());

        // A subject prepared once decides every request as `check` does, under its own
        // policy and (the long way) under another one.
        let prepared = policy.prepare(subject.clone(), clientid, username);
        // The residual allows only what the whole procedure allows, by the same rule.
        if let Some(rule) = policy.allowed_at_once(&prepared, action, &topic, clientid, username) {
            prop_assert_eq!(policy.allowed_by(rule, action, &topic), explained.decision.clone());
        }
        prop_assert_eq!(policy.check_prepared(&prepared, action, &topic, clientid, username, message), explained.decision.clone());
        let other = Policy::load(&doc.to_string()).map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        prop_assert_eq!(other.check_prepared(&prepared, action, &topic, clientid, username, message), explained.decision.clone());

        // The playground's "which patterns cover this topic" agrees with `explain`: a rule
        // applies exactly when one of its covering patterns belongs to a rule whose subjects
        // and actions fit, and the first such pattern is the one `explain` names.
        let hits = policy.patterns_covering(&q);
        for t in &explained.rules {
            let first = hits.iter().find(|h| h.index == t.index && h.applies);
            prop_assert_eq!(t.applies, first.is_some(), "rule {}", t.index);
            if let Some(h) = first {
                prop_assert_eq!(t.matched_topic.as_deref(), Some(h.pattern.as_str()));
            }
        }
        prop_assert!(hits.windows(2).all(|w| (w[0].index, w[0].pattern_index) < (w[1].index, w[1].pattern_index)));
    }
}

#[test]
fn the_default_policys_everyday_reads_are_decided_by_the_residual_and_denials_are_not() {
    let policy = Policy::load(include_str!("../../policies/celine.json")).unwrap();
    let viewer = Subject {
        id: "u-vera".into(),
        kind: SubjectType::User,
        groups: vec!["viewers".into()],
        scopes: vec![],
    };
    let prepared = policy.prepare(viewer.clone(), "c1", "vera");
    let topic = "celine/telemetry/meter/m1/readings";
    let rule = policy
        .allowed_at_once(&prepared, Action::Read, topic, "c1", "vera")
        .expect("a residual for telemetry");
    let q = Query {
        subject: &viewer,
        action: Action::Read,
        topic,
        clientid: "c1",
        username: "vera",
        message: Message::UNKNOWN,
    };
    assert_eq!(policy.allowed_by(rule, Action::Read, topic), policy.check(&q));
    for (action, topic) in
        [(Action::Publish, topic), (Action::Read, "celine/system/alerts/critical"), (Action::Read, "a/+")]
    {
        assert_eq!(
            policy.allowed_at_once(&prepared, action, topic, "c1", "vera"),
            None,
            "{action:?} {topic}"
        );
    }
    // Another connection's values are not the ones its placeholders were bound to.
    assert_eq!(policy.allowed_at_once(&prepared, Action::Read, topic, "c2", "vera"), None);
}
