//! The decision record: what both front ends log for a decision, in one format, a JSON object
//! with the same fields in the same order:
//!
//! `{"endpoint":"acl","subject":"u-vera","subject_type":"user","username":"vera",
//!   "clientid":"c1","topic":"celine/t","action":"read","decision":"allow","rule":"viewers",
//!   "reason":"..."}`
//!
//! `endpoint` is the kind of call: `acl` for a subscribe, publish or delivery check, `user`
//! for the service's CONNECT call, `superuser` for its superuser call (the plugin records its
//! ACL checks; its CONNECT outcomes are log lines that also name the client's address).
//! `decision` is `allow`, `deny`, or `bad_request` (the service's malformed calls); `rule` is
//! `-` when no rule decided (a check denied before the policy was asked). A record never holds
//! a token: the username is `<token>` when a token was sent as the username, and reasons never
//! quote one. A granted subscription with a wildcard filter adds `"watch":"wildcard"`, and both
//! front ends write it whatever level their other allows are recorded at.

use policy_engine::{Decision, Subject};

/// One decision, as it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionRecord<'a> {
    pub endpoint: &'a str,
    pub subject: &'a str,
    pub subject_type: &'a str,
    pub username: &'a str,
    pub clientid: &'a str,
    pub topic: &'a str,
    pub action: &'a str,
    pub decision: &'a str,
    pub rule: &'a str,
    pub reason: &'a str,
    /// Why this record is watched, when it is: `wildcard` for a granted subscription whose
    /// filter has a wildcard (written as a last member, `"watch":"wildcard"`, only then).
    pub watch: Option<&'static str>,
}

impl<'a> DecisionRecord<'a> {
    /// A record of a call about `subject` (`-` when none was found), not yet decided: the
    /// action `-`, denied for no reason. [`DecisionRecord::decided`] or
    /// [`DecisionRecord::denied`] completes it.
    pub fn about(
        endpoint: &'a str,
        subject: Option<&'a Subject>,
        username: &'a str,
        clientid: &'a str,
        topic: &'a str,
    ) -> DecisionRecord<'a> {
        DecisionRecord {
            endpoint,
            subject: subject.map_or("-", |s| s.id.as_str()),
            subject_type: subject.map_or("-", Subject::kind_str),
            username,
            clientid,
            topic,
            action: "-",
            decision: "deny",
            rule: "-",
            reason: "",
            watch: None,
        }
    }

    /// Marks the record as watched for `why` (see [`DecisionRecord::watch`]).
    pub fn watched(self, why: &'static str) -> DecisionRecord<'a> {
        DecisionRecord { watch: Some(why), ..self }
    }

    /// What the policy decided for `action`.
    pub fn decided(self, action: &'a str, d: &'a Decision) -> DecisionRecord<'a> {
        DecisionRecord {
            action,
            decision: if d.allow { "allow" } else { "deny" },
            rule: d.rule.as_deref().unwrap_or("-"),
            reason: &d.reason,
            ..self
        }
    }

    /// Allowed or denied for `reason`, before (or without) asking the policy.
    pub fn outcome(self, action: &'a str, allow: bool, reason: &'a str) -> DecisionRecord<'a> {
        DecisionRecord { action, decision: if allow { "allow" } else { "deny" }, reason, ..self }
    }

    /// The fields, in their order.
    pub fn fields(&self) -> [(&'static str, &str); 10] {
        [
            ("endpoint", self.endpoint),
            ("subject", self.subject),
            ("subject_type", self.subject_type),
            ("username", self.username),
            ("clientid", self.clientid),
            ("topic", self.topic),
            ("action", self.action),
            ("decision", self.decision),
            ("rule", self.rule),
            ("reason", self.reason),
        ]
    }

    /// Appends the fields as JSON members (`"endpoint":"acl","subject":...`), for a line that
    /// adds members of its own (a timestamp).
    pub fn write_members(&self, out: &mut Vec<u8>) {
        for (i, (name, value)) in self.fields().into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            write_string(out, value);
        }
        if let Some(why) = self.watch {
            out.extend_from_slice(b",\"watch\":");
            write_string(out, why);
        }
    }

    /// The record as one JSON object.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        out.push(b'{');
        self.write_members(&mut out);
        out.push(b'}');
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A JSON string: quoted, with `"`, `\` and control characters escaped.
fn write_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    // Nearly every value needs no escape: every byte is looked at (no early exit), which the
    // compiler turns into a few wide comparisons, and the value is copied whole.
    if s.bytes().fold(true, |plain, b| plain & (b >= b' ') & (b != b'"') & (b != b'\\')) {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_json_object_with_every_field_escaped() {
        let r = DecisionRecord {
            endpoint: "acl",
            subject: "u-1",
            subject_type: "user",
            username: "",
            clientid: "c\"1",
            topic: "t/\u{1}\n\\",
            action: "read",
            decision: "deny",
            rule: "-",
            reason: "no rule allows read on 'x'",
            watch: None,
        };
        let text = r.to_json();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["topic"], "t/\u{1}\n\\");
        assert_eq!(v["clientid"], "c\"1");
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        let names: Vec<&str> = r.fields().iter().map(|(n, _)| *n).collect();
        let keys: Vec<&str> = text.split(",\"").skip(1).map(|k| k.split('"').next().unwrap()).collect();
        assert_eq!(keys, names[1..], "in order");
        let watched: serde_json::Value = serde_json::from_str(&r.watched("wildcard").to_json()).unwrap();
        assert_eq!(watched["watch"], "wildcard");
        assert!(v.get("watch").is_none(), "only a watched record says so");
    }

    #[test]
    fn every_string_survives_the_round_trip() {
        let tricky =
            ["", "plain/topic", "ünïcödé/🙂", "\u{7f}\u{2028}", "\\\"", "a\u{0}b", "\t\r\n\u{1f}", " "];
        for value in tricky {
            let r = DecisionRecord {
                reason: value,
                topic: value,
                ..DecisionRecord::about("acl", None, "", "", "")
            };
            let v: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
            assert_eq!((v["reason"].as_str(), v["topic"].as_str()), (Some(value), Some(value)), "{value:?}");
        }
    }
}
