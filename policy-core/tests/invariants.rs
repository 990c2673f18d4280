//! Property tests of `verify`: for random policies and invariants it agrees with a brute-force
//! search over a universe that holds every request the vocabulary can tell apart, and every
//! counterexample it prints is real (re-decided, and forbidden by its invariant).

mod support;

use policy_core::{Ask, EvalRequest, Invariant, Message, Policy, Subject, SubjectType, realizable, verify};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::*;

/// `only`: absent, one selector, or a list of selectors.
fn selector() -> impl Strategy<Value = Value> {
    (some_of(&["user", "service", "device"]), some_of(&["u1"]), some_of(&GROUPS), some_of(&SCOPE_PATTERNS))
        .prop_map(|(types, ids, groups, scopes)| {
            let mut s = serde_json::Map::new();
            for (k, v) in [("types", types), ("ids", ids), ("groups", groups), ("scopes", scopes)] {
                if let Some(v) = v {
                    s.insert(k.into(), json!(v));
                }
            }
            Value::Object(s)
        })
}

fn only() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        2 => selector().prop_map(Some),
        1 => prop::collection::vec(selector(), 0..3).prop_map(|v| Some(json!(v))),
    ]
}

fn invariant() -> impl Strategy<Value = Value> {
    (
        only(),
        some_of(&["subscribe", "read", "publish"]),
        prop_oneof![6 => prop::collection::vec(pattern(), 1..3).prop_map(|p| json!(p)), 1 => Just(json!("*"))],
        prop::bool::weighted(0.15),
    )
        .prop_map(|(only, actions, topics, covering)| {
            let mut inv = json!({"actions": actions.map(|a| json!(a)).unwrap_or(json!("*")), "topics": topics});
            if covering {
                inv["actions"] = json!(["subscribe"]);
                inv["filters"] = json!("covering");
                let plain = |p: &Value| {
                    let p = p.as_str().unwrap_or("#");
                    if p.contains("${") { "a/#".to_string() } else { p.to_string() }
                };
                inv["topics"] = match inv["topics"].as_array() {
                    Some(ps) => json!(ps.iter().map(plain).collect::<Vec<_>>()),
                    None => json!(["#"]),
                };
            }
            if let Some(o) = only {
                inv["only"] = o;
            }
            inv
        })
}

/// Every subject the vocabulary tells apart: the listed id `u1`, ids equal to a literal level
/// (`a`, `b`), a fresh one (`zz`); every type and combination of groups and scopes.
fn subjects() -> &'static [Subject] {
    static ALL: std::sync::OnceLock<Vec<Subject>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let mut out = Vec::new();
        for kind in SubjectType::ALL {
            for id in ["u1", "a", "b", "zz"] {
                for groups in subsets(&GROUPS) {
                    for scopes in subsets(&["a.x", "a.y", "b"]) {
                        out.push(Subject { id: id.into(), kind, groups: groups.clone(), scopes });
                    }
                }
            }
        }
        out
    })
}

