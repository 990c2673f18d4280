//! Invariants: statements about every request a policy allows, decided completely.
//!
//! A document's `celine.mqtt.invariants` says who may do what where, for *every* request
//! (semantics.md §7): "only subjects matching `only` may do `actions` on `topics`", where a
//! placeholder in `topics` stands for the requester's own value (`users/${subject.id}/#`:
//! each subject its own namespace only). [`verify`] decides each invariant for the policy
//! language and prints a counterexample request for each one that fails.
//!
//! Deciding "for every request" by trying requests works because a violation can always be
//! moved onto a finite set of *witnesses* the document's own vocabulary determines. A
//! violating request is allowed (by a superuser capability, or by an allow rule that applies
//! with no deny applying and the capability held) and forbidden by the invariant (its subject
//! does not match `only`, its topic is not the requester's own). Of these conditions only the
//! allow rule and the capability are *positive* (they need the request to have something);
//! every other one is *negative* (a deny rule, `only`, the own-value exception must not
//! match). Every match the language has is monotone in the subject's groups and scopes and is
//! decided by equality of strings, topic lengths and the `$` of a first level. So from any
//! violation, a witness with less keeps violating:
//! - groups and scopes: only those the positives need: one group the allow rule lists, one
//!   group or scope whose roles grant the action (or the superuser capability); a scope is
//!   written as the narrowest string its rule pattern matches (the exact scope, or `stem.`
//!   plus a fresh suffix);
//! - the id: a listed id of the allow rule, or a fresh one; type: each of the three;
//! - the topic: the *meet* of the allow rule's pattern and the invariant's pattern (the
//!   invariant's placeholders read as `+`): a literal where either has one, the request's
//!   value where the rule has a placeholder (a placeholder meeting a literal binds the value
//!   to it), and a fresh level where both have a wildcard; `#` tails of every length up to one
//!   more level than any pattern of the document has (longer ones are told apart by nothing);
//!   a `$` first level where a side is `"*"`;
//! - the username, client id and id, where nothing binds them: fresh and distinct;
//! - the message: each QoS and retain flag the allow rule covers, known (an unknown value
//!   applies more deny rules and no more allow rules), when some rule reads the message.
//!
//! A *fresh* string holds a character no string of the document holds, so it equals no
//! literal, id, value or scope of it and starts with no scope stem. A subscribe violation
//! reaches a topic of the invariant through its filter; the filter that is just that topic is
//! then a violation too (allowed: its rule contains the wider filter; no deny overlaps it), so
//! topic names serve as filters. With `"filters": "covering"` the witness filter is the
//! invariant's pattern itself, the narrowest filter covering it.
//!
//! Every counterexample is decided (by the caller's decision function: natively, or through a
//! policy module) and re-checked against the invariant, so a counterexample is always real.
//! Completeness holds for the decisions of this crate; a module with other logic is only
//! asked the same witnesses.

use alloc::collections::BTreeSet;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::Serialize;

use crate::json::{Json, Path, quote};
use crate::loader::{Fields, Loader};
use crate::model::{Action, Decision, Message, Permission, Subject, SubjectType};
use crate::pattern::{Bindings, Level, Pattern, Placeholder, substitutable};
use crate::policy::Policy;
use crate::request::{Ask, EvalRequest};
use crate::rule::{Effect, Rule, ScopePattern, Sel, Subjects};
use crate::topic::{self, Tok};

/// One statement of `celine.mqtt.invariants`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invariant {
    pub id: Option<String>,
    pub description: Option<String>,
    /// Who may: a subject matching any of these (none: nobody; the own-value exception of a
    /// placeholder remains).
    pub only: Vec<Subjects>,
    pub actions: Vec<Action>,
    pub topics: Sel<Pattern>,
    /// `"filters": "covering"`: a subscription counts when its filter covers a whole pattern
    /// (every topic it matches), not when it reaches some topic of it.
    pub covering: bool,
    /// `id`, else `invariants[N]`.
    pub name: String,
}

/// Why an invariant does not hold: a request it forbids that the policy allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counterexample {
    /// In `mqtt-policy eval`'s input format.
    pub request: EvalRequest,
    /// The decision that allows it (for a superuser, the superuser question's).
    pub decision: Decision,
    /// Allowed because the subject is a superuser (the broker asks no ACL question of one).
    pub superuser: bool,
}

