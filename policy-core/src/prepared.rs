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
use crate::model::{Action, Decision, Message, Permissions, Subject};
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
/// Bytes of a topic name a residual is matched against, at most: a `+` scans its level, so a
/// longer name (rare, and possibly made to be slow) is decided in full instead.
const MAX_RESIDUAL_NAME: usize = 1024;

/// One action's residual: the allow patterns that decide by themselves, in document order,
/// compiled into one buffer (a check reads one short run of memory, not a list of patterns
/// each pointing at its levels). Each entry is a header (the rule's index, `u32`; the
/// length of its parts, `u16`; flags, `u8`) and its parts: `+` skips one level, and a run
/// of literal levels joined by `/` (a length, `u16`, then the bytes) is one comparison.
/// A final `#` is a flag: it covers its parent level and everything below it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Residual {
    code: Vec<u8>,
}

/// The entry matches every topic (`"topics": "*"`).
const ANY: u8 = 1;
/// The pattern ends in `#`.
const HASH: u8 = 2;
/// The pattern starts with a wildcard, so it matches no name starting with `$`.
const WILD_FIRST: u8 = 4;
const PART_PLUS: u8 = 0;
const PART_LITERAL: u8 = 1;
const HEADER: usize = 7;

impl Residual {
    fn is_empty(&self) -> bool {
        self.code.is_empty()
    }

    /// Adds `rule`'s pattern (`None`: every topic), its levels bound (no literal level holds
    /// `/`, `+` or `#`). A pattern too long to encode is left out: a topic it would have
    /// matched is then decided in full, which decides the same.
    fn push(&mut self, rule: usize, levels: Option<&[String]>) {
        let Ok(rule) = u32::try_from(rule) else { return };
        let (flags, parts) = match levels {
            None => (ANY, Vec::new()),
            Some(levels) => {
                let hash = levels.last().is_some_and(|l| l == "#");
                let levels = &levels[..levels.len() - usize::from(hash)];
                let mut runs: Vec<Option<String>> = Vec::new();
                for level in levels {
                    match (level.as_str(), runs.last_mut()) {
                        ("+", _) => runs.push(None),
                        (literal, Some(Some(run))) => {
                            run.push('/');
                            run.push_str(literal);
                        }
                        (literal, _) => runs.push(Some(String::from(literal))),
                    }
                }
                let wild_first = matches!(runs.first(), Some(None) | None);
                let mut parts = Vec::new();
                for run in runs {
                    match run {
                        None => parts.push(PART_PLUS),
                        Some(literal) => {
                            let Ok(n) = u16::try_from(literal.len()) else { return };
                            parts.push(PART_LITERAL);
                            parts.extend_from_slice(&n.to_le_bytes());
                            parts.extend_from_slice(literal.as_bytes());
                        }
                    }
                }
                let flags = if hash { HASH } else { 0 } | if wild_first { WILD_FIRST } else { 0 };
                (flags, parts)
            }
        };
        let Ok(len) = u16::try_from(parts.len()) else { return };
        self.code.extend_from_slice(&rule.to_le_bytes());
        self.code.extend_from_slice(&len.to_le_bytes());
        self.code.push(flags);
        self.code.extend_from_slice(&parts);
    }

    /// The rule of the first entry that matches `name`, a valid topic name.
    fn first_match(&self, name: &[u8]) -> Option<usize> {
        let code = self.code.as_slice();
        let mut at = 0;
        while let Some(header) = code.get(at..at + HEADER) {
            let rule = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let len = usize::from(u16::from_le_bytes([header[4], header[5]]));
            let parts = code.get(at + HEADER..at + HEADER + len)?;
            if Self::matches(header[6], parts, name) {
                return Some(rule as usize);
            }
            at += HEADER + len;
        }
        None
    }

