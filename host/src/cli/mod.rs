//! One module per subcommand.

pub mod bundle;
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

/// `--subject JSON` or `--claims JSON`: who asks, for `check` and `who-can`.
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
