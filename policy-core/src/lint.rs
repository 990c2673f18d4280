//! Lint: a loadable policy can still say something its author did not mean. Warnings for
//! rules that never apply (empty lists), allow rules no subject can use given the roles, allow
//! rules a deny rule fully shadows, repeated patterns or names, and (with a certificates
//! section) allow rules that name ids without saying whose, message conditions that cannot
//! mean what they say (`"qos": []`, `retain` on a rule only for subscribe), subscriptions
//! to a whole namespace for subjects who are not administrators, and limits entries that
//! select nobody or refuse payloads they seem to allow.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::json::{Path, quote};
use crate::limits::{Bound, LimitEntry, RateBound};
use crate::model::{Action, Diagnostic, Permission, Severity};
use crate::pattern::{Level, Placeholder};
use crate::policy::{Policy, Roles};
use crate::rule::{Effect, Rule, ScopePattern, Sel, Subjects};
use crate::topic;

/// Loads and lints a document: the load errors if it does not load, else the warnings.
pub fn lint(text: &str) -> Vec<Diagnostic> {
    match Policy::load(text) {
        Ok(p) => p.lint(),
        Err(errors) => errors,
    }
}

fn rule_path(i: usize) -> Path {
    Path::root().key("celine").key("mqtt").key("acl").key("rules").index(i)
}

struct Out(Vec<Diagnostic>);

impl Out {
    fn warn(&mut self, path: &Path, message: String) {
        self.0.push(Diagnostic { severity: Severity::Warning, path: String::from(path.as_str()), message });
    }
}

impl Policy {
    /// Warnings about a loaded policy, in document order.
    pub fn lint(&self) -> Vec<Diagnostic> {
        let mut out = Out(Vec::new());
        if let Some(roles) = &self.roles {
            empty_permission_lists(roles, &mut out);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let path = rule_path(i);
            empty_lists(rule, &path, &mut out);
            message_conditions(rule, &path, &mut out);
            repeats(rule, &path, &mut out);
            if rule.effect == Effect::Allow {
                client_chosen(rule, &path, &mut out);
                wide_subscriptions(rule, self.roles.as_ref(), &path, &mut out);
                if self.certificates.is_some() {
                    ids_without_types(rule, &path, &mut out);
                }
                if let Some(roles) = &self.roles {
                    unusable_actions(rule, roles, &path, &mut out);
                }
                if let Some(d) = self.rules.iter().find(|d| d.effect == Effect::Deny && shadows(d, rule)) {
                    out.warn(
                        &path,
                        format!(
                            "never allows anything: deny rule {} covers every subject, action and topic this rule allows",
                            quote(&d.name)
                        ),
                    );
                }
            }
        }
        for (i, entry) in self.limits.iter().enumerate() {
            limit_entry(entry, &Path::root().key("celine").key("mqtt").key("limits").index(i), &mut out);
        }
        out.0
    }
}

/// A limits entry with an empty selector list applies to nobody; one whose byte burst is
/// smaller than the payloads it allows refuses those payloads every time.
fn limit_entry(entry: &LimitEntry, path: &Path, out: &mut Out) {
    empty_subject_lists(&entry.subjects, path, "this limits entry applies to nobody", out);
    if let Some(RateBound::At(rate)) = entry.stated.publish_bytes {
        let payload = match entry.stated.max_payload_bytes {
            Some(Bound::At(max)) if max <= rate.burst => None,
            Some(Bound::At(max)) => {
                Some(format!("payloads from {} to {max} bytes (max_payload_bytes)", rate.burst + 1))
            }
            _ => Some(format!("payloads over {} bytes", rate.burst)),
        };
        if let Some(payload) = payload {
            out.warn(
                &path.key("publish").key("burst_bytes"),
                format!(
                    "{payload} can never be published: a publish must fit in burst_bytes {}; raise it or lower max_payload_bytes",
                    rate.burst
                ),
            );
        }
    }
}

/// With certificate clients, a device's id is its certificate's name, chosen by whoever runs
/// the CA: an allow rule that names ids for tokens' subjects also grants a certificate of
/// the same name, unless it says which types it means.
fn ids_without_types(rule: &Rule, path: &Path, out: &mut Out) {
    if matches!(rule.subjects.ids, Some(Sel::List(_))) && rule.subjects.types.is_none() {
        out.warn(
            &path.key("subjects"),
            String::from(
                "names ids without types: a certificate of the same name (a device, see the certificates \
                 section) is granted this too; add \"types\"",
            ),
        );
    }
}

