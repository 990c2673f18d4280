//! The strict loader: policy document text to [`Policy`], or every problem with its JSON path.
//!
//! Strict on purpose (semantics.md §1): an unknown field, a duplicate key, an unknown action,
//! permission or subject type, an invalid topic pattern, a duplicate `id`, a missing required
//! field or a wrong JSON type is an error. A typo must never widen access.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::certificates::{CertificateEntry, Certificates, NamePattern};
use crate::invariant::Invariant;
use crate::json::{Json, Path, quote};
use crate::limits::{Bound, LimitEntry, Rate, RateBound, Stated};
use crate::model::{Action, Diagnostic, Permission, Permissions, Severity, SubjectType};
use crate::pattern::Pattern;
use crate::policy::{Policy, Roles};
use crate::rule::{Conditions, Effect, Rule, ScopePattern, Sel, Subjects};

impl Policy {
    /// Loads a policy document. On failure, returns every error found, each naming its path.
    pub fn load(text: &str) -> Result<Policy, Vec<Diagnostic>> {
        let json = Json::parse(text).map_err(|e| {
            alloc::vec![Diagnostic { severity: Severity::Error, path: String::new(), message: e.0 }]
        })?;
        Policy::from_json(&json)
    }

    /// Loads an already parsed document.
    pub fn from_json(doc: &Json) -> Result<Policy, Vec<Diagnostic>> {
        let mut l = Loader::default();
        let parsed = l.document(doc);
        match parsed {
            Some(Parts { rules, roles, certificates, limits, invariants }) if l.errors.is_empty() => {
                Ok(Policy::new(rules, roles, certificates, limits, invariants))
            }
            _ => Err(l.errors),
        }
    }
}

/// What a document holds, once loaded.
struct Parts {
    rules: Vec<Rule>,
    roles: Option<Roles>,
    certificates: Option<Certificates>,
    limits: Vec<LimitEntry>,
    invariants: Vec<Invariant>,
}

#[derive(Default)]
pub(crate) struct Loader {
    pub(crate) errors: Vec<Diagnostic>,
}

/// An object's entries after the unknown-field and duplicate-key checks.
pub(crate) struct Fields<'a> {
    entries: &'a [(String, Json)],
}

impl<'a> Fields<'a> {
    pub(crate) fn get(&self, key: &str) -> Option<&'a Json> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// Levenshtein distance, for "did you mean" on misspelt field names.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = alloc::vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The known name a misspelt one most likely meant (at most two edits away), for "did you
/// mean" hints wherever names are typed: policy fields, plugin options.
pub fn closest<'a>(word: &str, known: &[&'a str]) -> Option<&'a str> {
    known.iter().filter(|c| distance(word, c) <= 2).min_by_key(|c| distance(word, c)).copied()
}

/// The subject types a document may name.
pub(crate) const SUBJECT_TYPES: [&str; 3] = ["user", "service", "device"];

pub(crate) fn one_of(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| quote(o)).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.join(""),
    }
}

impl Loader {
    pub(crate) fn error(&mut self, path: &Path, message: String) {
        self.errors.push(Diagnostic { severity: Severity::Error, path: path.as_str().to_string(), message });
    }

    fn wrong_type(&mut self, path: &Path, expected: &str, found: &Json) {
        self.error(path, format!("expected {expected}, found {}", found.kind()));
    }