/// Topic names of one to four levels and filters over the literal levels, the listed id, a
/// client id and a fresh level, and a `$`-level the documents do not name.
fn topics() -> &'static [String] {
    static ALL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    ALL.get_or_init(|| {
        let words = ["a", "b", "zz", "u1", "c1"];
        let mut out: Vec<String> = vec![
            "$s".into(),
            "$s/a".into(),
            "$zz".into(),
            "$zz/a".into(),
            "#".into(),
            "+".into(),
            "$s/#".into(),
            "+/#".into(),
        ];
        for a in words {
            out.push(a.into());
            out.push(format!("$s/{a}"));
            out.push(format!("$s/{a}/zz"));
            for b in words {
                out.push(format!("{a}/{b}"));
                out.push(format!("{a}/{b}/zz"));
                out.push(format!("{a}/{b}/zz/zz"));
            }
        }
        for a in ["a", "b", "u1", "+"] {
            for b in ["a", "b", "zz", "+", "#"] {
                out.push(format!("{a}/{b}"));
                if b != "#" {
                    out.push(format!("{a}/{b}/#"));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    })
}

/// Usernames and client ids: empty (unusable), equal to a literal level, and fresh.
const USERNAMES: [&str; 4] = ["", "a", "b", "zz"];
const CLIENT_IDS: [&str; 3] = ["c1", "a", "b"];

fn allowed(p: &Policy, r: &EvalRequest) -> bool {
    p.superuser(&r.subject).allow || p.evaluate(r).allow
}

/// A request of the universe that `p` allows and the invariant forbids. Topics the
/// invariant cannot forbid for anyone are skipped first (the probe: nobody excepted, values
/// that own nothing).
fn brute(p: &Policy, inv: &Invariant) -> Option<EvalRequest> {
    let probe = Invariant { only: Vec::new(), ..inv.clone() };
    let nobody = Subject { id: String::new(), kind: SubjectType::User, groups: vec![], scopes: vec![] };
    // A covering invariant's own patterns are the filters that can cover them.
    let own: Vec<String> = match &inv.topics {
        policy_core::Sel::List(ps) => ps.iter().map(|p| p.as_str().to_string()).collect(),
        policy_core::Sel::Any => Vec::new(),
    };
    for action in [Ask::Subscribe, Ask::Read, Ask::Publish] {
        for topic in topics().iter().chain(&own) {
            let base = EvalRequest {
                subject: nobody.clone(),
                ask: action,
                topic: topic.clone(),
                clientid: String::new(),
                username: String::new(),
                message: Message::UNKNOWN,
            };
            if !probe.forbids(&base) {
                continue;
            }
            for subject in subjects() {
                // A device's username is its id (semantics.md §4b): others are not requests.
                let own = [subject.id.as_str()];
                let usernames: &[&str] = if subject.kind == SubjectType::Device { &own } else { &USERNAMES };
                for &username in usernames {
                    for clientid in CLIENT_IDS {
                        let variants =
                            if p.reads_message() { messages(action) } else { vec![Message::UNKNOWN] };
                        for message in variants {
                            let r = EvalRequest {
                                subject: subject.clone(),
                                clientid: clientid.into(),
                                username: username.into(),
                                message,
                                ..base.clone()
                            };
                            if realizable(&r) && inv.forbids(&r) && allowed(p, &r) {
                                return Some(r);
                            }
                        }
                    }
                }
            }
        }
    }
    None
}

proptest! {
    // 48 cases here (about 30 s); PROPTEST_CASES=N for a longer hunt (1,500 passed in release).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn verify_agrees_with_brute_force_and_its_counterexamples_are_real(
        rules in prop::collection::vec(rule(), 0..5),
        roles in roles(),
        invariants in prop::collection::vec(invariant(), 1..3),
    ) {
        let mut doc = document(rules, roles);
        doc["celine"]["mqtt"]["invariants"] = json!(invariants);
        let p = load(&doc);
        let v = verify(&p);
        prop_assert_eq!(v.verdicts.len(), p.invariants().len());
        for (inv, verdict) in p.invariants().iter().zip(&v.verdicts) {
            if let Some(c) = &verdict.counterexample {
                prop_assert!(inv.forbids(&c.request) && realizable(&c.request), "{} does not forbid {}", inv.name, serde_json::to_string(&c.request).unwrap());
                let again = if c.superuser { p.superuser(&c.request.subject) } else { p.evaluate(&c.request) };
                prop_assert!(again.allow, "counterexample {} is denied", serde_json::to_string(&c.request).unwrap());
            }
            let found = brute(&p, inv);
            prop_assert_eq!(
                verdict.holds, found.is_none(),
                "{}: verify says {} after {} requests, brute force found {}\n{}",
                inv.name, if verdict.holds { "holds" } else { "violated" }, v.probed,
                found.as_ref().map(|r| serde_json::to_string(r).unwrap()).unwrap_or_default(), doc
            );
        }
    }
}

fn default_policy() -> Value {
    serde_json::from_str(include_str!("../../policies/celine.json")).unwrap()
}

#[test]
fn the_default_policy_keeps_its_invariants_and_a_widening_edit_breaks_one() {
    let doc = default_policy();
    let p = load(&doc);
    assert!(!p.invariants().is_empty(), "the default policy states invariants");
    let v = verify(&p);
    assert!(v.holds(), "{:#?}", v.violated().collect::<Vec<_>>());

    // A viewer-wide nudge rule breaks "each user reads only its own nudges".
    let mut wide = doc.clone();
    wide["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "id": "nudges-viewers", "subjects": {"groups": ["viewers"]},
        "topics": ["celine/nudges/#"], "actions": ["subscribe", "read"]}));
    let v = verify(&load(&wide));
    let broken: Vec<&str> = v.violated().map(|x| x.invariant.as_str()).collect();
    assert_eq!(broken, ["nudges-are-private"]);
    let c = v.violated().next().unwrap().counterexample.as_ref().unwrap();
    assert!(c.decision.rule.as_deref() == Some("nudges-viewers") && !c.superuser, "{c:?}");

    // A rule letting every mqtt.write service publish pipeline status breaks that invariant.
    let mut status = doc;
    status["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap().push(json!({
        "subjects": {"types": ["service"], "scopes": ["mqtt.write"]},
        "topics": ["celine/pipelines/#"], "actions": ["publish"]}));
    let v = verify(&load(&status));
    let broken: Vec<&str> = v.violated().map(|x| x.invariant.as_str()).collect();
    assert_eq!(broken, ["pipeline-status-publishers"]);
}

