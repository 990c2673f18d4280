//! A subject prepared for many decisions under one loaded policy: what the decision procedure
//! would otherwise work out about the subject on every request (its capabilities from
//! `roles`, which of the index's buckets can hold its rules), found once; and its residual
//! policy for publish and read: the topic patterns (placeholders bound to the connection's
//! values) of allow rules that decide every topic they match by themselves, because no deny
//! rule and no earlier allow rule of the subject's can meet them. A topic name matching one
//! of those is allowed by that rule, which is exactly what the whole procedure would find,
//! for the cost of matching a few patterns and no allocation ([`Policy::allowed_at_once`]).
//!
//! A front end that decides many requests for one subject (a broker connection) prepares it
//! once per policy generation; [`Policy::check_prepared`] then decides exactly as
//! [`Policy::check`] would for the same query (the property tests in `tests/properties.rs` and
//! the `policy_document` fuzz target hold it to that). It owns no meaning of its own.

use alloc::string::String;
use alloc::vec::Vec;

use crate::decide::Query;
use crate::index::{ANY_TOPIC, Entry, Slots};
use crate::model::{Action, Decision, Permissions, Subject};
use crate::pattern::{Bindings, Pattern};
use crate::policy::Policy;
use crate::rule::{Effect, Sel};
use crate::topic::{self, Levels, Tok};

/// Pairs of patterns compared, at most, to find one action's residual: a subject that many
/// rules apply to (thousands, in a generated document) is decided the ordinary way instead of
/// making its connection slow to prepare.
const RESIDUAL_BUDGET: usize = 20_000;
/// Bytes of client id and username a residual binds, at most: a connection with longer ones
/// is decided in full rather than holding copies of them in every bound pattern.
const MAX_BOUND_BYTES: usize = 512;
/// Topic levels a residual match looks at, at most (deeper topics are decided in full).
const MAX_LEVELS: usize = 32;

/// An allow rule's pattern that decides by itself: `levels` bound (`+` and `#` as wildcards),
/// or `None` for `"topics": "*"`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decisive {
    rule: usize,
    levels: Option<Vec<String>>,
}

/// Bound pattern levels, as [`Levels`].
struct Bound<'a>(&'a [String]);

impl<'a> Levels<'a> for Bound<'a> {
    fn count(&self) -> usize {
        self.0.len()
    }
    fn at(&self, i: usize) -> Tok<'a> {
        match self.0[i].as_str() {
            "+" => Tok::Plus,
            "#" => Tok::Hash,
            s => Tok::Lit(s),
        }
    }
}

/// A subject, with what one policy needs to know about it for every decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    subject: Subject,
    /// The [`Policy::id`] it was prepared for.
    policy: u64,
    capabilities: Option<Permissions>,
    slots: Slots,
    /// The client id and username the residual's placeholders are bound to.
    clientid: String,
    username: String,
    /// The residual for read and publish (in that order), in document order.
    residual: [Vec<Decisive>; 2],
}

impl Prepared {
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
}

impl Policy {
    /// Prepares `subject` for decisions under this policy, for requests with this client id
    /// and username (the placeholders of its residual are bound to them).
    pub fn prepare(&self, subject: Subject, clientid: &str, username: &str) -> Prepared {
        let mut p = Prepared {
            policy: self.id,
            capabilities: self.capabilities(&subject),
            slots: self.index.slots(&subject),
            subject,
            clientid: String::from(clientid),
            username: String::from(username),
            residual: [Vec::new(), Vec::new()],
        };
        p.residual = [self.residual(&p, Action::Read), self.residual(&p, Action::Publish)];
        p
    }

