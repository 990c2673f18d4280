//! The decision procedure of semantics.md §3: `check`, `superuser`, and `explain`.
//!
//! `check` uses the index; `explain` walks every rule and says, for each, whether it applied
//! and why not. Both must give the same decision (a test holds them to it), so `explain` is
//! also the plain reading of the semantics against which the index is tested.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde::Serialize;

use crate::index::{ANY_TOPIC, Entry, Slots};
use crate::json::quote;
use crate::model::{Action, Decision, Message, Permission, Permissions, Subject};
use crate::pattern::{Bindings, Pattern};
use crate::policy::Policy;
use crate::rule::{ConditionMiss, Effect, Rule, Sel, SubjectMismatch};
use crate::topic::{self, Tok};

/// One authorization question, borrowed. Missing `clientid`/`username` are `""`.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub subject: &'a Subject,
    pub action: Action,
    pub topic: &'a str,
    pub clientid: &'a str,
    pub username: &'a str,
    /// The message's QoS and retain flag (subscribe: the requested QoS), as far as known.
    pub message: Message,
}

/// The topic of a request once validated: split into levels, `$share/<g>/` stripped.
struct Target<'a> {
    text: &'a str,
    levels: Vec<&'a str>,
}

impl<'a> Target<'a> {
    fn new(action: Action, topic: &'a str) -> Result<Target<'a>, Decision> {
        let checked = match action {
            Action::Subscribe => topic::subscription_filter(topic),
            Action::Publish | Action::Read => topic::validate_name(topic).map(|()| topic),
        };
        match checked {
            Ok(text) => Ok(Target { text, levels: topic::split(text) }),
            Err(e) => Err(Decision::deny(format!("invalid topic: {e}"))),
        }
    }

    fn toks(&self) -> Vec<Tok<'a>> {
        use topic::Levels;
        (0..self.levels.len()).map(|i| self.levels[..].at(i)).collect()
    }
}

/// Does `pattern` (of a rule with `effect`) cover the request's topic for `action`?
fn topic_applies(pattern: &Pattern, effect: Effect, action: Action, t: &Target, b: &Bindings) -> bool {
    let Some(p) = pattern.resolve(b, effect == Effect::Deny) else {
        return false;
    };
    let levels = &t.levels[..];
    match (action, effect) {
        (Action::Publish | Action::Read, _) => topic::matches(&p, levels),
        (Action::Subscribe, Effect::Allow) => topic::contains(&p, levels),
        (Action::Subscribe, Effect::Deny) => topic::overlaps(&p, levels),
    }
}

/// Why the role layer refuses `action` (semantics.md §3, step 2).
pub(crate) fn missing_capability(action: Action) -> String {
    format!("missing capability {}: none of the subject's groups or scopes grants it", quote(action.as_str()))
}

fn describe(effect: Effect, action: Action) -> &'static str {
    match (effect, action) {
        (_, Action::Publish | Action::Read) => "matches",
        (Effect::Allow, Action::Subscribe) => "contains",
        (Effect::Deny, Action::Subscribe) => "overlaps",
    }
}