#[test]
fn own_values_are_each_subjects_own_and_covering_means_the_whole_pattern() {
    let doc = json!({"celine": {"mqtt": {
    "acl": {"rules": [
        {"topics": ["users/${subject.id}/#"], "actions": "*"},
        {"subjects": {"groups": ["ops"]}, "topics": ["users/+/inbox"], "actions": ["subscribe"]},
        {"subjects": {"groups": ["ops"]}, "topics": ["#"], "actions": ["subscribe"]}
    ]},
    "invariants": [
        {"id": "own", "actions": ["read", "publish"], "topics": ["users/${subject.id}/#"]},
        {"id": "own-subscriptions", "actions": ["subscribe"], "topics": ["users/${subject.id}/#"],
         "only": {"groups": ["ops"]}},
        {"id": "wide", "actions": ["subscribe"], "topics": ["#"], "filters": "covering",
         "only": [{"groups": ["admins"]}]}
    ]}}});
    let v = verify(&load(&doc));
    let verdicts: Vec<(&str, bool)> = v.verdicts.iter().map(|x| (x.invariant.as_str(), x.holds)).collect();
    assert_eq!(verdicts, [("own", true), ("own-subscriptions", true), ("wide", false)]);
    let c = v.verdicts[2].counterexample.as_ref().unwrap();
    assert_eq!(c.request.topic, "#");
    assert_eq!(c.request.subject.groups, ["ops"]);
}

#[test]
fn invariants_load_strictly() {
    let bad = |inv: Value, want: &str| {
        let doc = json!({"celine": {"mqtt": {"acl": {"rules": []}, "invariants": [inv]}}});
        let e = Policy::load(&doc.to_string()).unwrap_err();
        assert!(e.iter().any(|d| d.message.contains(want)), "{want}: {e:?}");
    };
    bad(json!({"actions": ["read"], "topics": ["a"], "onyl": {}}), "did you mean 'only'");
    bad(json!({"topics": ["a"]}), "missing required field 'actions'");
    bad(json!({"actions": ["read"]}), "missing required field 'topics'");
    bad(json!({"actions": ["read"], "topics": ["a"], "filters": "covering"}), "must be [\"subscribe\"]");
    bad(
        json!({"actions": ["subscribe"], "topics": ["a/${username}"], "filters": "covering"}),
        "cannot hold placeholders",
    );
    bad(
        json!({"actions": ["subscribe"], "topics": ["a"], "filters": "all"}),
        "expected 'reaching' or 'covering'",
    );
    bad(json!({"actions": ["read"], "topics": ["a"], "only": {"types": ["users"]}}), "unknown subject type");
}

