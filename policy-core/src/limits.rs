//! Per-subject limits (semantics.md §6): the document's `celine.mqtt.limits` entries, what
//! they add up to for one subject ([`Policy::limits`]), and what changed between two
//! documents' entries ([`limit_changes`]).
//!
//! Limits are policy data, not decisions: this module says what a subject's limits *are*; a
//! front end that sees the traffic (the Mosquitto plugin) counts it against them. Nothing here
//! keeps a counter or reads a clock.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::json::quote;
use crate::model::Subject;
use crate::policy::Policy;
use crate::rule::Subjects;

/// One stated number: a bound, or explicitly none (`"unlimited"`, so that an entry can lift
/// another entry's bound for the subjects it selects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    At(u32),
    Unlimited,
}

impl Bound {
    /// The more generous of two bounds.
    fn wider(self, other: Bound) -> Bound {
        match (self, other) {
            (Bound::At(a), Bound::At(b)) => Bound::At(a.max(b)),
            _ => Bound::Unlimited,
        }
    }

    fn text(self) -> String {
        match self {
            Bound::At(n) => format!("{n}"),
            Bound::Unlimited => String::from("unlimited"),
        }
    }
}

/// A token-bucket rate: `per_second` on average, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

/// A rate as an entry states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateBound {
    At(Rate),
    Unlimited,
}

impl RateBound {
    fn wider(self, other: RateBound) -> RateBound {
        match (self, other) {
            (RateBound::At(a), RateBound::At(b)) => RateBound::At(Rate {
                per_second: a.per_second.max(b.per_second),
                burst: a.burst.max(b.burst),
            }),
            _ => RateBound::Unlimited,
        }
    }

    fn text(self) -> String {
        match self {
            RateBound::At(r) => format!("{} (burst {})", r.per_second, r.burst),
            RateBound::Unlimited => String::from("unlimited"),
        }
    }
}

/// What one entry states; `None`: the entry says nothing about that limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stated {
    pub max_subscriptions: Option<Bound>,
    pub max_payload_bytes: Option<Bound>,
    pub publish_messages: Option<RateBound>,
    pub publish_bytes: Option<RateBound>,
    /// `false`: retained publishes are refused.
    pub retain: Option<bool>,
}

impl Stated {
    /// Each limit the more generous of the two statements, where both state it.
    fn wider(self, other: Stated) -> Stated {
        fn pick<T: Copy>(a: Option<T>, b: Option<T>, wider: fn(T, T) -> T) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(wider(a, b)),
                (a, b) => a.or(b),
            }
        }
        Stated {
            max_subscriptions: pick(self.max_subscriptions, other.max_subscriptions, Bound::wider),
            max_payload_bytes: pick(self.max_payload_bytes, other.max_payload_bytes, Bound::wider),
            publish_messages: pick(self.publish_messages, other.publish_messages, RateBound::wider),
            publish_bytes: pick(self.publish_bytes, other.publish_bytes, RateBound::wider),
            retain: pick(self.retain, other.retain, |a, b| a || b),
        }
    }

    /// Each stated limit as its field in the document and its value, in a fixed order.
    fn describe(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(b) = self.max_subscriptions {
            out.push(("max_subscriptions", b.text()));
        }
        if let Some(b) = self.max_payload_bytes {
            out.push(("max_payload_bytes", b.text()));
        }
        if let Some(r) = self.publish_messages {
            out.push(("publish.messages_per_second", r.text()));
        }
        if let Some(r) = self.publish_bytes {
            out.push(("publish.bytes_per_second", r.text()));
        }
        if let Some(r) = self.retain {
            out.push(("retain", String::from(if r { "true" } else { "false (retained publishes refused)" })));
        }
        out
    }
}

/// One entry of `celine.mqtt.limits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitEntry {
    pub id: Option<String>,
    pub description: Option<String>,
    pub subjects: Subjects,
    pub stated: Stated,
    /// The `id`, or `limits[N]`.
    pub name: String,
}

/// A subject's limits: what every entry selecting it adds up to. `None` and `true` mean no
/// limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_subscriptions: Option<u32>,
    pub max_payload_bytes: Option<u32>,
    pub publish_messages: Option<Rate>,
    pub publish_bytes: Option<Rate>,
    pub retain: bool,
}

impl Limits {
    /// No limit at all: a subject no entry selects.
    pub const NONE: Limits = Limits {
        max_subscriptions: None,
        max_payload_bytes: None,
        publish_messages: None,
        publish_bytes: None,
        retain: true,
    };