/// One invariant's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub invariant: String,
    /// What it says, for people.
    pub statement: String,
    pub holds: bool,
    pub counterexample: Option<Counterexample>,
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub verdicts: Vec<Verdict>,
    /// How many distinct requests were decided.
    pub probed: usize,
}

impl Verification {
    pub fn holds(&self) -> bool {
        self.verdicts.iter().all(|v| v.holds)
    }

    pub fn violated(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| !v.holds)
    }
}

impl Invariant {
    /// For people: `only subjects with group 'admins' may subscribe to filters covering '#'`.
    pub fn statement(&self) -> String {
        let who = match &self.only[..] {
            [] => String::from("no subject"),
            only => {
                let each: Vec<String> = only.iter().map(describe_subjects).collect();
                format!("only subjects {}", each.join(", or "))
            }
        };
        let actions: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
        let topics = match &self.topics {
            Sel::Any => String::from("every topic"),
            Sel::List(ps) => ps.iter().map(|p| quote(p.as_str())).collect::<Vec<_>>().join(", "),
        };
        let placeholders = self.topics_have_placeholders();
        let own = if placeholders { " (each subject its own values excepted)" } else { "" };
        let object = if self.covering { "filters covering" } else { "topics of" };
        format!("{who} may {} {object} {topics}{own}", actions.join(" or "))
    }

    fn topics_have_placeholders(&self) -> bool {
        matches!(&self.topics, Sel::List(ps) if ps.iter().any(Pattern::has_placeholders))
    }

    /// Does the invariant forbid `r` (were the policy to allow it)? Its action is one of
    /// `actions`, its subject does not match `only`, and its topic reaches a topic of
    /// `topics` (or its filter covers one, with `covering`) that is not the requester's own.
    pub fn forbids(&self, r: &EvalRequest) -> bool {
        let Some(action) = r.ask.action() else { return false };
        if !self.actions.contains(&action) || self.only.iter().any(|s| s.matches(&r.subject)) {
            return false;
        }
        let target = match action {
            Action::Subscribe => topic::subscription_filter(&r.topic),
            Action::Publish | Action::Read => topic::validate_name(&r.topic).map(|()| r.topic.as_str()),
        };
        let Ok(target) = target else { return false };
        let levels = topic::split(target);
        let b = Bindings { username: &r.username, clientid: &r.clientid, subject_id: &r.subject.id };
        let patterns: Vec<Pattern> = match &self.topics {
            Sel::Any => return true,
            Sel::List(ps) => ps.clone(),
        };
        patterns.iter().any(|q| {
            let wild = wildcarded(q);
            if self.covering {
                return topic::contains(&levels[..], &wild[..]);
            }
            let reaches = match action {
                Action::Subscribe => topic::overlaps(&levels[..], &wild[..]),
                Action::Publish | Action::Read => topic::matches(&wild[..], &levels[..]),
            };
            reaches && !own_only(q, &levels, action, &b)
        })
    }
}

/// The pattern with every placeholder read as `+`.
fn wildcarded(q: &Pattern) -> Vec<Tok<'_>> {
    q.levels()
        .iter()
        .map(|l| match l {
            Level::Lit(s) => Tok::Lit(s),
            Level::Plus | Level::Var(_) => Tok::Plus,
            Level::Hash => Tok::Hash,
        })
        .collect()
}

/// Is everything `levels` reaches of `q` (placeholders read as `+`) the requester's own:
/// does every placeholder of `q` stand where the request can only have its own value? False
/// for a pattern without placeholders (nothing is anyone's own) and for a value that cannot
/// stand in a topic.
fn own_only(q: &Pattern, levels: &[&str], action: Action, b: &Bindings) -> bool {
    if !q.has_placeholders() {
        return false;
    }
    q.levels().iter().enumerate().all(|(i, l)| {
        let Level::Var(p) = l else { return true };
        let value = match p {
            Placeholder::Username => b.username,
            Placeholder::ClientId => b.clientid,
            Placeholder::SubjectId => b.subject_id,
        };
        if !substitutable(value) {
            return false;
        }
        // The request's level `i`: for a name it must be the value; a filter reaches only
        // the value there when it has that literal before any `#` (a `+` or `#` reaches
        // others).
        match action {
            Action::Publish | Action::Read => levels.get(i) == Some(&value),
            Action::Subscribe => {
                let hash_before = levels.iter().take(i + 1).any(|l| *l == "#");
                !hash_before && levels.get(i).is_none_or(|l| *l == value)
            }
        }
    })
}

