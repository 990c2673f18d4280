//! Any bytes as a policy document: a load error or a policy, never a panic; a loaded policy
//! decides, explains and lints any request without panicking, and `check` and `explain`
//! agree. And the document written again (compact, and spaced out; keys in their order,
//! duplicates kept, numbers in their shortest form) loads again and decides the same: what a
//! policy means depends on its JSON value only, not on how the text was laid out (a policy
//! that went through an editor, `jq` or an admin upload is the same policy). A subject
//! prepared once (as the broker plugin prepares each connection's) decides every request as
//! `check` does, under its own policy and under the document written again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_core::{Action, Json, Message, Policy, Query, Subject, SubjectType};

/// `j` as JSON text; `spaced` puts a newline or a space after every separator.
fn write(j: &Json, spaced: bool, out: &mut String) {
    let (comma, colon) = if spaced { (",\n ", ": ") } else { (",", ":") };
    match j {
        Json::Null => out.push_str("null"),
        Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Json::Number(n) => out.push_str(&format!("{n}")),
        Json::String(s) => out.push_str(&serde_json::to_string(s).unwrap()),
        Json::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                write(item, spaced, out);
            }
            out.push(']');
        }
        Json::Object(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(comma);
                }
                out.push_str(&serde_json::to_string(k).unwrap());
                out.push_str(colon);
                write(v, spaced, out);
            }
            out.push('}');
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::load(text) else { return };
    let json = Json::parse(text).expect("a loaded policy is JSON");
    let rewritten: Vec<Policy> = [false, true]
        .iter()
        .map(|&spaced| {
            let mut again = String::new();
            write(&json, spaced, &mut again);
            Policy::load(&again).unwrap_or_else(|e| panic!("{again:?} does not load again: {e:?}"))
        })
        .collect();
    let _ = policy.lint();
    let subject = Subject {
        id: "alice".into(),
        kind: SubjectType::User,
        groups: vec!["viewers".into(), "admins".into()],
        scopes: vec!["mqtt.read".into()],
    };
    let _ = policy.superuser(&subject);
    let prepared = policy.prepare(subject.clone(), "c1", "alice");
    for action in [Action::Subscribe, Action::Read, Action::Publish] {
        for topic in ["celine/telemetry/meter/m1/readings", "a/#", "+/+", "$SYS/x", "alice/inbox", ""] {
            let q = Query {
                subject: &subject,
                action,
                topic,
                clientid: "c1",
                username: "alice",
                message: Message::UNKNOWN,
            };
            let decision = policy.check(&q);
            let explained = policy.explain(&q);
            assert_eq!(decision.allow, explained.decision.allow, "check and explain disagree on {topic:?}");
            if let Some(rule) = policy.allowed_at_once(&prepared, action, topic, "c1", "alice") {
                assert_eq!(
                    policy.allowed_by(rule, action, topic),
                    decision,
                    "the residual, {action:?} {topic:?}"
                );
            }
            let from_prepared =
                policy.check_prepared(&prepared, action, topic, "c1", "alice", Message::UNKNOWN);
            assert_eq!(from_prepared, decision, "prepared, {action:?} {topic:?} decides otherwise");
            for again in &rewritten {
                assert_eq!(
                    again.check(&q),
                    decision,
                    "written again, {action:?} {topic:?} decides otherwise"
                );
                let elsewhere =
                    again.check_prepared(&prepared, action, topic, "c1", "alice", Message::UNKNOWN);
                assert_eq!(
                    elsewhere, decision,
                    "prepared for another policy, {action:?} {topic:?} decides otherwise"
                );
            }
        }
    }
});
