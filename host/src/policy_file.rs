//! Finding and loading the policy document a command works on.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use policy_core::{Diagnostic, Policy};

/// The default policy, relative to the working directory (the repository root).
pub const DEFAULT_POLICY: &str = "policies/celine.json";
/// The default policy's test cases.
pub const DEFAULT_TESTS: &str = "policies/tests";

/// The test cases that guard a policy: those named (`--tests`); else, for the default policy
/// (no `--policy`), its own cases when they are there; else none.
pub fn tests_for(tests: Option<&Path>, policy: Option<&Path>) -> Option<PathBuf> {
    match (tests, policy) {
        (Some(t), _) => Some(t.to_path_buf()),
        (None, None) if Path::new(DEFAULT_TESTS).is_dir() => Some(PathBuf::from(DEFAULT_TESTS)),
        _ => None,
    }
}

/// Where a policy document came from, for messages.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Embedded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Embedded => f.write_str("the built-in default policy"),
        }
    }
}

/// Reads the document: `--policy FILE` if given; else `policies/celine.json` if present;
/// else the copy embedded in the binary.
pub fn read(arg: Option<&Path>) -> anyhow::Result<(Source, String)> {
    let path = match arg {
        Some(p) => p.to_path_buf(),
        None if Path::new(DEFAULT_POLICY).exists() => PathBuf::from(DEFAULT_POLICY),
        None => return Ok((Source::Embedded, policy_engine::BUILT_IN_POLICY.to_string())),
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read policy file {}", path.display()))?;
    Ok((Source::File(path), text))
}

/// Prints diagnostics to stderr, one per line, prefixed with the source.
pub fn print_diagnostics(source: &Source, diags: &[Diagnostic]) {
    for d in diags {
        eprintln!("{source}: {d}");
    }
}

/// Reads and loads the policy; load errors are printed (with their JSON paths) and returned
/// as one error.
pub fn load(arg: Option<&Path>) -> anyhow::Result<(Source, Policy)> {
    let (source, text) = read(arg)?;
    let policy = parse(&source, &text)?;
    Ok((source, policy))
}

/// Loads a document's text natively; load errors are printed and returned as one error.
pub fn parse(source: &Source, text: &str) -> anyhow::Result<Policy> {
    Policy::load(text).or_else(|diags| {
        print_diagnostics(source, &diags);
        let n = diags.len();
        bail!("{source} did not load: {n} error{}", if n == 1 { "" } else { "s" })
    })
}
