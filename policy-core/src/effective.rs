//! What one subject may do: per action, the topic patterns it may use and the denied
//! carve-outs in them, read off the rules and roles (semantics.md §3 the other way round).
//!
//! For publish and read, a topic is allowed when an allowed pattern matches it and no
//! carve-out does. For subscribe, a filter is allowed when an allowed pattern contains it
//! and it overlaps no carve-out. A grant whose whole pattern lies inside a carve-out is
//! marked `void`: it allows nothing.

use alloc::string::String;
use alloc::vec::Vec;

use serde::Serialize;

use crate::model::{Action, Permission, Subject};
use crate::pattern::{Level, Placeholder, substitutable};
use crate::policy::Policy;
use crate::rule::{Conditions, Effect, Sel};
use crate::topic;

/// A subject's effective permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Effective {
    /// The capabilities `roles` grants, or `None` when the policy has no roles.
    pub capabilities: Option<Vec<&'static str>>,
    /// Subscribe, read, publish, in that order.
    pub actions: Vec<ActionGrants>,
}

/// What the subject may do for one action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionGrants {
    pub action: Action,
    /// Why the role layer refuses the action altogether, if it does.
    pub refused: Option<String>,
    /// The allowed patterns, in document order.
    pub allow: Vec<Grant>,
    /// Every pattern the subject's rules name for the action, as a tree of topic levels.
    pub tree: Vec<Node>,
}

/// One allowed pattern and what deny rules carve out of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    /// The pattern with the request's values filled in (`*`: every topic, `$`-topics too).
    pub pattern: String,
    pub rule: String,
    /// Deny patterns that take topics out of this one.
    pub except: Vec<Carve>,
    /// A carve-out covers the whole pattern: it allows nothing.
    pub void: bool,
    /// Placeholders left as written (no value given): the grant holds for the value the
    /// request will carry, when it is usable (semantics.md §2).
    pub needs: Vec<&'static str>,
    /// The rule's conditions on the message, for people (`QoS 0 or 1`), when it has any
    /// that bind this action: the grant holds only for such messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Carve {
    pub pattern: String,
    pub rule: String,
    /// The deny rule's conditions on the message, for people: it carves out only such
    /// messages (an unknown message counts as one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only: Option<String>,
}

/// A topic level, with the rules whose pattern ends here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub level: String,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
    pub children: Vec<Node>,
}

/// The request values placeholders stand for; `None` keeps a placeholder as written.
#[derive(Debug, Clone, Copy, Default)]
pub struct Values<'a> {
    pub username: Option<&'a str>,
    pub clientid: Option<&'a str>,
}

/// A pattern resolved for the subject: its text and levels (`None`: every topic).
struct Resolved {
    text: String,
    levels: Option<Vec<String>>,
    needs: Vec<&'static str>,
}

impl Resolved {
    /// The levels as a topic filter (`None`: every topic).
    fn toks(&self) -> Option<Vec<&str>> {
        self.levels.as_ref().map(|l| l.iter().map(String::as_str).collect())
    }

    /// Every topic `self` covers is covered by `outer`.
    fn within(&self, outer: &Resolved) -> bool {
        match (outer.toks(), self.toks()) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(o), Some(i)) => topic::contains(&o[..], &i[..]),
        }
    }

    fn overlaps(&self, other: &Resolved) -> bool {
        match (self.toks(), other.toks()) {
            (Some(a), Some(b)) => topic::overlaps(&a[..], &b[..]),
            _ => true,
        }
    }
}

impl Policy {
    /// What `subject` may do, per action: the allowed patterns (placeholders filled with
    /// `values` and the subject's id), the deny patterns carved out of them, and a tree.
    pub fn effective(&self, subject: &Subject, values: Values) -> Effective {
        let caps = self.capabilities(subject);
        let actions = Action::ALL
            .iter()
            .map(|&action| {
                if let Some(c) = caps
                    && !c.has(action.permission())
                {
                    return ActionGrants {
                        action,
                        refused: Some(crate::decide::missing_capability(action)),
                        allow: Vec::new(),
                        tree: Vec::new(),
                    };
                }
                self.grants(subject, action, values)
            })
            .collect();
        Effective { capabilities: caps.map(|c| c.iter().map(Permission::as_str).collect()), actions }
    }