    /// The allow patterns of the subject's for `action` that decide by themselves.
    fn residual(&self, p: &Prepared, action: Action) -> Vec<Decisive> {
        if p.capabilities.is_some_and(|c| !c.has(action.permission()))
            || p.clientid.len() + p.username.len() > MAX_BOUND_BYTES
        {
            return Vec::new();
        }
        let b = Bindings { username: &p.username, clientid: &p.clientid, subject_id: &p.subject.id };
        let applying = |effect: Effect| -> Vec<(usize, Option<Vec<String>>)> {
            let mut entries: Vec<Entry> = Vec::new();
            self.index.all(action, effect, &p.slots, &mut entries);
            entries.sort_unstable();
            entries.dedup();
            entries
                .into_iter()
                .filter(|e| self.rules[e.rule as usize].subjects.matches(&p.subject))
                .filter_map(|e| {
                    let rule = &self.rules[e.rule as usize];
                    match &rule.topics {
                        Sel::Any => Some((e.rule as usize, None)),
                        Sel::List(ps) => {
                            debug_assert!(e.pattern != ANY_TOPIC);
                            bind(&ps[e.pattern as usize], &b, effect == Effect::Deny)
                                .map(|l| (e.rule as usize, Some(l)))
                        }
                    }
                })
                .collect()
        };
        let (allows, denies) = (applying(Effect::Allow), applying(Effect::Deny));
        if allows.len().saturating_mul(allows.len() + denies.len()) > RESIDUAL_BUDGET {
            return Vec::new();
        }
        let meet = |a: &Option<Vec<String>>, b: &Option<Vec<String>>| match (a, b) {
            (Some(a), Some(b)) => topic::overlaps(&Bound(a), &Bound(b)),
            _ => true,
        };
        allows
            .iter()
            .filter(|(rule, levels)| {
                denies.iter().all(|(_, d)| !meet(levels, d))
                    && allows.iter().take_while(|(r, _)| r < rule).all(|(_, earlier)| !meet(levels, earlier))
            })
            .map(|(rule, levels)| Decisive { rule: *rule, levels: levels.clone() })
            .collect()
    }

    /// The rule that allows a publish or read of `topic` by a prepared subject, when its
    /// residual decides it: exactly the rule [`Policy::check`] would name. `None`: decide it
    /// with [`Policy::check_prepared`] (which may still allow it).
    pub fn allowed_at_once(
        &self,
        prepared: &Prepared,
        action: Action,
        topic: &str,
        clientid: &str,
        username: &str,
    ) -> Option<usize> {
        let residual = match action {
            Action::Read => &prepared.residual[0],
            Action::Publish => &prepared.residual[1],
            Action::Subscribe => return None,
        };
        if residual.is_empty()
            || prepared.policy != self.id
            || prepared.clientid != clientid
            || prepared.username != username
            || topic::validate_name(topic).is_err()
        {
            return None;
        }
        let mut levels = [""; MAX_LEVELS];
        let mut n = 0;
        for level in topic.split('/') {
            *levels.get_mut(n)? = level;
            n += 1;
        }
        let name = &levels[..n];
        residual
            .iter()
            .find(|d| d.levels.as_ref().is_none_or(|l| topic::matches(&Bound(l), name)))
            .map(|d| d.rule)
    }

    /// The decision [`Policy::check`] makes when `rule` allows `action` on `topic`: for a
    /// rule from [`Policy::allowed_at_once`], whose caller formats it only when it is shown.
    pub fn allowed_by(&self, rule: usize, action: Action, topic: &str) -> Decision {
        self.decided(rule, action, topic)
    }

    /// Decides one request of a prepared subject: the same decision as [`Policy::check`] for
    /// that subject. Prepared under another policy, it is decided the long way.
    pub fn check_prepared(
        &self,
        prepared: &Prepared,
        action: Action,
        topic: &str,
        clientid: &str,
        username: &str,
    ) -> Decision {
        let q = Query { subject: &prepared.subject, action, topic, clientid, username };
        if let Some(rule) = self.allowed_at_once(prepared, action, topic, clientid, username) {
            return self.decided(rule, action, topic);
        }
        if prepared.policy == self.id {
            self.decide(prepared.capabilities, &prepared.slots, &q)
        } else {
            self.check(&q)
        }
    }
}

/// A rule pattern's levels with its placeholders bound (as [`Pattern::resolve`] binds them:
/// `None` for an allow pattern with an unusable value, `+` in a deny pattern).
fn bind(p: &Pattern, b: &Bindings, deny: bool) -> Option<Vec<String>> {
    let resolved = p.resolve(b, deny)?;
    Some(
        (0..resolved.count())
            .map(|i| match resolved.at(i) {
                Tok::Lit(s) => String::from(s),
                Tok::Plus => String::from("+"),
                Tok::Hash => String::from("#"),
            })
            .collect(),
    )
}