fn describe_subjects(s: &Subjects) -> String {
    fn field<T>(name: &str, sel: &Option<Sel<T>>, text: impl Fn(&T) -> String) -> Option<String> {
        sel.as_ref().map(|sel| match sel {
            Sel::Any => format!("of any {name}"),
            Sel::List(items) => {
                let items: Vec<String> = items.iter().map(|i| quote(&text(i))).collect();
                format!("with {name} {}", items.join(" or "))
            }
        })
    }
    let parts: Vec<String> = [
        field("type", &s.types, |t| t.as_str().to_string()),
        field("id", &s.ids, |i| i.clone()),
        field("group", &s.groups, |g| g.clone()),
        field("scope", &s.scopes, ScopePattern::text),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() { String::from("of any kind") } else { parts.join(" and ") }
}

impl Loader {
    /// The `invariants` section (semantics.md §7).
    pub(crate) fn invariants(&mut self, v: &Json, path: &Path) -> Vec<Invariant> {
        let Some(items) = self.list(v, path) else { return Vec::new() };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(inv) = self.invariant(item, i, &path.index(i)) {
                out.push(inv);
            }
        }
        self.unique_ids(items, path, "invariants");
        out
    }

    fn invariant(&mut self, v: &Json, index: usize, path: &Path) -> Option<Invariant> {
        const FIELDS: [&str; 6] = ["id", "description", "only", "actions", "topics", "filters"];
        let f: Fields<'_> = self.object(v, path, &FIELDS)?;
        let before = self.errors.len();
        let (id, description, _) = self.entry_head(&f, path);
        let only = match f.get("only") {
            None => Vec::new(),
            Some(Json::Array(items)) => {
                let each = items
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| self.subjects(s, &path.key("only").index(i)));
                each.collect()
            }
            Some(s) => self.subjects(s, &path.key("only")).into_iter().collect(),
        };
        let actions = match f.get("actions") {
            Some(a) => self.actions(a, &path.key("actions")),
            None => {
                self.error(
                    path,
                    "missing required field 'actions' (a list of actions, or \"*\")".to_string(),
                );
                None
            }
        };
        let topics = match f.get("topics") {
            Some(t) => self.topics(t, &path.key("topics")),
            None => {
                self.error(
                    path,
                    "missing required field 'topics' (a list of topic patterns, or \"*\")".to_string(),
                );
                None
            }
        };
        let covering = match f.get("filters") {
            None => false,
            Some(x) => match self.string(x, &path.key("filters")) {
                Some("reaching") => false,
                Some("covering") => true,
                Some(other) => {
                    self.error(
                        &path.key("filters"),
                        format!("unknown value {} (expected 'reaching' or 'covering')", quote(other)),
                    );
                    false
                }
                None => false,
            },
        };
        if self.errors.len() != before {
            return None;
        }
        let actions: Vec<Action> = match actions? {
            Sel::Any => Action::ALL.to_vec(),
            Sel::List(a) => a.into_iter().collect::<BTreeSet<_>>().into_iter().collect(),
        };
        let topics = topics?;
        if covering {
            if actions != [Action::Subscribe] {
                self.error(
                    &path.key("filters"),
                    "\"covering\" speaks of subscription filters: 'actions' must be [\"subscribe\"]"
                        .to_string(),
                );
            }
            match &topics {
                Sel::Any => self.error(
                    &path.key("topics"),
                    "\"covering\" needs topic patterns: no filter covers every topic".to_string(),
                ),
                Sel::List(ps) => {
                    for (i, p) in ps.iter().enumerate() {
                        if p.has_placeholders() {
                            self.error(
                                &path.key("topics").index(i),
                                "a pattern of a \"covering\" invariant cannot hold placeholders".to_string(),
                            );
                        }
                    }
                }
            }
            if self.errors.len() != before {
                return None;
            }
        }
        let name = id.clone().unwrap_or_else(|| format!("invariants[{index}]"));
        Some(Invariant { id, description, only, actions, topics, covering, name })
    }
}

