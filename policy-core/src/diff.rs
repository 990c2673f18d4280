//! What changes if I ship this: the requests whose decision differs between two policies.
//!
//! Deciding "does any request change" for arbitrary subjects and topics would mean reasoning
//! over infinitely many requests. Our rules are small and structured, so instead the diff
//! builds *witness* requests from both documents' own vocabulary and decides each one with
//! both policies (`check` for actions, `superuser` for the superuser question). Only a real
//! change (the two decisions' `allow` differ) is reported, with both decisions as computed.
//!
//! Which requests are tried (the witness construction):
//! - Rules are compared by meaning (subjects, topics, actions, effect; not `id`, `description`
//!   or position). A decision can change only where a rule that is not in both documents
//!   applies, or where the capability layer (`roles`) differs; rule order never changes an
//!   outcome (semantics.md §3). So the *focus* rules are the removed and the added ones.
//! - Each focus rule is tried alone and paired with every rule of either document that can
//!   apply together with it (a subject both can match, a common action, a topic both cover).
//!   For a pair, subjects are built from both rules' subject fields (every type allowed,
//!   a listed id or a fresh one, a listed group or scope, and combinations: up to
//!   [`MAX_SUBJECTS`] per pair), each also with each group or scope that `roles` grants the
//!   action through (one at a time). Topics are built from the meet of both patterns (the
//!   topics both match): `+` and `#` each given a fresh level, `#` also as the empty tail
//!   (`a/#` covers `a`), two levels, and more levels than any pattern of either document
//!   has, placeholders filled with the request's values (and a placeholder
//!   meeting a literal binds the value: `users/${username}` against `users/alice` asks as
//!   `alice`), and for subscribe the meet itself as a filter. `"topics": "*"` also yields a
//!   `$`-topic.
//! - A group or scope whose permissions differ in `roles` is tried with every allow rule
//!   that grants an action it gained or lost, the subject holding that group or scope; a
//!   change of `superuser` asks the superuser question of a subject holding only it. Adding
//!   or removing `roles` tries every allow rule with subjects that hold no role at all.
//! - When a rule of either document has conditions on the message (`qos`, `retain`), every
//!   witness is asked with each message they can tell apart: QoS 0, 1 and 2 and unknown, and
//!   for publish and read retained, not retained and unknown (a condition reads nothing else
//!   of a message, so this dimension is covered exhaustively).
//! - Extra requests (the policy test cases) are decided as given.
//!
//! What this can miss (a change exists but no witness shows it):
//! - A change hidden behind a third rule at every witness: the witnesses of a pair fall
//!   where yet another rule decides the same way in both documents, but the change is real
//!   elsewhere (for example only for a subject with a combination of groups or scopes that
//!   the pairwise construction does not build, or past [`MAX_SUBJECTS`] combinations).
//! - A change that needs two different placeholder values that are both unusable, or a
//!   client id and a username that are equal where the rules do not say so.
//! - Changes only visible through a role key combination: each witness holds at most one
//!   extra group or scope for the capability layer.
//!
//! Every reported change is real: its two decisions are recomputed from the documents.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;

use serde::Serialize;

use crate::model::{Action, Decision, Message, Permission, Permissions, Subject, SubjectType};
use crate::pattern::{Level, Placeholder, substitutable};
use crate::policy::{Policy, Roles};
use crate::request::{Ask, EvalRequest};
use crate::rule::{Effect, Rule, ScopePattern, Sel, Subjects};

/// The most subjects built for one pair of rules.
pub const MAX_SUBJECTS: usize = 24;

/// One request whose decision differs between the two policies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// In `mqtt-policy eval`'s input format.
    pub request: EvalRequest,
    pub old: Decision,
    pub new: Decision,
}

impl Change {
    /// Gained (denied before, allowed now) or lost.
    pub fn gained(&self) -> bool {
        self.new.allow
    }
}

/// What decided one side of a change: a rule, or why no rule did.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Side {
    pub allow: bool,
    /// The deciding rule (`id` or `rules[N]`), if a rule decided.
    pub rule: Option<String>,
    /// `rule`, `no rule` (nothing allows), `capability` (the role layer refused),
    /// `superuser` (the superuser question).
    pub by: &'static str,
}

impl Side {
    fn of(ask: Ask, d: &Decision) -> Side {
        let by = if ask == Ask::Superuser {
            "superuser"
        } else if d.rule.is_some() {
            "rule"
        } else if d.reason.starts_with("missing capability") {
            "capability"
        } else {
            "no rule"
        };
        Side { allow: d.allow, rule: d.rule.clone(), by }
    }

    /// For people: `allowed by rule 'x'`, `denied: no rule allows`.
    pub fn describe(&self) -> String {
        let verdict = if self.allow { "allowed" } else { "denied" };
        match (&self.rule, self.by) {
            (Some(r), _) => format!("{verdict} by rule {}", crate::json::quote(r)),
            (None, "capability") => format!("{verdict}: missing capability"),
            (None, "superuser") => format!("{verdict} (superuser)"),
            (None, _) => format!("{verdict}: no rule allows"),
        }
    }
}

/// Changes that share the rules responsible on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    pub old: Side,
    pub new: Side,
    pub changes: Vec<Change>,
}

/// Per action (and `superuser`): how many witnessed requests were gained and lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Count {
    pub gained: usize,
    pub lost: usize,
}

