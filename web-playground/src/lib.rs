//! The rule playground's engine: `policy-core`, unchanged, behind a small wasm-bindgen API
//! for the page in `www/`.
//!
//! Every call takes and returns JSON text, so the page and the native tests see exactly the
//! same values. Nothing here decides anything: loading, checking, explaining, claims to
//! subject, lint and test cases are `policy-core`'s; this crate adds what an editor needs
//! around them (where in the text a path is, in UTF-16 units as the browser counts) and the
//! local, unverified decoding of a pasted token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use policy_core::locate::{self, Span};
use policy_core::{Ask, Decision, Diagnostic, Policy, Severity};
use serde::Serialize;
use serde_json::{Value, json};
use wasm_bindgen::prelude::wasm_bindgen;

/// The version of the core this playground runs.
#[wasm_bindgen]
pub fn version() -> String {
    policy_core::VERSION.to_string()
}

/// Where something is in the editor's text: UTF-16 offsets (what `setSelectionRange` takes)
/// and the 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Place {
    pub from: usize,
    pub to: usize,
    pub line: usize,
    pub column: usize,
}

fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}

fn place(text: &str, span: Span) -> Place {
    let from = utf16_len(&text[..span.start]);
    Place { from, to: from + utf16_len(&text[span.start..span.end]), line: span.line, column: span.column }
}

fn place_of_path(text: &str, path: &str) -> Option<Place> {
    locate::locate(text, path).map(|s| place(text, s))
}

#[derive(Serialize)]
struct Located {
    severity: Severity,
    path: String,
    message: String,
    place: Option<Place>,
}

/// serde_json ends its messages with "at line L column C".
fn syntax_error_position(message: &str) -> Option<(usize, usize)> {
    let tail = &message[message.rfind(" at line ")? + " at line ".len()..];
    let (line, column) = tail.split_once(" column ")?;
    Some((line.trim().parse().ok()?, column.trim().parse().ok()?))
}

/// Puts a diagnostic in the text: by its path, or for a syntax error (which has no path of
/// its own) at the reported position, naming the value the text stopped making sense in.
fn locate_diagnostic(text: &str, d: Diagnostic) -> Located {
    if d.path.is_empty()
        && let Some((line, column)) = syntax_error_position(&d.message)
    {
        let at = locate::offset_of(text, line, column);
        let end = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
        let path = locate::path_at_error(text).map(|p| p.as_str().to_string()).unwrap_or_default();
        let span = Span { start: at, end, line, column };
        return Located { severity: d.severity, path, message: d.message, place: Some(place(text, span)) };
    }
    let place = if d.path.is_empty() { None } else { place_of_path(text, &d.path) };
    Located { severity: d.severity, path: d.path, message: d.message, place }
}

fn rule_path(index: usize) -> String {
    format!("celine.mqtt.acl.rules[{index}]")
}

fn error(message: impl Into<String>) -> String {
    json!({"ok": false, "error": message.into()}).to_string()
}

/// A loaded policy document and its text.
#[wasm_bindgen]
#[derive(Default)]
pub struct Playground {
    text: String,
    policy: Option<Policy>,
}

#[wasm_bindgen]
impl Playground {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Playground {
        Playground::default()
    }

    /// Loads a policy document. Returns `{ok, rules: [{index, name, effect, place}],
    /// diagnostics: [{severity, path, message, place}]}`: the load errors when it does not
    /// load (then nothing is loaded), else lint's warnings.
    pub fn load(&mut self, text: &str) -> String {
        self.text = text.to_string();
        let (policy, diagnostics) = match Policy::load(text) {
            Ok(p) => {
                let warnings = p.lint();
                (Some(p), warnings)
            }
            Err(errors) => (None, errors),
        };
        let diagnostics: Vec<Located> = diagnostics.into_iter().map(|d| locate_diagnostic(text, d)).collect();
        let rules: Vec<Value> = policy
            .iter()
            .flat_map(|p| p.rules().iter().enumerate())
            .map(|(i, r)| {
                json!({"index": i, "name": r.name, "effect": r.effect.as_str(),
                       "place": place_of_path(text, &rule_path(i))})
            })
            .collect();
        self.policy = policy;
        json!({"ok": self.policy.is_some(), "rules": rules, "diagnostics": diagnostics}).to_string()
    }

