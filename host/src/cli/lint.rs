//! `mqtt-policy lint`: load errors and warnings, each with its JSON path.

use std::process::ExitCode;

use policy_core::Severity;

use super::PolicyArg;
use crate::policy_file;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    /// Exit 1 on warnings too
    #[arg(long)]
    pub deny_warnings: bool,
    /// Print the diagnostics as a JSON list
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let (source, text) = policy_file::read(a.policy.policy.as_deref())?;
    let diags = policy_core::lint(&text);
    let errors = diags.iter().filter(|d| d.severity == Severity::Error).count();
    let warnings = diags.len() - errors;
    if a.json {
        outln!("{}", serde_json::to_string(&diags)?);
    } else {
        for d in &diags {
            outln!("{source}: {d}");
        }
        outln!("{source}: {errors} error(s), {warnings} warning(s)");
    }
    let failed = errors > 0 || (a.deny_warnings && warnings > 0);
    Ok(ExitCode::from(u8::from(failed)))
}