/// The result of [`diff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// Every witnessed change, ordered by group, action and topic.
    pub changes: Vec<Change>,
    /// How many distinct requests were decided with both policies.
    pub probed: usize,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The changes grouped by the deciding rules on each side (old and new).
    pub fn groups(&self) -> Vec<Group> {
        let mut groups: BTreeMap<(Side, Side), Vec<Change>> = BTreeMap::new();
        for c in &self.changes {
            let key = (Side::of(c.request.ask, &c.old), Side::of(c.request.ask, &c.new));
            groups.entry(key).or_default().push(c.clone());
        }
        groups.into_iter().map(|((old, new), changes)| Group { old, new, changes }).collect()
    }

    /// Gained and lost per action, in the order subscribe, read, publish, superuser.
    pub fn counts(&self) -> Vec<(&'static str, Count)> {
        let asks = [Ask::Subscribe, Ask::Read, Ask::Publish, Ask::Superuser];
        asks.iter()
            .map(|a| {
                let mut n = Count::default();
                for c in self.changes.iter().filter(|c| c.request.ask == *a) {
                    if c.gained() {
                        n.gained += 1;
                    } else {
                        n.lost += 1;
                    }
                }
                (a.as_str(), n)
            })
            .filter(|(_, n)| n.gained + n.lost > 0)
            .collect()
    }
}

/// The requests whose decision differs from `old` to `new`, from witnesses built out of
/// both documents (see the module documentation) plus `extra` (the policy test cases).
pub fn diff(old: &Policy, new: &Policy, extra: &[EvalRequest]) -> Diff {
    compare(witnesses(old, new, extra), |r| old.evaluate(r), |r| new.evaluate(r))
}

/// Decides every witness on both sides and keeps those whose `allow` differs. The deciders
/// may be anything that answers like [`Policy::evaluate`] (a host passes its policy modules).
pub fn compare(
    witnesses: Vec<EvalRequest>,
    mut old: impl FnMut(&EvalRequest) -> Decision,
    mut new: impl FnMut(&EvalRequest) -> Decision,
) -> Diff {
    let probed = witnesses.len();
    let mut changes = Vec::new();
    for request in witnesses {
        let (o, n) = (old(&request), new(&request));
        if o.allow != n.allow {
            changes.push(Change { request, old: o, new: n });
        }
    }
    changes.sort_by(|a, b| {
        let key = |c: &Change| (Side::of(c.request.ask, &c.old), Side::of(c.request.ask, &c.new));
        key(a).cmp(&key(b)).then_with(|| order(&a.request).cmp(&order(&b.request)))
    });
    Diff { changes, probed }
}

fn order(r: &EvalRequest) -> (u8, &str, &str, &str, &str, &str, Message) {
    let ask = match r.ask {
        Ask::Subscribe => 0,
        Ask::Read => 1,
        Ask::Publish => 2,
        Ask::Superuser => 3,
    };
    (
        ask,
        r.topic.as_str(),
        r.subject.id.as_str(),
        r.subject.kind.as_str(),
        r.clientid.as_str(),
        r.username.as_str(),
        r.message,
    )
}

/// The witness requests [`diff`] decides: distinct, in a stable order.
pub fn witnesses(old: &Policy, new: &Policy, extra: &[EvalRequest]) -> Vec<EvalRequest> {
    let vocab = Vocab::of(&[old, new]);
    let mut out = Witnesses::new(&[old, new]);
    let w = Builder::new(old, new, &vocab);

    // Rules by meaning: the ones in only one document are the focus.
    let mut unmatched: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in new.rules.iter().enumerate() {
        unmatched.entry(meaning(r)).or_default().push(i);
    }
    let mut removed = Vec::new();
    for r in &old.rules {
        match unmatched.get_mut(&meaning(r)).and_then(Vec::pop) {
            Some(_) => {}
            None => removed.push(r),
        }
    }
    let added: Vec<&Rule> = unmatched.values().flatten().map(|i| &new.rules[*i]).collect();
    // Every distinct rule of either document, as partners.
    let mut partners: Vec<&Rule> = old.rules.iter().collect();
    partners.extend(added.iter().copied());

    for focus in removed.iter().chain(added.iter()) {
        w.rule_alone(focus, None, &mut out);
        for partner in &partners {
            if !core::ptr::eq(*partner, *focus) {
                w.pair(focus, partner, &mut out);
            }
        }
    }
    w.roles(&partners, &mut out);
    for r in extra {
        out.push_as_given(r.clone());
    }
    out.list
}

/// Witnesses for every rule of one policy, each rule alone (with the capability variants and
/// the superuser question for each role): for comparing two policy *modules* on the same
/// document, where any rule may now mean something else. Linear in the rules.
pub fn witnesses_of(p: &Policy) -> Vec<EvalRequest> {
    let vocab = Vocab::of(&[p]);
    let mut out = Witnesses::new(&[p]);
    let w = Builder::new(p, p, &vocab);
    for r in &p.rules {
        w.rule_alone(r, None, &mut out);
    }
    if let Some(roles) = &p.roles {
        for k in RoleKey::all(roles) {
            w.superuser_witness(&k, &mut out);
        }
    }
    out.list
}

/// A rule's meaning, as a comparable key (not its id, description or position).
fn meaning(r: &Rule) -> String {
    format!("{:?}", (&r.subjects, &r.topics, &r.actions, r.effect, r.conditions))
}

struct Witnesses {
    /// Each request once (its subject's groups and scopes sorted).
    seen: BTreeSet<String>,
    list: Vec<EvalRequest>,
    /// Some rule has conditions on the message: every witness is asked with each message a
    /// condition can tell apart (each QoS and retain flag, and not knowing them).
    vary_messages: bool,
}

/// Every message a rule's conditions can tell apart, for `action`: each QoS level and retain
/// flag, and each of them unknown (a subscription has no retain flag).
fn messages(action: Action) -> Vec<Message> {
    let qos = [Some(0), Some(1), Some(2), None];
    let retain: &[Option<bool>] = match action {
        Action::Subscribe => &[None],
        Action::Read | Action::Publish => &[Some(false), Some(true), None],
    };
    qos.iter().flat_map(|&qos| retain.iter().map(move |&retain| Message { qos, retain })).collect()
}

