//! `cargo xtask fuzz --seconds N`: every cargo-fuzz target in `fuzz/` for N seconds each
//! (libFuzzer, nightly Rust, AddressSanitizer), seeded from `fuzz/seeds/<target>` (conformance
//! cases and policy documents, kept in the repository) plus a working corpus kept in the
//! target directory between runs. A crash fails the run and names the input to reproduce it
//! with; it then becomes a regression test.

use std::process::Command;

use anyhow::{Context, bail};

use crate::{root, step, target_dir};

/// What one target did.
pub struct Report {
    pub target: String,
    pub runs: u64,
    pub coverage: Option<u64>,
}

fn nightly(args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"]).args(args).current_dir(root());
    // The fuzz targets build with their own flags, apart from the project's target directory.
    c.env("CARGO_TARGET_DIR", target_dir().join("fuzz")).env_remove("RUSTFLAGS");
    // The plugin's target embeds the policy module as the plugin does; policy-engine's build
    // script would look for it under that other target directory.
    c.env("MQTT_POLICY_MODULE_WASM", crate::module_path());
    c
}

fn ensure_tools() -> anyhow::Result<()> {
    let toolchains =
        Command::new("rustup").args(["toolchain", "list"]).output().context("cannot run rustup")?;
    if !String::from_utf8_lossy(&toolchains.stdout).lines().any(|l| l.starts_with("nightly")) {
        step("installing the nightly toolchain (libFuzzer's instrumentation needs it)");
        crate::run("rustup", &["toolchain", "install", "nightly", "--profile", "minimal"])?;
    }
    if !nightly(&["fuzz", "--version"]).output().is_ok_and(|o| o.status.success()) {
        step("installing cargo-fuzz from crates.io");
        crate::cargo(&["install", "cargo-fuzz", "--locked"])?;
    }
    Ok(())
}

/// The number after `key` in a libFuzzer status line (`#1234 DONE cov: 56 ft: ...`).
fn field(line: &str, key: &str) -> Option<u64> {
    let mut words = line.split_whitespace();
    words.by_ref().find(|w| *w == key)?;
    words.next()?.parse().ok()
}

/// Runs every target for `seconds` each.
pub fn run(seconds: u64) -> anyhow::Result<Vec<Report>> {
    ensure_tools()?;
    let list = nightly(&["fuzz", "list"]).output().context("cargo fuzz list")?;
    if !list.status.success() {
        bail!("`cargo fuzz list` failed: {}", String::from_utf8_lossy(&list.stderr));
    }
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout).lines().map(str::to_string).collect();
    let mut reports = Vec::new();
    for target in targets {
        step(&format!("fuzzing {target} for {seconds} s"));
        let corpus = target_dir().join("fuzz/corpus").join(&target);
        std::fs::create_dir_all(&corpus).with_context(|| corpus.display().to_string())?;
        let seeds = root().join("fuzz/seeds").join(&target);
        let max_time = format!("-max_total_time={seconds}");
        let out = nightly(&["fuzz", "run", &target])
            .arg(&corpus)
            .arg(&seeds)
            .args(["--", &max_time, "-print_final_stats=1"])
            .output()
            .with_context(|| format!("cannot run cargo fuzz for {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let lines: Vec<&str> = log.lines().collect();
            // What went wrong comes first (a panic's message, the sanitizer's report), then
            // many lines of stacks: show the first, and the end.
            let first = lines
                .iter()
                .position(|l| l.contains("panicked at") || l.contains("ERROR: ") || l.starts_with("error"))
                .map(|i| lines[i..lines.len().min(i + 12)].join("\n"))
                .unwrap_or_default();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            bail!(
                "fuzz target {target} failed (a crash or a build error):\n{first}\n…\n{tail}\n\nThe failing input is in \
                 fuzz/artifacts/{target}/: reproduce with `cargo +nightly fuzz run {target} <that file>` \
                 (from the repository root) and make it a regression test."
            );
        }
        let done = log.lines().rev().find(|l| l.contains("DONE"));
        let runs = log
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("Done ").and_then(|r| r.split_whitespace().next()?.parse().ok()))
            .unwrap_or(0);
        let coverage = done.and_then(|l| field(l, "cov:"));
        println!(
            "   {target}: {runs} executions, coverage {} edges, no crash",
            coverage.map(|c| c.to_string()).unwrap_or_else(|| "?".into())
        );
        reports.push(Report { target, runs, coverage });
    }
    Ok(reports)
}

/// `cargo xtask fuzz [--seconds N]` (default 60).
pub fn command(args: &[String]) -> anyhow::Result<()> {
    let seconds = match args {
        [] => 60,
        [flag, n] if flag == "--seconds" => {
            n.parse().with_context(|| format!("--seconds expects a whole number of seconds, got {n:?}"))?
        }
        _ => bail!("usage: cargo xtask fuzz [--seconds N]"),
    };
    // The plugin's target embeds the policy module, as the plugin does.
    crate::ensure_wasm_target()?;
    step("policy module: policy-wasm for wasm32-unknown-unknown (the plugin's target embeds it)");
    crate::build_component("policy-wasm", "policy.wasm")?;
    let reports = run(seconds)?;
    println!("\n| target | seconds | executions | coverage (edges) | crashes |\n|---|---|---|---|---|");
    for r in reports {
        let cov = r.coverage.map(|c| c.to_string()).unwrap_or_else(|| "?".into());
        println!("| {} | {seconds} | {} | {cov} | 0 |", r.target, r.runs);
    }
    Ok(())
}
