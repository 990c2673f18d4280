//! One ACL rule as loaded: whom it is for (`subjects`), which topics and actions, and its
//! effect. The policy (`policy.rs`) holds the rules; the index (`index.rs`) finds them.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::model::{Action, Subject, SubjectType};
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

/// One ACL rule as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: Option<String>,
    pub description: Option<String>,
    pub subjects: Subjects,
    pub topics: Sel<Pattern>,
    pub actions: Sel<Action>,
    pub effect: Effect,
    /// `id`, else `rules[N]`: how decisions name this rule.
    pub name: String,
}

impl Rule {
    pub fn has_action(&self, a: Action) -> bool {
        self.actions.matches_with(|x| *x == a)
    }
}
