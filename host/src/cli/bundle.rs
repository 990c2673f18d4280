//! `mqtt-policy bundle`: a policy, a module and their test cases in one file, for
//! `serve --policy-url` and the plugin's `policy_url` to pull from any static web server or
//! object store; `--sign KEY` signs it with the operator's Ed25519 key (pullers take only
//! bundles signed by a key they trust), `--from FILE` signs an existing bundle instead of
//! building one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use policy_core::{judge, parse_cases};
use policy_engine::bundle::{Bundle, SigningKey, gather_cases};

use super::{ModuleArg, PolicyArg, decide};
use crate::policy_file;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub policy: PolicyArg,
    #[command(flatten)]
    pub module: ModuleArg,
    /// Test cases to ship with it (a file or a directory of *.json) [default: policies/tests
    /// with the default policy]
    #[arg(long, value_name = "PATH")]
    pub tests: Option<PathBuf>,
    /// Write the bundle here (through a temporary file and a rename) instead of to stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Sign the bundle with this Ed25519 private key (PKCS#8 PEM, as `openssl genpkey
    /// -algorithm ed25519` writes it)
    #[arg(long, value_name = "KEY")]
    pub sign: Option<PathBuf>,
    /// Sign this existing bundle (its hashes checked first) instead of building one
    #[arg(long, value_name = "FILE", requires = "sign", conflicts_with = "tests")]
    pub from: Option<PathBuf>,
}

fn write(bundle: &Bundle, output: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let json = serde_json::to_string(bundle)?;
    match output {
        Some(out) => {
            policy_engine::write_atomically(out, json.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            let signed = match &bundle.signature {
                Some(s) => format!(", signed by key {}", s.key_id),
                None => String::new(),
            };
            eprintln!("wrote {} (ETag {}, {} bytes{signed})", out.display(), bundle.etag(), json.len());
        }
        None => outln!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let key =
        a.sign.as_deref().map(SigningKey::read).transpose().map_err(|e| anyhow::anyhow!("--sign: {e}"))?;
    if let (Some(from), Some(key)) = (&a.from, &key) {
        if a.policy.policy.is_some() || a.module.module.is_some() {
            bail!("--from signs an existing bundle: do not also name --policy or --module");
        }
        let bytes = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
        Bundle::read(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", from.display()))?;
        let mut bundle: Bundle = serde_json::from_slice(&bytes)?;
        bundle.sign(key, identity::now());
        return write(&bundle, a.output.as_deref());
    }
    let ev = a.module.evaluator(a.policy.policy.as_deref()).context("no bundle written")?;
    let (source, text) = (&ev.source, &ev.text);
    let module = a.module.bytes()?.0;
    let tests = policy_file::tests_for(a.tests.as_deref(), a.policy.policy.as_deref());
    let cases = match &tests {
        Some(t) => Some(gather_cases(t)?),
        None => None,
    };
    // A bundle whose own cases fail would be refused by every puller: say so now.
    if let Some(c) = &cases {
        let parsed = parse_cases(&c.to_string()).map_err(|diags| {
            policy_file::print_diagnostics(source, &diags);
            anyhow::anyhow!("the test cases do not parse: no bundle written")
        })?;
        // Decided by the bundle's own module, as every puller's gate will.
        let failed: Vec<String> = parsed
            .iter()
            .filter_map(|c| {
                judge(c, decide(&ev.generation, &c.request)).failure.map(|f| format!("{}: {f}", c.name))
            })
            .collect();
        if !failed.is_empty() {
            for f in &failed {
                eprintln!("FAIL  {f}");
            }
            eprintln!(
                "{} of {} test cases fail against {source}: no bundle written",
                failed.len(),
                parsed.len()
            );
            return Ok(ExitCode::from(1));
        }
    }
    // Nor would one whose policy breaks an invariant it states.
    if let Err(why) = policy_engine::invariants::check(&ev.generation, text) {
        eprintln!("{why}");
        eprintln!("the policy's invariants do not hold against {source}: no bundle written");
        return Ok(ExitCode::from(1));
    }
    let mut bundle = Bundle::new(text, &module, cases);
    if let Some(key) = &key {
        bundle.sign(key, identity::now());
    }
    write(&bundle, a.output.as_deref())
}
