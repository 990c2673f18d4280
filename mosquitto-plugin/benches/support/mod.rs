//! What the plugin's benchmarks share: a broker that does nothing, and a plugin started on a
//! policy file with the dev key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use identity::devkey::{DevKey, TokenSpec, claims};
use mqtt_policy_mosquitto::{Broker, Options, Plugin, Removal};

pub struct Quiet;

impl Broker for Quiet {
    fn log(&self, _: tracing::Level, _: &str) {}
    fn publish_retained(&self, _: &str, _: &[u8]) {}
    fn kick(&self, _: &str, _: bool) -> bool {
        false
    }
    fn removes_subscriptions(&self) -> bool {
        false
    }
    fn remove_subscription(&self, _: &str, _: &str) -> Removal {
        Removal::Failed(mqtt_policy_mosquitto::sys::MOSQ_ERR_NOT_SUPPORTED)
    }
}

/// The end-to-end tests' policy, as text.
pub fn e2e_policy() -> String {
    std::fs::read_to_string(test_support::package_dir().join("tests/e2e/policy.json")).unwrap()
}

/// A plugin on `policy` (written to `state/policy.json`, whose path is returned), trusting
/// the dev key kept in `state`, with files not watched and the `extra` options.
pub fn start(state: &Path, policy: &str, extra: &[(&str, &str)]) -> (Plugin, PathBuf) {
    let file = state.join("policy.json");
    std::fs::write(&file, policy).unwrap();
    let pairs: Vec<(String, String)> = [
        ("policy", file.display().to_string()),
        ("dev", "true".into()),
        ("state_dir", state.display().to_string()),
        ("watch", "false".into()),
    ]
    .into_iter()
    .chain(extra.iter().map(|(k, v)| (*k, v.to_string())))
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    (Plugin::start(Options::parse(&pairs).unwrap(), Arc::new(Quiet)).unwrap(), file)
}

/// A dev token for a user in `groups`, good for an hour.
pub fn user_token(state: &Path, sub: &str, groups: &[&str]) -> String {
    let key = DevKey::load_or_create(state).unwrap();
    key.sign(&claims(&TokenSpec::dev_user(sub, groups, 3600), identity::now()).unwrap()).unwrap()
}
