//! `cargo xtask image`: the container images `mqtt-policy/mosquitto` and `mqtt-policy/serve`
//! from `deploy/*/Containerfile`, with binaries built here (profile `container`: optimised,
//! stripped), so the images hold no compiler; and the stack test (`deploy/tests/stack.rs`),
//! which runs `compose.yaml`'s services from those images and drives them with real clients.
//!
//! Podman is used when present (installed from Debian when missing, as root), else Docker.
//! Podman runs here with a `containers.conf` of xtask's own ([`podman_conf`]). When
//! `debian:bookworm-slim` can be neither found nor pulled (no registry reachable), the base
//! image is made from Debian's packages with `mmdebstrap` and tagged with that name, so the
//! Containerfiles stay the ones users build.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::{apt, cargo, cargo_env, root, step, target_dir};

/// The images and the Containerfile folder each is built from.
const IMAGES: [(&str, &str); 2] = [("mqtt-policy/mosquitto", "mosquitto"), ("mqtt-policy/serve", "serve")];
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
/// The dpkg path filters of Debian's slim images.
const SLIM_PATHS: [&str; 6] = [
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
];

/// The container tool: `podman`, else `docker`, else Debian's podman installed now.
fn tool() -> anyhow::Result<&'static str> {
    let on_path = |p: &str| Command::new(p).arg("--version").output().is_ok_and(|o| o.status.success());
    if on_path("podman") {
        return Ok("podman");
    }
    if on_path("docker") {
        return Ok("docker");
    }
    ensure_podman()?;
    Ok("podman")
}

/// The `containers.conf` xtask's podman commands run with (`CONTAINERS_CONF`): the `runc`
/// runtime and the `cgroupfs` cgroup manager, which work on hosts without systemd and with
/// hybrid cgroups (where podman's default `crun` fails), and no default ulimits (a container
/// may not be allowed to raise RLIMIT_NPROC). Docker ignores it.
fn podman_conf() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("podman/containers.conf");
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(
        &path,
        "# Written by `cargo xtask image` (xtask/src/image.rs) for its own podman commands.\n\
         [containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n",
    )?;
    Ok(path)
}

/// A command of the container tool, with xtask's podman configuration.
fn container_command(tool: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(tool);
    if tool == "podman" {
        command.env("CONTAINERS_CONF", podman_conf()?);
    }
    Ok(command)
}

