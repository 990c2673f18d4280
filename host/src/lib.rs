//! `mqtt-policy`: the CELINE MQTT policy service's HTTP front end and command line, as a
//! library the binary and the tests share.
//!
//! This crate is only what is HTTP or CLI. `state` is what requests share and is built from
//! the configuration; the endpoints depend on it and never the reverse: `goauth`
//! (mosquitto-go-auth's three endpoints) behind `front` (the broker-facing listener),
//! `ops` (health, readiness, metrics), `admin` (uploads, reloads, status), `bundles`,
//! `playground`. `serve` only assembles them. `auth` (the server's decision cache and
//! http-backend sessions), `sessions`, `audit`, `logqueue`, `reqmetrics`, `respond` and `tls`
//! serve them; `cli` holds the subcommands. The policy
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
pub mod ops;
pub mod playground;
pub mod policy_file;
pub mod reqmetrics;
pub mod respond;
pub mod serve;
pub mod sessions;
pub mod state;
pub mod tls;

/// A user-supplied string for a message: quoted, escaped, length-capped (no forged log lines).
pub fn short(s: &str) -> String {
    policy_core::quote(s)
}

/// Exit status for a usage, input or load error (clap uses 2 for usage errors too).
pub const EXIT_USAGE: u8 = 2;

/// Exit status of `serve` when it fails after start-up (its configuration was accepted), and
/// of a command whose output cannot be written.
pub const EXIT_FAILED: u8 = 3;

/// Exit status of a command whose output's reader went away (`mqtt-policy who-can | head`):
/// what a shell reports for a process `SIGPIPE` ended, as it ends `cat` there.
pub const EXIT_CLOSED_OUTPUT: u8 = 141;

/// Whether an error is a write to a reader that went away.
pub fn is_closed_output(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An error of a command that ran past its configuration: exits [`EXIT_FAILED`], not
/// [`EXIT_USAGE`].
#[derive(Debug)]
pub struct Failed(pub anyhow::Error);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Failed {}
