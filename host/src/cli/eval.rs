//! `mqtt-policy eval`: JSON lines in, one JSON decision per line out, each decided by the
//! policy module (`--module`).
//!
//! The interface the conformance corpus runs through. A line that cannot be parsed yields
//! `{"error": "..."}` and processing goes on; a policy that does not load exits 2 before
//! reading any input.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use policy_core::{Decision, EvalRequest, parse_request_json};

use super::{ModuleArg, PolicyArg, decide, decision_json};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub module: ModuleArg,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let ev = a.module.evaluator(a.policy.policy.as_deref())?;
    let stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    eval_lines(|r| decide(&ev.generation, r), stdin, &mut stdout)?;
    Ok(ExitCode::SUCCESS)
}

/// Answers each input line with one output line, flushing as it goes so that a caller can
/// hold a conversation over a pipe.
pub fn eval_lines(
    decide: impl Fn(&EvalRequest) -> Decision,
    mut input: impl BufRead,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        let answer = match std::str::from_utf8(&buf) {
            Err(e) => serde_json::json!({ "error": format!("the line is not UTF-8: {e}") }),
            Ok(line) if line.trim().is_empty() => {
                serde_json::json!({ "error": "empty line: expected a JSON request" })
            }
            Ok(line) => match parse_request_json(line.trim_end_matches(['\n', '\r'])) {
                Ok(req) => decision_json(&decide(&req), &req.subject),
                Err(e) => serde_json::json!({ "error": e.0 }),
            },
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
}
