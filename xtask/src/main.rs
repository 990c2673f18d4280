//! `cargo xtask`: the project's build and test automation, in Rust rather than shell.
//!
//! - `cargo xtask serve`: build, then run the service in dev mode on 127.0.0.1:8009, and a
//!   local Mosquitto with the plugin in dev mode beside it.
//! - `cargo xtask build`: the policy module (a WebAssembly component), the playground, the host
//!   and the Mosquitto plugin.
//! - `cargo xtask e2e`: the plugin inside a real Mosquitto with real MQTT clients.
//! - `cargo xtask image`: the container images `mqtt-policy/mosquitto` and `mqtt-policy/serve`;
//!   `cargo xtask stack` also runs the compose stack test against them.
//! - `cargo xtask playground`: the browser playground as a static site.
//! - `cargo xtask test`: everything CI runs (see CONTRIBUTING.md).
//! - `cargo xtask keycloak`: the tests against a real Keycloak.
//! - `cargo xtask fuzz --seconds N`: the cargo-fuzz targets in `fuzz/`, N seconds each.
//! - `cargo xtask bench`: the criterion decision benchmarks, summarised as a ratio table.
//! - `cargo xtask bench-http`: wrk against `/mqtt/acl` beside a trivial axum floor.
//! - `cargo xtask bench-memory`: resident memory under floods of unique topics and tokens.
//! - `cargo xtask sync-conformance`: a maintainer's tool: refresh `corpus/conformance.jsonl` from
//!   an upstream conformance folder beside the checkout, when there is one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

mod apt;
mod bench_broker;
mod bench_http;
mod bench_memory;
mod broker;
mod fuzz;
mod image;
mod keycloak;
mod playground;
mod soak;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  serve [ARGS]       build, then run `mqtt-policy serve --dev` on 127.0.0.1:8009 (extra ARGS are passed on)
                     and a local Mosquitto with the plugin in dev mode (port 1883, or a free one)
  build              build the policy module (WASM component), the playground, mqtt-policy and the plugin
  e2e                the Mosquitto plugin end to end: real broker, real MQTT clients, Keycloak
  image              build the container images mqtt-policy/mosquitto and mqtt-policy/serve (podman or docker)
  stack              build the images, then run compose.yaml's stack against real clients and Keycloak
  playground         build the browser playground as a static site (target/playground)
  test               run the whole test suite (what CI runs)
  keycloak           build, then only the tests against a real Keycloak (downloaded and cached)
  fuzz [--seconds N] every fuzz target in fuzz/ for N seconds (default 60; nightly + cargo-fuzz, installed if missing)
  bench              run the decision benchmarks and print a ratio table
  bench-http         wrk against /mqtt/acl (jwt and http modes) beside a trivial axum floor
  bench-swap         hot-swap latency, and throughput during repeated swaps vs. steady
  bench-memory       the service's memory under floods of unique 60 KB topics and tokens (RSS flat?)
  bench-broker       deliveries/s through Mosquitto with the plugin vs. no auth and acl_file, QoS 0/1
  soak [--minutes M | --seconds S]
                     the service under mixed load while policies swap and keys rotate (default 10 min):
                     no 5xx, no wrong decision (checked against policy-core), no failed swap, flat RSS
  sync-conformance   (maintainers) copy an upstream conformance/decisions.jsonl into corpus/";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("serve") => serve(&args[1..]),
        Some("build") => build().map(|_| ()),
        Some("playground") => playground::build().map(|_| ()),
        Some("keycloak") => build().and_then(|_| keycloak::tests()),
        Some("e2e") => broker::e2e(),
        Some("image") => image::build(),
        Some("stack") => image::stack_test(),
        Some("test") => test(),
        Some("fuzz") => fuzz::command(&args[1..]),
        Some("bench") => bench(),
        Some("bench-http") => bench_http::bench(),
        Some("bench-swap") => bench_http::bench_swap(),
        Some("bench-memory") => bench_memory::bench(),
        Some("soak") => soak::command(&args[1..]),
        Some("bench-broker") => bench_broker::bench(),
        Some("sync-conformance") => sync_conformance(),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown command '{other}'\n\n{USAGE}")),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

