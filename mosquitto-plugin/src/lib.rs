//! mqtt-policy inside Mosquitto: a broker plugin (plugin API version 5, Mosquitto 2.0 and
//! 2.1) that verifies the client's token once at CONNECT and decides every subscribe,
//! publish and delivery in-process, through the same policy module, the same test-gated hot
//! swap (`policy-engine`) and the same token verification (`identity`) as the HTTP service.
//!
//! Load it with `plugin /path/to/libmqtt_policy_mosquitto.so` and `plugin_opt_<name>` lines
//! (see `options.rs` and docs/plugin.md). The layers, from the broker inwards:
//!
//! - `sys`: the C declarations (structs, constants, the broker's functions found by name);
//! - `entry`: the exported symbols and one trampoline per event, each under
//!   `catch_unwind`, turning pointers into safe values;
//! - `plugin`: the safe core (CONNECT, ACL checks, disconnect, tick, reload), over
//!   `client` (what the broker says about a client, and the binding that keeps an identity
//!   with the client that proved it), `connections` (who each client is, its decision cache),
//!   `usage` (what each connection used of its limits), `revocation` (what a swap takes
//!   from connected clients), `stats` (counters, latency,
//!   Prometheus and `$SYS`), `logging` (into Mosquitto's log) and `background` (key refresh
//!   and metrics off the broker thread).
//!
//! Not here: what a decision means (`policy-core`, inside the module), how modules run
//! (`policy-engine`), how tokens are verified (`identity`).

pub mod background;
pub mod broker;
pub mod client;
pub mod connections;
pub mod entry;
pub mod logging;
pub mod options;
pub mod plugin;
pub mod revocation;
pub mod stats;
pub mod sys;
pub mod usage;

pub use broker::{Broker, Removal};
pub use client::{BrokerClient, CertificateNames, ClientKey, PlainClient};
pub use options::Options;
pub use plugin::{AclMessage, Admission, Plugin, access};