    pub fn is_none(&self) -> bool {
        *self == Limits::NONE
    }

    /// Whether a publish can be refused by these limits (the broker must then see each one).
    pub fn limits_publish(&self) -> bool {
        self.max_payload_bytes.is_some()
            || self.publish_messages.is_some()
            || self.publish_bytes.is_some()
            || !self.retain
    }

    fn from_stated(s: Stated) -> Limits {
        fn bound(b: Option<Bound>) -> Option<u32> {
            match b {
                Some(Bound::At(n)) => Some(n),
                _ => None,
            }
        }
        fn rate(r: Option<RateBound>) -> Option<Rate> {
            match r {
                Some(RateBound::At(r)) => Some(r),
                _ => None,
            }
        }
        Limits {
            max_subscriptions: bound(s.max_subscriptions),
            max_payload_bytes: bound(s.max_payload_bytes),
            publish_messages: rate(s.publish_messages),
            publish_bytes: rate(s.publish_bytes),
            retain: s.retain.unwrap_or(true),
        }
    }
}

impl Policy {
    /// The `limits` entries, in document order.
    pub fn limit_entries(&self) -> &[LimitEntry] {
        &self.limits
    }

    /// The subject's limits (semantics.md §6): for each limit, the most generous value among
    /// the entries that select the subject and state it; no limit where none states it.
    pub fn limits(&self, s: &Subject) -> Limits {
        Limits::from_stated(self.stated_limits(s).0)
    }

    /// What the entries selecting `s` add up to, and their names.
    pub fn stated_limits(&self, s: &Subject) -> (Stated, Vec<&str>) {
        let mut stated = Stated::default();
        let mut names = Vec::new();
        for e in self.limits.iter().filter(|e| e.subjects.matches(s)) {
            stated = stated.wider(e.stated);
            names.push(e.name.as_str());
        }
        (stated, names)
    }

    /// The subject's limits for people: one `field value` line per limit an entry selecting
    /// the subject states, then the entries they come from; empty when no entry selects it.
    pub fn describe_limits(&self, s: &Subject) -> Vec<String> {
        let (stated, names) = self.stated_limits(s);
        if names.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<String> =
            stated.describe().into_iter().map(|(name, value)| format!("{name} {value}")).collect();
        let from: Vec<String> = names.iter().map(|n| quote(n)).collect();
        out.push(format!("from limits entries {}", from.join(", ")));
        out
    }
}

