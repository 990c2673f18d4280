//! The loaded policy: rules, roles, and the index built over them.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::certificates::Certificates;
use crate::index::Index;
use crate::model::{Action, Permission, Permissions, Subject, SubjectType};
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

/// `roles`: which groups and scopes grant which capabilities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Roles {
    pub group_permissions: BTreeMap<String, Permissions>,
    pub scope_permissions: BTreeMap<String, Permissions>,
}

impl Roles {
    /// The union of the subject's groups' and scopes' permissions (exact keys).
    pub fn capabilities(&self, s: &Subject) -> Permissions {
        let mut caps = Permissions::default();
        for g in &s.groups {
            if let Some(p) = self.group_permissions.get(g) {
                caps.union(*p);
            }
        }
        for sc in &s.scopes {
            if let Some(p) = self.scope_permissions.get(sc) {
                caps.union(*p);
            }
        }
        caps
    }

    /// Where a subject's permission comes from, for explanations: `group 'admins'`.
    pub fn sources(&self, s: &Subject, p: Permission) -> Vec<String> {
        let mut out = Vec::new();
        for g in &s.groups {
            if self.group_permissions.get(g).is_some_and(|ps| ps.has(p)) {
                out.push(format!("group {}", crate::json::quote(g)));
            }
        }
        for sc in &s.scopes {
            if self.scope_permissions.get(sc).is_some_and(|ps| ps.has(p)) {
                out.push(format!("scope {}", crate::json::quote(sc)));
            }
        }
        out
    }
}

/// A loaded, indexed policy document. Immutable; cheap to query from many threads.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) rules: Vec<Rule>,
    pub(crate) roles: Option<Roles>,
    pub(crate) certificates: Option<Certificates>,
    pub(crate) index: Index,
}

impl Policy {
    pub(crate) fn new(rules: Vec<Rule>, roles: Option<Roles>, certificates: Option<Certificates>) -> Policy {
        let index = Index::build(&rules);
        Policy { rules, roles, certificates, index }
    }

    /// The `certificates` section, when the document has one.
    pub fn certificates(&self) -> Option<&Certificates> {
        self.certificates.as_ref()
    }

    /// The subject of a client known by its certificate name (semantics.md §4b), as a
    /// subject of type `kind`; `Err` says why the name is no client of this policy.
    pub fn certificate_subject(&self, name: &str, kind: SubjectType) -> Result<Subject, String> {
        match &self.certificates {
            Some(c) => c.subject(name, kind),
            None => Err(format!(
                "the policy has no certificates section, so the certificate name {} is no client of it",
                crate::json::quote(name)
            )),
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn roles(&self) -> Option<&Roles> {
        self.roles.as_ref()
    }

    /// The subject's capabilities, or `None` when the document has no `roles` (then the
    /// capability layer is off and rules alone decide).
    pub fn capabilities(&self, s: &Subject) -> Option<Permissions> {
        self.roles.as_ref().map(|r| r.capabilities(s))
    }

    /// The rule index of the rule named `name` (`id` or `rules[N]`).
    pub fn rule_by_name(&self, name: &str) -> Option<usize> {
        self.rules.iter().position(|r| r.name == name)
    }
}
