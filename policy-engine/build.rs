//! Embeds the policy module `cargo xtask build` made (`<target>/policy-module/policy.wasm`) as
//! the built-in module of every front end (the server and the Mosquitto plugin). Without it
//! the crate still builds: `embedded_module()` is then `None` and a module file must be named.

use std::path::PathBuf;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(embedded_module)");
    println!("cargo::rerun-if-env-changed=MQTT_POLICY_MODULE_WASM");
    println!("cargo::rerun-if-env-changed=CARGO_TARGET_DIR");
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { manifest.join("..").join(t) })
        .unwrap_or_else(|| manifest.join("../target"));
    let module = match std::env::var_os("MQTT_POLICY_MODULE_WASM") {
        Some(p) => PathBuf::from(p),
        None => target.join("policy-module/policy.wasm"),
    };
    println!("cargo::rerun-if-changed={}", module.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("policy.wasm");
    if module.exists() {
        std::fs::copy(&module, &out).expect("copy the policy module");
        println!("cargo::rustc-cfg=embedded_module");
    } else {
        std::fs::write(&out, b"").unwrap();
        println!(
            "cargo::warning=no policy module at {}: nothing embeds one (run `cargo xtask build`)",
            module.display()
        );
    }
}
