//! Policy test cases run *through a generation*: the candidate module decides, not native
//! code, so a module that decides differently from what the cases expect never goes live.

use std::path::{Path, PathBuf};

use policy_core::EvalRequest;

use crate::runtime::{Action, Fault, Generation, Request, Subject};

/// Why policy test cases did not pass through a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasesError {
    /// The cases could not be read: a file or directory that cannot be read. Nothing was
    /// decided; the same candidate may pass once the files are there.
    Unreadable(String),
    /// A file is not a valid test-case document (which one, and its first error). Nothing was
    /// decided: the cases need fixing, not the policy.
    Malformed(String),
    /// The cases ran and some failed: the candidate decides differently from what they
    /// expect (how many, and the first few).
    Failing(String),
}

impl std::fmt::Display for CasesError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            CasesError::Unreadable(why) | CasesError::Malformed(why) | CasesError::Failing(why) => {
                f.write_str(why)
            }
        }
    }
}

impl std::error::Error for CasesError {}

impl From<CasesError> for String {
    fn from(e: CasesError) -> String {
        e.to_string()
    }
}

/// The `*.json` test-case files under `path` (a file, or a directory), sorted.
pub(crate) fn case_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read the test cases in {}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Asks `generation` (its module) what `policy_core::Policy::evaluate` answers natively; a
/// module fault is a denial that says so.
pub fn decide(generation: &Generation, r: &EvalRequest) -> policy_core::Decision {
    try_decide(generation, r).unwrap_or_else(|why| policy_core::Decision {
        allow: false,
        rule: None,
        reason: why.0,
    })
}

/// As [`decide`], or why the module failed to answer.
pub fn try_decide(generation: &Generation, r: &EvalRequest) -> Result<policy_core::Decision, Fault> {
    let subject = Subject::from(r.subject.clone());
    let d = match r.ask.action() {
        None => generation.try_superuser(&subject)?,
        Some(a) => generation.try_check(&Request {
            subject,
            topic: r.topic.clone(),
            action: Action::from(a),
            clientid: r.clientid.clone(),
            username: r.username.clone(),
            qos: r.message.qos,
            retain: r.message.retain,
        })?,
    };
    Ok(policy_core::Decision { allow: d.allow, rule: d.rule, reason: d.reason })
}

/// Runs the test cases under `path` through `generation`; `Ok` is their requests, all of
/// which passed (the swap report decides them again with the live generation).
pub fn run_cases(generation: &Generation, path: &Path) -> Result<Vec<EvalRequest>, CasesError> {
    let mut tally = Tally::default();
    for file in case_files(path).map_err(CasesError::Unreadable)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| CasesError::Unreadable(format!("cannot read {}: {e}", file.display())))?;
        tally.run(generation, &file.display().to_string(), &text)?;
    }
    tally.result()
}

/// Runs the test cases of one `policies/tests` document (a bundle's) through `generation`.
pub fn run_cases_text(
    generation: &Generation,
    name: &str,
    text: &str,
) -> Result<Vec<EvalRequest>, CasesError> {
    let mut tally = Tally::default();
    tally.run(generation, name, text)?;
    tally.result()
}

#[derive(Default)]
struct Tally {
    passed: Vec<EvalRequest>,
    failures: Vec<String>,
}

impl Tally {
    fn run(&mut self, generation: &Generation, name: &str, text: &str) -> Result<(), CasesError> {
        let cases = policy_core::parse_cases(text).map_err(|ds| {
            let first = ds.first().map(|d| format!("{}: {}", d.path, d.message)).unwrap_or_default();
            CasesError::Malformed(format!("{name} is not a valid test-case file: {first}"))
        })?;
        for case in cases {
            let d = decide(generation, &case.request);
            match policy_core::judge(&case, d).failure {
                Some(why) => self.failures.push(format!("{}: {why}", case.name)),
                None => self.passed.push(case.request),
            }
        }
        Ok(())
    }

    fn result(mut self) -> Result<Vec<EvalRequest>, CasesError> {
        if self.failures.is_empty() {
            return Ok(self.passed);
        }
        let n = self.failures.len();
        let total = n + self.passed.len();
        self.failures.truncate(5);
        Err(CasesError::Failing(format!(
            "{n} of {total} policy test cases fail: {}",
            self.failures.join("; ")
        )))
    }
}