    /// Answers one request (the `mqtt-policy eval` line format: `subject` or `claims`,
    /// `action` incl. `superuser`, `topic`, `clientid`, `username`). Returns `{ok, decision,
    /// capabilities, rules: [every rule's part], patterns: [patterns covering the topic],
    /// place: where the deciding rule is}` or `{ok: false, error}`.
    pub fn check(&self, request: &str) -> String {
        let Some(policy) = &self.policy else {
            return error("the policy does not load; fix its errors first");
        };
        let request = match policy_core::parse_request_json(request) {
            Ok(r) => r,
            Err(e) => return error(e),
        };
        let decided_place = |d: &Decision| {
            let i = d.rule.as_deref().and_then(|name| policy.rule_by_name(name))?;
            place_of_path(&self.text, &rule_path(i))
        };
        let Some(query) = request.query() else {
            let decision = policy.superuser(&request.subject);
            let capabilities: Option<Vec<&str>> =
                policy.capabilities(&request.subject).map(|c| c.iter().map(|p| p.as_str()).collect());
            return json!({"ok": true, "ask": Ask::Superuser, "subject": request.subject, "decision": decision,
                          "capabilities": capabilities, "rules": [], "patterns": [], "place": null})
            .to_string();
        };
        let explained = policy.explain(&query);
        let patterns: Vec<Value> = policy
            .patterns_covering(&query)
            .into_iter()
            .map(|h| {
                let path = match h.pattern_index {
                    Some(j) => format!("{}.topics[{j}]", rule_path(h.index)),
                    None => format!("{}.topics", rule_path(h.index)),
                };
                let mut v = serde_json::to_value(&h).unwrap_or(Value::Null);
                v["place"] = json!(place_of_path(&self.text, &path));
                v
            })
            .collect();
        json!({"ok": true, "ask": request.ask, "subject": request.subject,
               "place": decided_place(&explained.decision), "decision": explained.decision,
               "capabilities": explained.capabilities, "rules": explained.rules, "patterns": patterns})
        .to_string()
    }

    /// Runs test cases (the `policies/tests` format) against the loaded policy. Returns
    /// `{ok, results: [{name, passed, decision, failure}], passed, failed, uncovered: [rule]}`,
    /// or `{ok: false, errors: [{severity, path, message, place}]}` when the cases do not parse.
    pub fn run_tests(&self, cases: &str) -> String {
        let Some(policy) = &self.policy else {
            return error("the policy does not load; fix its errors first");
        };
        let parsed = match policy_core::parse_cases(cases) {
            Ok(c) => c,
            Err(errors) => {
                let errors: Vec<Located> = errors.into_iter().map(|d| locate_diagnostic(cases, d)).collect();
                return json!({"ok": false, "error": "the test cases do not parse", "errors": errors})
                    .to_string();
            }
        };
        let results = policy_core::run_cases(policy, &parsed);
        let passed = results.iter().filter(|r| r.passed).count();
        let uncovered = policy_core::uncovered_rules(policy, &results);
        json!({"ok": true, "results": results, "passed": passed, "failed": results.len() - passed,
               "uncovered": uncovered})
        .to_string()
    }
}

#[wasm_bindgen]
impl Playground {
    /// Decides the loaded document's invariants for every request (semantics.md §7):
    /// `{ok, holds, probed, invariants: [{invariant, statement, holds, counterexample:
    /// {request, decision, superuser} | null, place}]}`, or `{ok: false, error}`.
    pub fn verify(&self) -> String {
        let Some(policy) = &self.policy else {
            return error("the policy does not load; fix its errors first");
        };
        let v = policy_core::verify(policy);
        let verdicts: Vec<Value> = v
            .verdicts
            .iter()
            .enumerate()
            .map(|(i, verdict)| {
                let mut out = serde_json::to_value(verdict).unwrap_or(Value::Null);
                out["place"] = json!(place_of_path(&self.text, &format!("celine.mqtt.invariants[{i}]")));
                out
            })
            .collect();
        json!({"ok": true, "holds": v.holds(), "probed": v.probed, "invariants": verdicts}).to_string()
    }
}

/// How many changes of one group the page is given (the count says how many there are).
pub const CHANGES_PER_GROUP: usize = 50;

#[wasm_bindgen]
impl Playground {
    /// What changes if the loaded document replaces `other` (the "compare with" document),
    /// the requests of `cases` (the test table, in the `policies/tests` format; empty or
    /// unparsable: none) decided too: `{ok, probed, changes, counts: {action: {gained,
    /// lost}}, groups: [{old, new, count, changes: [{request, old, new}]}]}` (at most
    /// [`CHANGES_PER_GROUP`] per group), or `{ok: false, error, errors}` when either document
    /// does not load.
    pub fn diff(&self, other: &str, cases: &str) -> String {
        let Some(policy) = &self.policy else {
            return error("the policy does not load; fix its errors first");
        };
        let old = match Policy::load(other) {
            Ok(p) => p,
            Err(errors) => {
                let errors: Vec<Located> = errors.into_iter().map(|d| locate_diagnostic(other, d)).collect();
                return json!({"ok": false, "error": "the document to compare with does not load", "errors": errors})
                    .to_string();
            }
        };
        let extra: Vec<policy_core::EvalRequest> =
            policy_core::parse_cases(cases).unwrap_or_default().into_iter().map(|c| c.request).collect();
        let d = policy_core::diff(&old, policy, &extra);
        let counts: serde_json::Map<String, Value> =
            d.counts().into_iter().map(|(a, c)| (a.to_string(), json!(c))).collect();
        let groups: Vec<Value> = d
            .groups()
            .into_iter()
            .map(|g| {
                let shown: Vec<&policy_core::Change> = g.changes.iter().take(CHANGES_PER_GROUP).collect();
                json!({"old": g.old, "new": g.new, "old_text": g.old.describe(), "new_text": g.new.describe(),
                       "count": g.changes.len(), "changes": shown})
            })
            .collect();
        json!({"ok": true, "probed": d.probed, "changes": d.changes.len(), "counts": counts, "groups": groups})
            .to_string()
    }

