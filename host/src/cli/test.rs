//! `mqtt-policy test`: run policy test cases and report pass/fail per case, each decided by
//! the policy module (`--module`), as the swap gate decides them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use policy_core::{TestCase, judge, parse_cases, uncovered_rules};

use super::{ModuleArg, PolicyArg, decide};
use crate::policy_file;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub module: ModuleArg,
    /// Test-case files or directories of *.json files [default: policies/tests]
    #[arg(value_name = "CASES")]
    pub cases: Vec<PathBuf>,
    /// Print every case, not only failures
    #[arg(long, short)]
    pub verbose: bool,
}

/// The `*.json` files named, directories expanded (sorted), so runs are reproducible.
fn case_files(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let default = [PathBuf::from(policy_file::DEFAULT_TESTS)];
    let args = if args.is_empty() { &default[..] } else { args };
    let mut files = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(a)
                .with_context(|| format!("cannot read directory {}", a.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("{} holds no *.json test-case files", a.display());
            }
            files.extend(found);
        } else if a.exists() {
            files.push(a.clone());
        } else {
            bail!("no such test-case file or directory: {}", a.display());
        }
    }
    Ok(files)
}

/// The test cases of the files and directories named (default `policies/tests`), per file;
/// a file that does not parse prints its diagnostics and is an error.
pub fn read_cases(args: &[PathBuf]) -> anyhow::Result<Vec<(PathBuf, Vec<TestCase>)>> {
    let mut out = Vec::new();
    for file in case_files(args)? {
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        match parse_cases(&text) {
            Ok(c) => out.push((file, c)),
            Err(diags) => {
                policy_file::print_diagnostics(&policy_file::Source::File(file.clone()), &diags);
                bail!("{} is not a valid test-case file", file.display());
            }
        }
    }
    Ok(out)
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let ev = a.module.evaluator(a.policy.policy.as_deref())?;
    let source = &ev.source;
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut all_results = Vec::new();
    for (file, cases) in read_cases(&a.cases)? {
        let file = &file;
        outln!("{}  ({} cases against {source})", display(file), cases.len());
        let results: Vec<_> = cases.iter().map(|c| judge(c, decide(&ev.generation, &c.request))).collect();
        for r in &results {
            match &r.failure {
                None => {
                    passed += 1;
                    if a.verbose {
                        outln!("  ok    {}", r.name);
                    }
                }
                Some(why) => {
                    failed += 1;
                    outln!("  FAIL  {}: {why}", r.name);
                }
            }
        }
        all_results.extend(results);
    }
    let uncovered = uncovered_rules(&ev.policy, &all_results);
    if !uncovered.is_empty() {
        outln!("note: no case is decided by {}", uncovered.join(", "));
    }
    outln!("{passed} passed, {failed} failed");
    Ok(ExitCode::from(u8::from(failed > 0)))
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