    /// Exactly what [`topic::matches`] says of the pattern and a valid name.
    fn matches(flags: u8, parts: &[u8], name: &[u8]) -> bool {
        if flags & ANY != 0 {
            return true;
        }
        if flags & WILD_FIRST != 0 && name.first() == Some(&b'$') {
            return false;
        }
        let (mut at, mut i) = (0, 0);
        while let Some(&part) = parts.get(i) {
            if i > 0 {
                if name.get(at) != Some(&b'/') {
                    return false;
                }
                at += 1;
            }
            let rest = &name[at..];
            if part == PART_PLUS {
                at += rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
                i += 1;
                continue;
            }
            let Some(&[lo, hi]) = parts.get(i + 1..i + 3) else { return false };
            let n = usize::from(u16::from_le_bytes([lo, hi]));
            let Some(literal) = parts.get(i + 3..i + 3 + n) else { return false };
            if !starts_with(rest, literal) {
                return false;
            }
            at += n;
            i += 3 + n;
        }
        match flags & HASH != 0 {
            false => at == name.len(),
            true => parts.is_empty() || at == name.len() || name[at] == b'/',
        }
    }
}

/// `<[u8]>::starts_with`, compared a byte at a time here rather than by the C library's
/// `bcmp`, whose code (a few lines of it) a broker's own work evicts between two deliveries;
/// the literals of a residual are a few bytes to a few tens.
#[inline(always)]
fn starts_with(name: &[u8], literal: &[u8]) -> bool {
    let Some(head) = name.get(..literal.len()) else { return false };
    let mut i = 0;
    while i < literal.len() {
        if head[i] != literal[i] {
            return false;
        }
        i += 1;
    }
    true
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

/// A subject, with what one policy needs to know about it for every decision. What
/// [`Policy::allowed_as_prepared`] reads comes first (`repr(C)`): a host that keeps one per
/// connection and checks often touches only those lines.
#[derive(Debug, Clone, PartialEq, Eq)]
#[repr(C)]
pub struct Prepared {
    /// The [`Policy::id`] it was prepared for.
    policy: u64,
    /// The residual for read and publish (in that order).
    residual: [Residual; 2],
    subject: Subject,
    capabilities: Option<Permissions>,
    slots: Slots,
    /// The client id and username the residual's placeholders are bound to.
    clientid: String,
    username: String,
}

impl Prepared {
    pub fn subject(&self) -> &Subject {
        &self.subject
    }

    /// [`Policy::allowed_as_prepared`] by the policy this was prepared for, for a caller
    /// that knows which policy that is without reading it (it holds the policy's identity
    /// some other way), and a topic as the broker's bytes: a name that is not UTF-8, or not a
    /// valid name, is never allowed here. Asked of another policy's request, it answers for
    /// the wrong policy: [`Policy::allowed_as_prepared`] is the checked way.
    #[inline]
    pub fn allowed_under_its_policy(&self, action: Action, name: &[u8]) -> Option<usize> {
        let residual = match action {
            Action::Read => &self.residual[0],
            Action::Publish => &self.residual[1],
            Action::Subscribe => return None,
        };
        if residual.is_empty() || name.len() > MAX_RESIDUAL_NAME || !topic::is_name(name) {
            return None;
        }
        residual.first_match(name)
    }

    /// About what it takes in memory, in bytes (for caches that are bounded by bytes).
    pub fn bytes(&self) -> usize {
        const STRING: usize = core::mem::size_of::<String>();
        let s = &self.subject;
        let names: usize = s.groups.iter().chain(&s.scopes).map(|n| n.len() + STRING).sum();
        core::mem::size_of::<Self>()
            + s.id.len()
            + names
            + self.slots.bytes()
            + self.clientid.len()
            + self.username.len()
            + self.residual.iter().map(|r| r.code.len()).sum::<usize>()
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
            residual: [Residual::default(), Residual::default()],
        };
        p.residual = [self.residual(&p, Action::Read), self.residual(&p, Action::Publish)];
        p
    }

    /// The allow patterns of the subject's for `action` that decide by themselves.
    fn residual(&self, p: &Prepared, action: Action) -> Residual {
        if p.capabilities.is_some_and(|c| !c.has(action.permission()))
            || p.clientid.len() + p.username.len() > MAX_BOUND_BYTES
        {
            return Residual::default();
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
        let mut residual = Residual::default();
        if allows.len().saturating_mul(allows.len() + denies.len()) > RESIDUAL_BUDGET {
            return residual;
        }
        let meet = |a: &Option<Vec<String>>, b: &Option<Vec<String>>| match (a, b) {
            (Some(a), Some(b)) => topic::overlaps(&Bound(a), &Bound(b)),
            _ => true,
        };
        // An allow with conditions on the message decides nothing alone (the residual knows
        // no message), but as an earlier allow it still names the rule for the topics it meets.
        for (rule, levels) in allows.iter().filter(|(rule, levels)| {
            self.rules[*rule].conditions.is_none()
                && denies.iter().all(|(_, d)| !meet(levels, d))
                && allows.iter().take_while(|(r, _)| r < rule).all(|(_, earlier)| !meet(levels, earlier))
        }) {
            residual.push(*rule, levels.as_deref());
        }
        residual
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
        if prepared.clientid != clientid || prepared.username != username {
            return None;
        }
        self.allowed_as_prepared(prepared, action, topic)
    }

    /// [`Policy::allowed_at_once`] for a request with the client id and username `prepared`
    /// was made for, which its caller guarantees (a broker connection prepares its subject
    /// with its own, and every check of it is that connection's).
    #[inline]
    pub fn allowed_as_prepared(&self, prepared: &Prepared, action: Action, topic: &str) -> Option<usize> {
        if prepared.policy != self.id {
            return None;
        }
        prepared.allowed_under_its_policy(action, topic.as_bytes())
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
        message: Message,
    ) -> Decision {
        let q = Query { subject: &prepared.subject, action, topic, clientid, username, message };
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

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::{format, vec};

    /// Every sequence of up to `max` items of `alphabet`.
    fn sequences(alphabet: &[&'static str], max: usize) -> Vec<Vec<&'static str>> {
        let mut all: Vec<Vec<&str>> = vec![vec![]];
        let mut last: Vec<Vec<&str>> = vec![vec![]];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |a| [s.as_slice(), &[*a]].concat()))
                .collect();
            all.extend(last.iter().cloned());
        }
        all.retain(|s| !s.is_empty());
        all
    }

    #[test]
    fn a_residual_entry_matches_what_topic_matches_matches() {
        let patterns: Vec<Vec<String>> = sequences(&["a", "bc", "", "+", "#", "$s"], 4)
            .into_iter()
            .filter(|p| topic::validate_filter(&p.join("/")).is_ok())
            .map(|p| p.into_iter().map(String::from).collect())
            .collect();
        let names: Vec<Vec<&str>> = sequences(&["a", "bc", "", "$s", "ab"], 4)
            .into_iter()
            .filter(|n| topic::validate_name(&n.join("/")).is_ok())
            .collect();
        let mut compared = 0;
        for p in &patterns {
            let mut residual = Residual::default();
            residual.push(7, Some(p));
            for n in &names {
                let expected = topic::matches(&Bound(p), n.as_slice()).then_some(7);
                assert_eq!(residual.first_match(n.join("/").as_bytes()), expected, "{p:?} against {n:?}");
                compared += 1;
            }
        }
        assert!(compared > 100_000, "{compared}");
    }

    #[test]
    fn starts_with_says_what_the_slices_own_says() {
        let name: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        for len in 0..=name.len() + 1 {
            let literal: Vec<u8> = name.iter().copied().chain([b'x']).take(len).collect();
            assert_eq!(starts_with(&name, &literal), name.starts_with(&literal), "length {len}");
            for at in 0..literal.len() {
                let mut other = literal.clone();
                other[at] ^= 0x20;
                assert!(!starts_with(&name, &other), "length {len}, differing at {at}");
            }
        }
    }

    #[test]
    fn a_residual_finds_the_first_entry_that_matches_and_leaves_out_what_it_cannot_encode() {
        let levels = |p: &str| p.split('/').map(String::from).collect::<Vec<_>>();
        let mut residual = Residual::default();
        residual.push(3, Some(&levels("a/+/c")));
        residual.push(5, Some(&levels(&format!("long/{}", "x".repeat(70_000)))));
        residual.push(6, Some(&levels(&format!("{}/+", "y".repeat(300)))));
        residual.push(9, Some(&levels("a/#")));
        residual.push(12, None);
        assert_eq!(residual.first_match(b"a/b/c"), Some(3));
        assert_eq!(residual.first_match(b"a/b/d"), Some(9));
        assert_eq!(residual.first_match(format!("long/{}", "x".repeat(70_000)).as_bytes()), Some(12));
        assert_eq!(residual.first_match(format!("{}/z", "y".repeat(300)).as_bytes()), Some(6));
        assert_eq!(residual.first_match(b"$SYS/x"), Some(12), "`*` covers `$` topics too");
        assert_eq!(Residual::default().first_match(b"a"), None);
    }
}