fn run_tool(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    println!("$ {tool} {}", args.join(" "));
    let status = container_command(tool)?.args(args).current_dir(root()).status()?;
    if !status.success() {
        bail!("`{tool} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn image_exists(tool: &str, image: &str) -> anyhow::Result<bool> {
    Ok(image_id(tool, image)?.is_some())
}

fn image_id(tool: &str, image: &str) -> anyhow::Result<Option<String>> {
    let out = container_command(tool)?.args(["image", "inspect", "--format", "{{.Id}}", image]).output()?;
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok((out.status.success() && !id.is_empty()).then_some(id))
}

/// `debian:bookworm-slim`: present, pulled, or made from Debian's packages.
fn ensure_base_image(tool: &str) -> anyhow::Result<()> {
    if image_exists(tool, BASE_IMAGE)? {
        return Ok(());
    }
    step(&format!("base image {BASE_IMAGE}: pulling it"));
    if container_command(tool)?.args(["pull", BASE_IMAGE]).status()?.success() {
        return Ok(());
    }
    if tool != "podman" {
        bail!("cannot pull {BASE_IMAGE}: the images build on it");
    }
    step(&format!(
        "no registry reachable: making {BASE_IMAGE} from Debian's packages (mmdebstrap, minbase, slimmed as Debian's own)"
    ));
    apt::ensure(&["mmdebstrap"], &["/usr/bin/mmdebstrap"], "making the base image from Debian's packages")?;
    let tarball = target_dir().join("podman/bookworm-minbase.tar");
    // What Debian's official slim image is: minbase, /usr merged without the usrmerge package
    // (which would bring perl), no manuals, documentation or translations (the dpkg settings
    // stay in the image, so packages installed later leave them out too), no package lists.
    let made = Command::new("mmdebstrap")
        .args(["--variant=minbase", "--quiet", "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"])
        .args(SLIM_PATHS.iter().map(|p| format!("--dpkgopt={p}")))
        .arg("--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin")
        .arg("bookworm")
        .arg(&tarball)
        .status()
        .context("cannot run mmdebstrap")?;
    if !made.success() {
        bail!("mmdebstrap failed ({made})");
    }
    let tarball_arg = tarball.to_str().context("target path is not UTF-8")?;
    let label = "LABEL org.opencontainers.image.description=\"Debian bookworm minbase, made from Debian's \
                 packages by cargo xtask image\"";
    run_tool(tool, &["import", "--change", "CMD [\"bash\"]", "--change", label, tarball_arg, BASE_IMAGE])?;
    std::fs::remove_file(&tarball).ok();
    Ok(())
}

/// Today's date (UTC), for the images' package upgrade step.
fn today() -> anyhow::Result<String> {
    let out = Command::new("date").args(["-u", "+%F"]).output().context("cannot run date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn copy_into(from: &Path, dir: &Path) -> anyhow::Result<()> {
    let to = dir.join(from.file_name().context("no file name")?);
    std::fs::copy(from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The build context of one image: its Containerfile folder, the health probe, the default
/// policy with its test cases, and the binary it runs.
fn stage(folder: &str, binary: &Path) -> anyhow::Result<PathBuf> {
    let context = target_dir().join("image-context").join(folder);
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(context.join("tests"))?;
    for entry in std::fs::read_dir(root().join("deploy").join(folder))? {
        copy_into(&entry?.path(), &context)?;
    }
    copy_into(&root().join("deploy/http-probe"), &context)?;
    copy_into(binary, &context)?;
    std::fs::copy(root().join("policies/celine.json"), context.join("policy.json"))?;
    for entry in std::fs::read_dir(root().join("policies/tests"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            copy_into(&path, &context.join("tests"))?;
        }
    }
    Ok(context)
}

/// Builds the binaries and both images with podman or Docker; prints each image's size.
pub fn build() -> anyhow::Result<()> {
    build_with(tool()?)
}

/// Debian's podman and runc (the runtime podman needs on hosts without systemd).
fn ensure_podman() -> anyhow::Result<()> {
    apt::ensure(&["podman", "runc"], &["/usr/bin/podman", "/usr/sbin/runc"], "the container images")
}

fn build_with(tool: &str) -> anyhow::Result<()> {
    crate::ensure_wasm_target()?;
    step("policy module and playground (embedded by mqtt-policy)");
    crate::build_component("policy-wasm", "policy.wasm")?;
    crate::playground::build()?;
    step("mqtt-policy and the Mosquitto plugin, profile `container` (optimised, stripped)");
    cargo(&["build", "--profile", "container", "-p", "mqtt-policy", "-p", "mosquitto-plugin"])?;
    let binaries = target_dir().join("container");
    ensure_base_image(tool)?;
    for (image, folder) in IMAGES {
        let binary = match folder {
            "mosquitto" => binaries.join("libmqtt_policy_mosquitto.so"),
            _ => binaries.join("mqtt-policy"),
        };
        let context = stage(folder, &binary)?;
        step(&format!("image {image} (deploy/{folder}/Containerfile)"));
        let context = context.to_str().context("target path is not UTF-8")?;
        let tag = format!("{image}:latest");
        let upgrade_day = format!("UPGRADE_DAY={}", today()?);
        let mut args = vec!["build", "--tag", &tag, "--file", "Containerfile", "--build-arg", &upgrade_day];
        if tool == "podman" {
            // The base image is local by now; Docker's format keeps HEALTHCHECK; the host's
            // network reaches Debian's mirror.
            args.extend(["--pull=never", "--format", "docker", "--network", "host"]);
        }
        args.push(context);
        let mut command = container_command(tool)?;
        command.args(&args).current_dir(context);
        println!("$ {tool} {}", args.join(" "));
        let previous = image_id(tool, &tag)?;
        let status = command.status()?;
        if !status.success() {
            bail!("building {image} failed ({status})");
        }
        // The build this one replaces, untagged now: removed, unless a container still uses it.
        if let Some(previous) = previous
            && image_id(tool, &tag)?.as_ref() != Some(&previous)
        {
            let _ = container_command(tool)?.args(["image", "rm", &previous]).output();
        }
    }
    step("the binaries run on the images' C library");
    let runs = |image: &str, entrypoint: &str, args: &[&str]| -> anyhow::Result<()> {
        let out = container_command(tool)?
            .args(["run", "--rm", "--network", "none", "--entrypoint", entrypoint, image])
            .args(args)
            .output()?;
        let said =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() || said.contains("not found") {
            bail!(
                "{image}: `{entrypoint} {}` failed:\n{said}\nThe binaries are built on this machine and link its \
                 C library: build them on Debian bookworm (or a distribution with an older glibc)",
                args.join(" ")
            );
        }
        Ok(())
    };
    runs("mqtt-policy/serve", "mqtt-policy", &["--version"])?;
    runs("mqtt-policy/mosquitto", "ldd", &["/usr/lib/mosquitto/libmqtt_policy_mosquitto.so"])?;
    for (image, _) in IMAGES {
        let size =
            container_command(tool)?.args(["image", "inspect", "--format", "{{.Size}}", image]).output()?;
        let bytes: f64 = String::from_utf8_lossy(&size.stdout).trim().parse().unwrap_or(0.0);
        println!("   {image}:latest  {:.0} MB", bytes / 1e6);
    }
    Ok(())
}

/// podman-compose from PyPI, in a virtual environment of its own under the cache (Debian
/// bookworm's 1.0.3 puts a container with `network_mode` on the project network as well, which
/// podman refuses; the stack test needs `network_mode`).
fn ensure_podman_compose() -> anyhow::Result<PathBuf> {
    let venv = crate::keycloak::cache_dir().join(format!("podman-compose-{PODMAN_COMPOSE}"));
    let program = venv.join("bin/podman-compose");
    if program.exists() {
        return Ok(program);
    }
    step(&format!("installing podman-compose {PODMAN_COMPOSE} from PyPI into {}", venv.display()));
    let venv_arg = venv.to_str().context("cache path is not UTF-8")?;
    crate::run("/usr/bin/python3", &["-m", "venv", venv_arg])?;
    let pip = venv.join("bin/pip");
    let requirement = format!("podman-compose=={PODMAN_COMPOSE}");
    crate::run(pip.to_str().context("cache path is not UTF-8")?, &["install", "--quiet", &requirement])?;
    Ok(program)
}

const PODMAN_COMPOSE: &str = "1.6.0";

/// The stack test: `compose.yaml`'s broker and policy service from the images just built,
/// Keycloak outside the stack, the CELINE guide's paho and mqtt.js clients.
pub fn stack_test() -> anyhow::Result<()> {
    ensure_podman()?;
    build_with("podman")?;
    step("the compose stack with real clients (deploy/tests/stack.rs)");
    apt::ensure(
        &["python3-paho-mqtt", "python3-venv", "slirp4netns"],
        &[
            "/usr/lib/python3/dist-packages/paho/mqtt/client.py",
            "/usr/share/doc/python3-venv/copyright",
            "/usr/bin/slirp4netns",
        ],
        "the stack test",
    )?;
    let clients = root().join("deploy/clients");
    let status = Command::new("npm")
        .args(["ci", "--prefer-offline", "--no-audit", "--no-fund"])
        .current_dir(&clients)
        .status()
        .context("cannot run npm: the stack test's mqtt.js client needs Node.js 20 or newer with npm")?;
    if !status.success() {
        bail!("npm ci in deploy/clients failed ({status})");
    }
    let compose = ensure_podman_compose()?;
    let home = crate::keycloak::ensure()?;
    let java = crate::keycloak::java_home()?;
    let conf = podman_conf()?;
    cargo_env(
        &["test", "-p", "deploy", "--test", "stack", "--", "--ignored", "--nocapture"],
        &[
            ("MQTT_POLICY_KEYCLOAK_HOME", home.as_os_str()),
            ("MQTT_POLICY_KEYCLOAK_JAVA_HOME", java.as_os_str()),
            ("MQTT_POLICY_COMPOSE", compose.as_os_str()),
            ("CONTAINERS_CONF", conf.as_os_str()),
        ],
    )
}