/// An allow rule that lets subjects other than administrators subscribe to a whole
/// service's namespace (`celine/<service>/#`, anything shallower, `#`, or `"*"`): one such
/// subscriber receives every message under it (the seed: watch for unexpected wildcard
/// subscriptions). Administrators are the subjects the rule can only name with a superuser
/// capability (listed groups, or exact scopes, that `roles` makes superusers).
fn wide_subscriptions(rule: &Rule, roles: Option<&Roles>, path: &Path, out: &mut Out) {
    if !rule.has_action(Action::Subscribe) || only_administrators(rule, roles) {
        return;
    }
    let wide = match &rule.topics {
        Sel::Any => Some(String::from("*")),
        Sel::List(ps) => ps
            .iter()
            .find(|p| {
                matches!(p.levels.last(), Some(Level::Hash))
                    && p.levels.iter().filter(|l| matches!(l, Level::Lit(_))).count() <= 2
                    && !p.levels.iter().any(|l| matches!(l, Level::Var(_)))
            })
            .map(|p| String::from(p.as_str())),
    };
    if let Some(pattern) = wide {
        out.warn(
            &path.key("topics"),
            format!(
                "lets subjects who are not administrators subscribe to {}, a whole namespace: one such \
                 subscriber receives every message under it; narrow the pattern, or the subjects to \
                 administrators (a superuser capability in roles)",
                quote(&pattern)
            ),
        );
    }
}

fn only_administrators(rule: &Rule, roles: Option<&Roles>) -> bool {
    let Some(roles) = roles else { return false };
    let superuser = |p: Option<&crate::model::Permissions>| p.is_some_and(|p| p.has(Permission::Superuser));
    let by_groups = matches!(&rule.subjects.groups, Some(Sel::List(gs))
        if !gs.is_empty() && gs.iter().all(|g| superuser(roles.group_permissions.get(g))));
    let by_scopes = matches!(&rule.subjects.scopes, Some(Sel::List(ss))
        if !ss.is_empty() && ss.iter().all(|s| matches!(s, ScopePattern::Exact(e) if superuser(roles.scope_permissions.get(e)))));
    by_groups || by_scopes
}

/// Conditions on the message that cannot mean what they say.
fn message_conditions(rule: &Rule, path: &Path, out: &mut Out) {
    if rule.conditions.qos == Some(0) {
        out.warn(
            &path.key("qos"),
            String::from(match rule.effect {
                Effect::Allow => "empty list covers no message: this rule never applies",
                Effect::Deny => "empty list covers no known QoS: this rule applies only where the QoS is unknown (every go-auth request it covers)",
            }),
        );
    }
    let only_subscribe = match &rule.actions {
        Sel::Any => false,
        Sel::List(actions) => !actions.is_empty() && actions.iter().all(|a| *a == Action::Subscribe),
    };
    if rule.conditions.retain.is_some() && only_subscribe {
        out.warn(
            &path.key("retain"),
            String::from(match rule.effect {
                Effect::Allow => "a subscription has no retain flag: this condition never limits what the rule allows (add \"read\" to decide each delivery by its flag)",
                Effect::Deny => "a subscription has no retain flag: a deny with a retain condition never refuses a subscription (deny \"read\" to refuse such deliveries)",
            }),
        );
    }
}

fn empty_permission_lists(roles: &Roles, out: &mut Out) {
    let base = Path::root().key("celine").key("roles");
    for (field, map) in
        [("group_permissions", &roles.group_permissions), ("scope_permissions", &roles.scope_permissions)]
    {
        for (name, perms) in map {
            if perms.iter().next().is_none() {
                out.warn(&base.key(field).key(name), String::from("empty permission list: grants nothing"));
            }
        }
    }
}

fn is_empty<T>(sel: &Option<Sel<T>>) -> bool {
    matches!(sel, Some(Sel::List(v)) if v.is_empty())
}

fn empty_lists(rule: &Rule, path: &Path, out: &mut Out) {
    let never = "this rule never applies (remove the field to match any subject)";
    empty_subject_lists(&rule.subjects, path, never, out);
    if matches!(&rule.topics, Sel::List(v) if v.is_empty()) {
        out.warn(&path.key("topics"), String::from("empty list: this rule never applies"));
    }
    if matches!(&rule.actions, Sel::List(v) if v.is_empty()) {
        out.warn(&path.key("actions"), String::from("empty list: this rule never applies"));
    }
}