impl Policy {
    fn bindings<'a>(q: &Query<'a>) -> Bindings<'a> {
        Bindings { username: q.username, clientid: q.clientid, subject_id: &q.subject.id }
    }

    /// Steps 1 and 2 of semantics.md §3: a valid topic and the capability for the action
    /// (`caps`: the subject's, `None` when the document has no roles).
    fn preflight<'a>(caps: Option<Permissions>, q: &Query<'a>) -> Result<Target<'a>, Decision> {
        let target = Target::new(q.action, q.topic)?;
        if let Some(caps) = caps
            && !caps.has(q.action.permission())
        {
            return Err(Decision::deny(missing_capability(q.action)));
        }
        Ok(target)
    }

    fn entry_applies(&self, e: Entry, q: &Query, t: &Target, b: &Bindings) -> bool {
        let rule = &self.rules[e.rule as usize];
        if !rule.subjects.matches(q.subject) || !rule.conditions.covers(rule.effect, q.action, q.message) {
            return false;
        }
        match &rule.topics {
            Sel::Any => true,
            Sel::List(ps) => {
                debug_assert!(e.pattern != ANY_TOPIC);
                topic_applies(&ps[e.pattern as usize], rule.effect, q.action, t, b)
            }
        }
    }

    /// The first (in document order) candidate that applies.
    fn first_applying(&self, cands: &mut [Entry], q: &Query, t: &Target, b: &Bindings) -> Option<usize> {
        cands.sort_unstable();
        cands.iter().find(|e| self.entry_applies(**e, q, t, b)).map(|e| e.rule as usize)
    }

    /// Decides one request (semantics.md §3).
    pub fn check(&self, q: &Query) -> Decision {
        self.decide(self.capabilities(q.subject), &self.index.slots(q.subject), q)
    }

    /// Decides one request for a subject whose capabilities and index buckets are known
    /// (`slots` must be this policy's, for `q.subject`: see [`crate::Prepared`]).
    pub(crate) fn decide(&self, caps: Option<Permissions>, slots: &Slots, q: &Query) -> Decision {
        let t = match Self::preflight(caps, q) {
            Ok(t) => t,
            Err(d) => return d,
        };
        let b = Self::bindings(q);
        let mut cands = Vec::new();
        // A subscription's filter levels, classified once for both candidate queries.
        let toks = if q.action == Action::Subscribe { t.toks() } else { Vec::new() };
        match q.action {
            Action::Subscribe => self.index.overlapping(slots, &toks, &mut cands),
            a => self.index.for_name(a, Effect::Deny, slots, &t.levels, &mut cands),
        }
        if let Some(r) = self.first_applying(&mut cands, q, &t, &b) {
            return self.decided(r, q.action, t.text);
        }
        cands.clear();
        match q.action {
            Action::Subscribe => self.index.containing(slots, &toks, &mut cands),
            a => self.index.for_name(a, Effect::Allow, slots, &t.levels, &mut cands),
        }
        match self.first_applying(&mut cands, q, &t, &b) {
            Some(r) => self.decided(r, q.action, t.text),
            None => Decision::deny(format!("no rule allows {} on {}", q.action, quote(t.text))),
        }
    }

    pub(crate) fn decided(&self, r: usize, action: Action, topic: &str) -> Decision {
        let rule = &self.rules[r];
        let verb = match rule.effect {
            Effect::Allow => "allows",
            Effect::Deny => "denies",
        };
        Decision {
            allow: rule.effect == Effect::Allow,
            rule: Some(rule.name.clone()),
            reason: format!("rule {} {verb} {action} on {}", quote(&rule.name), quote(topic)),
        }
    }

    /// Is the subject a superuser? True iff `roles` is present and grants `superuser`.
    /// (go-auth then skips ACL checks, so deny rules do not bind a superuser.)
    pub fn superuser(&self, s: &Subject) -> Decision {
        let Some(roles) = &self.roles else {
            return Decision::deny(String::from(
                "not a superuser: the policy has no roles, so nobody is a superuser",
            ));
        };
        let sources = roles.sources(s, Permission::Superuser);
        if sources.is_empty() {
            Decision::deny(String::from(
                "not a superuser: none of the subject's groups or scopes grants 'superuser'",
            ))
        } else {
            Decision { allow: true, rule: None, reason: format!("superuser through {}", sources.join(", ")) }
        }
    }

    /// The decision with every rule's part in it, for people and for tests.
    pub fn explain(&self, q: &Query) -> Explanation {
        let capabilities = self.capabilities(q.subject).map(|c| c.iter().map(Permission::as_str).collect());
        let target = match Target::new(q.action, q.topic) {
            Ok(t) => t,
            Err(decision) => return Explanation { decision, capabilities, rules: Vec::new() },
        };
        let b = Self::bindings(q);
        let rules: Vec<RuleTrace> =
            self.rules.iter().enumerate().map(|(i, r)| trace(i, r, q, &target, &b)).collect();
        let decision = match Self::preflight(self.capabilities(q.subject), q) {
            Err(d) => d,
            Ok(_) => {
                let first =
                    |eff: Effect| rules.iter().position(|t| t.applies && self.rules[t.index].effect == eff);
                match first(Effect::Deny).or_else(|| first(Effect::Allow)) {
                    Some(i) => self.decided(i, q.action, target.text),
                    None => Decision::deny(format!("no rule allows {} on {}", q.action, quote(target.text))),
                }
            }
        };
        Explanation { decision, capabilities, rules }
    }
}

/// A rule's topic pattern that covers a request's topic, whoever asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatternHit {
    /// Zero-based position of the rule in `celine.mqtt.acl.rules`.
    pub index: usize,
    /// `id` or `rules[N]`.
    pub rule: String,
    pub effect: &'static str,
    /// Position of the pattern in the rule's `topics`, `None` for `"topics": "*"`.
    pub pattern_index: Option<usize>,
    pub pattern: String,
    /// How it covers the topic for the action: `matches`, `contains` or `overlaps`.
    pub relation: &'static str,
    /// Whether the rule's subjects, actions and message conditions also fit the request.
    pub applies: bool,
}