/// Decides every invariant of `policy` with `policy`'s own decisions: complete.
pub fn verify(policy: &Policy) -> Verification {
    verify_with(policy, &mut |r| policy.evaluate(r))
}

/// Decides every invariant of `policy`, asking `decide` (an ACL question, or the superuser
/// question for [`Ask::Superuser`]) for each witness request. Complete when `decide` decides
/// as `policy` does; otherwise it checks those witnesses only.
pub fn verify_with(policy: &Policy, decide: &mut dyn FnMut(&EvalRequest) -> Decision) -> Verification {
    let vocabulary = Vocabulary::of(policy);
    let mut asked: BTreeSet<String> = BTreeSet::new();
    let mut verdicts = Vec::with_capacity(policy.invariants.len());
    for inv in &policy.invariants {
        let mut counterexample = None;
        let mut try_one = |r: EvalRequest, superuser: bool| -> bool {
            if !inv.forbids(&r) {
                return false;
            }
            let question = if superuser {
                EvalRequest { ask: Ask::Superuser, topic: String::new(), ..r.clone() }
            } else {
                r.clone()
            };
            asked.insert(key(&question));
            let d = decide(&question);
            if d.allow {
                counterexample = Some(Counterexample { request: r, decision: d, superuser });
            }
            counterexample.is_some()
        };
        let _ = superuser_witnesses(policy, inv, &vocabulary, &mut |r| try_one(r, true))
            || rule_witnesses(policy, inv, &vocabulary, &mut |r| try_one(r, false));
        verdicts.push(Verdict {
            invariant: inv.name.clone(),
            statement: inv.statement(),
            holds: counterexample.is_none(),
            counterexample,
        });
    }
    Verification { verdicts, probed: asked.len() }
}

/// Tells requests apart for counting.
fn key(r: &EvalRequest) -> String {
    format!(
        "{:?}|{}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}",
        r.subject.kind,
        r.subject.id,
        r.subject.groups,
        r.subject.scopes,
        r.ask,
        r.topic,
        r.clientid,
        r.username,
        r.message
    )
}

/// Strings no string of the document equals or starts a scope of.
struct Vocabulary {
    /// A character that no string of the document holds.
    fresh: char,
    /// The most levels any pattern has.
    depth: usize,
    /// Whether some rule reads the message.
    messages: bool,
}

impl Vocabulary {
    fn of(policy: &Policy) -> Vocabulary {
        let mut strings: Vec<&str> = Vec::new();
        let mut depth = 1;
        let topics =
            policy.rules.iter().map(|r| &r.topics).chain(policy.invariants.iter().map(|i| &i.topics));
        for t in topics {
            if let Sel::List(ps) = t {
                for p in ps {
                    strings.push(p.as_str());
                    depth = depth.max(p.levels().len());
                }
            }
        }
        let subjects =
            policy.rules.iter().map(|r| &r.subjects).chain(policy.invariants.iter().flat_map(|i| &i.only));
        for s in subjects {
            if let Some(Sel::List(ids)) = &s.ids {
                strings.extend(ids.iter().map(String::as_str));
            }
            if let Some(Sel::List(scopes)) = &s.scopes {
                for sc in scopes {
                    strings.push(match sc {
                        ScopePattern::Exact(e) | ScopePattern::Prefix(e) => e,
                    });
                }
            }
        }
        if let Some(roles) = &policy.roles {
            strings.extend(roles.scope_permissions.keys().map(String::as_str));
        }
        let candidates = "~^!%@=,:;_".chars().chain((0xE000u32..0xF900).filter_map(char::from_u32));
        let fresh =
            candidates.into_iter().find(|c| strings.iter().all(|s| !s.contains(*c))).unwrap_or('\u{F8FF}');
        Vocabulary { fresh, depth, messages: policy.reads_message() }
    }

    fn fresh(&self, n: usize) -> String {
        format!("{}{n}", self.fresh)
    }
}

/// A pattern level as the meet sees it: `"*"` adds a pattern whose first level is any
/// `$`-level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lv<'a> {
    Lit(&'a str),
    Plus,
    Hash,
    Var(Placeholder),
    Dollar,
}