/// Each empty list in a `subjects` (at `path`), which matches no subject: `consequence` says
/// what that means for the rule or entry.
fn empty_subject_lists(s: &Subjects, path: &Path, consequence: &str, out: &mut Out) {
    for (field, empty) in [
        ("types", is_empty(&s.types)),
        ("ids", is_empty(&s.ids)),
        ("groups", is_empty(&s.groups)),
        ("scopes", is_empty(&s.scopes)),
    ] {
        if empty {
            out.warn(
                &path.key("subjects").key(field),
                format!("empty list matches no subject: {consequence}"),
            );
        }
    }
}

/// An allow pattern with `${clientid}`: the client picks its id, so anyone may name itself
/// into whatever the rule grants. (A deny pattern with it only narrows, which is fine.)
fn client_chosen(rule: &Rule, path: &Path, out: &mut Out) {
    if let Sel::List(ps) = &rule.topics {
        for (j, p) in ps.iter().enumerate() {
            if p.levels.contains(&Level::Var(Placeholder::ClientId)) {
                out.warn(
                    &path.key("topics").index(j),
                    String::from(
                        "'${clientid}' is whatever the client chose: any client can take an id and get what \
                         this allows; use '${subject.id}', or '${username}' (only ever a name proven to belong \
                         to the subject)",
                    ),
                );
            }
        }
    }
}

fn repeats(rule: &Rule, path: &Path, out: &mut Out) {
    if let Sel::List(ps) = &rule.topics {
        for (j, p) in ps.iter().enumerate() {
            let sym = p.symbolic();
            let earlier = ps[..j].iter().position(|q| q.as_str() == p.as_str());
            let wider = ps.iter().enumerate().find(|(k, q)| {
                *k != j && q.as_str() != p.as_str() && topic::contains(&q.symbolic()[..], &sym[..])
            });
            if let Some(k) = earlier {
                out.warn(&path.key("topics").index(j), format!("duplicate pattern: same as topics[{k}]"));
            } else if let Some((k, q)) = wider {
                out.warn(
                    &path.key("topics").index(j),
                    format!("redundant pattern: topics[{k}] ({}) already covers it", quote(q.as_str())),
                );
            }
        }
    }
    fn dup_strings(list: &Option<Sel<String>>, path: &Path, out: &mut Out) {
        if let Some(Sel::List(v)) = list {
            for (j, s) in v.iter().enumerate() {
                if let Some(k) = v[..j].iter().position(|t| t == s) {
                    out.warn(&path.index(j), format!("duplicate entry {}: same as [{k}]", quote(s)));
                }
            }
        }
    }
    dup_strings(&rule.subjects.ids, &path.key("subjects").key("ids"), out);
    dup_strings(&rule.subjects.groups, &path.key("subjects").key("groups"), out);
    if let Sel::List(v) = &rule.actions {
        for (j, a) in v.iter().enumerate() {
            if v[..j].contains(a) {
                out.warn(&path.key("actions").index(j), format!("duplicate action {}", quote(a.as_str())));
            }
        }
    }
}

