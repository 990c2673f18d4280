//! The policy engine: what runs policy modules and keeps one of them live. Both front ends
//! use it, the HTTP service for mosquitto-go-auth (`host/`) and the Mosquitto plugin
//! (`mosquitto-plugin/`); neither runs a module any other way.
//!
//! - [`runtime`]: wasmtime (one engine, epoch deadlines, memory limits, a compiled-module
//!   cache), a [`Module`], and a [`Generation`]: a module with one policy document loaded and
//!   a pool of instances. A module fault denies one request, never more.
//! - [`swap`]: [`Live`], the current generation behind one atomic pointer, and the test-gated
//!   pipeline every change goes through (candidate → compile → load → the policy test cases
//!   through the candidate → one atomic swap).
//! - [`reload`]: where changes come from besides uploads: watched files and reload requests
//!   (`SIGHUP` in the server, Mosquitto's reload event in the plugin), built on a background
//!   thread of its own so no caller ever waits for a compile.
//!
//! Not here: tokens and identities (`identity/`), wire formats (the front ends), meaning
//! (`policy-core`, inside the module). Nothing here is async or needs a runtime: a decision is
//! a plain function call, which is what a broker's event loop can afford.

pub mod bundle;
pub mod cases;
pub mod invariants;
#[cfg(feature = "pull")]
pub mod pull;
pub mod reload;
pub mod report;
pub mod runtime;
pub mod swap;

pub use bundle::BundleError;
pub use cases::CasesError;
pub use reload::Reloader;
pub use report::Identity;
pub use runtime::{
    Action, Decision, Diagnostic, Fault, Generation, LoadError, Module, Prepared, Request, Runtime, Subject,
    SubjectError, SubjectType, embedded_module,
};
pub use swap::{Candidate, IdentitySource, KEPT_MODULE, KEPT_POLICY, Live, Rejection, Source};

/// The default policy as shipped (`policies/celine.json`), for when no file is named.
pub const BUILT_IN_POLICY: &str = include_str!("../../policies/celine.json");

/// Writes `bytes` to `path` through a temporary file and a rename: never half a file.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How modules and documents are identified: the SHA-256 of their bytes, in hex.
pub fn hash_of(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}