/// The repository root (xtask lives one level below it).
/// The checkout this xtask runs for. Read at run time (`cargo run` sets it): a target
/// directory shared by two checkouts (CI's clone and a working copy) holds one xtask binary,
/// and a path compiled into it would name the other checkout.
fn root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// The cargo running this xtask (`cargo run` sets `CARGO`), else the one on the `PATH`.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

fn step(what: &str) {
    println!("\n==> {what}");
}

/// Runs a command from the repository root, echoing it, failing on a non-zero exit.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    run_env(program, args, &[])
}

fn run_env(program: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<()> {
    println!("$ {program} {}", args.join(" "));
    let started = Instant::now();
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    println!("   ({:.1}s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_env(args, &[])
}

fn cargo_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> anyhow::Result<()> {
    let mut all: Vec<&str> = args.to_vec();
    // In CI the lock file is the truth: never let a build quietly pick new versions.
    if std::env::var_os("CI").is_some() && matches!(args[0], "build" | "test" | "clippy" | "bench") {
        all.insert(1, "--locked");
    }
    run_env(&cargo_program(), &all, env)
}

/// The upstream conformance cases (`conformance/decisions.jsonl` in `MQTT_POLICY_SHARED_DIR`,
/// else in `../shared`), when a maintainer has them beside the checkout. Nothing needs them:
/// the project's corpus is its own, committed.
fn shared_corpus() -> Option<PathBuf> {
    let dir = std::env::var_os("MQTT_POLICY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared"));
    let f = dir.join("conformance/decisions.jsonl");
    f.exists().then_some(f)
}

const CORPUS_COPY: &str = "corpus/conformance.jsonl";

fn check_conformance_copy() -> anyhow::Result<()> {
    step("conformance corpus: is corpus/conformance.jsonl the upstream one (when a maintainer has it)?");
    let Some(shared) = shared_corpus() else {
        println!("   no upstream conformance folder beside this checkout; the committed corpus stands");
        return Ok(());
    };
    let ours = std::fs::read(root().join(CORPUS_COPY)).context(CORPUS_COPY)?;
    let theirs = std::fs::read(&shared)?;
    if ours != theirs {
        bail!(
            "{CORPUS_COPY} differs from {}: run `cargo xtask sync-conformance`, make the new cases pass, and commit",
            shared.display()
        );
    }
    println!("   in sync with {}", shared.display());
    Ok(())
}

fn sync_conformance() -> anyhow::Result<()> {
    let shared = shared_corpus().context(
        "no upstream conformance/decisions.jsonl beside the checkout (MQTT_POLICY_SHARED_DIR names its folder)",
    )?;
    std::fs::copy(&shared, root().join(CORPUS_COPY))?;
    println!("copied {} to {CORPUS_COPY}", shared.display());
    Ok(())
}

/// `rustfmt` and `clippy` come with rustup's default profile; a minimal toolchain lacks them.
fn ensure_components() -> anyhow::Result<()> {
    let have = |sub: &str| {
        Command::new(cargo_program())
            .args([sub, "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !(have("fmt") && have("clippy")) {
        step("installing the rustfmt and clippy components");
        run("rustup", &["component", "add", "rustfmt", "clippy"])?;
    }
    Ok(())
}

/// Where `cargo xtask build` puts the policy module; `host/build.rs` embeds it from here.
fn module_path() -> PathBuf {
    target_dir().join("policy-module/policy.wasm")
}

fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("cannot run rustup (the wasm32 target is installed with it)")?;
    if !String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == "wasm32-unknown-unknown") {
        step("installing the wasm32-unknown-unknown target");
        run("rustup", &["target", "add", "wasm32-unknown-unknown"])?;
    }
    Ok(())
}

/// Builds a guest crate for `wasm32-unknown-unknown` and wraps the core module into a
/// component (no imports, so no WASI adapter). Returns the component's path.
fn build_component(package: &str, out_name: &str) -> anyhow::Result<PathBuf> {
    // Its own target directory, so cargo's build lock does not serialise it behind the host.
    let wasm_target = target_dir().join("wasm");
    let wasm_target = wasm_target.to_str().context("target path is not UTF-8")?;
    cargo(&[
        "build",
        "-p",
        package,
        "--target",
        "wasm32-unknown-unknown",
        "--profile",
        "wasm-release",
        "--target-dir",
        wasm_target,
    ])?;
    let core = Path::new(wasm_target)
        .join("wasm32-unknown-unknown/wasm-release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    let bytes = std::fs::read(&core).with_context(|| core.display().to_string())?;
    let component = wit_component::ComponentEncoder::default()
        .module(&bytes)
        .context("the core module has no usable component-type section")?
        .validate(true)
        .encode()
        .context("wrapping the core module into a component")?;
    let out = module_path().with_file_name(out_name);
    std::fs::create_dir_all(out.parent().unwrap())?;
    std::fs::write(&out, &component)?;
    println!("   component: {} ({} KB)", out.display(), component.len() / 1024);
    Ok(out)
}

/// The policy module (embedded by the host), the example and test-only modules, then the host.
fn build() -> anyhow::Result<PathBuf> {
    ensure_wasm_target()?;
    step("policy module: policy-wasm for wasm32-unknown-unknown");
    let out = build_component("policy-wasm", "policy.wasm")?;
    step("example module: examples/scope-convention (a logic change, for hot swaps)");
    build_component("scope-convention", "scope-convention.wasm")?;
    step("test module: testing/faulty-module (misbehaves on purpose)");
    build_component("faulty-module", "faulty.wasm")?;
    playground::build()?;
    step("host: mqtt-policy (embeds the policy module and the playground), and the Mosquitto plugin");
    cargo(&["build", "-p", "mqtt-policy", "-p", "mosquitto-plugin"])?;
    println!("   plugin: {}", broker::plugin_path().display());
    Ok(out)
}

/// Builds everything, then runs the service in dev mode in the foreground and the dev broker
/// beside it (Ctrl-C stops both).
fn serve(extra: &[String]) -> anyhow::Result<()> {
    build()?;
    let bin = target_dir().join("debug/mqtt-policy");
    step("Mosquitto with the plugin in dev mode");
    let (mut broker, port) = broker::start_dev_broker(&bin)?;
    println!(
        "   Mosquitto on 127.0.0.1:{port}, deciding with the plugin (policies/celine.json). In another terminal:\n\
         \x20    TOKEN=$({bin} token --dev --sub alice --groups viewers)\n\
         \x20    mosquitto_sub -h 127.0.0.1 -p {port} -u alice -P \"$TOKEN\" -t 'celine/telemetry/+/+/readings' -v\n\
         \x20    ADMIN=$({bin} token --dev --sub adam --groups admins)\n\
         \x20    mosquitto_pub -h 127.0.0.1 -p {port} -u adam -P \"$ADMIN\" -t celine/telemetry/meter/m1/readings -m '42 kWh'",
        bin = bin.display()
    );
    let served = serve_http(&bin, extra);
    // Ctrl-C reached the broker too; if the service stopped otherwise, stop the broker (by PID).
    let _ = broker.kill();
    let _ = broker.wait();
    served
}

fn serve_http(bin: &Path, extra: &[String]) -> anyhow::Result<()> {
    step("mqtt-policy serve --dev (Ctrl-C stops it and the broker)");
    println!(
        "   open http://127.0.0.1:8009/playground/ to try rules in the browser, or\n\
         \x20  in another terminal, mint a token and ask:\n\
         \x20    TOKEN=$({} token --dev --sub alice --groups viewers)\n\
         \x20    curl -i -X POST http://127.0.0.1:8009/mqtt/acl -H \"Authorization: Bearer $TOKEN\" \\\n\
         \x20         -H 'Content-Type: application/json' -d '{{\"clientid\":\"c1\",\"topic\":\"celine/telemetry/meter/m1/readings\",\"acc\":1}}'\n\
         \x20  readiness and metrics: http://127.0.0.1:8010/readyz, http://127.0.0.1:8010/metrics",
        bin.display()
    );
    let status = Command::new(bin)
        .args(["serve", "--dev", "--policy", "policies/celine.json"])
        .args(extra)
        .current_dir(root())
        .status()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    if !status.success() {
        bail!("mqtt-policy serve exited with {status}");
    }
    Ok(())
}

fn test() -> anyhow::Result<()> {
    let started = Instant::now();
    ensure_components()?;
    check_conformance_copy()?;
    build()?;
    step("formatting");
    cargo(&["fmt", "--all", "--check"])?;
    step("clippy (warnings are errors)");
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    apt::ensure_mosquitto()?;
    apt::ensure_redis()?;
    apt::ensure_valgrind()?;
    step("unit, property, conformance, CLI, server and broker-plugin tests");
    cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "policy-wasm",
        "--exclude",
        "faulty-module",
        "--exclude",
        "scope-convention",
    ])?;
    fuzz::run(FUZZ_SECONDS_IN_TESTS)?;
    soak::run(&target_dir().join("debug/mqtt-policy"), SOAK_IN_TESTS)?;
    step("the default policy: lint and its own test cases");
    let bin = target_dir().join("debug/mqtt-policy");
    let bin = bin.to_str().context("target path is not UTF-8")?;
    run(bin, &["lint", "--deny-warnings", "--policy", "policies/celine.json"])?;
    run(bin, &["test", "--policy", "policies/celine.json", "policies/tests"])?;
    playground::browser_tests(Path::new(bin))?;
    keycloak::tests()?;
    image::stack_test()?;
    println!("\nall suites passed in {:.0}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Seconds per fuzz target in `cargo xtask test` (a longer run: `cargo xtask fuzz`).
const FUZZ_SECONDS_IN_TESTS: u64 = 5;
/// The soak's length in `cargo xtask test` (a longer run: `cargo xtask soak`).
const SOAK_IN_TESTS: std::time::Duration = std::time::Duration::from_secs(30);

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root().join("target"))
}

