//! One module per subcommand.

pub mod check;
pub mod diff;
pub mod eval;
pub mod lint;
pub mod serve;
pub mod test;
pub mod token;
pub mod who_can;

use std::path::PathBuf;

/// `--policy`, shared by every subcommand.
#[derive(clap::Args, Debug)]
pub struct PolicyArg {
    /// Policy document [default: policies/celine.json, else the built-in copy]
    #[arg(long, value_name = "FILE", env = "MQTT_POLICY_POLICY")]
    pub policy: Option<PathBuf>,
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