impl Witnesses {
    fn new(policies: &[&Policy]) -> Witnesses {
        let vary_messages = policies.iter().any(|p| p.rules.iter().any(|r| !r.conditions.is_none()));
        Witnesses { seen: BTreeSet::new(), list: Vec::new(), vary_messages }
    }

    /// A built witness: with each message a condition can tell apart, when some rule has one.
    fn push(&mut self, r: EvalRequest) {
        match r.ask.action().filter(|_| self.vary_messages) {
            Some(action) => {
                for message in messages(action) {
                    self.push_as_given(EvalRequest { message, ..r.clone() });
                }
            }
            None => self.push_as_given(r),
        }
    }

    fn push_as_given(&mut self, mut r: EvalRequest) {
        r.subject.groups.sort();
        r.subject.scopes.sort();
        let key = format!("{:?}", (r.ask, &r.topic, &r.subject, &r.clientid, &r.username, r.message));
        if self.seen.insert(key) {
            self.list.push(r);
        }
    }
}

/// Values no document names: a fresh topic level, subject id, scope suffix, client id.
struct Vocab {
    level: String,
    id: String,
    scope_suffix: String,
    clientid: String,
    username: String,
    /// The most levels any pattern of either document has: a `#` tail one level deeper than
    /// that is beyond what any `+` pattern can cover.
    depth: usize,
}

impl Vocab {
    fn of(policies: &[&Policy]) -> Vocab {
        let mut named: BTreeSet<&str> = BTreeSet::new();
        let mut depth = 0;
        for p in policies {
            for r in &p.rules {
                if let Sel::List(ps) = &r.topics {
                    for pat in ps {
                        depth = depth.max(pat.levels.len());
                        for l in &pat.levels {
                            if let Level::Lit(s) = l {
                                named.insert(s);
                            }
                        }
                    }
                }
                if let Some(Sel::List(ids)) = &r.subjects.ids {
                    named.extend(ids.iter().map(String::as_str));
                }
                if let Some(Sel::List(gs)) = &r.subjects.groups {
                    named.extend(gs.iter().map(String::as_str));
                }
                if let Some(Sel::List(ss)) = &r.subjects.scopes {
                    for s in ss {
                        match s {
                            ScopePattern::Exact(e) | ScopePattern::Prefix(e) => named.insert(e),
                        };
                    }
                }
            }
            if let Some(roles) = &p.roles {
                named.extend(roles.group_permissions.keys().map(String::as_str));
                named.extend(roles.scope_permissions.keys().map(String::as_str));
            }
        }
        let fresh = |base: &str| {
            let mut v = String::from(base);
            let mut n = 0;
            while named.iter().any(|w| w.contains(v.as_str())) {
                n += 1;
                v = format!("{base}{n}");
            }
            v
        };
        Vocab {
            level: fresh("any"),
            id: fresh("someone"),
            scope_suffix: fresh("anything"),
            clientid: fresh("client-1"),
            username: fresh("user-1"),
            depth,
        }
    }
}

/// What a subject must have to match some rules' `subjects` (all of it).
#[derive(Debug, Clone, Default)]
struct Need {
    types: Option<Vec<SubjectType>>,
    ids: Option<Vec<String>>,
    /// Each entry: the subject has one of these groups.
    groups: Vec<Vec<String>>,
    /// Each entry: one of the subject's scopes matches one of these.
    scopes: Vec<Vec<ScopePattern>>,
}

impl Need {
    fn of(s: &Subjects) -> Need {
        fn listed<T: Clone>(sel: &Option<Sel<T>>) -> Option<Vec<T>> {
            match sel {
                Some(Sel::List(items)) => Some(items.clone()),
                _ => None,
            }
        }
        Need {
            types: listed(&s.types),
            ids: listed(&s.ids),
            groups: listed(&s.groups).into_iter().collect(),
            scopes: listed(&s.scopes).into_iter().collect(),
        }
    }

    /// Both needs at once, or `None` when no subject can have both.
    fn and(&self, other: &Need) -> Option<Need> {
        fn both<T: Clone + PartialEq>(a: &Option<Vec<T>>, b: &Option<Vec<T>>) -> Option<Option<Vec<T>>> {
            match (a, b) {
                (None, x) | (x, None) => Some(x.clone()),
                (Some(a), Some(b)) => {
                    let common: Vec<T> = a.iter().filter(|x| b.contains(x)).cloned().collect();
                    if common.is_empty() { None } else { Some(Some(common)) }
                }
            }
        }
        let mut groups = self.groups.clone();
        groups.extend(other.groups.iter().cloned());
        let mut scopes = self.scopes.clone();
        scopes.extend(other.scopes.iter().cloned());
        Some(Need {
            types: both(&self.types, &other.types)?,
            ids: both(&self.ids, &other.ids)?,
            groups,
            scopes,
        })
    }

