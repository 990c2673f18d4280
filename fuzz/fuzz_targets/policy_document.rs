//! Any bytes as a policy document: a load error or a policy, never a panic; a loaded policy
//! decides, explains and lints any request without panicking, and `check` and `explain`
//! agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_core::{Action, Policy, Query, Subject, SubjectType};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = Policy::load(text) else { return };
    let _ = policy.lint();
    let subject = Subject {
        id: "alice".into(),
        kind: SubjectType::User,
        groups: vec!["viewers".into(), "admins".into()],
        scopes: vec!["mqtt.read".into()],
    };
    let _ = policy.superuser(&subject);
    for action in [Action::Subscribe, Action::Read, Action::Publish] {
        for topic in ["celine/telemetry/meter/m1/readings", "a/#", "+/+", "$SYS/x", "alice/inbox", ""] {
            let q = Query { subject: &subject, action, topic, clientid: "c1", username: "alice" };
            let decision = policy.check(&q);
            let explained = policy.explain(&q);
            assert_eq!(decision.allow, explained.decision.allow, "check and explain disagree on {topic:?}");
        }
    }
});