/// One level of a witness topic before its strings are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cell<'a> {
    Lit(&'a str),
    Var(Placeholder),
    Fresh,
    DollarFresh,
}

/// A witness topic before its strings are chosen, and what its placeholders are bound to.
#[derive(Debug, Clone, Default)]
struct Skeleton<'a> {
    cells: Vec<Cell<'a>>,
    binds: Vec<(Placeholder, &'a str)>,
}

fn shapes<'a>(topics: &'a Sel<Pattern>, placeholders_as_plus: bool) -> Vec<Vec<Lv<'a>>> {
    match topics {
        Sel::Any => vec![vec![Lv::Hash], vec![Lv::Dollar, Lv::Hash]],
        Sel::List(ps) => ps
            .iter()
            .map(|p| {
                p.levels()
                    .iter()
                    .map(|l| match l {
                        Level::Lit(s) => Lv::Lit(s),
                        Level::Plus => Lv::Plus,
                        Level::Hash => Lv::Hash,
                        Level::Var(_) if placeholders_as_plus => Lv::Plus,
                        Level::Var(v) => Lv::Var(*v),
                    })
                    .collect()
            })
            .collect(),
    }
}

/// Every skeleton of topics both `a` and `b` match (up to the choice of fresh strings), with
/// `#` tails of every length up to `depth + 1` levels in all.
fn meet<'a>(a: &[Lv<'a>], b: &[Lv<'a>], depth: usize, at: Skeleton<'a>, out: &mut Vec<Skeleton<'a>>) {
    match (a.first(), b.first()) {
        (None, None) => out.push(at),
        (Some(Lv::Hash), _) => tail(b, depth, at, out),
        (_, Some(Lv::Hash)) => tail(a, depth, at, out),
        (None, Some(_)) | (Some(_), None) => {}
        (Some(x), Some(y)) => {
            let mut at = at;
            let cell = match (*x, *y) {
                (Lv::Lit(s), Lv::Lit(t)) if s == t => Cell::Lit(s),
                (Lv::Lit(_), Lv::Lit(_)) => return,
                (Lv::Lit(s), Lv::Plus | Lv::Dollar) | (Lv::Plus | Lv::Dollar, Lv::Lit(s)) => Cell::Lit(s),
                (Lv::Lit(s), Lv::Var(v)) | (Lv::Var(v), Lv::Lit(s)) => {
                    match at.binds.iter().find(|(p, _)| *p == v) {
                        Some((_, bound)) if *bound != s => return,
                        Some(_) => {}
                        None => at.binds.push((v, s)),
                    }
                    Cell::Lit(s)
                }
                (Lv::Var(v), _) | (_, Lv::Var(v)) => Cell::Var(v),
                (Lv::Dollar, _) | (_, Lv::Dollar) => Cell::DollarFresh,
                (Lv::Plus, Lv::Plus) => Cell::Fresh,
                (Lv::Hash, _) | (_, Lv::Hash) => unreachable!("matched above"),
            };
            at.cells.push(cell);
            meet(&a[1..], &b[1..], depth, at, out);
        }
    }
}

/// The rest of one side after the other's `#`: its levels, and fresh levels for its own `#`.
fn tail<'a>(rest: &[Lv<'a>], depth: usize, mut at: Skeleton<'a>, out: &mut Vec<Skeleton<'a>>) {
    for (i, l) in rest.iter().enumerate() {
        match l {
            Lv::Lit(s) => at.cells.push(Cell::Lit(s)),
            Lv::Plus => at.cells.push(Cell::Fresh),
            Lv::Var(v) => at.cells.push(Cell::Var(*v)),
            Lv::Dollar => at.cells.push(Cell::DollarFresh),
            Lv::Hash => {
                debug_assert_eq!(i, rest.len() - 1);
                let longest = (depth + 1).saturating_sub(at.cells.len()).max(1);
                for n in 0..=longest {
                    let mut t = at.clone();
                    t.cells.extend(core::iter::repeat_n(Cell::Fresh, n));
                    out.push(t);
                }
                return;
            }
        }
    }
    out.push(at);
}

/// The strings of one witness: its subject's id and the request values, fresh where free.
struct Values {
    id: String,
    username: String,
    clientid: String,
}

