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
    /// Decided, and no request the policy allows breaks it.
    pub holds: bool,
    pub counterexample: Option<Counterexample>,
    /// Why it could not be decided (then it does not hold either): too many witness
    /// requests ([`MAX_WITNESSES`]), or a witness topic longer than MQTT allows.
    pub undecided: Option<String>,
}

/// The most witness requests [`verify`] decides for one document; past it, the invariants
/// left are undecided (and so do not hold). A document needs this many only with rules that
/// list hundreds of ids, groups and scopes at once.
pub const MAX_WITNESSES: usize = 2_000_000;

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub verdicts: Vec<Verdict>,
    /// How many requests were decided.
    pub probed: usize,
}

impl Verification {
    pub fn holds(&self) -> bool {
        self.verdicts.iter().all(|v| v.holds)
    }

    /// The verdicts that do not hold: violated (with a counterexample) or undecided.
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
        let patterns = match &self.topics {
            Sel::Any => return true,
            Sel::List(ps) => ps,
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
        self.entries(v, path, "invariants", Loader::invariant)
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
        let (topics, actions) = self.topics_and_actions(&f, path);
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
    let mut probed = 0usize;
    let mut verdicts = Vec::with_capacity(policy.invariants.len());
    for inv in &policy.invariants {
        let mut counterexample = None;
        let mut undecided = None;
        match &vocabulary {
            None => {
                undecided = Some(String::from("the document holds every character, so no string is fresh"))
            }
            Some(v) => {
                let mut try_one = |r: EvalRequest, superuser: bool| -> bool {
                    if r.topic.len() > topic::MAX_TOPIC_BYTES {
                        undecided = Some(format!(
                            "a witness topic is longer than MQTT allows ({} bytes): the patterns are too long to decide",
                            r.topic.len()
                        ));
                        return true;
                    }
                    if !realizable(&r) || !inv.forbids(&r) {
                        return false;
                    }
                    if probed >= MAX_WITNESSES {
                        undecided = Some(format!("more than {MAX_WITNESSES} witness requests"));
                        return true;
                    }
                    probed += 1;
                    let question = if superuser {
                        EvalRequest { ask: Ask::Superuser, topic: String::new(), ..r.clone() }
                    } else {
                        r.clone()
                    };
                    let d = decide(&question);
                    if d.allow {
                        counterexample = Some(Counterexample { request: r, decision: d, superuser });
                    }
                    counterexample.is_some()
                };
                let _ = superuser_witnesses(policy, inv, v, &mut |r| try_one(r, true))
                    || rule_witnesses(policy, inv, v, &mut |r| try_one(r, false));
            }
        }
        verdicts.push(Verdict {
            invariant: inv.name.clone(),
            statement: inv.statement(),
            holds: counterexample.is_none() && undecided.is_none(),
            counterexample,
            undecided,
        });
    }
    Verification { verdicts, probed }
}

/// Can a front end make this request (semantics.md §4, §4b)? A device is a client known by
/// its certificate: its username is its certificate name, which is its id, and it has no
/// scopes. A service comes from a token and has no groups.
pub fn realizable(r: &EvalRequest) -> bool {
    match r.subject.kind {
        SubjectType::Device => r.username == r.subject.id && r.subject.scopes.is_empty(),
        SubjectType::Service => r.subject.groups.is_empty(),
        SubjectType::User => true,
    }
}

/// What witnesses are made of: a character no string of the document holds, and the topic
/// lengths its patterns tell apart.
struct Vocabulary {
    fresh: char,
    /// Topic lengths (in levels) at which some pattern starts or stops matching, and one
    /// more than every pattern has: every other length is decided as the one below it.
    lengths: BTreeSet<usize>,
    /// Whether some rule reads the message.
    messages: bool,
}

impl Vocabulary {
    /// `None` when the document holds every character (no string of ours can be fresh).
    fn of(policy: &Policy) -> Option<Vocabulary> {
        let mut strings: Vec<&str> = Vec::new();
        let mut lengths = BTreeSet::new();
        let mut longest = 1;
        let topics =
            policy.rules.iter().map(|r| &r.topics).chain(policy.invariants.iter().map(|i| &i.topics));
        for t in topics {
            if let Sel::List(ps) = t {
                for p in ps {
                    strings.push(p.as_str());
                    // Where the pattern starts or stops matching by length: `a/#` from 1
                    // level on; `a/+` at 2 levels only (so not from 3 on).
                    let n = p.levels().len();
                    longest = longest.max(n);
                    if matches!(p.levels().last(), Some(Level::Hash)) {
                        lengths.insert(n - 1);
                    } else {
                        lengths.insert(n);
                        lengths.insert(n + 1);
                    }
                }
            }
        }
        lengths.insert(longest + 1);
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
        let candidates = "~^!%@=,:;_".chars().chain((0xA1u32..=0x10FFFF).filter_map(char::from_u32));
        let fresh = candidates.into_iter().find(|c| strings.iter().all(|s| !s.contains(*c)))?;
        Some(Vocabulary { fresh, lengths, messages: policy.reads_message() })
    }

