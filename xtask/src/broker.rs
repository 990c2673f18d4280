//! Mosquitto with the project's plugin: the dev broker beside `cargo xtask serve`, and the
//! plugin's end-to-end tests (`cargo xtask e2e`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::{cargo_env, keycloak, root, step, target_dir};

/// The plugin `cargo xtask build` makes (a debug build).
pub fn plugin_path() -> PathBuf {
    target_dir().join("debug/libmqtt_policy_mosquitto.so")
}

/// Where `mqtt-policy serve --dev` and `mqtt-policy token --dev` keep the dev key by default
/// (as `identity::devkey::default_state_dir` decides): the dev broker trusts the same key.
fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("mqtt-policy");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/mqtt-policy"),
        None => PathBuf::from(".mqtt-policy-state"),
    }
}

/// MQTT's port if it is free, else any free one.
fn broker_port() -> anyhow::Result<u16> {
    if TcpListener::bind("127.0.0.1:1883").is_ok() {
        return Ok(1883);
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The dev broker: Mosquitto on 127.0.0.1 with the plugin in dev mode (trusting the dev key
/// `mqtt-policy token --dev` signs with), the default policy and its test cases. Its log
/// (decisions included) goes to this terminal. Returns the child and its port.
pub fn start_dev_broker(bin: &Path) -> anyhow::Result<(Child, u16)> {
    crate::apt::ensure_mosquitto()?;
    let state = default_state_dir();
    // The dev key is created by the first `token --dev`; make it now, so the service and
    // the broker do not both try to create it.
    let made = Command::new(bin)
        .args(["token", "--dev", "--sub", "warm-up", "--ttl", "1s"])
        .stdout(Stdio::null())
        .status()
        .context("running mqtt-policy token --dev")?;
    if !made.success() {
        bail!("mqtt-policy token --dev failed ({made})");
    }
    let port = broker_port()?;
    let dir = target_dir().join("dev-broker");
    std::fs::create_dir_all(&dir)?;
    let absolute = |p: &str| root().join(p).display().to_string();
    let mut conf = format!(
        "# Written by `cargo xtask serve`: a local broker for trying the plugin. Not for production.\n\
         listener {port} 127.0.0.1\n\
         allow_anonymous false\n\
         persistence false\n\
         log_dest stderr\n\
         log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         plugin {}\n\
         plugin_opt_policy {}\n\
         plugin_opt_tests {}\n\
         plugin_opt_dev true\n\
         plugin_opt_state_dir {}\n",
        plugin_path().display(),
        absolute("policies/celine.json"),
        absolute("policies/tests"),
        state.display(),
    );
    if crate::apt::is_root() {
        // The plugin and the dev key live in root's home, which Mosquitto's own user cannot
        // read: the dev broker keeps root's rights. (A real installation puts them where the
        // mosquitto user can read them; see docs/plugin.md.)
        conf.push_str("user root\n");
    }
    let conf_path = dir.join("mosquitto.conf");
    std::fs::write(&conf_path, conf)?;
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .spawn()
        .context("starting mosquitto")?;
    Ok((child, port))
}

/// The plugin inside a real Mosquitto with real clients (`mosquitto-plugin/tests/e2e.rs`),
/// the Keycloak scenario included.
pub fn e2e() -> anyhow::Result<()> {
    crate::apt::ensure_mosquitto()?;
    crate::build()?;
    step("the broker plugin end to end: Mosquitto + plugin + MQTT 3.1.1/5 clients (+ Keycloak)");
    let home = keycloak::ensure()?;
    let java = keycloak::java_home()?;
    cargo_env(
        &["test", "-p", "mosquitto-plugin", "--test", "e2e", "--", "--include-ignored"],
        &[
            ("MQTT_POLICY_KEYCLOAK_HOME", home.as_os_str()),
            ("MQTT_POLICY_KEYCLOAK_JAVA_HOME", java.as_os_str()),
        ],
    )
}