fn bench() -> anyhow::Result<()> {
    step("criterion: policy-core decision latency");
    cargo(&["bench", "-p", "policy-core", "--bench", "decision"])?;
    let dir = target_dir().join("criterion");
    let median = |group: &str, name: &str| -> anyhow::Result<f64> {
        let f = dir.join(group).join(name.replace('/', "_")).join("new/estimates.json");
        let text = std::fs::read_to_string(&f).with_context(|| f.display().to_string())?;
        median_ns(&text).with_context(|| format!("no median in {}", f.display()))
    };
    println!("\n| request | default policy | 10 rules | 1,000 rules | 10,000 rules | 10,000 / 10 |");
    println!("|---|---|---|---|---|---|");
    for name in [
        "publish/allow",
        "publish/deny",
        "read/allow",
        "read/deny",
        "subscribe/allow",
        "subscribe/deny",
        "subscribe/deny-wide",
    ] {
        let d = median("default", name).map(|v| format!("{v:.0} ns")).unwrap_or_else(|_| "-".into());
        let r10 = median("rules-10", name)?;
        let r1k = median("rules-1000", name)?;
        let r10k = median("rules-10000", name)?;
        println!("| {name} | {d} | {r10:.0} ns | {r1k:.0} ns | {r10k:.0} ns | {:.2}x |", r10k / r10);
    }
    let load = median("load_rules-10000", "")?;
    println!("\nloading (parse, validate, index) a 10,000-rule document: {:.1} ms", load / 1e6);
    println!("\n| diff, one rule changed | time | / loading one document of that size |");
    println!("|---|---|---|");
    let ms = |ns: f64| format!("{:.2} ms", ns / 1e6);
    println!("| default policy (viewers' telemetry narrowed) | {} | - |", ms(median("diff", "default")?));
    for n in ["1000", "10000"] {
        let load = median(&format!("load_rules-{n}"), "")?;
        for (case, label) in [("", "a viewer rule narrowed"), ("-wide", "the admin rule `#` narrowed")] {
            let d = median("diff", &format!("rules-{n}{case}"))?;
            println!("| {n} rules, {label} | {} | {:.1}x |", ms(d), d / load);
        }
    }
    Ok(())
}

/// The `median.point_estimate` of a criterion `estimates.json`, without a JSON dependency.
fn median_ns(text: &str) -> Option<f64> {
    let after = &text[text.find("\"median\"")?..];
    let after = &after[after.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = after.find([',', '}'])?;
    after[..end].trim().parse().ok()
}