    /// A fresh value (`n` tells values apart).
    fn fresh(&self, n: usize) -> String {
        format!("{}{n}", self.fresh)
    }

    /// A fresh topic level. Every fresh level is the same string: no pattern compares two
    /// levels, only a level with a literal or a value (which are different strings).
    fn level(&self) -> String {
        String::from(self.fresh)
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
/// `#` tails of each length in `lengths`.
fn meet<'a>(a: &[Lv<'a>], b: &[Lv<'a>], lengths: &BTreeSet<usize>) -> Vec<Skeleton<'a>> {
    let mut at = Skeleton::default();
    let mut i = 0;
    loop {
        let (x, y) = (a.get(i), b.get(i));
        let cell = match (x, y) {
            (None, None) => return vec![at],
            (Some(Lv::Hash), _) => return tail(&b[i..], lengths, at),
            (_, Some(Lv::Hash)) => return tail(&a[i..], lengths, at),
            (None, Some(_)) | (Some(_), None) => return Vec::new(),
            (Some(x), Some(y)) => match (*x, *y) {
                (Lv::Lit(s), Lv::Lit(t)) if s == t => Cell::Lit(s),
                (Lv::Lit(_), Lv::Lit(_)) => return Vec::new(),
                (Lv::Lit(s), Lv::Plus | Lv::Dollar) | (Lv::Plus | Lv::Dollar, Lv::Lit(s)) => Cell::Lit(s),
                (Lv::Lit(s), Lv::Var(v)) | (Lv::Var(v), Lv::Lit(s)) => {
                    match at.binds.iter().find(|(p, _)| *p == v) {
                        Some((_, bound)) if *bound != s => return Vec::new(),
                        Some(_) => {}
                        None => at.binds.push((v, s)),
                    }
                    Cell::Lit(s)
                }
                (Lv::Var(v), _) | (_, Lv::Var(v)) => Cell::Var(v),
                (Lv::Dollar, _) | (_, Lv::Dollar) => Cell::DollarFresh,
                (Lv::Plus, Lv::Plus) => Cell::Fresh,
                (Lv::Hash, _) | (_, Lv::Hash) => unreachable!("matched above"),
            },
        };
        at.cells.push(cell);
        i += 1;
    }
}

/// The rest of one side after the other's `#`: its levels, then, for its own `#`, fresh
/// levels up to each length of `lengths` the topic can still have.
fn tail<'a>(rest: &[Lv<'a>], lengths: &BTreeSet<usize>, mut at: Skeleton<'a>) -> Vec<Skeleton<'a>> {
    for l in rest {
        match l {
            Lv::Lit(s) => at.cells.push(Cell::Lit(s)),
            Lv::Plus => at.cells.push(Cell::Fresh),
            Lv::Var(v) => at.cells.push(Cell::Var(*v)),
            Lv::Dollar => at.cells.push(Cell::DollarFresh),
            Lv::Hash => {
                // Every length from here on is decided as the shortest of its class: `from`
                // itself, or a length where some pattern starts or stops matching.
                let from = at.cells.len();
                return core::iter::once(from)
                    .chain(lengths.range(from + 1..).copied())
                    .map(|n| {
                        let mut t = at.clone();
                        t.cells.resize(n, Cell::Fresh);
                        t
                    })
                    .collect();
            }
        }
    }
    vec![at]
}

/// The strings of one witness: its subject's id and the request values, fresh where free.
struct Values {
    id: String,
    username: String,
    clientid: String,
}

impl Values {
    /// The values a skeleton's bindings leave for a subject of `kind`: the id as bound or
    /// listed (`None`: fresh), the others fresh and distinct; a device's username is its id.
    fn of(sk: &Skeleton, kind: SubjectType, listed: Option<&str>, v: &Vocabulary) -> Option<Values> {
        let bound = |p: Placeholder| sk.binds.iter().find(|(q, _)| *q == p).map(|(_, s)| *s);
        let device = kind == SubjectType::Device;
        let mut id_bound = bound(Placeholder::SubjectId);
        if device {
            id_bound = match (id_bound, bound(Placeholder::Username)) {
                (Some(a), Some(b)) if a != b => return None,
                (a, b) => a.or(b),
            };
        }
        let id = match (id_bound, listed) {
            (Some(b), Some(l)) if b != l => return None,
            (Some(b), _) => b.to_string(),
            (None, Some(l)) => l.to_string(),
            (None, None) => v.fresh(0),
        };
        let username = match bound(Placeholder::Username) {
            _ if device => id.clone(),
            Some(b) => b.to_string(),
            None => v.fresh(1),
        };
        let clientid = bound(Placeholder::ClientId).map_or_else(|| v.fresh(2), str::to_string);
        Some(Values { id, username, clientid })
    }

