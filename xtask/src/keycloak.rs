//! A real Keycloak for the identity-provider tests: the official server distribution from
//! Maven Central, cached under `~/.cache/mqtt-policy`, run with a JDK from the machine.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo_env, step};

/// Keycloak 26.x runs on Java 21 or newer.
pub const VERSION: &str = "26.7.3";
const MIN_JAVA: u32 = 21;

/// Downloads and tools the suites install once (`MQTT_POLICY_CACHE_DIR`, else
/// `~/.cache/mqtt-policy`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("MQTT_POLICY_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/mqtt-policy")
    })
}

fn java_major(java: &Path) -> Option<u32> {
    let out = Command::new(java).arg("-version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let quoted = text.split('"').nth(1)?;
    quoted.split(['.', '-', '+']).next()?.parse().ok()
}

/// A JDK Keycloak supports: `$JAVA_HOME` if new enough, else the newest under /usr/lib/jvm.
pub fn java_home() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("JAVA_HOME").map(PathBuf::from).into_iter().collect();
    if let Ok(dir) = std::fs::read_dir("/usr/lib/jvm") {
        candidates.extend(dir.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    let mut best: Option<(u32, PathBuf)> = None;
    for home in candidates {
        let java = home.join("bin/java");
        if let Some(v) = java.exists().then(|| java_major(&java)).flatten()
            && v >= MIN_JAVA
            && best.as_ref().is_none_or(|(b, _)| v > *b)
        {
            best = Some((v, home));
        }
    }
    match best {
        Some((v, home)) => {
            println!("   Java {v} at {}", home.display());
            Ok(home)
        }
        None => bail!(
            "Keycloak {VERSION} needs Java {MIN_JAVA} or newer; none found in $JAVA_HOME or /usr/lib/jvm \
             (install one, e.g. apt-get install openjdk-21-jre-headless, or set JAVA_HOME)"
        ),
    }
}

fn download(url: &str, to: &Path) -> anyhow::Result<()> {
    let part = to.with_extension("part");
    let status = Command::new("curl")
        .args(["-fL", "--retry", "3", "--progress-bar", "-o"])
        .arg(&part)
        .arg(url)
        .status()
        .context("cannot run curl")?;
    if !status.success() {
        bail!("downloading {url} failed ({status})");
    }
    std::fs::rename(&part, to)?;
    Ok(())
}

/// The unpacked distribution (downloaded, checked against Maven Central's SHA-1, unpacked
/// once and cached).
pub fn ensure() -> anyhow::Result<PathBuf> {
    let home = cache_dir().join(format!("keycloak-{VERSION}"));
    if home.join("bin/kc.sh").exists() && home.join("lib").exists() {
        return Ok(home);
    }
    let downloads = cache_dir().join("downloads");
    std::fs::create_dir_all(&downloads)?;
    let name = format!("keycloak-quarkus-dist-{VERSION}.zip");
    let url = format!("https://repo1.maven.org/maven2/org/keycloak/keycloak-quarkus-dist/{VERSION}/{name}");
    let zip = downloads.join(&name);
    if !zip.exists() {
        step(&format!("downloading Keycloak {VERSION} from Maven Central (~180 MB, once)"));
        download(&url, &zip)?;
    }
    let sha1 = downloads.join(format!("{name}.sha1"));
    download(&format!("{url}.sha1"), &sha1)?;
    let want = std::fs::read_to_string(&sha1)?.split_whitespace().next().unwrap_or_default().to_string();
    let got = Command::new("sha1sum").arg(&zip).output().context("cannot run sha1sum")?;
    let got = String::from_utf8_lossy(&got.stdout).split_whitespace().next().unwrap_or_default().to_string();
    if want.is_empty() || got != want {
        std::fs::remove_file(&zip).ok();
        bail!("{name}: SHA-1 {got} does not match Maven Central's {want}; removed it, run again");
    }
    step(&format!("unpacking Keycloak {VERSION} into {}", cache_dir().display()));
    let unpack = cache_dir().join(format!("keycloak-{VERSION}.unpacking"));
    if unpack.exists() {
        std::fs::remove_dir_all(&unpack)?;
    }
    std::fs::create_dir_all(&unpack)?;
    let status = Command::new("python3")
        .args(["-m", "zipfile", "-e"])
        .arg(&zip)
        .arg(&unpack)
        .status()
        .context("cannot run python3 to unpack the zip")?;
    if !status.success() {
        bail!("unpacking {name} failed ({status})");
    }
    // The zip holds one folder, keycloak-<version>/; its scripts lose their mode in zipfile.
    let inner = unpack.join(format!("keycloak-{VERSION}"));
    for script in std::fs::read_dir(inner.join("bin"))? {
        let p = script?.path();
        if p.extension().is_some_and(|e| e == "sh") {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    std::fs::rename(&inner, &home)?;
    std::fs::remove_dir_all(&unpack).ok();
    Ok(home)
}

/// The Keycloak tests (`host/tests/keycloak.rs`, and the broker plugin's Keycloak scenario in
/// `mosquitto-plugin/tests/e2e.rs`), which start and stop their own Keycloak.
pub fn tests() -> anyhow::Result<()> {
    step(&format!("identity provider: Keycloak {VERSION} (realm keycloak/celine-realm.json)"));
    let home = ensure()?;
    let java = java_home()?;
    cargo_env(
        &[
            "test",
            "-p",
            "mqtt-policy",
            "-p",
            "mosquitto-plugin",
            "--test",
            "keycloak",
            "--test",
            "e2e",
            "--",
            "--ignored",
            "--nocapture",
        ],
        &[
            ("MQTT_POLICY_KEYCLOAK_HOME", home.as_os_str()),
            ("MQTT_POLICY_KEYCLOAK_JAVA_HOME", java.as_os_str()),
        ],
    )
}
