//! Embeds the playground's static site (`<target>/playground/`, made by `cargo xtask build`),
//! served at `/playground/`. Without it the binary still builds and `/playground/` says how to
//! build it. (The built-in policy module is embedded by `policy-engine`.)

use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    println!("cargo::rerun-if-env-changed=MQTT_POLICY_PLAYGROUND_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { manifest.join("..").join(t) })
        .unwrap_or_else(|| manifest.join("../target"));
    embed_playground(
        std::env::var_os("MQTT_POLICY_PLAYGROUND_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| target.join("playground")),
    );
}

/// Writes `playground_assets.rs`: `(path, bytes)` for every file of the static site.
fn embed_playground(site: PathBuf) {
    println!("cargo::rerun-if-changed={}", site.display());
    let mut files = Vec::new();
    if site.join("index.html").exists() {
        collect(&site, &mut files);
    } else {
        println!(
            "cargo::warning=no playground at {}: /playground/ is not served (run `cargo xtask build`)",
            site.display()
        );
    }
    files.sort();
    let mut code = String::from(
        "/// The playground's files, by path below `/playground/`.\npub static ASSETS: &[(&str, &[u8])] = &[\n",
    );
    for f in &files {
        let rel = f.strip_prefix(&site).unwrap().to_string_lossy().replace('\\', "/");
        code.push_str(&format!("    ({rel:?}, include_bytes!({:?})),\n", f.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("playground_assets.rs"), code)
        .unwrap();
}

fn collect(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            collect(&p, out);
        } else {
            out.push(p);
        }
    }
}