    fn get(&self, p: Placeholder) -> &str {
        match p {
            Placeholder::Username => &self.username,
            Placeholder::ClientId => &self.clientid,
            Placeholder::SubjectId => &self.id,
        }
    }

    /// The topic of `cells`.
    fn topic(&self, cells: &[Cell], v: &Vocabulary) -> String {
        let levels: Vec<String> = cells
            .iter()
            .map(|c| match c {
                Cell::Lit(s) => s.to_string(),
                Cell::Var(p) => self.get(*p).to_string(),
                Cell::Fresh => v.level(),
                Cell::DollarFresh => format!("${}", v.level()),
            })
            .collect();
        levels.join("/")
    }
}

/// The topic (or filter) of a witness of `inv` built on `sk`. A subscribe filter whose
/// first level is `$share` is itself wrapped in a shared subscription, since a request's
/// `$share/<group>/` is stripped before it is decided.
fn witness_topic(
    inv: &Invariant,
    action: Action,
    q: usize,
    sk: &Skeleton,
    values: &Values,
    v: &Vocabulary,
) -> String {
    let topic = match (&inv.topics, inv.covering) {
        (Sel::List(ps), true) => ps[q].as_str().to_string(),
        _ => values.topic(&sk.cells, v),
    };
    if action == Action::Subscribe && topic.split('/').next() == Some("$share") {
        format!("$share/{}/{topic}", v.level())
    } else {
        topic
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

/// A superuser of each type holding one group or scope with the superuser capability, on
/// each topic of the invariant's skeletons (the first that the invariant forbids decides).
/// Returns whether `found` stopped the search.
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
        for sk in meet(&everything, shape, &v.lengths) {
            for action in &inv.actions {
                for kind in SubjectType::ALL {
                    let Some(values) = Values::of(&sk, kind, None, v) else { continue };
                    for (groups, scopes) in &providers {
                        let subject = Subject {
                            id: values.id.clone(),
                            kind,
                            groups: groups.clone(),
                            scopes: scopes.clone(),
                        };
                        let topic = witness_topic(inv, *action, q, &sk, &values, v);
                        if found(request(subject, *action, topic, &values, Message::UNKNOWN)) {
                            return true;
                        }
                    }
                }
            }
        }
    }
    false
}

/// What a witness subject holds: its groups and its scopes.
type Holding = (Vec<String>, Vec<String>);

/// The group or scope (one each) whose roles grant `p`, as a subject's groups and scopes.
fn providers(policy: &Policy, p: Permission) -> Vec<Holding> {
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
    // Per action: the groups and scopes whose roles grant it (found once: a document can
    // have thousands of groups).
    let granting: Vec<(Action, Vec<Holding>)> = inv
        .actions
        .iter()
        .map(|a| match &policy.roles {
            None => (*a, vec![(Vec::new(), Vec::new())]),
            Some(_) => (*a, providers(policy, a.permission())),
        })
        .collect();
    for rule in policy.rules.iter().filter(|r| r.effect == Effect::Allow) {
        // The topics both the rule and the invariant reach: most rules reach none.
        let rule_shapes = shapes(&rule.topics, false);
        let skeletons: Vec<(usize, Skeleton)> = rule_shapes
            .iter()
            .flat_map(|p| {
                inv_shapes
                    .iter()
                    .enumerate()
                    .flat_map(move |(q, shape)| meet(p, shape, &v.lengths).into_iter().map(move |sk| (q, sk)))
            })
            .collect();
        if skeletons.is_empty() {
            continue;
        }
        for (action, capability) in granting.iter().filter(|(a, _)| rule.has_action(*a)) {
            let capability = capability.as_slice();
            let subjects = rule_subjects(
                rule,
                capability,
                |groups, scopes| {
                    let holder = Subject {
                        id: String::new(),
                        kind: SubjectType::User,
                        groups: groups.to_vec(),
                        scopes: scopes.to_vec(),
                    };
                    policy.capabilities(&holder).is_none_or(|c| c.has(action.permission()))
                },
                v,
            );
            let messages = messages(*action, v, |m| rule.conditions.covers(Effect::Allow, *action, m));
            for (q, sk) in &skeletons {
                for (kind, id, groups, scopes) in &subjects {
                    let Some(values) = Values::of(sk, *kind, id.as_deref(), v) else { continue };
                    let topic = witness_topic(inv, *action, *q, sk, &values, v);
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
    false
}

/// A subject of a rule's witnesses: type, listed id (`None`: fresh), groups, scopes.
type Candidate = (SubjectType, Option<String>, Vec<String>, Vec<String>);

/// The least subjects `rule` applies to, each also holding one `capability` provider unless
/// what the rule needs already grants the capability (`holds`), that a front end can make
/// (no scopes for a device, no groups for a service).
fn rule_subjects(
    rule: &Rule,
    capability: &[Holding],
    holds: impl Fn(&[String], &[String]) -> bool,
    v: &Vocabulary,
) -> Vec<Candidate> {
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
                    // A subject holding more than it needs matches more deny rules and `only`
                    // selectors, never fewer: one that holds the capability already is enough.
                    let none = [(Vec::new(), Vec::new())];
                    let capability = if holds(g, sc) { &none[..] } else { capability };
                    for (cg, cs) in capability {
                        let mut gs = g.clone();
                        gs.extend(cg.iter().filter(|x| !g.contains(x)).cloned());
                        let mut ss = sc.clone();
                        ss.extend(cs.iter().filter(|x| !sc.contains(x)).cloned());
                        let makeable = match kind {
                            SubjectType::Device => ss.is_empty(),
                            SubjectType::Service => gs.is_empty(),
                            SubjectType::User => true,
                        };
                        if makeable {
                            out.push((*kind, id.clone(), gs, ss));
                        }
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
