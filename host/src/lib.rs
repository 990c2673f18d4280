//! `mqtt-policy`: the CELINE MQTT policy service, as a library the binary and the tests share.
//!
//! The host translates; `policy-core` (inside the policy module) decides. Modules:
//! `serve`/`goauth` (HTTP for mosquitto-go-auth), `auth`/`jwks`/`devkey` (tokens),
//! `runtime` (wasmtime and the policy module), `cli` (subcommands), `policy_file`.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod devkey;
pub mod goauth;
pub mod jwks;
pub mod playground;
pub mod policy_file;
pub mod runtime;
pub mod serve;
pub mod swap;

/// A user-supplied string for a message: quoted, escaped, length-capped (no forged log lines).
pub fn short(s: &str) -> String {
    policy_core::quote(s)
}

/// Exit status for a usage, input or load error (clap uses 2 for usage errors too).
pub const EXIT_USAGE: u8 = 2;
