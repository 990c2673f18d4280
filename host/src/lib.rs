//! `mqtt-policy`: the CELINE MQTT policy service's HTTP front end and command line, as a
//! library the binary and the tests share.
//!
//! This crate is only what is HTTP or CLI: `serve`/`goauth` (mosquitto-go-auth's wire
//! formats), `auth` (the server's decision cache and http-backend sessions), `admin`
//! (uploads, reloads, status), `playground`, `cli` (subcommands), `policy_file`. The policy
//! engine (wasmtime, generations, hot swap) is `policy-engine`; tokens and subjects are
//! `identity`; meaning is `policy-core`, inside the policy module.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod bundles;
pub mod cli;
pub mod front;
pub mod goauth;
pub mod logqueue;
pub mod playground;
pub mod policy_file;
pub mod reqmetrics;
pub mod serve;
pub mod sessions;
pub mod tls;

/// A user-supplied string for a message: quoted, escaped, length-capped (no forged log lines).
pub fn short(s: &str) -> String {
    policy_core::quote(s)
}

/// Exit status for a usage, input or load error (clap uses 2 for usage errors too).
pub const EXIT_USAGE: u8 = 2;