impl Values {
    fn get(&self, p: Placeholder) -> &str {
        match p {
            Placeholder::Username => &self.username,
            Placeholder::ClientId => &self.clientid,
            Placeholder::SubjectId => &self.id,
        }
    }

    /// The topic of `cells`, fresh levels numbered after the values' own.
    fn topic(&self, cells: &[Cell], v: &Vocabulary) -> String {
        let mut n = 3;
        let levels: Vec<String> = cells
            .iter()
            .map(|c| match c {
                Cell::Lit(s) => s.to_string(),
                Cell::Var(p) => self.get(*p).to_string(),
                Cell::Fresh => {
                    n += 1;
                    v.fresh(n)
                }
                Cell::DollarFresh => {
                    n += 1;
                    format!("${}", v.fresh(n))
                }
            })
            .collect();
        levels.join("/")
    }
}

/// The values a skeleton's bindings leave: `id` as given (or bound), the others fresh.
fn values(sk: &Skeleton, id: Option<&str>, v: &Vocabulary) -> Option<Values> {
    let bound = |p: Placeholder| sk.binds.iter().find(|(q, _)| *q == p).map(|(_, s)| s.to_string());
    let id = match (bound(Placeholder::SubjectId), id) {
        (Some(b), Some(listed)) if b != listed => return None,
        (Some(b), _) => b,
        (None, Some(listed)) => listed.to_string(),
        (None, None) => v.fresh(0),
    };
    Some(Values {
        id,
        username: bound(Placeholder::Username).unwrap_or_else(|| v.fresh(1)),
        clientid: bound(Placeholder::ClientId).unwrap_or_else(|| v.fresh(2)),
    })
}

/// The topic (or filter) of a witness of `inv` built on `sk`.
fn witness_topic(inv: &Invariant, q: usize, sk: &Skeleton, values: &Values, v: &Vocabulary) -> String {
    match (&inv.topics, inv.covering) {
        (Sel::List(ps), true) => ps[q].as_str().to_string(),
        _ => values.topic(&sk.cells, v),
    }
}

/// Messages a witness for `action` is asked with: the known ones `allows` covers (every one,
/// when no rule reads the message: then one unknown message stands for all).
fn messages(action: Action, v: &Vocabulary, allows: impl Fn(Message) -> bool) -> Vec<Message> {
    if !v.messages {
        return vec![Message::UNKNOWN];
    }
    let retain: &[Option<bool>] = match action {
        Action::Subscribe => &[None],
        _ => &[Some(false), Some(true)],
    };
    (0..3u8)
        .flat_map(|q| retain.iter().map(move |r| Message { qos: Some(q), retain: *r }))
        .filter(|m| allows(*m))
        .collect()
}

/// A superuser of each type holding one group or scope with the superuser capability, on a
/// topic of the invariant that is not its own. Returns whether `found` stopped the search.
fn superuser_witnesses(
    policy: &Policy,
    inv: &Invariant,
    v: &Vocabulary,
    found: &mut dyn FnMut(EvalRequest) -> bool,
) -> bool {
    let providers = providers(policy, Permission::Superuser);
    if providers.is_empty() {
        return false;
    }
    let everything = [Lv::Hash];
    for (q, shape) in shapes(&inv.topics, true).iter().enumerate() {
        let mut skeletons = Vec::new();
        meet(&everything, shape, v.depth, Skeleton::default(), &mut skeletons);
        let Some(sk) = skeletons.into_iter().find(|s| !s.cells.is_empty()) else { continue };
        let values = values(&sk, None, v).expect("nothing is bound");
        for action in &inv.actions {
            for kind in SubjectType::ALL {
                for (groups, scopes) in &providers {
                    let subject = Subject {
                        id: values.id.clone(),
                        kind,
                        groups: groups.clone(),
                        scopes: scopes.clone(),
                    };
                    let r = request(
                        subject,
                        *action,
                        witness_topic(inv, q, &sk, &values, v),
                        &values,
                        Message::UNKNOWN,
                    );
                    if found(r) {
                        return true;
                    }
                }
            }
        }
    }
    false
}