    /// The subjects to try: every allowed type, a listed id (or a fresh one), one listed
    /// group per group field and one scope per scope field, reusing a choice that already
    /// satisfies a later field. At most [`MAX_SUBJECTS`].
    fn subjects(&self, v: &Vocab) -> Vec<Subject> {
        let types = self.types.clone().unwrap_or_else(|| SubjectType::ALL.to_vec());
        let ids = self.ids.clone().unwrap_or_else(|| vec![v.id.clone()]);
        let groups = choices(&self.groups, |g, have: &Vec<String>| have.contains(g), |g| g.clone());
        let scopes = choices(
            &self.scopes,
            |p, have: &Vec<String>| have.iter().any(|s| p.matches(s)),
            |p| match p {
                ScopePattern::Exact(e) => e.clone(),
                ScopePattern::Prefix(stem) => format!("{stem}{}", v.scope_suffix),
            },
        );
        let mut out = Vec::new();
        'all: for kind in &types {
            for id in ids.iter().take(4) {
                for g in &groups {
                    for s in &scopes {
                        if out.len() == MAX_SUBJECTS {
                            break 'all;
                        }
                        out.push(Subject {
                            id: id.clone(),
                            kind: *kind,
                            groups: g.clone(),
                            scopes: s.clone(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// Who could ever do one thing: per allow rule that grants it to some subject, whom the
/// rule names, and a request of such a subject that the policy allows (decided, so it is
/// real). Built like the diff's witnesses: each allow rule's own subjects (a listed id, type,
/// group and scope, or fresh ones), with each group or scope that `roles` grants the action
/// through, the rule's placeholders bound from the asked topic where they meet a literal, and
/// (when a rule has conditions on the message) each message they can tell apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhoCould {
    pub action: Action,
    pub topic: String,
    pub grants: Vec<Grantor>,
    /// The role keys that make a superuser (`group <g>`, `scope <s>`): a broker skips every
    /// check of a superuser, so they may do it whatever the rules say.
    pub superusers: Vec<String>,
}

/// An allow rule that lets some subject do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grantor {
    /// `id` or `rules[N]`.
    pub rule: String,
    /// Whom the rule names, for people (`groups [viewers], types [user]`; `any subject`).
    pub subjects: String,
    /// The groups and scopes whose role grants the action (`None`: the policy has no roles).
    pub capability: Option<Vec<String>>,
    /// A request the policy allows through this rule, in `mqtt-policy eval`'s format; `None`
    /// when every subject tried was refused (`refused_by` says by what).
    pub example: Option<EvalRequest>,
    /// Deny rules (or `capability`) that refused subjects this rule names.
    pub refused_by: Vec<String>,
}

/// See [`WhoCould`]. `topic` is a topic name for publish and read, a filter for subscribe.
pub fn who_could(p: &Policy, action: Action, topic: &str) -> WhoCould {
    let vocab = Vocab::of(&[p]);
    let asked = crate::topic::split(topic);
    let mut grants = Vec::new();
    for (index, rule) in p.rules.iter().enumerate() {
        if rule.effect != Effect::Allow || !rule.has_action(action) {
            continue;
        }
        let mut need = Need::of(&rule.subjects);
        // Placeholders that meet a literal of the asked topic take its value.
        let mut bound = Filled { clientid: vocab.clientid.clone(), username: vocab.username.clone() };
        if let Sel::List(ps) = &rule.topics {
            for pat in ps {
                for (level, word) in pat.levels.iter().zip(&asked) {
                    match level {
                        Level::Var(Placeholder::SubjectId) if substitutable(word) => {
                            need.ids = Some(vec![String::from(*word)])
                        }
                        Level::Var(Placeholder::ClientId) if substitutable(word) => {
                            bound.clientid = String::from(*word)
                        }
                        Level::Var(Placeholder::Username) if substitutable(word) => {
                            bound.username = String::from(*word)
                        }
                        _ => {}
                    }
                }
            }
        }
        let mut grant = Grantor {
            rule: rule.name.clone(),
            subjects: describe_subjects(&rule.subjects),
            capability: p.roles.as_ref().map(|r| capability_sources(r, action)),
            example: None,
            refused_by: Vec::new(),
        };
        // Each message a condition can tell apart, when some rule reads it.
        let tried = if p.reads_message() { messages(action) } else { vec![Message::UNKNOWN] };
        let mut applied = false;
        'subjects: for base in need.subjects(&vocab) {
            for (s, message) in with_roles(p.roles.as_ref(), &base, action)
                .into_iter()
                .flat_map(|s| tried.iter().map(move |m| (s.clone(), *m)))
            {
                let r = EvalRequest {
                    subject: s,
                    ask: action.into(),
                    topic: String::from(topic),
                    clientid: bound.clientid.clone(),
                    username: bound.username.clone(),
                    message,
                };
                let Some(q) = r.query() else { continue };
                let explained = p.explain(&q);
                let applies = explained.rules.get(index).is_some_and(|t| t.applies);
                if !applies {
                    continue;
                }
                applied = true;
                if explained.decision.allow {
                    grant.example = Some(r);
                    break 'subjects;
                }
                let by = explained.decision.rule.clone().unwrap_or_else(|| String::from("capability"));
                if !grant.refused_by.contains(&by) {
                    grant.refused_by.push(by);
                }
            }
        }
        if applied {
            grants.push(grant);
        }
    }
    let superusers =
        p.roles.as_ref().map(|r| capability_sources_of(r, Permission::Superuser)).unwrap_or_default();
    WhoCould { action, topic: String::from(topic), grants, superusers }
}

fn describe_subjects(s: &Subjects) -> String {
    fn field<T>(name: &str, sel: &Option<Sel<T>>, text: impl Fn(&T) -> String) -> Option<String> {
        match sel.as_ref()? {
            Sel::Any => None,
            Sel::List(items) => {
                Some(format!("{name} [{}]", items.iter().map(text).collect::<Vec<_>>().join(", ")))
            }
        }
    }
    let parts: Vec<String> = [
        field("types", &s.types, |t: &SubjectType| String::from(t.as_str())),
        field("ids", &s.ids, String::clone),
        field("groups", &s.groups, String::clone),
        field("scopes", &s.scopes, ScopePattern::text),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() { String::from("any subject") } else { parts.join(", ") }
}

/// The role keys that grant `action`: `group <g>` and `scope <s>`.
fn capability_sources(roles: &Roles, action: Action) -> Vec<String> {
    capability_sources_of(roles, action.permission())
}

fn capability_sources_of(roles: &Roles, p: Permission) -> Vec<String> {
    let groups =
        roles.group_permissions.iter().filter(|(_, ps)| ps.has(p)).map(|(g, _)| format!("group {g}"));
    let scopes =
        roles.scope_permissions.iter().filter(|(_, ps)| ps.has(p)).map(|(s, _)| format!("scope {s}"));
    groups.chain(scopes).collect()
}

/// `s` as built, then with each group or scope that `roles` grants `action` through.
fn with_roles(roles: Option<&Roles>, s: &Subject, action: Action) -> Vec<Subject> {
    let mut out = vec![s.clone()];
    let Some(roles) = roles else { return out };
    let p = action.permission();
    for (g, ps) in &roles.group_permissions {
        if ps.has(p) && !s.groups.contains(g) {
            let mut with = s.clone();
            with.groups.push(g.clone());
            out.push(with);
        }
    }
    for (k, ps) in &roles.scope_permissions {
        if ps.has(p) && !s.scopes.contains(k) {
            let mut with = s.clone();
            with.scopes.push(k.clone());
            out.push(with);
        }
    }
    out
}

/// Combinations taking one option from each list (at most four options each, sixteen
/// combinations), skipping a list that the combination already satisfies.
fn choices<T>(
    lists: &[Vec<T>],
    satisfied: impl Fn(&T, &Vec<String>) -> bool,
    value: impl Fn(&T) -> String,
) -> Vec<Vec<String>> {
    let mut combos: Vec<Vec<String>> = vec![Vec::new()];
    for list in lists {
        let mut next = Vec::new();
        for c in &combos {
            if list.iter().any(|o| satisfied(o, c)) {
                next.push(c.clone());
                continue;
            }
            for o in list.iter().take(4) {
                let mut c = c.clone();
                let v = value(o);
                if !c.contains(&v) {
                    c.push(v);
                }
                next.push(c);
            }
        }
        next.truncate(16);
        combos = next;
    }
    combos
}

/// The topics two patterns both cover: levels (`None`: every topic, `"topics": "*"`), and
/// the placeholder values it needs (a value, or "the same as another placeholder").
#[derive(Debug, Clone, Default)]
struct Meet {
    levels: Option<Vec<Level>>,
    values: BTreeMap<Placeholder, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Is(String),
    Same(Placeholder),
}

impl Meet {
    fn of(a: Option<&[Level]>, b: Option<&[Level]>) -> Option<Meet> {
        let (a, b) = match (a, b) {
            (None, None) => return Some(Meet::default()),
            (Some(x), None) | (None, Some(x)) => (x, x),
            (Some(a), Some(b)) => (a, b),
        };
        let mut m = Meet { levels: Some(Vec::new()), values: BTreeMap::new() };
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            match (a.get(i), b.get(i)) {
                (None, None) => break,
                (Some(Level::Hash), _) | (_, Some(Level::Hash)) => {
                    let rest = if matches!(a.get(i), Some(Level::Hash)) { &b[i..] } else { &a[i..] };
                    if i == 0 && matches!(rest.first(), Some(Level::Lit(s)) if s.starts_with('$')) {
                        return None;
                    }
                    out.extend(rest.iter().cloned());
                    break;
                }
                (None, Some(_)) | (Some(_), None) => return None,
                (Some(x), Some(y)) => out.push(m.level(x, y, i == 0)?),
            }
            i += 1;
        }
        m.levels = Some(out);
        Some(m)
    }

    fn level(&mut self, x: &Level, y: &Level, first: bool) -> Option<Level> {
        use Level::*;
        Some(match (x, y) {
            (Lit(a), Lit(b)) => (a == b).then(|| Lit(a.clone()))?,
            (Lit(a), Plus) | (Plus, Lit(a)) => (!(first && a.starts_with('$'))).then(|| Lit(a.clone()))?,
            (Plus, Plus) => Plus,
            (Var(p), Lit(a)) | (Lit(a), Var(p)) => {
                if !substitutable(a) {
                    return None;
                }
                self.bind(*p, Value::Is(a.clone()))?;
                Lit(a.clone())
            }
            (Var(p), Plus) | (Plus, Var(p)) => Var(*p),
            (Var(p), Var(q)) => {
                self.bind(*p, Value::Same(*q))?;
                Var(self.root(*p))
            }
            (Hash, _) | (_, Hash) => unreachable!("handled by Meet::of"),
        })
    }

    /// The placeholder standing for `p`'s class of equal placeholders (`Same` always names a
    /// root).
    fn root(&self, p: Placeholder) -> Placeholder {
        match self.values.get(&p) {
            Some(Value::Same(q)) => *q,
            _ => p,
        }
    }

    /// The literal `p` must be, if the meet fixed one.
    fn literal(&self, p: Placeholder) -> Option<&String> {
        match self.values.get(&self.root(p)) {
            Some(Value::Is(v)) => Some(v),
            _ => None,
        }
    }

    /// Whether `p` must equal the subject's id.
    fn is_subject_id(&self, p: Placeholder) -> bool {
        self.root(p) == self.root(Placeholder::SubjectId)
    }

    /// Records that `p` is `v` (a literal, or equal to another placeholder); `None` when that
    /// contradicts what the meet already fixed.
    fn bind(&mut self, p: Placeholder, v: Value) -> Option<()> {
        let r = self.root(p);
        match v {
            Value::Is(x) => match self.values.get(&r) {
                Some(Value::Is(y)) if *y != x => None,
                _ => {
                    self.values.insert(r, Value::Is(x));
                    Some(())
                }
            },
            Value::Same(q) => {
                let rq = self.root(q);
                if r == rq {
                    return Some(());
                }
                let (lo, hi) = if r < rq { (r, rq) } else { (rq, r) };
                if let Some(Value::Is(x)) = self.values.get(&hi).cloned() {
                    match self.values.get(&lo) {
                        Some(Value::Is(y)) if *y != x => return None,
                        _ => {
                            self.values.insert(lo, Value::Is(x));
                        }
                    }
                }
                self.values.insert(hi, Value::Same(lo));
                for v in self.values.values_mut() {
                    if *v == Value::Same(hi) {
                        *v = Value::Same(lo);
                    }
                }
                Some(())
            }
        }
    }
}

/// The request values a witness uses for the placeholders.
#[derive(Clone)]
struct Filled {
    username: String,
    clientid: String,
}

struct Builder<'a> {
    old: &'a Policy,
    new: &'a Policy,
    vocab: &'a Vocab,
    /// Per action (`Action::index`): the groups and scopes that grant it in either document
    /// (at most eight), for subjects the role layer would refuse.
    granting: [Vec<RoleKey>; 3],
}

impl<'a> Builder<'a> {
    fn new(old: &'a Policy, new: &'a Policy, vocab: &'a Vocab) -> Builder<'a> {
        let granting = Action::ALL.map(|action| {
            let mut keys: Vec<RoleKey> = Vec::new();
            for roles in [&old.roles, &new.roles].into_iter().flatten() {
                for k in RoleKey::all(roles) {
                    if k.grants(roles).has(action.permission()) && !keys.contains(&k) {
                        keys.push(k);
                    }
                }
            }
            keys.truncate(8);
            keys
        });
        Builder { old, new, vocab, granting }
    }

    fn rule_alone(&self, rule: &Rule, need_key: Option<&RoleKey>, out: &mut Witnesses) {
        let (need, acts) = (Need::of(&rule.subjects), actions(&rule.actions));
        for p in patterns_of(rule) {
            if let Some(m) = Meet::of(p, p) {
                self.build(&need, &m, &acts, need_key, out);
            }
        }
    }

    fn pair(&self, a: &Rule, b: &Rule, out: &mut Witnesses) {
        let acts: Vec<Action> = actions(&a.actions).into_iter().filter(|x| b.has_action(*x)).collect();
        if acts.is_empty() {
            return;
        }
        let Some(need) = Need::of(&a.subjects).and(&Need::of(&b.subjects)) else { return };
        for pa in patterns_of(a) {
            for pb in patterns_of(b) {
                if let Some(m) = Meet::of(pa, pb) {
                    self.build(&need, &m, &acts, None, out);
                }
            }
        }
    }

    /// Witnesses for a subject need, a topic meet and actions.
    fn build(&self, need: &Need, meet: &Meet, acts: &[Action], key: Option<&RoleKey>, out: &mut Witnesses) {
        // A `${subject.id}` bound to a literal fixes the subject's id.
        let mut need = need.clone();
        if let Some(id) = meet.literal(Placeholder::SubjectId) {
            match &need.ids {
                Some(ids) if !ids.contains(id) => return,
                _ => need.ids = Some(vec![id.clone()]),
            }
        }
        for subject in need.subjects(self.vocab) {
            let subject = match key {
                Some(k) => k.given_to(subject),
                None => subject,
            };
            for &action in acts {
                for s in self.with_capability(&subject, action, key.is_none()) {
                    for (topic, filled) in self.topics(meet, &s, action) {
                        out.push(EvalRequest {
                            subject: s.clone(),
                            ask: action.into(),
                            topic,
                            clientid: filled.clientid,
                            username: filled.username,
                            message: Message::UNKNOWN,
                        });
                    }
                }
            }
        }
    }

    /// The subject as built, and (when a document's roles would refuse it the action) with
    /// each group or scope that grants the action in either document.
    fn with_capability(&self, s: &Subject, action: Action, vary: bool) -> Vec<Subject> {
        let mut out = vec![s.clone()];
        if !vary {
            return out;
        }
        let lacks = |p: &Policy| p.capabilities(s).is_some_and(|c| !c.has(action.permission()));
        if !lacks(self.old) && !lacks(self.new) {
            return out;
        }
        out.extend(self.granting[action.index()].iter().map(|k| k.given_to(s.clone())));
        out
    }

    /// Topics (names, or filters for subscribe) in the meet, with the placeholder values.
    fn topics(&self, meet: &Meet, s: &Subject, action: Action) -> Vec<(String, Filled)> {
        let fresh = self.vocab.level.as_str();
        let Some(levels) = &meet.levels else {
            let dollar = format!("${fresh}");
            let deep = alloc::vec![fresh; self.vocab.depth.max(2) + 1].join("/");
            let mut out = vec![String::from(fresh), format!("{fresh}/{fresh}"), deep, dollar.clone()];
            if action == Action::Subscribe {
                out.push(String::from("#"));
                out.push(format!("{dollar}/#"));
            }
            return out.into_iter().map(|t| (t, self.default_filled())).collect();
        };
        let value = |p: Placeholder, unusable: Option<Placeholder>| -> String {
            let p = meet.root(p);
            if unusable == Some(p) {
                return String::new();
            }
            if let Some(v) = meet.literal(p) {
                return v.clone();
            }
            if meet.is_subject_id(p) {
                return s.id.clone();
            }
            match p {
                Placeholder::SubjectId => s.id.clone(),
                Placeholder::Username => self.vocab.username.clone(),
                Placeholder::ClientId => self.vocab.clientid.clone(),
            }
        };
        // Placeholder values as requested, and (for a placeholder the meet leaves free) as
        // an unusable empty value: an allow pattern then matches nothing, a deny pattern `+`.
        let mut variants: Vec<Option<Placeholder>> = vec![None];
        for l in levels {
            if let Level::Var(p) = l {
                let p = meet.root(*p);
                if !meet.is_subject_id(p) && meet.literal(p).is_none() && !variants.contains(&Some(p)) {
                    variants.push(Some(p));
                }
            }
        }
        let mut out = Vec::new();
        for unusable in variants {
            let filled = Filled {
                username: value(Placeholder::Username, unusable),
                clientid: value(Placeholder::ClientId, unusable),
            };
            let word = |l: &Level, wild: bool| -> Option<String> {
                Some(match l {
                    Level::Lit(s) => s.clone(),
                    Level::Plus if wild => String::from("+"),
                    Level::Plus => String::from(fresh),
                    Level::Var(p) => {
                        let v = value(*p, unusable);
                        if substitutable(&v) { v } else { String::from(fresh) }
                    }
                    Level::Hash => return None,
                })
            };
            // `#` as the empty tail (`a/#` covers `a`), one level, two, and deeper than any
            // pattern reaches (a `+`-pattern elsewhere may cover one depth and not another).
            let name_of = |tail: usize| -> String {
                let mut parts: Vec<String> = levels.iter().filter_map(|l| word(l, false)).collect();
                parts.extend((0..tail).map(|_| String::from(fresh)));
                if parts.is_empty() { String::from(fresh) } else { parts.join("/") }
            };
            let mut topics = vec![name_of(0)];
            if levels.last() == Some(&Level::Hash) {
                let deepest = (self.vocab.depth + 1).saturating_sub(levels.len() - 1).max(3);
                for tail in [1, 2, deepest] {
                    topics.push(name_of(tail));
                }
            }
            if action == Action::Subscribe {
                let filter: Vec<String> = levels
                    .iter()
                    .map(|l| match l {
                        Level::Hash => String::from("#"),
                        l => word(l, true).unwrap_or_default(),
                    })
                    .collect();
                topics.push(filter.join("/"));
            }
            out.extend(topics.into_iter().map(|t| (t, filled.clone())));
        }
        out
    }

    /// The values of placeholders the meet leaves free: a username no rule names and unlike
    /// the subject's id (where a username and an id must be equal for a change to show, the
    /// meet of the two patterns says so), and a client id no rule names.
    fn default_filled(&self) -> Filled {
        Filled { username: self.vocab.username.clone(), clientid: self.vocab.clientid.clone() }
    }

    /// Witnesses for differences in `roles`.
    fn roles(&self, rules: &[&Rule], out: &mut Witnesses) {
        let (old, new) = match (&self.old.roles, &self.new.roles) {
            (None, None) => return,
            (Some(present), None) | (None, Some(present)) => {
                // The capability layer switched on or off: every allow rule, with subjects
                // that hold no role (and, through `with_capability`, with each role).
                for r in rules.iter().filter(|r| r.effect == Effect::Allow) {
                    self.rule_alone(r, None, out);
                }
                for k in RoleKey::all(present) {
                    self.superuser_witness(&k, out);
                }
                return;
            }
            (Some(o), Some(n)) => (o, n),
        };
        let mut keys = RoleKey::all(old);
        for k in RoleKey::all(new) {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        for k in &keys {
            let (before, after) = (k.grants(old), k.grants(new));
            if before == after {
                continue;
            }
            let changed = Permissions(before.0 ^ after.0);
            if changed.has(Permission::Superuser) {
                self.superuser_witness(k, out);
            }
            for r in rules.iter().filter(|r| r.effect == Effect::Allow) {
                if Action::ALL.iter().any(|a| changed.has(a.permission()) && r.has_action(*a)) {
                    self.rule_alone(r, Some(k), out);
                }
            }
        }
    }

    fn superuser_witness(&self, k: &RoleKey, out: &mut Witnesses) {
        for kind in SubjectType::ALL {
            let s = Subject { id: self.vocab.id.clone(), kind, groups: Vec::new(), scopes: Vec::new() };
            out.push(EvalRequest {
                subject: k.given_to(s),
                ask: Ask::Superuser,
                topic: String::new(),
                clientid: String::new(),
                username: String::new(),
                message: Message::UNKNOWN,
            });
        }
    }
}

fn patterns_of(r: &Rule) -> Vec<Option<&[Level]>> {
    match &r.topics {
        Sel::Any => vec![None],
        Sel::List(ps) => ps.iter().map(|p| Some(&p.levels[..])).collect(),
    }
}

fn actions(a: &Sel<Action>) -> Vec<Action> {
    match a {
        Sel::Any => Action::ALL.to_vec(),
        Sel::List(l) => l.clone(),
    }
}

/// A key of `roles`: a group or a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoleKey {
    Group(String),
    Scope(String),
}

impl RoleKey {
    fn all(r: &Roles) -> Vec<RoleKey> {
        let mut out: Vec<RoleKey> = r.group_permissions.keys().map(|g| RoleKey::Group(g.clone())).collect();
        out.extend(r.scope_permissions.keys().map(|s| RoleKey::Scope(s.clone())));
        out
    }

    fn grants(&self, r: &Roles) -> Permissions {
        match self {
            RoleKey::Group(g) => r.group_permissions.get(g).copied().unwrap_or_default(),
            RoleKey::Scope(s) => r.scope_permissions.get(s).copied().unwrap_or_default(),
        }
    }

    fn given_to(&self, mut s: Subject) -> Subject {
        match self {
            RoleKey::Group(g) if !s.groups.contains(g) => s.groups.push(g.to_string()),
            RoleKey::Scope(sc) if !s.scopes.contains(sc) => s.scopes.push(sc.to_string()),
            _ => {}
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(rules: &str) -> Policy {
        Policy::load(&format!(r#"{{"celine": {{"mqtt": {{"acl": {{"rules": [{rules}]}}}}}}}}"#)).unwrap()
    }

    #[test]
    fn who_could_names_each_granting_rule_with_a_request_that_proves_it() {
        let p = Policy::load(include_str!("../../policies/celine.json")).unwrap();
        let everything = who_could(&p, Action::Subscribe, "#");
        let rules: Vec<&str> = everything.grants.iter().map(|g| g.rule.as_str()).collect();
        assert_eq!(rules, ["admins-all"], "only administrators may subscribe to everything");
        let example = everything.grants[0].example.as_ref().expect("an administrator can");
        assert!(
            p.evaluate(example).allow && example.subject.groups.iter().any(|g| g == "admins"),
            "{example:?}"
        );
        assert!(who_could(&p, Action::Subscribe, "celine/+/#").grants.iter().all(|g| g.rule == "admins-all"));

        let telemetry = who_could(&p, Action::Subscribe, "celine/telemetry/+/+/readings");
        let rules: Vec<&str> = telemetry.grants.iter().map(|g| g.rule.as_str()).collect();
        assert_eq!(rules, ["admins-all", "telemetry-viewers"]);
        let viewer = telemetry.grants[1].example.as_ref().unwrap();
        assert_eq!(viewer.subject.kind, SubjectType::User);
        assert!(p.evaluate(viewer).allow);

        // A rule that would allow it to subjects a deny refuses says so, with no example.
        let q = doc(r#"{"id": "all", "topics": ["a/#"], "actions": ["subscribe"]},
               {"id": "no", "topics": ["a/#"], "actions": ["subscribe"], "effect": "deny"}"#);
        let w = who_could(&q, Action::Subscribe, "a/b");
        assert_eq!(w.grants.len(), 1);
        assert!(w.grants[0].example.is_none());
        assert_eq!(w.grants[0].refused_by, ["no"]);
        // Placeholders meeting the asked topic are bound from it.
        let own = doc(
            r#"{"id": "own", "subjects": {"types": ["user"]}, "topics": ["users/${subject.id}/#"], "actions": ["subscribe"]}"#,
        );
        let w = who_could(&own, Action::Subscribe, "users/u-42/#");
        assert_eq!(w.grants[0].example.as_ref().map(|r| r.subject.id.as_str()), Some("u-42"));
        assert!(
            who_could(&own, Action::Subscribe, "users/+/#").grants.is_empty(),
            "no one subject owns them all"
        );
        // An allow with a QoS condition is found at that QoS; a conditioned deny refuses only
        // what it covers.
        let qos0 = doc(r##"{"id": "qos0", "topics": ["#"], "actions": ["subscribe"], "qos": [0]}"##);
        let w = who_could(&qos0, Action::Subscribe, "#");
        assert_eq!(w.grants[0].example.as_ref().map(|r| r.message.qos), Some(Some(0)), "{w:?}");
        let reading = who_could(&p, Action::Publish, "celine/telemetry/meter/m1/readings");
        let example = reading.grants[0].example.as_ref().expect("a live QoS 0 reading is allowed");
        assert_eq!((example.message.qos, example.message.retain), (Some(0), Some(false)));
        assert_eq!(everything.superusers, ["group admins", "scope mqtt.admin"]);
    }

    #[test]
    fn the_same_rules_in_another_order_change_nothing() {
        let a = r#"{"id": "a", "subjects": {"groups": ["g"]}, "topics": ["a/#"], "actions": ["publish"]}"#;
        let b = r#"{"subjects": {}, "topics": ["a/b"], "actions": ["publish"], "effect": "deny"}"#;
        let d = diff(&doc(&format!("{a},{b}")), &doc(&format!("{b},{a}")), &[]);
        assert!(d.is_empty(), "{:?}", d.changes);
    }

    #[test]
    fn a_narrowed_rule_loses_what_it_no_longer_covers() {
        let old =
            doc(r#"{"id": "r", "subjects": {"groups": ["g"]}, "topics": ["a/#"], "actions": ["subscribe"]}"#);
        let new = doc(
            r#"{"id": "r", "subjects": {"groups": ["g"]}, "topics": ["a/b/#"], "actions": ["subscribe"]}"#,
        );
        let d = diff(&old, &new, &[]);
        assert!(!d.is_empty());
        assert!(d.changes.iter().all(|c| !c.gained() && c.request.subject.groups.contains(&"g".into())));
        assert!(d.changes.iter().any(|c| c.request.topic == "a/#"), "{:?}", d.changes);
        for c in &d.changes {
            assert_eq!(old.evaluate(&c.request), c.old);
            assert_eq!(new.evaluate(&c.request), c.new);
        }
    }

    #[test]
    fn a_placeholder_meeting_a_literal_asks_with_that_value() {
        let old = doc(r#"{"subjects": {}, "topics": ["u/${username}/#"], "actions": ["publish"]}"#);
        let new = doc(r#"{"subjects": {}, "topics": ["u/${username}/#"], "actions": ["publish"]},
               {"id": "no-alice", "subjects": {}, "topics": ["u/alice/x"], "actions": ["publish"], "effect": "deny"}"#);
        let d = diff(&old, &new, &[]);
        let c = d.changes.iter().find(|c| c.request.topic == "u/alice/x").expect("a witness as alice");
        assert_eq!(c.request.username, "alice");
        assert_eq!(c.new.rule.as_deref(), Some("no-alice"));
    }

    #[test]
    fn a_role_change_is_witnessed_through_the_group_that_changed() {
        let rules = r#""rules": [{"subjects": {}, "topics": ["t/#"], "actions": ["publish"]}]"#;
        let old = Policy::load(&format!(
            r#"{{"celine": {{"mqtt": {{"acl": {{{rules}}}}}, "roles": {{"group_permissions": {{"ops": ["publish", "superuser"]}}}}}}}}"#
        ))
        .unwrap();
        let new = Policy::load(&format!(
            r#"{{"celine": {{"mqtt": {{"acl": {{{rules}}}}}, "roles": {{"group_permissions": {{"ops": ["read"]}}}}}}}}"#
        ))
        .unwrap();
        let d = diff(&old, &new, &[]);
        assert!(
            d.changes.iter().any(|c| c.request.ask == Ask::Publish && c.request.subject.groups == ["ops"])
        );
        assert!(d.changes.iter().any(|c| c.request.ask == Ask::Superuser));
        assert!(d.changes.iter().all(|c| !c.gained()));
    }
}