fn verdicts(doc: Value) -> Vec<(String, bool)> {
    verify(&load(&doc)).verdicts.into_iter().map(|v| (v.invariant, v.holds)).collect()
}

#[test]
fn a_shared_subscription_of_a_share_pattern_is_found() {
    // The rule's pattern starts with `$share`: only a filter wrapped in another `$share/<g>/`
    // is decided against it (the request's own prefix is stripped first).
    let doc = json!({"celine": {"mqtt": {
        "acl": {"rules": [{"topics": ["$share/workers/jobs/#"], "actions": ["subscribe"]}]},
        "invariants": [{"id": "nothing", "actions": ["subscribe"], "topics": "*"}]}}});
    assert_eq!(verdicts(doc), [("nothing".to_string(), false)]);
}

#[test]
fn a_superuser_is_found_on_any_topic_of_the_invariant() {
    // `/#`'s first witness level is the empty level before `/`: a topic of it is `/x`.
    let doc = json!({"celine": {"mqtt": {"acl": {"rules": []},
        "invariants": [{"id": "slash", "actions": ["publish"], "topics": ["/#"]}]},
        "roles": {"group_permissions": {"admins": ["superuser"]}}}});
    let v = verify(&load(&doc));
    let c = v.verdicts[0].counterexample.as_ref().expect("an admin publishes under '/'");
    assert!(c.superuser && c.request.topic.starts_with('/'), "{c:?}");
}

#[test]
fn a_devices_username_is_its_id() {
    // A device's username is its certificate name, which is its id: a rule on `${username}`
    // keeps it to its own id, as the invariant on `${subject.id}` says.
    let doc = json!({"celine": {"mqtt": {
        "acl": {"rules": [{"subjects": {"types": ["device"]}, "topics": ["meters/${username}/readings"], "actions": ["publish"]}]},
        "invariants": [{"id": "own-meter", "actions": ["publish"], "topics": ["meters/${subject.id}/readings"]}]}}});
    assert_eq!(verdicts(doc.clone()), [("own-meter".to_string(), true)]);
    // A user's username is the client's to choose: the same rule for users breaks it.
    let mut users = doc;
    users["celine"]["mqtt"]["acl"]["rules"][0]["subjects"]["types"] = json!(["user"]);
    assert_eq!(verdicts(users), [("own-meter".to_string(), false)]);
}

#[test]
fn long_patterns_are_decided_without_deep_recursion_or_huge_witnesses() {
    let long = vec!["+"; 20_000].join("/");
    let doc = json!({"celine": {"mqtt": {
        "acl": {"rules": [{"topics": ["#"], "actions": ["publish"]}]},
        "invariants": [{"id": "long", "actions": ["publish"], "topics": [long]}]}}});
    let v = verify(&load(&doc));
    assert!(!v.verdicts[0].holds && v.verdicts[0].counterexample.is_some(), "{:?}", v.verdicts[0].undecided);
}

#[test]
fn every_length_between_patterns_is_tried() {
    // Denied at one level and from three on; `a/b` (two levels) is allowed by `#`.
    let doc = json!({"celine": {"mqtt": {"acl": {"rules": [
        {"effect": "deny", "topics": ["+"], "actions": ["publish"]},
        {"effect": "deny", "topics": ["+/+/+/#"], "actions": ["publish"]},
        {"topics": ["#"], "actions": ["publish"]}]},
        "invariants": [{"id": "none", "actions": ["publish"], "topics": ["#"]}]}}});
    let v = verify(&load(&doc));
    let c = v.verdicts[0].counterexample.as_ref().expect("a two-level topic is allowed");
    assert_eq!(c.request.topic.split('/').count(), 2, "{c:?}");
}
