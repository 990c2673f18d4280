//! One module per subcommand. Every subcommand that decides (`check`, `eval`, `test`,
//! `verify`, `who-can`, `diff`, `bundle`) decides through a policy module on the same engine as
//! `serve` and the plugin ([`Evaluator`]: `--module`, the built-in module by default), so a
//! module that changes the logic answers the same here as behind the swap gate. Native
//! `policy-core` reads the document for what a module does not say (explanations, witnesses,
//! effective permissions).

/// Prints a line of a command's output, as `println!` does, except that a reader that went
/// away (`mqtt-policy who-can ... | head`) ends the command quietly, as it ends Unix tools,
/// instead of a panic.
macro_rules! outln {
    () => {
        $crate::cli::out_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::out_line(format_args!($($arg)*))
    };
}

pub mod bundle;
pub mod check;
pub mod diff;
pub mod eval;
pub mod lint;
pub mod serve;
pub mod test;
pub mod token;
pub mod verify;
pub mod who_can;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use policy_engine::{Generation, Runtime};

use crate::policy_file::{self, Source};

/// [`outln!`]'s writer: a line to stdout, or the end of the command when that fails.
pub fn out_line(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(line).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(crate::EXIT_CLOSED_OUTPUT.into());
        }
        eprintln!("mqtt-policy: writing the output: {e}");
        std::process::exit(crate::EXIT_FAILED.into());
    }
}

/// `--policy`, shared by every subcommand.
#[derive(clap::Args, Debug)]
pub struct PolicyArg {
    /// Policy document [default: policies/celine.json, else the built-in copy]
    #[arg(long, value_name = "FILE", env = "MQTT_POLICY_POLICY")]
    pub policy: Option<PathBuf>,
}

/// `--module`, shared by every subcommand that decides.
#[derive(clap::Args, Debug, Default)]
pub struct ModuleArg {
    /// Decide through this policy module (a WebAssembly component) [default: the built-in one]
    #[arg(long, value_name = "FILE", env = "MQTT_POLICY_MODULE")]
    pub module: Option<PathBuf>,
}

/// A policy document loaded twice: natively (`policy`, to read it) and into the module
/// (`generation`, which decides).
pub struct Evaluator {
    pub source: Source,
    pub text: String,
    pub policy: policy_core::Policy,
    pub generation: Arc<Generation>,
    /// Is the module the built-in one (whose logic is `policy-core`'s own)?
    pub built_in: bool,
}

impl ModuleArg {
    /// The module's bytes and whether they are the built-in module's.
    pub fn bytes(&self) -> anyhow::Result<(Vec<u8>, bool)> {
        let built_in = policy_engine::embedded_module()
            .context("this binary has no built-in policy module: name one with --module")?;
        match &self.module {
            Some(p) => {
                let bytes =
                    std::fs::read(p).with_context(|| format!("cannot read the module {}", p.display()))?;
                let same = bytes == built_in;
                Ok((bytes, same))
            }
            None => Ok((built_in.to_vec(), true)),
        }
    }

    /// Loads the document at `policy` (or the default one) natively and into the module.
    pub fn evaluator(&self, policy: Option<&Path>) -> anyhow::Result<Evaluator> {
        let (source, text) = policy_file::read(policy)?;
        let native = policy_file::parse(&source, &text)?;
        let generation = self.generation(&source, &text)?;
        let built_in = self.bytes()?.1;
        Ok(Evaluator { source, text, policy: native, generation, built_in })
    }

    /// The document `text` loaded into the module: a generation that decides it.
    pub fn generation(&self, source: &Source, text: &str) -> anyhow::Result<Arc<Generation>> {
        let (bytes, _) = self.bytes()?;
        // Compiled modules are kept in the state directory when it can be written: the next
        // command loads one in milliseconds instead of compiling it.
        let cache = identity::devkey::default_state_dir().join("cache");
        let cache = std::fs::create_dir_all(&cache).is_ok().then_some(cache);
        let module = Runtime::new(cache)?.module(&bytes).context("the policy module")?;
        Generation::new(module, text).map_err(|e| match e.downcast_ref::<policy_engine::LoadError>() {
            Some(l) => anyhow::anyhow!("{source} did not load in the module: {l}"),
            None => e.context(format!("loading {source} into the module")),
        })
    }
}

/// What `generation` decides for `r` (the swap gate's own function).
pub fn decide(generation: &Generation, r: &policy_core::EvalRequest) -> policy_core::Decision {
    policy_engine::cases::decide(generation, r)
}

/// `--subject JSON` or `--claims JSON`: who asks, for `check`.
#[derive(clap::Args, Debug)]
#[group(id = "who", required = true, multiple = false)]
pub struct SubjectArg {
    /// The subject as JSON: {"id": "u1", "type": "user", "groups": ["viewers"], "scopes": []}
    #[arg(long, value_name = "JSON")]
    pub subject: Option<String>,
    /// A token's claims as JSON, mapped to a subject as for Keycloak tokens (no signature check)
    #[arg(long, value_name = "JSON")]
    pub claims: Option<String>,
}

impl SubjectArg {
    /// The subject given, or which argument is wrong and why.
    pub fn subject(&self) -> anyhow::Result<policy_core::Subject> {
        use policy_core::{Json, parse_subject, subject_from_claims};
        match (&self.subject, &self.claims) {
            (Some(s), _) => {
                Json::parse(s).and_then(|j| parse_subject(&j)).map_err(|e| anyhow::anyhow!("--subject: {e}"))
            }
            (None, Some(c)) => Json::parse(c)
                .and_then(|j| subject_from_claims(&j))
                .map_err(|e| anyhow::anyhow!("--claims: {e}")),
            (None, None) => anyhow::bail!("give --subject or --claims"),
        }
    }
}

/// The JSON line for a decision, as `eval` and `check --json` print it.
pub fn decision_json(d: &policy_core::Decision, subject: &policy_core::Subject) -> serde_json::Value {
    serde_json::json!({
        "allow": d.allow,
        "rule": d.rule,
        "reason": d.reason,
        "subject": subject,
    })
}