/// An allow rule for an action that the subjects it names cannot have.
fn unusable_actions(rule: &Rule, roles: &Roles, path: &Path, out: &mut Out) {
    let actions: Vec<Action> = Action::ALL.into_iter().filter(|a| rule.has_action(*a)).collect();
    let granted_anywhere = |p: Permission| {
        roles.group_permissions.values().chain(roles.scope_permissions.values()).any(|ps| ps.has(p))
    };
    // The capability sources the rule itself names: its listed groups and the scope keys its
    // listed scope patterns match. `None` when it names neither (any subject may apply).
    let named_groups = match &rule.subjects.groups {
        Some(Sel::List(gs)) if !gs.is_empty() => Some(gs.as_slice()),
        _ => None,
    };
    let named_scopes = match &rule.subjects.scopes {
        Some(Sel::List(ss)) if !ss.is_empty() => Some(ss.as_slice()),
        _ => None,
    };
    let named_grant = |p: Permission| -> Option<bool> {
        if named_groups.is_none() && named_scopes.is_none() {
            return None;
        }
        let by_group = named_groups
            .is_some_and(|gs| gs.iter().any(|g| roles.group_permissions.get(g).is_some_and(|ps| ps.has(p))));
        let by_scope = named_scopes.is_some_and(|ss| {
            roles.scope_permissions.iter().any(|(k, ps)| ps.has(p) && ss.iter().any(|s| s.matches(k)))
        });
        Some(by_group || by_scope)
    };
    let mut nowhere = Vec::new();
    let mut not_named = Vec::new();
    for a in &actions {
        let p = a.permission();
        if !granted_anywhere(p) {
            nowhere.push(a.as_str());
        } else if named_grant(p) == Some(false) {
            not_named.push(a.as_str());
        }
    }
    // With `"actions": "*"` a rule may well mean "whatever they can do": only speak up when
    // none of the actions is usable.
    if rule.actions == Sel::Any && nowhere.len() + not_named.len() < actions.len() {
        return;
    }
    if !nowhere.is_empty() {
        out.warn(
            path,
            format!(
                "no group or scope in roles grants {}, so no subject can use this rule for it",
                nowhere.iter().map(|a| quote(a)).collect::<Vec<_>>().join(", ")
            ),
        );
    }
    if !not_named.is_empty() {
        let mut named = Vec::new();
        if let Some(gs) = named_groups {
            named.push(format!("groups {}", gs.iter().map(|g| quote(g)).collect::<Vec<_>>().join(", ")));
        }
        if let Some(ss) = named_scopes {
            named.push(format!(
                "scopes {}",
                ss.iter().map(|s| quote(&s.text())).collect::<Vec<_>>().join(", ")
            ));
        }
        out.warn(
            path,
            format!(
                "the {} this rule names grant no {} capability: only subjects that get it from another group or scope can use the rule",
                named.join(" and "),
                not_named.iter().map(|a| quote(a)).collect::<Vec<_>>().join(", "),
            ),
        );
    }
}

/// Does deny rule `d` deny everything allow rule `a` would allow?
fn shadows(d: &Rule, a: &Rule) -> bool {
    // A deny with conditions on the message leaves the other messages to the allow.
    d.conditions.is_none()
        && subjects_within(&a.subjects, &d.subjects)
        && Action::ALL.into_iter().all(|x| !a.has_action(x) || d.has_action(x))
        && match (&a.topics, &d.topics) {
            (_, Sel::Any) => true,
            (Sel::Any, Sel::List(_)) => false,
            (Sel::List(aps), Sel::List(dps)) => aps.iter().all(|ap| {
                let sym = ap.symbolic();
                dps.iter().any(|dp| topic::contains(&dp.symbolic()[..], &sym[..]))
            }),
        }
}