    /// An object whose keys are all in `known`, each at most once. Unknown or repeated keys
    /// are reported (and the object is still returned, so later fields get checked too).
    pub(crate) fn object<'a>(&mut self, v: &'a Json, path: &Path, known: &[&str]) -> Option<Fields<'a>> {
        let Json::Object(entries) = v else {
            self.wrong_type(path, "an object", v);
            return None;
        };
        self.no_duplicate_keys(entries, path);
        for (k, _) in entries {
            if !known.contains(&k.as_str()) {
                let hint =
                    closest(k, known).map(|c| format!("; did you mean {}?", quote(c))).unwrap_or_default();
                self.error(
                    &path.key(k),
                    format!("unknown field {} (expected {}){hint}", quote(k), one_of(known)),
                );
            }
        }
        Some(Fields { entries })
    }

    fn no_duplicate_keys(&mut self, entries: &[(String, Json)], path: &Path) {
        for (i, (k, _)) in entries.iter().enumerate() {
            if entries[..i].iter().any(|(prev, _)| prev == k) {
                self.error(&path.key(k), format!("duplicate key {}: each key may appear once", quote(k)));
            }
        }
    }

    /// A map with free-form keys (group and scope names).
    fn map<'a>(&mut self, v: &'a Json, path: &Path) -> &'a [(String, Json)] {
        match v {
            Json::Object(entries) => {
                self.no_duplicate_keys(entries, path);
                entries
            }
            _ => {
                self.wrong_type(path, "an object", v);
                &[]
            }
        }
    }

    pub(crate) fn string<'a>(&mut self, v: &'a Json, path: &Path) -> Option<&'a str> {
        match v {
            Json::String(s) => Some(s),
            _ => {
                self.wrong_type(path, "a string", v);
                None
            }
        }
    }

    pub(crate) fn list<'a>(&mut self, v: &'a Json, path: &Path) -> Option<&'a [Json]> {
        match v {
            Json::Array(items) => Some(items),
            _ => {
                self.wrong_type(path, "a list", v);
                None
            }
        }
    }

    /// `"*"` or a list of items each parsed by `item` (which reports its own errors).
    fn selector<T>(
        &mut self,
        v: &Json,
        path: &Path,
        mut item: impl FnMut(&mut Loader, &str, &Path) -> Option<T>,
    ) -> Option<Sel<T>> {
        match v {
            Json::String(s) if s == "*" => Some(Sel::Any),
            Json::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, it) in items.iter().enumerate() {
                    let p = path.index(i);
                    match self.string(it, &p).and_then(|s| item(self, s, &p)) {
                        Some(x) => out.push(x),
                        None => ok = false,
                    }
                }
                ok.then_some(Sel::List(out))
            }
            _ => {
                self.wrong_type(path, "a list of strings or \"*\"", v);
                None
            }
        }
    }

    fn document(&mut self, doc: &Json) -> Option<Parts> {
        let root = Path::root();
        let top = self.object(doc, &root, &["celine"])?;
        let celine_path = root.key("celine");
        let Some(celine) = top.get("celine") else {
            self.error(&root, "missing required field 'celine'".to_string());
            return None;
        };
        let celine = self.object(celine, &celine_path, &["mqtt", "roles"])?;
        let roles = celine.get("roles").map(|r| self.roles(r, &celine_path.key("roles")));

        let mqtt_path = celine_path.key("mqtt");
        let Some(mqtt) = celine.get("mqtt") else {
            self.error(&celine_path, "missing required field 'mqtt'".to_string());
            return None;
        };
        let mqtt = self.object(mqtt, &mqtt_path, &["acl", "certificates", "limits", "invariants"])?;
        let certificates =
            mqtt.get("certificates").map(|c| self.certificates(c, &mqtt_path.key("certificates")));
        let limits = match mqtt.get("limits") {
            Some(l) => self.limits(l, &mqtt_path.key("limits")),
            None => Vec::new(),
        };
        let invariants = match mqtt.get("invariants") {
            Some(i) => self.invariants(i, &mqtt_path.key("invariants")),
            None => Vec::new(),
        };
        let acl_path = mqtt_path.key("acl");
        let Some(acl) = mqtt.get("acl") else {
            self.error(&mqtt_path, "missing required field 'acl'".to_string());
            return None;
        };
        let acl = self.object(acl, &acl_path, &["rules"])?;
        let rules_path = acl_path.key("rules");
        let Some(rules) = acl.get("rules") else {
            self.error(&acl_path, "missing required field 'rules'".to_string());
            return None;
        };
        let rules = self.list(rules, &rules_path)?;

        let mut out = Vec::with_capacity(rules.len());
        for (i, r) in rules.iter().enumerate() {
            if let Some(rule) = self.rule(r, i, &rules_path.index(i)) {
                out.push(rule);
            }
        }
        self.unique_ids(rules, &rules_path, "rules");
        Some(Parts {
            rules: out,
            roles: roles.flatten(),
            certificates: certificates.flatten(),
            limits,
            invariants,
        })
    }

    /// No two of `items` (the entries of the list `what`) share an `id`.
    pub(crate) fn unique_ids(&mut self, items: &[Json], list_path: &Path, what: &str) {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, r) in items.iter().enumerate() {
            if let Some(id) = r.get("id").and_then(Json::as_str) {
                if let Some(first) = seen.get(id) {
                    self.error(
                        &list_path.index(i).key("id"),
                        format!("duplicate id {}: {what}[{first}] already uses it", quote(id)),
                    );
                } else {
                    seen.insert(id, i);
                }
            }
        }
    }

    fn roles(&mut self, v: &Json, path: &Path) -> Option<Roles> {
        let f = self.object(v, path, &["group_permissions", "scope_permissions"])?;
        let mut roles = Roles::default();
        for (field, target) in [
            ("group_permissions", &mut roles.group_permissions),
            ("scope_permissions", &mut roles.scope_permissions),
        ] {
            let Some(m) = f.get(field) else { continue };
            let mpath = path.key(field);
            for (name, perms) in self.map(m, &mpath) {
                let ppath = mpath.key(name);
                let Some(items) = self.list(perms, &ppath) else { continue };
                let mut set = Permissions::default();
                for (i, p) in items.iter().enumerate() {
                    let ip = ppath.index(i);
                    let Some(s) = self.string(p, &ip) else { continue };
                    match Permission::parse(s) {
                        Some(p) => set.add(p),
                        None => self.error(
                            &ip,
                            format!(
                                "unknown permission {} (expected {})",
                                quote(s),
                                one_of(&["subscribe", "read", "publish", "superuser"])
                            ),
                        ),
                    }
                }
                target.insert(name.clone(), set);
            }
        }
        Some(roles)
    }

    fn rule(&mut self, v: &Json, index: usize, path: &Path) -> Option<Rule> {
        const FIELDS: [&str; 8] =
            ["id", "description", "subjects", "topics", "actions", "effect", "qos", "retain"];
        let f = self.object(v, path, &FIELDS)?;
        let before = self.errors.len();

        let (id, description, subjects) = self.entry_head(&f, path);
        let (topics, actions) = self.topics_and_actions(&f, path);
        let effect = match f.get("effect") {
            None => Some(Effect::Allow),
            Some(e) => match self.string(e, &path.key("effect")) {
                Some("allow") => Some(Effect::Allow),
                Some("deny") => Some(Effect::Deny),
                Some(other) => {
                    self.error(
                        &path.key("effect"),
                        format!("unknown effect {} (expected 'allow' or 'deny')", quote(other)),
                    );
                    None
                }
                None => None,
            },
        };
        let qos = f.get("qos").map(|q| self.qos_levels(q, &path.key("qos")));
        let retain = f.get("retain").map(|r| match r {
            Json::Bool(b) => Some(*b),
            other => {
                self.wrong_type(&path.key("retain"), "true or false", other);
                None
            }
        });
        if self.errors.len() != before {
            return None;
        }
        let conditions = Conditions { qos: qos.flatten(), retain: retain.flatten() };
        let name = id.clone().unwrap_or_else(|| format!("rules[{index}]"));
        Some(Rule {
            id,
            description,
            subjects: subjects?,
            topics: topics?,
            actions: actions?,
            effect: effect?,
            conditions,
            name,
        })
    }

    /// The required `topics` and `actions` of a rule or an invariant (`None`: reported).
    pub(crate) fn topics_and_actions(
        &mut self,
        f: &Fields<'_>,
        path: &Path,
    ) -> (Option<Sel<Pattern>>, Option<Sel<Action>>) {
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
        (topics, actions)
    }

    /// `actions`: `"*"` or a list of `subscribe`, `read`, `publish`.
    pub(crate) fn actions(&mut self, v: &Json, path: &Path) -> Option<Sel<Action>> {
        self.selector(v, path, |l, s, p| {
            let a = Action::parse(s);
            if a.is_none() {
                l.error(
                    p,
                    format!(
                        "unknown action {} (expected {})",
                        quote(s),
                        one_of(&["subscribe", "read", "publish"])
                    ),
                );
            }
            a
        })
    }

    /// What a rule, a limits entry and an invariant start with: the optional `id` (not empty),
    /// `description` and `subjects` (absent: every subject; `None`: reported errors).
    pub(crate) fn entry_head(
        &mut self,
        f: &Fields<'_>,
        path: &Path,
    ) -> (Option<String>, Option<String>, Option<Subjects>) {
        let id = f.get("id").and_then(|v| {
            let s = self.string(v, &path.key("id"))?;
            if s.is_empty() {
                self.error(&path.key("id"), "an id must not be empty".to_string());
            }
            Some(s.to_string())
        });
        let description =
            f.get("description").and_then(|v| self.string(v, &path.key("description")).map(str::to_string));
        let subjects = match f.get("subjects") {
            Some(s) => self.subjects(s, &path.key("subjects")),
            None => Some(Subjects::default()),
        };
        (id, description, subjects)
    }

    /// The `limits` section: a list of entries, each selecting subjects like a rule does and
    /// stating limits (semantics.md §6).
    fn limits(&mut self, v: &Json, path: &Path) -> Vec<LimitEntry> {
        self.entries(v, path, "limits", Loader::limit_entry)
    }

    /// A section that is a list of entries, each parsed by `entry` (given its index, for its
    /// `what[N]` name), their `id`s unique; entries with errors are left out (and reported).
    pub(crate) fn entries<T>(
        &mut self,
        v: &Json,
        path: &Path,
        what: &str,
        entry: fn(&mut Loader, &Json, usize, &Path) -> Option<T>,
    ) -> Vec<T> {
        let Some(items) = self.list(v, path) else { return Vec::new() };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if let Some(e) = entry(self, item, i, &path.index(i)) {
                out.push(e);
            }
        }
        self.unique_ids(items, path, what);
        out
    }

    fn limit_entry(&mut self, v: &Json, index: usize, path: &Path) -> Option<LimitEntry> {
        const FIELDS: [&str; 7] =
            ["id", "description", "subjects", "max_subscriptions", "max_payload_bytes", "publish", "retain"];
        let f = self.object(v, path, &FIELDS)?;
        let before = self.errors.len();
        let (id, description, subjects) = self.entry_head(&f, path);
        let mut stated = Stated {
            max_subscriptions: f
                .get("max_subscriptions")
                .and_then(|b| self.bound(b, &path.key("max_subscriptions"), 0)),
            max_payload_bytes: f
                .get("max_payload_bytes")
                .and_then(|b| self.bound(b, &path.key("max_payload_bytes"), 0)),
            retain: f.get("retain").and_then(|r| match r {
                Json::Bool(b) => Some(*b),
                other => {
                    self.wrong_type(
                        &path.key("retain"),
                        "true (retained publishes allowed) or false (refused)",
                        other,
                    );
                    None
                }
            }),
            ..Stated::default()
        };
        if let Some(p) = f.get("publish") {
            (stated.publish_messages, stated.publish_bytes) = self.publish_rates(p, &path.key("publish"));
        }
        if stated == Stated::default() && self.errors.len() == before {
            self.error(
                path,
                format!(
                    "a limits entry must state at least one limit ({})",
                    one_of(&["max_subscriptions", "max_payload_bytes", "publish", "retain"])
                ),
            );
        }
        if self.errors.len() != before {
            return None;
        }
        let name = id.clone().unwrap_or_else(|| format!("limits[{index}]"));
        Some(LimitEntry { id, description, subjects: subjects?, stated, name })
    }

    /// A limit's value: a whole number from `least` up, or `"unlimited"`.
    fn bound(&mut self, v: &Json, path: &Path, least: u32) -> Option<Bound> {
        match v {
            Json::String(s) if s == "unlimited" => Some(Bound::Unlimited),
            // In range and whole (`fract` needs the standard library).
            Json::Number(n)
                if *n >= f64::from(least) && *n <= f64::from(u32::MAX) && f64::from(*n as u32) == *n =>
            {
                Some(Bound::At(*n as u32))
            }
            Json::Number(n) => {
                self.error(path, format!("{n} is not a whole number from {least} to {}", u32::MAX));
                None
            }
            other => {
                self.wrong_type(path, "a whole number or \"unlimited\"", other);
                None
            }
        }
    }

    /// `publish`: a message rate and a byte rate, each with an optional burst (default: one
    /// second's worth).
    fn publish_rates(&mut self, v: &Json, path: &Path) -> (Option<RateBound>, Option<RateBound>) {
        const FIELDS: [&str; 4] =
            ["messages_per_second", "burst_messages", "bytes_per_second", "burst_bytes"];
        let Some(f) = self.object(v, path, &FIELDS) else { return (None, None) };
        let rate = |l: &mut Loader, rate_field: &str, burst_field: &str| -> Option<RateBound> {
            let Some(r) = f.get(rate_field) else {
                if f.get(burst_field).is_some() {
                    l.error(
                        &path.key(burst_field),
                        format!("{} needs {} beside it", quote(burst_field), quote(rate_field)),
                    );
                }
                return None;
            };
            let per_second = l.bound(r, &path.key(rate_field), 1)?;
            let burst = match f.get(burst_field) {
                Some(b) => l.bound(b, &path.key(burst_field), 1)?,
                None => per_second,
            };
            match (per_second, burst) {
                (Bound::At(per_second), Bound::At(burst)) => Some(RateBound::At(Rate { per_second, burst })),
                (Bound::Unlimited, Bound::Unlimited) => Some(RateBound::Unlimited),
                _ => {
                    l.error(
                        &path.key(burst_field),
                        format!(
                            "{} and {} are both numbers or both \"unlimited\"",
                            quote(rate_field),
                            quote(burst_field)
                        ),
                    );
                    None
                }
            }
        };
        let messages = rate(self, "messages_per_second", "burst_messages");
        let bytes = rate(self, "bytes_per_second", "burst_bytes");
        if f.get("messages_per_second").is_none() && f.get("bytes_per_second").is_none() {
            self.error(
                path,
                format!(
                    "{} states no rate (expected {})",
                    quote("publish"),
                    one_of(&["messages_per_second", "bytes_per_second"])
                ),
            );
        }
        (messages, bytes)
    }

    /// A rule's `qos`: a list of the QoS levels 0, 1 and 2, each at most once, as bits.
    fn qos_levels(&mut self, v: &Json, path: &Path) -> Option<u8> {
        let items = self.list(v, path)?;
        let mut bits = 0u8;
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            let level = match item {
                Json::Number(n) if *n == 0.0 || *n == 1.0 || *n == 2.0 => *n as u8,
                Json::Number(n) => {
                    self.error(&p, format!("unknown QoS level {n} (expected 0, 1 or 2)"));
                    continue;
                }
                other => {
                    self.wrong_type(&p, "a QoS level (0, 1 or 2)", other);
                    continue;
                }
            };
            if bits & (1 << level) != 0 {
                self.error(&p, format!("QoS {level} is listed twice"));
            }
            bits |= 1 << level;
        }
        Some(bits)
    }

    pub(crate) fn subjects(&mut self, v: &Json, path: &Path) -> Option<Subjects> {
        let f = self.object(v, path, &["types", "ids", "groups", "scopes"])?;
        let mut out = Subjects::default();
        let before = self.errors.len();
        if let Some(t) = f.get("types") {
            out.types = self.selector(t, &path.key("types"), |l, s, p| {
                let t = SubjectType::parse(s);
                if t.is_none() {
                    l.error(
                        p,
                        format!("unknown subject type {} (expected {})", quote(s), one_of(&SUBJECT_TYPES)),
                    );
                }
                t
            });
        }
        if let Some(ids) = f.get("ids") {
            out.ids = self.selector(ids, &path.key("ids"), |_, s, _| Some(s.to_string()));
        }
        if let Some(g) = f.get("groups") {
            out.groups = self.selector(g, &path.key("groups"), |_, s, _| Some(s.to_string()));
        }
        if let Some(s) = f.get("scopes") {
            out.scopes = self.selector(s, &path.key("scopes"), |_, s, _| Some(ScopePattern::parse(s)));
        }
        (self.errors.len() == before).then_some(out)
    }

    pub(crate) fn topics(&mut self, v: &Json, path: &Path) -> Option<Sel<Pattern>> {
        if let Json::String(s) = v
            && s != "*"
        {
            self.error(
                path,
                format!(
                    "expected a list of topic patterns or \"*\", found the string {}; write [{}]",
                    quote(s),
                    quote(s).replace('\'', "\"")
                ),
            );
            return None;
        }
        self.selector(v, path, |l, s, p| match Pattern::parse(s) {
            Ok(pat) => Some(pat),
            Err(e) => {
                l.error(p, e.0);
                None
            }
        })
    }
}