impl Policy {
    /// Every rule pattern that covers the request's topic for its action (with the request's
    /// placeholders), in document order, whether or not the rule's subjects and actions fit:
    /// "which rules talk about this topic". Empty when the topic is invalid.
    pub fn patterns_covering(&self, q: &Query) -> Vec<PatternHit> {
        let Ok(target) = Target::new(q.action, q.topic) else {
            return Vec::new();
        };
        let b = Self::bindings(q);
        let mut hits = Vec::new();
        for (index, rule) in self.rules.iter().enumerate() {
            let applies = rule.subjects.matches(q.subject)
                && rule.has_action(q.action)
                && rule.conditions.covers(rule.effect, q.action, q.message);
            let hit = |pattern_index, pattern: &str| PatternHit {
                index,
                rule: rule.name.clone(),
                effect: rule.effect.as_str(),
                pattern_index,
                pattern: String::from(pattern),
                relation: describe(rule.effect, q.action),
                applies,
            };
            match &rule.topics {
                Sel::Any => hits.push(hit(None, "*")),
                Sel::List(ps) => hits.extend(
                    ps.iter()
                        .enumerate()
                        .filter(|(_, p)| topic_applies(p, rule.effect, q.action, &target, &b))
                        .map(|(j, p)| hit(Some(j), p.as_str())),
                ),
            }
        }
        hits
    }
}

fn trace(index: usize, rule: &Rule, q: &Query, t: &Target, b: &Bindings) -> RuleTrace {
    let mut trace = RuleTrace {
        index,
        rule: rule.name.clone(),
        effect: rule.effect.as_str(),
        applies: false,
        matched_topic: None,
        why_not: None,
    };
    if let Err(m) = rule.subjects.check(q.subject) {
        trace.why_not = Some(subject_miss(m));
        return trace;
    }
    if !rule.has_action(q.action) {
        trace.why_not = Some(format!("action {} is not listed", quote(q.action.as_str())));
        return trace;
    }
    if let Err(miss) = rule.conditions.check(rule.effect, q.action, q.message) {
        trace.why_not = Some(condition_miss(miss, q.action, q.message));
        return trace;
    }
    match &rule.topics {
        Sel::Any => {
            trace.matched_topic = Some(String::from("*"));
        }
        Sel::List(ps) => {
            trace.matched_topic = ps
                .iter()
                .find(|p| topic_applies(p, rule.effect, q.action, t, b))
                .map(|p| String::from(p.as_str()));
            if trace.matched_topic.is_none() {
                let unusable = ps.iter().find_map(|p| p.unusable_placeholder(b));
                trace.why_not = Some(match (rule.effect, unusable) {
                    (Effect::Allow, Some(why)) => format!(
                        "no topic pattern {} {}; {why}",
                        describe(rule.effect, q.action),
                        quote(t.text)
                    ),
                    _ => format!("no topic pattern {} {}", describe(rule.effect, q.action), quote(t.text)),
                });
                return trace;
            }
        }
    }
    trace.applies = true;
    trace
}

fn condition_miss(miss: ConditionMiss, action: Action, m: Message) -> String {
    if miss == ConditionMiss::Retain && action == Action::Subscribe {
        return String::from(
            "retain: a deny with a retain condition does not refuse a subscription (each delivery is decided when it is read)",
        );
    }
    match (miss, m.qos, m.retain) {
        (ConditionMiss::Qos, Some(q), _) => format!("qos: QoS {q} is not listed"),
        (ConditionMiss::Qos, None, _) => String::from("qos: the request's QoS is not known"),
        (ConditionMiss::Retain, _, Some(true)) => {
            String::from("retain: the rule covers only non-retained messages")
        }
        (ConditionMiss::Retain, _, Some(false)) => {
            String::from("retain: the rule covers only retained messages")
        }
        (ConditionMiss::Retain, _, None) => {
            String::from("retain: whether the message is retained is not known")
        }
    }
}

fn subject_miss(m: SubjectMismatch) -> String {
    let what = match m {
        SubjectMismatch::Type => "the subject's type is not listed",
        SubjectMismatch::Id => "the subject's id is not listed",
        SubjectMismatch::Group => "the subject has none of the listed groups",
        SubjectMismatch::Scope => "no listed scope matches the subject's scopes",
    };
    format!("subjects.{}: {what}", m.field())
}

/// A decision and how each rule took part in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub decision: Decision,
    /// The subject's capabilities from `roles`, or `None` when the policy has no roles.
    pub capabilities: Option<Vec<&'static str>>,
    /// One entry per rule, in document order (empty when the topic was invalid).
    pub rules: Vec<RuleTrace>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    /// Zero-based position in `celine.mqtt.acl.rules`.
    pub index: usize,
    /// `id` or `rules[N]`.
    pub rule: String,
    pub effect: &'static str,
    pub applies: bool,
    /// The first topic pattern that covers the request (set when subjects and action match).
    pub matched_topic: Option<String>,
    /// Why the rule does not apply.
    pub why_not: Option<String>,
}
