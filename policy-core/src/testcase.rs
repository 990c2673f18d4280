//! Policy test cases: the `policies/tests/*.json` format, and running them against a policy.
//!
//! ```json
//! { "cases": [
//!   { "name": "viewer reads telemetry",
//!     "subject": {"id": "u1", "type": "user", "groups": ["viewers"]},
//!     "action": "read", "topic": "celine/telemetry/meter/m1/readings",
//!     "expect": "allow", "expect_rule": "telemetry-viewers" } ] }
//! ```
//! A case is a request (see `request.rs`) plus `expect` (`allow` or `deny`), and optionally
//! `name` and `expect_rule` (the rule the decision must name). The CLI's `test`, the hot-swap
//! pipeline and the playground all run cases through [`run_cases`].

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;

use crate::json::{Json, Path, quote};
use crate::loader::Loader;
use crate::model::{Decision, Diagnostic};
use crate::policy::Policy;
use crate::request::{EvalRequest, read_request};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    pub name: String,
    pub request: EvalRequest,
    pub expect_allow: bool,
    pub expect_rule: Option<String>,
}

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub decision: Decision,
    /// What was wrong, when the case failed.
    pub failure: Option<String>,
}

/// Parses a test-case file. Errors name the JSON path (`cases[2].subject.type`).
pub fn parse_cases(text: &str) -> Result<Vec<TestCase>, Vec<Diagnostic>> {
    let doc = Json::parse(text).map_err(|e| {
        alloc::vec![Diagnostic { severity: crate::model::Severity::Error, path: String::new(), message: e.0 }]
    })?;
    let mut l = Loader::default();
    let root = Path::root();
    let mut out = Vec::new();
    if let Some(f) = l.object(&doc, &root, &["description", "cases"]) {
        if let Some(d) = f.get("description") {
            l.string(d, &root.key("description"));
        }
        match f.get("cases") {
            None => l.error(&root, "missing required field 'cases' (a list of test cases)".to_string()),
            Some(cases) => {
                let cpath = root.key("cases");
                for (i, c) in l.list(cases, &cpath).unwrap_or_default().iter().enumerate() {
                    if let Some(tc) = read_case(&mut l, c, &cpath.index(i), i) {
                        out.push(tc);
                    }
                }
            }
        }
    }
    if l.errors.is_empty() { Ok(out) } else { Err(l.errors) }
}

fn read_case(l: &mut Loader, v: &Json, path: &Path, i: usize) -> Option<TestCase> {
    let request = read_request(l, v, path, &["name", "expect", "expect_rule", "note"])?;
    let name = match v.get("name") {
        Some(n) => l.string(n, &path.key("name"))?.to_string(),
        None => format!("cases[{i}]"),
    };
    let expect_allow = match v.get("expect") {
        None => {
            l.error(path, "missing required field 'expect' ('allow' or 'deny')".to_string());
            return None;
        }
        Some(e) => match l.string(e, &path.key("expect"))? {
            "allow" => true,
            "deny" => false,
            other => {
                l.error(&path.key("expect"), format!("expected 'allow' or 'deny', found {}", quote(other)));
                return None;
            }
        },
    };
    let expect_rule = match v.get("expect_rule") {
        Some(r) => Some(l.string(r, &path.key("expect_rule"))?.to_string()),
        None => None,
    };
    if let Some(n) = v.get("note") {
        l.string(n, &path.key("note"))?;
    }
    Some(TestCase { name, request, expect_allow, expect_rule })
}

/// Runs every case against `policy`.
pub fn run_cases(policy: &Policy, cases: &[TestCase]) -> Vec<CaseResult> {
    cases.iter().map(|c| run_case(policy, c)).collect()
}

fn verdict(allow: bool) -> &'static str {
    if allow { "allow" } else { "deny" }
}

pub fn run_case(policy: &Policy, case: &TestCase) -> CaseResult {
    judge(case, policy.evaluate(&case.request))
}

/// Compares a decision, however it was reached (natively, or by a policy module), with what
/// the case expects.
pub fn judge(case: &TestCase, decision: Decision) -> CaseResult {
    let failure = if decision.allow != case.expect_allow {
        Some(format!(
            "expected {}, got {} ({})",
            verdict(case.expect_allow),
            verdict(decision.allow),
            decision.reason
        ))
    } else {
        match &case.expect_rule {
            Some(want) if decision.rule.as_deref() != Some(want.as_str()) => Some(format!(
                "expected rule {}, got {}",
                quote(want),
                decision.rule.as_deref().map(quote).unwrap_or_else(|| "no rule".to_string())
            )),
            _ => None,
        }
    };
    CaseResult { name: case.name.clone(), passed: failure.is_none(), decision, failure }
}

/// The rules that no result names: candidates for a missing test case.
pub fn uncovered_rules<'p>(policy: &'p Policy, results: &[CaseResult]) -> Vec<&'p str> {
    policy
        .rules()
        .iter()
        .map(|r| r.name.as_str())
        .filter(|name| !results.iter().any(|res| res.decision.rule.as_deref() == Some(*name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"{"celine":{"mqtt":{"acl":{"rules":[
        {"id":"r","subjects":{"ids":["u1"]},"topics":["a/#"],"actions":["read"]},
        {"topics":["b"],"actions":["read"]}]}}}}"#;

    #[test]
    fn cases_pass_fail_and_report_coverage() {
        let p = Policy::load(POLICY).unwrap();
        let cases = parse_cases(r#"{"cases":[
            {"name":"ok","subject":{"id":"u1","type":"user"},"action":"read","topic":"a/x","expect":"allow","expect_rule":"r"},
            {"name":"wrong rule","subject":{"id":"u1","type":"user"},"action":"read","topic":"a/x","expect":"allow","expect_rule":"rules[1]"},
            {"subject":{"id":"u2","type":"user"},"action":"read","topic":"a/x","expect":"allow"}]}"#).unwrap();
        let res = run_cases(&p, &cases);
        assert!(res[0].passed);
        assert_eq!(res[1].failure.as_deref(), Some("expected rule 'rules[1]', got 'r'"));
        assert_eq!(res[2].name, "cases[2]");
        assert!(res[2].failure.as_deref().unwrap().starts_with("expected allow, got deny"));
        assert_eq!(uncovered_rules(&p, &res), ["rules[1]"]);
    }

    #[test]
    fn malformed_cases_name_their_path() {
        let e = parse_cases(r#"{"cases":[{"subject":{"id":"u","type":"user"},"action":"read","topic":"a","expect":"maybe"}]}"#).unwrap_err();
        assert_eq!(e[0].path, "cases[0].expect");
    }
}
