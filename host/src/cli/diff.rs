//! `mqtt-policy diff OLD NEW`: which requests change decision if NEW replaces OLD, each
//! witness decided by the policy module (`--module`) with both documents, as a swap report
//! decides them.
//!
//! Exit 0 when no witnessed decision changes, 1 when some do, 2 when a document (or a
//! test-case file) does not load. `--json` prints a bare JSON array of changes, each
//! `{"request": <an eval line>, "old": <decision>, "new": <decision>}`, so any of them can be
//! replayed with `mqtt-policy eval` or `check` against both documents.

use std::path::PathBuf;
use std::process::ExitCode;

use policy_core::{Change, EvalRequest, compare, witnesses, witnesses_of};

use super::test::read_cases;
use super::{ModuleArg, decide};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy document live now
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The policy document to ship
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// Also decide the requests of these test-case files or directories (e.g. policies/tests)
    #[arg(long, value_name = "CASES")]
    pub tests: Vec<PathBuf>,
    /// Print a bare JSON array of changes: {"request", "old", "new"}
    #[arg(long)]
    pub json: bool,
    /// Witnesses shown per group of changes (human output)
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub show: usize,
    #[command(flatten)]
    pub module: ModuleArg,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let old = a.module.evaluator(Some(&a.old))?;
    let new = a.module.evaluator(Some(&a.new))?;
    let extra: Vec<EvalRequest> = if a.tests.is_empty() {
        Vec::new()
    } else {
        read_cases(&a.tests)?.into_iter().flat_map(|(_, cases)| cases).map(|c| c.request).collect()
    };
    let mut probes = witnesses(&old.policy, &new.policy, &extra);
    if !new.built_in {
        // A module of its own logic: any rule may decide otherwise than the document reads.
        probes.extend(witnesses_of(&new.policy));
    }
    let d = compare(probes, |r| decide(&old.generation, r), |r| decide(&new.generation, r));
    if a.json {
        outln!("{}", serde_json::to_string(&d.changes)?);
    } else {
        print_human(&a, &d);
    }
    Ok(ExitCode::from(u8::from(!d.is_empty())))
}

fn print_human(a: &Args, d: &policy_core::Diff) {
    let (old, new) = (a.old.display(), a.new.display());
    if d.is_empty() {
        outln!("no decision changes from {old} to {new} ({} requests tried)", d.probed);
        return;
    }
    let n = d.changes.len();
    outln!(
        "{n} request{} change decision from {old} to {new} ({} tried)",
        if n == 1 { "" } else { "s" },
        d.probed
    );
    for (action, c) in d.counts() {
        outln!("  {action:9}  {} gained, {} lost", c.gained, c.lost);
    }
    outln!("replay one: mqtt-policy check --policy {old} <its arguments>, and again with --policy {new}");
    for g in d.groups() {
        let verdict = if g.new.allow { "GAINED" } else { "LOST" };
        let count = g.changes.len();
        outln!();
        outln!(
            "{verdict}  {} → {}  ({count} request{})",
            g.old.describe(),
            g.new.describe(),
            if count == 1 { "" } else { "s" }
        );
        for c in g.changes.iter().take(a.show) {
            outln!("  {}", witness(c));
            outln!("    {}", check_args(&c.request));
        }
        if count > a.show {
            outln!("  … and {} more (--show N, or --json for all)", count - a.show);
        }
    }
}

fn witness(c: &Change) -> String {
    let r = &c.request;
    let s = &r.subject;
    let who = format!(
        "{} {} groups=[{}] scopes=[{}]",
        s.kind.as_str(),
        policy_core::quote(&s.id),
        s.groups.join(", "),
        s.scopes.join(", ")
    );
    match r.query() {
        Some(_) => format!("{} {} as {who}", r.ask.as_str(), policy_core::quote(&r.topic)),
        None => format!("superuser? {who}"),
    }
}

/// The arguments of `mqtt-policy check` that ask this request, quoted for a POSIX shell.
pub fn check_args(r: &EvalRequest) -> String {
    let subject = serde_json::to_string(&r.subject).unwrap_or_default();
    let mut out = format!("--subject {} --action {}", sh(&subject), r.ask.as_str());
    if r.query().is_some() {
        out.push_str(&format!(" --topic {}", sh(&r.topic)));
    }
    if !r.clientid.is_empty() {
        out.push_str(&format!(" --clientid {}", sh(&r.clientid)));
    }
    if !r.username.is_empty() {
        out.push_str(&format!(" --username {}", sh(&r.username)));
    }
    if let Some(qos) = r.message.qos {
        out.push_str(&format!(" --qos {qos}"));
    }
    if let Some(retain) = r.message.retain {
        out.push_str(&format!(" --retain {retain}"));
    }
    out
}

fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
