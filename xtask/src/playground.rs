//! The browser playground: building the static site (`web-playground/` through wasm-bindgen)
//! and running its tests in Debian's Chromium with playwright-core.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{cargo, root, run, step, target_dir};

/// The wasm-bindgen CLI must be exactly the version of the `wasm-bindgen` crate in Cargo.lock.
const WASM_BINDGEN: &str = "0.2.130";
const CHROMIUM: &str = "/usr/bin/chromium";

/// Where the static site is built; `host/build.rs` embeds it from here.
pub fn site_dir() -> PathBuf {
    target_dir().join("playground")
}

fn locked_wasm_bindgen_version() -> anyhow::Result<String> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).context("Cargo.lock")?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasm-bindgen\"" {
            let v =
                lines.next().and_then(|l| l.strip_prefix("version = \"")).and_then(|l| l.strip_suffix('"'));
            return v.map(str::to_string).context("Cargo.lock: wasm-bindgen has no version line");
        }
    }
    bail!("Cargo.lock has no wasm-bindgen package")
}

fn installed_wasm_bindgen() -> Option<String> {
    let out = Command::new("wasm-bindgen").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace().nth(1).map(str::to_string)
}

fn ensure_wasm_bindgen() -> anyhow::Result<()> {
    let locked = locked_wasm_bindgen_version()?;
    if locked != WASM_BINDGEN {
        bail!(
            "Cargo.lock has wasm-bindgen {locked} but xtask installs the CLI {WASM_BINDGEN}: update WASM_BINDGEN"
        );
    }
    match installed_wasm_bindgen() {
        Some(v) if v == WASM_BINDGEN => Ok(()),
        found => {
            step(&format!(
                "installing wasm-bindgen-cli {WASM_BINDGEN} (found {}; a few minutes, once)",
                found.as_deref().unwrap_or("none")
            ));
            // Not --locked: its lock file names a crate version the registry here lacks.
            run(
                &crate::cargo_program(),
                &["install", "wasm-bindgen-cli", "--version", WASM_BINDGEN, "--force"],
            )
        }
    }
}

fn copy_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Builds the static site into `<target>/playground`: the page, the engine (wasm-bindgen
/// `--target web`), the default policy and its test cases, and a service worker whose cache
/// is named after a digest of everything else.
pub fn build() -> anyhow::Result<PathBuf> {
    ensure_wasm_bindgen()?;
    step("playground: web-playground for wasm32-unknown-unknown, through wasm-bindgen");
    let wasm_target = target_dir().join("wasm");
    let wasm_target_s = wasm_target.to_str().context("target path is not UTF-8")?;
    cargo(&[
        "build",
        "-p",
        "web-playground",
        "--lib",
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "web-release",
        "--target-dir",
        wasm_target_s,
    ])?;
    let site = site_dir();
    if site.exists() {
        std::fs::remove_dir_all(&site).with_context(|| site.display().to_string())?;
    }
    std::fs::create_dir_all(&site)?;
    let wasm = wasm_target.join("wasm32-unknown-unknown/web-release/web_playground.wasm");
    let pkg = site.join("pkg");
    run(
        "wasm-bindgen",
        &[
            "--target",
            "web",
            "--no-typescript",
            "--out-dir",
            pkg.to_str().context("target path is not UTF-8")?,
            wasm.to_str().context("target path is not UTF-8")?,
        ],
    )?;
    let www = root().join("web-playground/www");
    for name in ["index.html", "app.js", "style.css"] {
        copy_file(&www.join(name), &site.join(name))?;
    }
    copy_file(&root().join("policies/celine.json"), &site.join("default-policy.json"))?;
    copy_file(&root().join("policies/tests/celine.json"), &site.join("default-tests.json"))?;

    let mut digest = DefaultHasher::new();
    let mut files = Vec::new();
    collect(&site, &mut files)?;
    files.sort();
    for f in &files {
        digest.write(f.to_string_lossy().as_bytes());
        digest.write(&std::fs::read(f)?);
    }
    let sw = std::fs::read_to_string(www.join("sw.js"))?;
    std::fs::write(site.join("sw.js"), sw.replace("BUILD", &format!("{:016x}", digest.finish())))?;
    let size: u64 = files.iter().map(|f| f.metadata().map(|m| m.len()).unwrap_or(0)).sum();
    println!("   static site: {} ({} files, {} KB)", site.display(), files.len() + 1, size / 1024);
    Ok(site)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() { collect(&p, out)? } else { out.push(p) }
    }
    Ok(())
}

/// Debian's Chromium (playwright-core drives it; its own browser download does not work here).
fn ensure_chromium() -> anyhow::Result<()> {
    crate::apt::ensure(&["chromium", "fonts-dejavu-core"], &[CHROMIUM], "the playground's browser tests")
}

/// The browser tests: `node --test` over `web-playground/browser-tests/*.test.mjs`, which start the
/// host on a free loopback port and drive the page in headless Chromium.
pub fn browser_tests(host_bin: &Path) -> anyhow::Result<()> {
    step("playground in a real browser (Chromium + playwright-core)");
    ensure_chromium()?;
    let tests = root().join("web-playground/browser-tests");
    // --prefer-offline: npm's own cache when it has the package, the registry otherwise.
    let status = Command::new("npm")
        .args(["ci", "--prefer-offline", "--no-audit", "--no-fund"])
        .current_dir(&tests).status().context(
        "cannot run npm: the browser tests need Node.js 20.11 or newer with npm (https://nodejs.org or your distribution)",
    )?;
    if !status.success() {
        bail!("npm ci in web-playground/browser-tests failed ({status})");
    }
    let artifacts = root().join("test-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let mut files: Vec<String> = std::fs::read_dir(&tests)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    files.sort();
    println!("$ node --test {}", files.join(" "));
    let status = Command::new("node")
        .arg("--test")
        .arg("--test-concurrency=1")
        .args(&files)
        .env("MQTT_POLICY_BIN", host_bin)
        .env("CHROMIUM", CHROMIUM)
        .env("PLAYGROUND_ARTIFACTS", &artifacts)
        .current_dir(root())
        .status()
        .context("cannot run node")?;
    if !status.success() {
        bail!("the playground's browser tests failed ({status}); screenshots are in {}", artifacts.display());
    }
    println!("   screenshot: {}", artifacts.join("playground.png").display());
    Ok(())
}