/// The `certificates` section (its meaning: `certificates.rs`).
impl Loader {
    pub(crate) fn certificates(&mut self, v: &Json, path: &Path) -> Option<Certificates> {
        let entries = self.list(v, path)?;
        let before = self.errors.len();
        let mut out = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let epath = path.index(i);
            let Some(f) = self.object(e, &epath, &["names", "groups"]) else { continue };
            let names = match f.get("names") {
                Some(n) => self.name_patterns(n, &epath.key("names")),
                None => {
                    self.error(
                        &epath,
                        "missing required field 'names' (a list of certificate name patterns)".into(),
                    );
                    None
                }
            };
            let groups = match f.get("groups") {
                Some(g) => self.strings(g, &epath.key("groups")),
                None => {
                    self.error(&epath, "missing required field 'groups' (a list of group names)".into());
                    None
                }
            };
            if let (Some(names), Some(groups)) = (names, groups) {
                out.push(CertificateEntry { names, groups });
            }
        }
        (self.errors.len() == before).then_some(Certificates { entries: out })
    }

    fn name_patterns(&mut self, v: &Json, path: &Path) -> Option<Vec<NamePattern>> {
        let items = self.list(v, path)?;
        let before = self.errors.len();
        let mut out = Vec::with_capacity(items.len());
        for (i, it) in items.iter().enumerate() {
            let p = path.index(i);
            let Some(s) = self.string(it, &p) else { continue };
            let (stem, prefix) = match s.strip_suffix('*') {
                Some(stem) => (stem, true),
                None => (s, false),
            };
            if stem.contains('*') {
                self.error(&p, format!("{}: '*' may only end a certificate name pattern", quote(s)));
            } else if s.is_empty() {
                self.error(&p, "a certificate name pattern must not be empty".into());
            } else {
                out.push(if prefix {
                    NamePattern::Prefix(stem.into())
                } else {
                    NamePattern::Exact(stem.into())
                });
            }
        }
        (self.errors.len() == before).then_some(out)
    }

    fn strings(&mut self, v: &Json, path: &Path) -> Option<Vec<String>> {
        let items = self.list(v, path)?;
        let before = self.errors.len();
        let out: Vec<String> = items
            .iter()
            .enumerate()
            .filter_map(|(i, it)| self.string(it, &path.index(i)).map(str::to_string))
            .collect();
        (self.errors.len() == before).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(doc: &str) -> Vec<String> {
        Policy::load(doc).unwrap_err().iter().map(|d| alloc::format!("{}: {}", d.path, d.message)).collect()
    }

    #[test]
    fn a_typo_names_its_path_and_the_intended_field() {
        let e = errors(
            r##"{"celine":{"mqtt":{"acl":{"rules":[{"subject":{"groups":["viewers"]},"topics":["#"],"actions":"*"}]}}}}"##,
        );
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("celine.mqtt.acl.rules[0].subject: unknown field 'subject'"), "{e:?}");
        assert!(e[0].contains("did you mean 'subjects'?"), "{e:?}");
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let e = errors(
            r##"{"celine":{"mqtt":{"acl":{"rules":[
            {"topics":["a+"],"actions":["write"]},
            {"topics":["#"],"actions":"*","efect":"deny"}]}}}}"##,
        );
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(e[0].starts_with("celine.mqtt.acl.rules[0].topics[0]: '+' must occupy a whole topic level"));
        assert!(e[1].starts_with("celine.mqtt.acl.rules[0].actions[0]: unknown action 'write'"));
        assert!(e[2].starts_with("celine.mqtt.acl.rules[1].efect: unknown field"));
    }

    #[test]
    fn duplicate_keys_and_ids_are_refused() {
        let e = errors(
            r##"{"celine":{"mqtt":{"acl":{"rules":[
            {"id":"a","topics":["#"],"actions":"*","effect":"deny","effect":"allow"},
            {"id":"a","topics":["#"],"actions":"*"}]}}}}"##,
        );
        assert!(e.iter().any(|m| m.starts_with("celine.mqtt.acl.rules[0].effect: duplicate key")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("celine.mqtt.acl.rules[1].id: duplicate id 'a'")), "{e:?}");
    }

    #[test]
    fn wrong_types_say_what_was_expected() {
        let e = errors(r#"{"celine":{"mqtt":{"acl":{"rules":{}}}}}"#);
        assert_eq!(e, ["celine.mqtt.acl.rules: expected a list, found an object"]);
        let e = errors(r##"{"celine":{"mqtt":{"acl":{"rules":[{"topics":"#","actions":"*"}]}}}}"##);
        assert!(e[0].contains("write [\"#\"]"), "{e:?}");
        let e = errors(
            r#"{"celine":{"mqtt":{"acl":{"rules":[]}},"roles":{"group_permissions":{"my group":["write"]}}}}"#,
        );
        assert_eq!(
            e,
            [
                "celine.roles.group_permissions[\"my group\"][0]: unknown permission 'write' (expected 'subscribe', 'read', 'publish' or 'superuser')"
            ]
        );
    }

    #[test]
    fn star_is_special_only_as_the_whole_value() {
        let p = Policy::load(r##"{"celine":{"mqtt":{"acl":{"rules":[{"subjects":{"groups":["*"]},"topics":["#"],"actions":"*"}]}}}}"##).unwrap();
        assert_eq!(p.rules()[0].subjects.groups, Some(Sel::List(alloc::vec!["*".to_string()])));
    }
}
