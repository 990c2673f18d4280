//! The rule index: so a decision's cost follows the rules that *could* apply to a topic, not
//! the size of the document.
//!
//! For each action and effect, rules are bucketed by subject (by `ids` when the rule lists
//! ids, else by `groups` when it lists groups, else one bucket for the rest; ids and groups
//! are numbered once, so a subject's buckets can be found once for many decisions), and each bucket
//! is a trie over topic-pattern levels (literal levels by name, `+` and placeholder levels on
//! one wildcard edge, `#` as a list at its node). A query walks the tries of the buckets its
//! subject can be in (the rest, its id, its groups) with the request's levels and returns
//! *candidate* (rule, pattern) pairs: a superset of those that apply. So neither many rules
//! for other subjects nor many patterns under a wildcard subscription make it linear. The decision code (`decide.rs`) then checks each candidate
//! exactly (subjects, `$` rule, placeholders), so the index may over-approximate but never
//! miss. `tests/index_differential.rs` checks it against a linear scan.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use crate::model::{Action, Subject};
use crate::pattern::Level;
use crate::rule::{Effect, Rule, Sel};
use crate::topic::{Levels, Tok};

/// A rule and one of its topic patterns (`u32::MAX` for `"topics": "*"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Entry {
    pub rule: u32,
    pub pattern: u32,
}

pub(crate) const ANY_TOPIC: u32 = u32::MAX;

#[derive(Debug, Clone, Default)]
struct Node {
    children: BTreeMap<String, Node>,
    /// `+` and placeholder levels.
    wild: Option<Box<Node>>,
    /// Patterns with `#` at this depth.
    hash: Vec<Entry>,
    /// Patterns ending at this depth.
    end: Vec<Entry>,
}

#[derive(Debug, Clone, Default)]
struct Trie {
    root: Node,
    /// Rules with `"topics": "*"`.
    any: Vec<Entry>,
}

/// The tries of one action and effect, bucketed by the subjects a rule can apply to.
#[derive(Debug, Clone, Default)]
struct Buckets {
    /// Rules that list neither ids nor groups.
    rest: Trie,
    /// Rules that list ids (under each id) or groups but not ids (under each group), by the
    /// key's slot in [`Index::keys`].
    keyed: BTreeMap<u32, Trie>,
}

/// A subject key rules are filed under: an id, or a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Id(String),
    Group(String),
}

/// The keys of one subject's buckets, found once: the slots of its id and its groups (sorted,
/// without repeats) that some rule is filed under. What [`crate::Prepared`] keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Slots(Vec<u32>);

impl Slots {
    /// The bytes its numbers take.
    pub(crate) fn bytes(&self) -> usize {
        self.0.len() * core::mem::size_of::<u32>()
    }
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    /// Every id and group some rule is filed under, numbered.
    keys: BTreeMap<Key, u32>,
    /// `[action][effect]`, effect 0 = allow, 1 = deny.
    tries: [[Buckets; 2]; 3],
}

/// Where a rule is filed, or `None` when an empty subject list means it never applies.
fn buckets_of(rule: &Rule) -> Option<Vec<Option<Key>>> {
    let s = &rule.subjects;
    let empty = |sel: &Option<Sel<String>>| matches!(sel, Some(Sel::List(v)) if v.is_empty());
    if empty(&s.ids) || empty(&s.groups) {
        return None;
    }
    Some(match (&s.ids, &s.groups) {
        (Some(Sel::List(ids)), _) => ids.iter().map(|i| Some(Key::Id(i.clone()))).collect(),
        (_, Some(Sel::List(gs))) => gs.iter().map(|g| Some(Key::Group(g.clone()))).collect(),
        _ => alloc::vec![None],
    })
}

impl Index {
    pub(crate) fn build(rules: &[Rule]) -> Index {
        let mut index = Index::default();
        for (ri, rule) in rules.iter().enumerate() {
            let Some(keys) = buckets_of(rule) else { continue };
            let slots: Vec<Option<u32>> = keys
                .into_iter()
                .map(|k| {
                    k.map(|k| {
                        let next = index.keys.len() as u32;
                        *index.keys.entry(k).or_insert(next)
                    })
                })
                .collect();
            let e = usize::from(rule.effect == Effect::Deny);
            for action in Action::ALL {
                if !rule.has_action(action) {
                    continue;
                }
                let buckets = &mut index.tries[action.index()][e];
                for slot in &slots {
                    let trie = match slot {
                        None => &mut buckets.rest,
                        Some(slot) => buckets.keyed.entry(*slot).or_default(),
                    };
                    match &rule.topics {
                        Sel::Any => trie.any.push(Entry { rule: ri as u32, pattern: ANY_TOPIC }),
                        Sel::List(patterns) => {
                            for (pi, p) in patterns.iter().enumerate() {
                                trie.insert(p.levels(), Entry { rule: ri as u32, pattern: pi as u32 });
                            }
                        }
                    }
                }
            }
        }
        index
    }

