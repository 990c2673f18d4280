//! Debian packages the suites need, installed with apt-get when missing (as root; otherwise
//! the error says what to install).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::step;

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs `packages` unless `present` (a file each provides) all exist. `why` is shown.
pub fn ensure(packages: &[&str], present: &[&str], why: &str) -> anyhow::Result<()> {
    if present.iter().all(|p| Path::new(p).exists()) {
        return Ok(());
    }
    let list = packages.join(" ");
    if !is_root() {
        bail!("{why} needs Debian's {list}: install them (sudo apt-get install {list}) and run again");
    }
    step(&format!("installing {list} from Debian ({why})"));
    crate::run("apt-get", &["update", "-qq"])?;
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get install {list} failed ({status})");
    }
    Ok(())
}

/// Redis, for the shared-session tests (`serve --sessions redis://...`).
pub fn ensure_redis() -> anyhow::Result<()> {
    ensure(&["redis-server"], &["/usr/bin/redis-server"], "the shared-session tests")
}

/// Valgrind, for the test that the broker plugin's clocks read under it (Mosquitto is
/// debugged under valgrind).
pub fn ensure_valgrind() -> anyhow::Result<()> {
    ensure(&["valgrind"], &["/usr/bin/valgrind"], "the broker plugin's test under valgrind")
}

/// Mosquitto, its clients and its plugin headers (the plugin's C declarations follow them).
pub fn ensure_mosquitto() -> anyhow::Result<()> {
    ensure(
        &["mosquitto", "mosquitto-clients", "mosquitto-dev"],
        &["/usr/sbin/mosquitto", "/usr/bin/mosquitto_sub", "/usr/include/mosquitto_plugin.h"],
        "the broker plugin's end-to-end tests",
    )
}
