//! Real servers for the project's tests, each on a free loopback port and stopped (by its
//! PID) when dropped: Mosquitto with the project's plugin ([`mosquitto`]), Keycloak
//! ([`keycloak`]) and Redis ([`redis`]); and a JSON document served over HTTP ([`document`]).
//! A missing program fails the test with how to get it; nothing is skipped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod document;
pub mod keycloak;
pub mod mosquitto;
pub mod redis;

/// The repository's root: the nearest folder holding `Cargo.lock` above the running test's
/// package. Found at run time (`cargo test` sets `CARGO_MANIFEST_DIR`), since one target
/// directory may serve two checkouts and a compiled-in path would name the other one.
pub fn repository() -> PathBuf {
    let start = package_dir();
    let mut dir = start.as_path();
    loop {
        if dir.join("Cargo.lock").is_file() {
            return dir.to_path_buf();
        }
        match dir.parent() {
            Some(up) => dir = up,
            None => return start.join("../.."),
        }
    }
}

/// The running test's package folder (`CARGO_MANIFEST_DIR` at run time).
pub fn package_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// The cargo target directory (`CARGO_TARGET_DIR`, else `<repository>/target`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { repository().join(t) })
        .unwrap_or_else(|| repository().join("target"))
}

/// A port nothing listens on now (the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A blocking HTTP client.
pub fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

/// A blocking HTTP client that gives up on an answer after `timeout`.
pub fn http_within(timeout: Duration) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(timeout).build().expect("an HTTP client")
}

/// Waits until `done` holds, checking every 20 ms; panics with `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The test-only bundle signing keys (`testing/support/keys/`): the operator's private key
/// and its public half, and another public key that signed nothing.
pub fn bundle_keys() -> (PathBuf, PathBuf, PathBuf) {
    let dir = repository().join("testing/support/keys");
    (dir.join("bundle-signing.pem"), dir.join("bundle-signing.pub.pem"), dir.join("other.pub.pem"))
}

/// A fresh Ed25519 key pair made by `openssl` exactly as the documentation tells operators
/// (`openssl genpkey -algorithm ed25519`, `openssl pkey -pubout`): private and public PEM
/// files in `dir`, named after `name`.
pub fn openssl_ed25519(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let (private, public) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.pub.pem")));
    let run = |args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("openssl is needed to make test keys ({e}): apt-get install openssl"));
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "ed25519".as_ref(),
        "-out".as_ref(),
        private.as_os_str(),
    ]);
    run(&[
        "pkey".as_ref(),
        "-in".as_ref(),
        private.as_os_str(),
        "-pubout".as_ref(),
        "-out".as_ref(),
        public.as_os_str(),
    ]);
    (private, public)
}