    fn grants(&self, subject: &Subject, action: Action, values: Values) -> ActionGrants {
        let mut allows: Vec<(Resolved, &str, Option<Conditions>)> = Vec::new();
        let mut denies: Vec<(Resolved, &str, Option<Conditions>)> = Vec::new();
        for rule in &self.rules {
            if !rule.subjects.matches(subject) || !rule.has_action(action) {
                continue;
            }
            let deny = rule.effect == Effect::Deny;
            let conditions = rule.conditions.for_action(rule.effect, action);
            // A deny with a retain condition never refuses a subscription.
            if deny && action == Action::Subscribe && rule.conditions.retain.is_some() {
                continue;
            }
            let patterns: Vec<Option<Resolved>> = match &rule.topics {
                Sel::Any => {
                    alloc::vec![Some(Resolved { text: String::from("*"), levels: None, needs: Vec::new() })]
                }
                Sel::List(ps) => ps.iter().map(|p| resolve(&p.levels, subject, values, deny)).collect(),
            };
            let into = if deny { &mut denies } else { &mut allows };
            into.extend(patterns.into_iter().flatten().map(|p| (p, rule.name.as_str(), conditions)));
        }
        let mut tree = Vec::new();
        for (p, rule, _) in &allows {
            insert(&mut tree, p, rule, false);
        }
        for (p, rule, _) in &denies {
            insert(&mut tree, p, rule, true);
        }
        let only = |c: &Option<Conditions>| c.as_ref().map(Conditions::describe);
        let allow = allows
            .iter()
            .map(|(p, rule, conditions)| {
                let cut: Vec<_> = denies.iter().filter(|(d, _, _)| p.overlaps(d)).collect();
                Grant {
                    pattern: p.text.clone(),
                    rule: String::from(*rule),
                    // Void only where a deny that binds every message covers it all.
                    void: cut.iter().any(|(d, _, c)| c.is_none() && p.within(d)),
                    except: cut
                        .iter()
                        .map(|(d, r, c)| Carve {
                            pattern: d.text.clone(),
                            rule: String::from(*r),
                            only: only(c),
                        })
                        .collect(),
                    needs: p.needs.clone(),
                    only: only(conditions),
                }
            })
            .collect();
        ActionGrants { action, refused: None, allow, tree }
    }
}

/// A rule pattern for this subject: `${subject.id}` filled, the other placeholders filled
/// when a value is given, else kept. An unusable value makes an allow pattern match
/// nothing (`None`) and a deny pattern `+`, as in a decision.
fn resolve(levels: &[Level], subject: &Subject, values: Values, deny: bool) -> Option<Resolved> {
    let mut out = Vec::with_capacity(levels.len());
    let mut needs = Vec::new();
    for l in levels {
        let word = match l {
            Level::Lit(s) => s.clone(),
            Level::Plus => String::from("+"),
            Level::Hash => String::from("#"),
            Level::Var(p) => {
                let given = match p {
                    Placeholder::SubjectId => Some(subject.id.as_str()),
                    Placeholder::Username => values.username,
                    Placeholder::ClientId => values.clientid,
                };
                match given {
                    None => {
                        if !needs.contains(&p.as_str()) {
                            needs.push(p.as_str());
                        }
                        String::from(p.as_str())
                    }
                    Some(v) if substitutable(v) => String::from(v),
                    Some(_) if deny => String::from("+"),
                    Some(_) => return None,
                }
            }
        };
        out.push(word);
    }
    Some(Resolved { text: out.join("/"), levels: Some(out), needs })
}

fn insert(tree: &mut Vec<Node>, p: &Resolved, rule: &str, deny: bool) {
    let levels: Vec<String> = match &p.levels {
        Some(l) => l.clone(),
        None => alloc::vec![String::from("*")],
    };
    let mut nodes = tree;
    for (i, level) in levels.iter().enumerate() {
        let at = match nodes.binary_search_by(|n| n.level.as_str().cmp(level)) {
            Ok(at) => at,
            Err(at) => {
                nodes.insert(
                    at,
                    Node { level: level.clone(), allow: Vec::new(), deny: Vec::new(), children: Vec::new() },
                );
                at
            }
        };
        let node = &mut nodes[at];
        if i + 1 == levels.len() {
            let list = if deny { &mut node.deny } else { &mut node.allow };
            if !list.iter().any(|r| r == rule) {
                list.push(String::from(rule));
            }
            return;
        }
        nodes = &mut node.children;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::SubjectType;

    #[test]
    fn a_viewer_sees_its_grants_and_the_carve_outs() {
        let p = Policy::load(
            r##"{"celine": {"mqtt": {"acl": {"rules": [
                {"id": "read-all", "subjects": {"groups": ["viewers"]}, "topics": ["celine/#", "u/${username}/#"], "actions": ["subscribe"]},
                {"id": "no-alerts", "subjects": {}, "topics": ["celine/alerts/#"], "actions": ["subscribe"], "effect": "deny"},
                {"id": "no-celine", "subjects": {}, "topics": ["#"], "actions": ["publish"], "effect": "deny"},
                {"id": "pub", "subjects": {}, "topics": ["celine/x"], "actions": ["publish"]}
            ]}}}}"##,
        )
        .unwrap();
        let s = Subject {
            id: "u1".into(),
            kind: SubjectType::User,
            groups: alloc::vec!["viewers".into()],
            scopes: Vec::new(),
        };
        let e = p.effective(&s, Values::default());
        let sub = &e.actions[0];
        assert_eq!(sub.allow.len(), 2);
        assert_eq!(
            sub.allow[0].except,
            alloc::vec![Carve { pattern: "celine/alerts/#".into(), rule: "no-alerts".into(), only: None }]
        );
        assert!(!sub.allow[0].void);
        assert_eq!(sub.allow[1].needs, alloc::vec!["${username}"]);
        assert_eq!(sub.tree.iter().map(|n| n.level.as_str()).collect::<Vec<_>>(), ["celine", "u"]);
        let publish = &e.actions[2];
        assert!(publish.allow[0].void, "{publish:?}");
        let e = p.effective(&s, Values { username: Some(""), clientid: None });
        assert_eq!(e.actions[0].allow.len(), 1, "an unusable username makes that pattern match nothing");
    }
}