    /// A subject's effective permissions under the loaded document. `request` is an eval
    /// line's subject part: `{"subject"| "claims", "username"?, "clientid"?}` (an empty or
    /// missing username or client id leaves its placeholder as written). Returns `{ok,
    /// subject, superuser, capabilities, actions: [{action, refused, allow: [{pattern, rule,
    /// except, void, needs}], tree}]}` or `{ok: false, error}`.
    pub fn effective(&self, request: &str) -> String {
        let Some(policy) = &self.policy else {
            return error("the policy does not load; fix its errors first");
        };
        let mut v = match serde_json::from_str::<Value>(request) {
            Ok(v @ Value::Object(_)) => v,
            _ => return error("expected a JSON object with 'subject' or 'claims'"),
        };
        v["action"] = json!("superuser");
        let r = match policy_core::parse_request_json(&v.to_string()) {
            Ok(r) => r,
            Err(e) => return error(e),
        };
        fn given(s: &str) -> Option<&str> {
            (!s.is_empty()).then_some(s)
        }
        let values = policy_core::Values { username: given(&r.username), clientid: given(&r.clientid) };
        let e = policy.effective(&r.subject, values);
        json!({"ok": true, "subject": r.subject, "superuser": policy.superuser(&r.subject),
               "capabilities": e.capabilities, "actions": e.actions})
        .to_string()
    }
}

/// Maps token claims (a JSON object) to the subject the policy sees (semantics.md §4).
/// Returns `{ok, subject}` or `{ok: false, error}`.
#[wasm_bindgen]
pub fn subject_from_claims(claims: &str) -> String {
    match policy_core::subject_from_claims_json(claims) {
        Ok(s) => json!({"ok": true, "subject": s}).to_string(),
        Err(e) => error(e),
    }
}

fn decode_part(part: &str, what: &str) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| format!("the token's {what} is not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the token's {what} is not JSON: {e}"))
}

/// Decodes a pasted JWT **without verifying its signature** (the page says so) and maps its
/// claims to a subject. `now` is the current time in seconds, for the expiry shown. Returns
/// `{ok, verified: false, header, claims, subject | subject_error, expired}` or `{ok: false,
/// error}`. The token itself is never echoed back.
#[wasm_bindgen]
pub fn decode_token(token: &str, now: f64) -> String {
    let token = token.trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return error(format!(
            "a JWT has three dot-separated parts (header.claims.signature); this has {}",
            parts.len()
        ));
    }
    let (header, claims) = match (decode_part(parts[0], "header"), decode_part(parts[1], "claims")) {
        (Ok(h), Ok(c)) => (h, c),
        (Err(e), _) | (_, Err(e)) => return error(e),
    };
    let expired = claims.get("exp").and_then(Value::as_f64).map(|exp| exp < now);
    let mut out =
        json!({"ok": true, "verified": false, "header": header, "claims": claims, "expired": expired});
    match policy_core::subject_from_claims_json(&out["claims"].to_string()) {
        Ok(s) => out["subject"] = json!(s),
        Err(e) => out["subject_error"] = json!(e.0),
    }
    out.to_string()
}

/// Evaluates a request against a document in one call (used by the page's shareable-state
/// check and by the browser tests for the conformance corpus). Returns `{ok, decision}` or
/// `{ok: false, error}`.
#[wasm_bindgen]
pub fn evaluate(policy: &str, request: &str) -> String {
    let policy = match Policy::load(policy) {
        Ok(p) => p,
        Err(errors) => {
            let msgs: Vec<String> = errors.iter().map(ToString::to_string).collect();
            return error(format!("the policy does not load: {}", msgs.join("; ")));
        }
    };
    match policy_core::parse_request_json(request) {
        Ok(r) => json!({"ok": true, "decision": policy.evaluate(&r)}).to_string(),
        Err(e) => error(e),
    }
}
