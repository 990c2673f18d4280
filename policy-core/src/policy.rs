//! The loaded policy: rules, roles, and the index built over them.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::certificates::Certificates;
use crate::index::Index;
use crate::invalid::Invalid;
use crate::invariant::Invariant;
use crate::limits::LimitEntry;
use crate::model::{Permission, Permissions, Subject, SubjectType};
use crate::rule::Rule;

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

/// A loaded, indexed policy document. Immutable; cheap to query from many threads. (`id`
/// first, `repr(C)`: a check a prepared subject's residual answers reads only it.)
#[derive(Debug, Clone)]
#[repr(C)]
pub struct Policy {
    /// Tells this loaded document from every other in the process (a clone is the same
    /// document): what a [`crate::Prepared`] subject is checked against.
    pub(crate) id: u64,
    pub(crate) rules: Vec<Rule>,
    pub(crate) roles: Option<Roles>,
    pub(crate) certificates: Option<Certificates>,
    pub(crate) limits: Vec<LimitEntry>,
    /// `celine.mqtt.invariants`: statements [`crate::verify`] decides.
    pub(crate) invariants: Vec<Invariant>,
    pub(crate) index: Index,
    /// Some rule has a `qos` or `retain` condition.
    reads_message: bool,
}

/// The next [`Policy::id`].
static LOADED: AtomicU64 = AtomicU64::new(1);

impl Policy {
    pub(crate) fn new(
        rules: Vec<Rule>,
        roles: Option<Roles>,
        certificates: Option<Certificates>,
        limits: Vec<LimitEntry>,
        invariants: Vec<Invariant>,
    ) -> Policy {
        let index = Index::build(&rules);
        let reads_message = rules.iter().any(|r| !r.conditions.is_none());
        Policy {
            rules,
            roles,
            certificates,
            limits,
            invariants,
            index,
            id: LOADED.fetch_add(1, Ordering::Relaxed),
            reads_message,
        }
    }

    /// Whether a decision can depend on the request's message (some rule has a `qos` or
    /// `retain` condition): a cache of decisions by topic must then tell messages apart.
    pub fn reads_message(&self) -> bool {
        self.reads_message
    }

    /// The `certificates` section, when the document has one.
    pub fn certificates(&self) -> Option<&Certificates> {
        self.certificates.as_ref()
    }

    /// The subject of a client known by its certificate name (semantics.md §4b), as a
    /// subject of type `kind`; `Err` says why the name is no client of this policy.
    pub fn certificate_subject(&self, name: &str, kind: SubjectType) -> Result<Subject, Invalid> {
        match &self.certificates {
            Some(c) => c.subject(name, kind),
            None => Err(Invalid(format!(
                "the policy has no certificates section, so the certificate name {} is no client of it",
                crate::json::quote(name)
            ))),
        }
    }

    /// The invariants the document states.
    pub fn invariants(&self) -> &[Invariant] {
        &self.invariants
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