/// Every subject `inner` matches is matched by `outer`.
fn subjects_within(inner: &Subjects, outer: &Subjects) -> bool {
    fn field<T>(
        inner: &Option<Sel<T>>,
        outer: &Option<Sel<T>>,
        within: impl Fn(&T, &[T]) -> bool,
        all: impl Fn(&[T]) -> bool,
    ) -> bool {
        match outer {
            None | Some(Sel::Any) => true,
            Some(Sel::List(o)) => match inner {
                Some(Sel::List(i)) => i.iter().all(|x| within(x, o)),
                _ => all(o),
            },
        }
    }
    field(
        &inner.types,
        &outer.types,
        |t, o| o.contains(t),
        |o| crate::model::SubjectType::ALL.iter().all(|t| o.contains(t)),
    ) && field(&inner.ids, &outer.ids, |x, o| o.contains(x), |_| false)
        && field(&inner.groups, &outer.groups, |x, o| o.contains(x), |_| false)
        && field(&inner.scopes, &outer.scopes, |x: &ScopePattern, o| o.iter().any(|p| x.within(p)), |_| false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(rules: &str, roles: &str) -> Vec<String> {
        let doc = format!(r#"{{"celine":{{"mqtt":{{"acl":{{"rules":[{rules}]}}}}{roles}}}}}"#);
        lint(&doc).iter().map(|d| format!("{}: {}", d.path, d.message)).collect()
    }

    const ROLES: &str = r#","roles":{"group_permissions":{"viewers":["subscribe","read"],"admins":["publish"]},"scope_permissions":{"mqtt.write":["publish"]}}"#;

    #[test]
    fn with_certificates_ids_without_types_are_flagged() {
        let doc = |section: &str| {
            alloc::format!(
                r#"{{"celine":{{"mqtt":{{"acl":{{"rules":[{{"subjects":{{"ids":["svc-a"]}},"topics":["a"],"actions":"*"}},
                {{"subjects":{{"ids":["svc-b"],"types":["service"]}},"topics":["b"],"actions":"*"}}]}}{section}}}}}}}"#
            )
        };
        let w: Vec<String> = lint(&doc(r#","certificates":[{"names":["*"],"groups":[]}]"#))
            .iter()
            .map(|d| d.path.clone())
            .collect();
        assert_eq!(w, ["celine.mqtt.acl.rules[0].subjects"]);
        assert!(lint(&doc("")).is_empty(), "without certificate clients an id is a token's subject's");
    }

    #[test]
    fn empty_lists_are_flagged() {
        let w = warnings(r#"{"subjects":{"groups":[]},"topics":[],"actions":"*"}"#, "");
        assert!(
            w[0].starts_with("celine.mqtt.acl.rules[0].subjects.groups: empty list matches no subject"),
            "{w:?}"
        );
        assert!(w[1].starts_with("celine.mqtt.acl.rules[0].topics: empty list"), "{w:?}");
    }

    #[test]
    fn a_publish_rule_for_viewers_is_flagged() {
        let w =
            warnings(r#"{"subjects":{"groups":["viewers"]},"topics":["a/#"],"actions":["publish"]}"#, ROLES);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("the groups 'viewers' this rule names grant no 'publish' capability"), "{w:?}");
        let w = warnings(
            r#"{"subjects":{"groups":["viewers"],"scopes":["mqtt.*"]},"topics":["a/#"],"actions":["publish"]}"#,
            ROLES,
        );
        assert!(w.is_empty(), "a listed scope grants publish: {w:?}");
        let w = warnings(
            r#"{"topics":["a/#"],"actions":["publish","superuser_is_not_an_action_but_this_fails_to_load"]}"#,
            ROLES,
        );
        assert!(w[0].contains("unknown action"), "{w:?}");
    }

    #[test]
    fn allow_rules_keyed_by_client_id_are_flagged() {
        let w = warnings(r#"{"topics":["devices/${clientid}/#"],"actions":["publish"]}"#, "");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].starts_with(
                "celine.mqtt.acl.rules[0].topics[0]: '${clientid}' is whatever the client chose"
            )
        );
        assert!(w[0].contains("use '${subject.id}'"), "{w:?}");
        let deny =
            warnings(r#"{"topics":["devices/${clientid}/#"],"actions":["publish"],"effect":"deny"}"#, "");
        assert!(deny.is_empty(), "a deny rule with it only narrows: {deny:?}");
        let ok = warnings(r#"{"topics":["users/${subject.id}/#","u/${username}"],"actions":["read"]}"#, "");
        assert!(ok.is_empty(), "{ok:?}");
    }

    #[test]
    fn nobody_has_the_capability() {
        let roles = r#","roles":{"group_permissions":{"viewers":["read"]}}"#;
        let w = warnings(r#"{"topics":["a/#"],"actions":["publish"]}"#, roles);
        assert!(w[0].contains("no group or scope in roles grants 'publish'"), "{w:?}");
    }

    #[test]
    fn shadowed_allow_rules_are_flagged() {
        let w = warnings(
            r#"{"subjects":{"groups":["viewers"],"types":["user"]},"topics":["a/b/+"],"actions":["read"]},
               {"id":"no-a","subjects":{"groups":["viewers","admins"]},"topics":["a/#"],"actions":["read","subscribe"],"effect":"deny"}"#,
            "",
        );
        assert_eq!(
            w,
            [
                "celine.mqtt.acl.rules[0]: never allows anything: deny rule 'no-a' covers every subject, action and topic this rule allows"
            ]
        );
        let w = warnings(
            r#"{"topics":["a/b/+"],"actions":["read"]},
               {"subjects":{"groups":["viewers"]},"topics":["a/#"],"actions":["read"],"effect":"deny"}"#,
            "",
        );
        assert!(w.is_empty(), "the deny binds only viewers: {w:?}");
    }

    #[test]
    fn whole_namespace_subscriptions_for_non_administrators_are_flagged() {
        let roles = r##","roles":{"group_permissions":{"admins":["subscribe","superuser"],"viewers":["subscribe","read"]}}"##;
        let flagged = |rule: &str| {
            let w = warnings(rule, roles);
            w.iter().any(|w| w.contains("a whole namespace"))
        };
        assert!(flagged(
            r##"{"subjects":{"groups":["viewers"]},"topics":["celine/digital-twin/#"],"actions":["subscribe"]}"##
        ));
        assert!(flagged(r##"{"subjects":{"groups":["viewers"]},"topics":["#"],"actions":"*"}"##));
        assert!(flagged(
            r##"{"subjects":{"groups":["viewers","admins"]},"topics":["+/#"],"actions":["subscribe"]}"##
        ));
        assert!(flagged(r##"{"topics":"*","actions":["subscribe"]}"##));
        assert!(flagged(
            r##"{"subjects":{"groups":["viewers"]},"topics":["celine/+/+/#"],"actions":["subscribe"]}"##
        ));
        assert!(
            !flagged(r##"{"subjects":{"groups":["admins"]},"topics":["#"],"actions":"*"}"##),
            "administrators"
        );
        assert!(!flagged(
            r##"{"subjects":{"groups":["viewers"]},"topics":["celine/telemetry/+/+/readings"],"actions":["subscribe"]}"##
        ));
        assert!(!flagged(
            r##"{"subjects":{"groups":["viewers"]},"topics":["celine/digital-twin/events/#"],"actions":["subscribe"]}"##
        ));
        assert!(
            !flagged(
                r##"{"subjects":{"types":["user"]},"topics":["users/${subject.id}/#"],"actions":["subscribe"]}"##
            ),
            "their own"
        );
        assert!(
            !flagged(r##"{"subjects":{"groups":["viewers"]},"topics":["#"],"actions":["read"]}"##),
            "no subscription"
        );
        assert!(!flagged(
            r##"{"subjects":{"groups":["viewers"]},"topics":["#"],"actions":["subscribe"],"effect":"deny"}"##
        ));
    }

    #[test]
    fn message_conditions_that_cannot_bind_are_flagged() {
        let w = warnings(r#"{"topics":["a/b"],"actions":["publish"],"qos":[]}"#, "");
        assert!(w[0].starts_with("celine.mqtt.acl.rules[0].qos: empty list covers no message"), "{w:?}");
        let w = warnings(r#"{"topics":["a/b"],"actions":["subscribe"],"retain":true,"effect":"deny"}"#, "");
        assert!(w[0].contains("never refuses a subscription"), "{w:?}");
        let w = warnings(r#"{"topics":["a/b"],"actions":["subscribe","read"],"retain":true}"#, "");
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn repeated_patterns_are_flagged() {
        let w = warnings(r#"{"topics":["a/#","a/#","a/b"],"actions":["read"]}"#, "");
        assert_eq!(
            w,
            [
                "celine.mqtt.acl.rules[0].topics[1]: duplicate pattern: same as topics[0]",
                "celine.mqtt.acl.rules[0].topics[2]: redundant pattern: topics[0] ('a/#') already covers it",
            ]
        );
    }

    #[test]
    fn limits_that_select_nobody_or_refuse_their_own_payloads_are_flagged() {
        let doc = r#"{"celine": {"mqtt": {"acl": {"rules": []}, "limits": [
            {"subjects": {"groups": []}, "max_subscriptions": 1},
            {"publish": {"bytes_per_second": 100, "burst_bytes": 200}, "max_payload_bytes": 1000},
            {"publish": {"bytes_per_second": 100}},
            {"publish": {"bytes_per_second": 100, "burst_bytes": 1000}, "max_payload_bytes": 1000}]}}}"#;
        let warnings = lint(doc);
        let at = |path: &str| {
            warnings.iter().filter(|w| w.path == path).map(|w| w.message.clone()).collect::<Vec<_>>()
        };
        assert!(at("celine.mqtt.limits[0].subjects.groups")[0].contains("applies to nobody"), "{warnings:?}");
        assert!(
            at("celine.mqtt.limits[1].publish.burst_bytes")[0].contains("payloads from 201 to 1000 bytes"),
            "{warnings:?}"
        );
        assert!(
            at("celine.mqtt.limits[2].publish.burst_bytes")[0].contains("payloads over 100 bytes"),
            "{warnings:?}"
        );
        assert!(at("celine.mqtt.limits[3].publish.burst_bytes").is_empty(), "{warnings:?}");
    }
}