    /// The slots of the buckets a subject's rules can be in.
    pub(crate) fn slots(&self, subject: &Subject) -> Slots {
        let mut slots: Vec<u32> = core::iter::once(Key::Id(subject.id.clone()))
            .chain(subject.groups.iter().map(|g| Key::Group(g.clone())))
            .filter_map(|k| self.keys.get(&k).copied())
            .collect();
        slots.sort_unstable();
        slots.dedup();
        Slots(slots)
    }

    /// The tries a subject (by its slots) can have rules in, for one action and effect.
    fn tries<'a>(
        &'a self,
        action: Action,
        effect: Effect,
        slots: &'a Slots,
    ) -> impl Iterator<Item = &'a Trie> {
        let buckets = &self.tries[action.index()][usize::from(effect == Effect::Deny)];
        core::iter::once(&buckets.rest).chain(slots.0.iter().filter_map(|s| buckets.keyed.get(s)))
    }

    /// Candidates for a publish or read of the topic name `levels`.
    pub(crate) fn for_name(
        &self,
        action: Action,
        effect: Effect,
        slots: &Slots,
        levels: &[&str],
        out: &mut Vec<Entry>,
    ) {
        for trie in self.tries(action, effect, slots) {
            out.extend_from_slice(&trie.any);
            trie.root.walk(Walk::Overlap, levels, 0, out);
        }
    }

    /// Allow candidates for a subscription: patterns that may contain the filter.
    pub(crate) fn containing(&self, slots: &Slots, levels: &[Tok], out: &mut Vec<Entry>) {
        for trie in self.tries(Action::Subscribe, Effect::Allow, slots) {
            out.extend_from_slice(&trie.any);
            trie.root.walk(Walk::Contain, levels, 0, out);
        }
    }

    /// Every entry a subject (by its slots) can have for one action and effect.
    pub(crate) fn all(&self, action: Action, effect: Effect, slots: &Slots, out: &mut Vec<Entry>) {
        for trie in self.tries(action, effect, slots) {
            out.extend_from_slice(&trie.any);
            out.extend_from_slice(&trie.root.hash);
            out.extend_from_slice(&trie.root.end);
            trie.root.everything_below(out);
        }
    }

    /// Deny candidates for a subscription: patterns that may overlap the filter.
    pub(crate) fn overlapping(&self, slots: &Slots, levels: &[Tok], out: &mut Vec<Entry>) {
        for trie in self.tries(Action::Subscribe, Effect::Deny, slots) {
            out.extend_from_slice(&trie.any);
            trie.root.walk(Walk::Overlap, levels, 0, out);
        }
    }
}

impl Trie {
    fn insert(&mut self, levels: &[Level], entry: Entry) {
        let mut node = &mut self.root;
        for level in levels {
            node = match level {
                Level::Lit(s) => node.children.entry(s.clone()).or_default(),
                Level::Plus | Level::Var(_) => node.wild.get_or_insert_with(Default::default),
                Level::Hash => {
                    node.hash.push(entry);
                    return;
                }
            };
        }
        node.end.push(entry);
    }
}

/// How a walk treats the request's wildcard levels (a topic name has none, so either mode
/// serves a name).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// Patterns that may *contain* the filter (allow rules on subscribe).
    Contain,
    /// Patterns that may *overlap* the filter (deny rules on subscribe), and names.
    Overlap,
}

impl Node {
    fn walk<'a, L: Levels<'a> + ?Sized>(&self, mode: Walk, f: &L, i: usize, out: &mut Vec<Entry>) {
        out.extend_from_slice(&self.hash);
        if i == f.count() {
            out.extend_from_slice(&self.end);
            return;
        }
        match (f.at(i), mode) {
            (Tok::Lit(s), _) => {
                if let Some(child) = self.children.get(s) {
                    child.walk(mode, f, i + 1, out);
                }
                if let Some(w) = &self.wild {
                    w.walk(mode, f, i + 1, out);
                }
            }
            // A pattern contains `+` only with `+` (or `#`, collected above).
            (Tok::Plus, Walk::Contain) => {
                if let Some(w) = &self.wild {
                    w.walk(mode, f, i + 1, out);
                }
            }
            (Tok::Plus, Walk::Overlap) => {
                for child in self.children.values().chain(self.wild.as_deref()) {
                    child.walk(mode, f, i + 1, out);
                }
            }
            // Only `#` contains `#`, except `+/#` where `#` has no valid parent
            // (see `topic::contains`).
            (Tok::Hash, Walk::Contain) => {
                if let Some(w) = &self.wild {
                    out.extend_from_slice(&w.hash);
                }
            }
            (Tok::Hash, Walk::Overlap) => {
                out.extend_from_slice(&self.end);
                self.everything_below(out);
            }
        }
    }

    fn everything_below(&self, out: &mut Vec<Entry>) {
        for child in self.children.values().chain(self.wild.as_deref()) {
            out.extend_from_slice(&child.hash);
            out.extend_from_slice(&child.end);
            child.everything_below(out);
        }
    }
}
