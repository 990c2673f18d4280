//! One ACL rule as loaded: whom it is for (`subjects`), which topics and actions, and its
//! effect. The policy (`policy.rs`) holds the rules; the index (`index.rs`) finds them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::model::{Action, Message, Subject, SubjectType};
use crate::pattern::Pattern;

/// `"*"` as a whole field value, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sel<T> {
    Any,
    List(Vec<T>),
}

impl<T> Sel<T> {
    pub fn matches_with(&self, f: impl FnMut(&T) -> bool) -> bool {
        match self {
            Sel::Any => true,
            Sel::List(items) => items.iter().any(f),
        }
    }
}

/// A scope in a rule's `subjects.scopes`: exact, or `prefix.*` (semantics.md §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScopePattern {
    Exact(String),
    /// `dt.*` is stored as `dt.`: matches any scope starting with it (not `dt` itself).
    Prefix(String),
}

impl ScopePattern {
    pub fn parse(s: &str) -> ScopePattern {
        match s.strip_suffix(".*") {
            Some(stem) => ScopePattern::Prefix(format!("{stem}.")),
            None => ScopePattern::Exact(String::from(s)),
        }
    }

    pub fn matches(&self, scope: &str) -> bool {
        match self {
            ScopePattern::Exact(e) => e == scope,
            ScopePattern::Prefix(p) => scope.starts_with(p.as_str()),
        }
    }

    /// Every scope this pattern matches is matched by `other`.
    pub(crate) fn within(&self, other: &ScopePattern) -> bool {
        match (self, other) {
            (_, ScopePattern::Prefix(p)) => match self {
                ScopePattern::Exact(e) => e.starts_with(p.as_str()),
                ScopePattern::Prefix(q) => q.starts_with(p.as_str()),
            },
            (ScopePattern::Exact(a), ScopePattern::Exact(b)) => a == b,
            (ScopePattern::Prefix(_), ScopePattern::Exact(_)) => false,
        }
    }

    pub fn text(&self) -> String {
        match self {
            ScopePattern::Exact(e) => e.clone(),
            ScopePattern::Prefix(p) => format!("{p}*"),
        }
    }
}

/// A rule's `subjects`: every present field must match (absent means any subject).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subjects {
    pub types: Option<Sel<SubjectType>>,
    pub ids: Option<Sel<String>>,
    pub groups: Option<Sel<String>>,
    pub scopes: Option<Sel<ScopePattern>>,
}

/// The first field of a rule's `subjects` that does not match a subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectMismatch {
    Type,
    Id,
    Group,
    Scope,
}

impl SubjectMismatch {
    pub fn field(self) -> &'static str {
        match self {
            SubjectMismatch::Type => "types",
            SubjectMismatch::Id => "ids",
            SubjectMismatch::Group => "groups",
            SubjectMismatch::Scope => "scopes",
        }
    }
}

impl Subjects {
    pub fn check(&self, s: &Subject) -> Result<(), SubjectMismatch> {
        fn field<T>(sel: &Option<Sel<T>>, f: impl FnMut(&T) -> bool) -> bool {
            sel.as_ref().is_none_or(|sel| sel.matches_with(f))
        }
        if !field(&self.types, |t| *t == s.kind) {
            return Err(SubjectMismatch::Type);
        }
        if !field(&self.ids, |id| *id == s.id) {
            return Err(SubjectMismatch::Id);
        }
        if !field(&self.groups, |g| s.groups.iter().any(|sg| sg == g)) {
            return Err(SubjectMismatch::Group);
        }
        if !field(&self.scopes, |p| s.scopes.iter().any(|sc| p.matches(sc))) {
            return Err(SubjectMismatch::Scope);
        }
        Ok(())
    }

    pub fn matches(&self, s: &Subject) -> bool {
        self.check(s).is_ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
        }
    }
}

/// A rule's conditions on the message (semantics.md §3): absent fields cover every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Conditions {
    /// The QoS levels covered, as bits (bit `n`: QoS `n`); `None`: every level.
    pub qos: Option<u8>,
    /// Only retained (`true`) or only non-retained (`false`) messages; `None`: both.
    pub retain: Option<bool>,
}

/// The condition of a rule that does not cover a request's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionMiss {
    Qos,
    Retain,
}

impl Conditions {
    /// No conditions: every message.
    pub const NONE: Conditions = Conditions { qos: None, retain: None };

    pub fn is_none(&self) -> bool {
        *self == Conditions::NONE
    }

    /// The QoS levels covered, in order (`None`: every level).
    pub fn qos_levels(&self) -> Option<Vec<u8>> {
        self.qos.map(|bits| (0..3).filter(|q| bits & (1 << q) != 0).collect())
    }

    /// Does a rule with these conditions and `effect` cover `message` for `action`
    /// (semantics.md §3)? A known value must be covered. A value the request does not carry
    /// is covered for a deny and not for an allow, so an unknown value never widens access.
    /// A subscription carries no retain flag: a retain condition is about the messages it
    /// would receive, each decided when it is delivered (`read`), so for subscribe an allow's
    /// retain condition is met and a deny's is not.
    pub fn check(&self, effect: Effect, action: Action, message: Message) -> Result<(), ConditionMiss> {
        let unknown_met = effect == Effect::Deny;
        if let Some(bits) = self.qos {
            let met = match message.qos {
                Some(q) => q < 3 && bits & (1 << q) != 0,
                None => unknown_met,
            };
            if !met {
                return Err(ConditionMiss::Qos);
            }
        }
        if let Some(retained) = self.retain {
            let met = match (action, message.retain) {
                (Action::Subscribe, _) => effect == Effect::Allow,
                (_, Some(r)) => r == retained,
                (_, None) => unknown_met,
            };
            if !met {
                return Err(ConditionMiss::Retain);
            }
        }
        Ok(())
    }

    pub fn covers(&self, effect: Effect, action: Action, message: Message) -> bool {
        self.check(effect, action, message).is_ok()
    }

    /// The conditions that bind a rule with `effect` for `action`, or `None` when it applies
    /// whatever the message. For subscribe an allow's retain condition is always met, so it is
    /// left out (and a deny with one never applies to a subscription: [`Conditions::check`]).
    pub fn for_action(&self, effect: Effect, action: Action) -> Option<Conditions> {
        let retain = match action {
            Action::Subscribe if effect == Effect::Allow => None,
            _ => self.retain,
        };
        let c = Conditions { qos: self.qos, retain };
        (!c.is_none()).then_some(c)
    }

    /// For people: `QoS 0 or 1, retained messages only`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(levels) = self.qos_levels() {
            let levels: Vec<String> = levels.iter().map(|q| format!("{q}")).collect();
            parts.push(match levels.len() {
                0 => String::from("no QoS"),
                _ => format!("QoS {}", levels.join(" or ")),
            });
        }
        match self.retain {
            Some(true) => parts.push(String::from("retained messages only")),
            Some(false) => parts.push(String::from("non-retained messages only")),
            None => {}
        }
        parts.join(", ")
    }
}

/// One ACL rule as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: Option<String>,
    pub description: Option<String>,
    pub subjects: Subjects,
    pub topics: Sel<Pattern>,
    pub actions: Sel<Action>,
    pub effect: Effect,
    /// What the message must be for the rule to apply (`qos`, `retain`).
    pub conditions: Conditions,
    /// `id`, else `rules[N]`: how decisions name this rule.
    pub name: String,
}

impl Rule {
    pub fn has_action(&self, a: Action) -> bool {
        self.actions.matches_with(|x| *x == a)
    }
}