/// What changed between two documents' `limits` entries, entry by entry (matched by name),
/// one line each: for a swap report.
pub fn limit_changes(old: &Policy, new: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    for e in &old.limits {
        match new.limits.iter().find(|n| n.name == e.name) {
            None => out.push(format!("limits entry {} removed", quote(&e.name))),
            Some(n) if n == e => {}
            Some(n) => {
                let mut what = Vec::new();
                if n.subjects != e.subjects {
                    what.push(String::from("its subjects"));
                }
                let (before, after) = (e.stated.describe(), n.stated.describe());
                for (name, value) in &after {
                    match before.iter().find(|(b, _)| b == name) {
                        Some((_, old_value)) if old_value == value => {}
                        Some((_, old_value)) => what.push(format!("{name} {old_value} -> {value}")),
                        None => what.push(format!("{name} now {value}")),
                    }
                }
                for (name, value) in &before {
                    if !after.iter().any(|(a, _)| a == name) {
                        what.push(format!("{name} {value} no longer stated"));
                    }
                }
                if what.is_empty() {
                    what.push(String::from("its description"));
                }
                out.push(format!("limits entry {} changed: {}", quote(&e.name), what.join("; ")));
            }
        }
    }
    for n in &new.limits {
        if !old.limits.iter().any(|e| e.name == n.name) {
            let stated: Vec<String> =
                n.stated.describe().into_iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push(format!("limits entry {} added: {}", quote(&n.name), stated.join("; ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SubjectType;
    use alloc::string::ToString;
    use alloc::vec;

    fn doc(limits: &str) -> Policy {
        let text = format!(r#"{{"celine": {{"mqtt": {{"acl": {{"rules": []}}, "limits": {limits}}}}}}}"#);
        Policy::load(&text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn user(groups: &[&str]) -> Subject {
        Subject {
            id: "u1".to_string(),
            kind: SubjectType::User,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes: vec![],
        }
    }

    #[test]
    fn the_most_generous_stated_value_applies_field_by_field() {
        let p = doc(r#"[
            {"id": "users", "subjects": {"types": ["user"]}, "max_subscriptions": 10,
             "publish": {"messages_per_second": 5}, "retain": false},
            {"id": "viewers", "subjects": {"groups": ["viewers"]}, "max_subscriptions": 50,
             "publish": {"messages_per_second": 2, "burst_messages": 20}, "max_payload_bytes": 1024},
            {"id": "admins", "subjects": {"groups": ["admins"]}, "max_subscriptions": "unlimited"}
        ]"#);
        let l = p.limits(&user(&["viewers"]));
        assert_eq!(l.max_subscriptions, Some(50));
        assert_eq!(l.publish_messages, Some(Rate { per_second: 5, burst: 20 }));
        assert_eq!(l.max_payload_bytes, Some(1024));
        assert!(!l.retain, "no entry selecting the viewer allows retained publishes");
        assert_eq!(l.publish_bytes, None);

        let admin = p.limits(&user(&["admins"]));
        assert_eq!(admin.max_subscriptions, None, "unlimited lifts the users' bound");
        assert_eq!(
            admin.publish_messages,
            Some(Rate { per_second: 5, burst: 5 }),
            "burst defaults to the rate"
        );

        let service = Subject { kind: SubjectType::Service, ..user(&[]) };
        assert!(p.limits(&service).is_none());
        assert!(p.describe_limits(&service).is_empty());
        let lines = p.describe_limits(&user(&["viewers"]));
        assert!(lines.iter().any(|l| l == "max_subscriptions 50"), "{lines:?}");
        assert!(lines.iter().any(|l| l == "publish.messages_per_second 5 (burst 20)"), "{lines:?}");
        assert!(lines.last().is_some_and(|l| l.contains("'users', 'viewers'")), "{lines:?}");
    }

    #[test]
    fn a_change_of_entries_is_reported_by_entry_and_limit() {
        let old = doc(r#"[{"id": "a", "max_subscriptions": 10}, {"id": "b", "retain": false}]"#);
        let new = doc(
            r#"[{"id": "a", "max_subscriptions": 20, "max_payload_bytes": 5}, {"id": "c", "retain": true}]"#,
        );
        assert_eq!(
            limit_changes(&old, &new),
            vec![
                "limits entry 'a' changed: max_subscriptions 10 -> 20; max_payload_bytes now 5".to_string(),
                "limits entry 'b' removed".to_string(),
                "limits entry 'c' added: retain true".to_string(),
            ]
        );
        assert!(limit_changes(&old, &old).is_empty());
    }

    #[test]
    fn a_malformed_entry_is_refused_with_its_path() {
        let cases = [
            (
                r#"[{"max_subscriptions": -1}]"#,
                "celine.mqtt.limits[0].max_subscriptions",
                "not a whole number",
            ),
            (
                r#"[{"max_subscriptions": 1.5}]"#,
                "celine.mqtt.limits[0].max_subscriptions",
                "not a whole number",
            ),
            (r#"[{"max_subscription": 1}]"#, "celine.mqtt.limits[0].max_subscription", "did you mean"),
            (r#"[{"subjects": {"groups": ["x"]}}]"#, "celine.mqtt.limits[0]", "at least one limit"),
            (
                r#"[{"publish": {"messages_per_second": 0}}]"#,
                "celine.mqtt.limits[0].publish.messages_per_second",
                "from 1",
            ),
            (r#"[{"publish": {"burst_bytes": 10}}]"#, "celine.mqtt.limits[0].publish.burst_bytes", "needs"),
            (
                r#"[{"publish": {"messages_per_second": 5, "burst_messages": "unlimited"}}]"#,
                "celine.mqtt.limits[0].publish.burst_messages",
                "both numbers",
            ),
            (r#"[{"retain": "no"}]"#, "celine.mqtt.limits[0].retain", "true"),
            (
                r#"[{"id": "a", "retain": true}, {"id": "a", "retain": false}]"#,
                "celine.mqtt.limits[1].id",
                "limits[0] already",
            ),
            (r#"{"retain": true}"#, "celine.mqtt.limits", "a list"),
        ];
        for (limits, path, words) in cases {
            let text = format!(r#"{{"celine": {{"mqtt": {{"acl": {{"rules": []}}, "limits": {limits}}}}}}}"#);
            let errors = Policy::load(&text).expect_err(limits);
            assert!(
                errors.iter().any(|e| e.path == path && e.message.contains(words)),
                "{limits}: {errors:?}"
            );
        }
    }
}