/// The group or scope (one each) whose roles grant `p`, as a subject's groups and scopes.
fn providers(policy: &Policy, p: Permission) -> Vec<(Vec<String>, Vec<String>)> {
    let Some(roles) = &policy.roles else { return Vec::new() };
    let groups =
        roles.group_permissions.iter().filter(|(_, ps)| ps.has(p)).map(|(g, _)| (vec![g.clone()], vec![]));
    let scopes =
        roles.scope_permissions.iter().filter(|(_, ps)| ps.has(p)).map(|(s, _)| (vec![], vec![s.clone()]));
    groups.chain(scopes).collect()
}

/// The witnesses of every allow rule that grants one of the invariant's actions.
fn rule_witnesses(
    policy: &Policy,
    inv: &Invariant,
    v: &Vocabulary,
    found: &mut dyn FnMut(EvalRequest) -> bool,
) -> bool {
    let inv_shapes = shapes(&inv.topics, true);
    for rule in policy.rules.iter().filter(|r| r.effect == Effect::Allow) {
        for action in inv.actions.iter().filter(|a| rule.has_action(**a)) {
            let capability = match &policy.roles {
                None => vec![(Vec::new(), Vec::new())],
                Some(_) => providers(policy, action.permission()),
            };
            let subjects = rule_subjects(rule, &capability, v);
            let messages = messages(*action, v, |m| rule.conditions.covers(Effect::Allow, *action, m));
            for p in shapes(&rule.topics, false) {
                for (q, shape) in inv_shapes.iter().enumerate() {
                    let mut skeletons = Vec::new();
                    meet(&p, shape, v.depth, Skeleton::default(), &mut skeletons);
                    for sk in &skeletons {
                        for (kind, id, groups, scopes) in &subjects {
                            let Some(values) = values(sk, id.as_deref(), v) else { continue };
                            let topic = witness_topic(inv, q, sk, &values, v);
                            for m in &messages {
                                let subject = Subject {
                                    id: values.id.clone(),
                                    kind: *kind,
                                    groups: groups.clone(),
                                    scopes: scopes.clone(),
                                };
                                if found(request(subject, *action, topic.clone(), &values, *m)) {
                                    return true;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    false
}

/// A subject of a rule's witnesses: type, listed id (`None`: fresh), groups, scopes.
type Candidate = (SubjectType, Option<String>, Vec<String>, Vec<String>);

/// The least subjects `rule` applies to, each also holding one `capability` provider.
fn rule_subjects(rule: &Rule, capability: &[(Vec<String>, Vec<String>)], v: &Vocabulary) -> Vec<Candidate> {
    let s = &rule.subjects;
    let types: Vec<SubjectType> = match &s.types {
        Some(Sel::List(t)) => t.clone(),
        _ => SubjectType::ALL.to_vec(),
    };
    let ids: Vec<Option<String>> = match &s.ids {
        Some(Sel::List(ids)) => ids.iter().cloned().map(Some).collect(),
        _ => vec![None],
    };
    let groups: Vec<Vec<String>> = match &s.groups {
        Some(Sel::List(gs)) => gs.iter().map(|g| vec![g.clone()]).collect(),
        _ => vec![Vec::new()],
    };
    let scopes: Vec<Vec<String>> = match &s.scopes {
        Some(Sel::List(ps)) => ps
            .iter()
            .map(|p| match p {
                ScopePattern::Exact(e) => vec![e.clone()],
                ScopePattern::Prefix(stem) => vec![format!("{stem}{}", v.fresh(0))],
            })
            .collect(),
        _ => vec![Vec::new()],
    };
    let mut out = Vec::new();
    for kind in &types {
        for id in &ids {
            for g in &groups {
                for sc in &scopes {
                    for (cg, cs) in capability {
                        let mut gs = g.clone();
                        gs.extend(cg.iter().filter(|x| !g.contains(x)).cloned());
                        let mut ss = sc.clone();
                        ss.extend(cs.iter().filter(|x| !sc.contains(x)).cloned());
                        out.push((*kind, id.clone(), gs, ss));
                    }
                }
            }
        }
    }
    out
}

fn request(
    subject: Subject,
    action: Action,
    topic: String,
    values: &Values,
    message: Message,
) -> EvalRequest {
    EvalRequest {
        subject,
        ask: Ask::from(action),
        topic,
        clientid: values.clientid.clone(),
        username: values.username.clone(),
        message,
    }
}
