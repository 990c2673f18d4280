//! The broker plugin's entry points where bytes from MQTT clients arrive: CONNECT (client
//! id, username, password), MQTT 5 enhanced authentication (method, data), and every access
//! check (access bits, topic), interleaved with disconnects and the broker's tick, driven
//! through the safe core exactly as `entry.rs` calls it, with a stand-in broker.
//!
//! Never a panic (inside Mosquitto one would be caught, but it would still cost the client);
//! and nothing is allowed to a client that did not prove a valid token: the fuzzer can choose
//! the plugin's own tokens (minted at start with a fresh dev key, so no input can hold one by
//! chance) or any bytes. A check is allowed only for a client let in with a valid token and
//! not refused since (a refused CONNECT or re-authentication on the same client ends what it
//! proved before; a disconnect does not: its will and queued deliveries are still checked).
//!
//! Input: operations, each one byte (which one) followed by its fields; a field is a length
//! byte and that many bytes.
#![no_main]

use std::sync::Arc;

use identity::devkey::{DevKey, TokenSpec, claims};
use libfuzzer_sys::fuzz_target;
use mqtt_policy_mosquitto::{Admission, Broker, Client, ClientKey, Options, Plugin};

struct StandIn;

impl Broker for StandIn {
    fn log(&self, _: tracing::Level, _: &str) {}
    fn publish_retained(&self, _: &str, _: &[u8]) {}
    fn kick(&self, _: &str, _: bool) -> bool {
        true
    }
}

struct World {
    plugin: Plugin,
    /// Valid tokens (viewer, admin, a user in no group) and an expired one.
    tokens: Vec<String>,
    _state: tempfile::TempDir,
}

fn world() -> World {
    let state = tempfile::tempdir().unwrap();
    // The default policy, embedded: a path compiled in would name whichever checkout built
    // the target (CI's clone and a working copy share one target directory).
    let policy = state.path().join("celine.json");
    std::fs::write(&policy, include_str!("../../policies/celine.json")).unwrap();
    // Compiling the module takes seconds with the sanitizers: keep the compiled code between
    // runs (the cache is checked and keyed by the module's hash).
    let cache = std::env::temp_dir().join("mqtt-policy-fuzz-module-cache");
    let pairs: Vec<(String, String)> = [
        ("policy", policy.to_str().unwrap()),
        ("dev_state_dir", state.path().to_str().unwrap()),
        ("cache_dir", cache.to_str().unwrap()),
        ("watch", "false"),
        ("log_level", "error"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let plugin = Plugin::start(Options::parse(&pairs).unwrap(), Arc::new(StandIn)).unwrap();
    let key = DevKey::load_or_create(state.path()).unwrap();
    let mint = |sub: &str, groups: &[&str], ttl_secs: u64, back: u64| {
        key.sign(&claims(&TokenSpec::dev_user(sub, groups, ttl_secs), identity::now() - back).unwrap())
            .unwrap()
    };
    let tokens = vec![
        mint("vera", &["viewers"], 3600, 0),
        mint("adam", &["admins"], 3600, 0),
        mint("nina", &[], 3600, 0),
        mint("old", &["admins"], 60, 7200),
    ];
    World { plugin, tokens, _state: state }
}

thread_local! {
    static WORLD: World = world();
}

/// Keys are never reused between runs: each run's clients are new to the plugin.
static NEXT_KEY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
const CLIENTS: usize = 4;

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn field(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.byte()?).min(self.0.len());
        let (f, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(f)
    }

    /// A token: one of the plugin's own (the byte says which), or bytes from the input.
    fn token(&mut self, tokens: &'a [String]) -> Option<(&'a [u8], Option<usize>)> {
        let b = self.byte()?;
        if b & 0x80 != 0 {
            let i = usize::from(b & 0x7f) % tokens.len();
            Some((tokens[i].as_bytes(), Some(i)))
        } else {
            Some((self.field()?, None))
        }
    }
}

/// Could a client admitted with this token be allowed anything? Only with a valid one.
fn valid(token: Option<usize>) -> bool {
    matches!(token, Some(0..=2))
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|w| {
        let first = NEXT_KEY.fetch_add(CLIENTS, std::sync::atomic::Ordering::Relaxed);
        // Which token each client was let in with (`None`: none), and whether it is connected.
        let mut admitted: [Option<Option<usize>>; CLIENTS] = [None; CLIENTS];
        let mut connected = [false; CLIENTS];
        let mut input = Input(data);
        while let Some(op) = input.byte() {
            let c = usize::from(op >> 4) % CLIENTS;
            let key = ClientKey(first + c);
            match op % 5 {
                0 | 1 => {
                    let Some(id) = input.field() else { break };
                    let id = String::from_utf8_lossy(id);
                    let client = Client { key, id: &id, address: "127.0.0.1" };
                    let Some(username) = input.field() else { break };
                    let username = (!username.is_empty()).then_some(username);
                    let Some((token, which)) = input.token(&w.tokens) else { break };
                    let outcome = if op % 5 == 0 {
                        w.plugin.authenticate(&client, username, Some(token))
                    } else {
                        let Some(method) = input.field() else { break };
                        let method: &[u8] = if method.is_empty() { b"jwt" } else { method };
                        w.plugin.authenticate_ext(&client, method, Some(token), username)
                    };
                    let reauthentication = op % 5 == 1 && connected[c];
                    match outcome {
                        // At CONNECT, or a re-authentication that keeps the connection with the
                        // new token.
                        Admission::Admitted { .. } => {
                            admitted[c] = Some(which);
                            connected[c] = true;
                        }
                        // A refused re-authentication: the broker ends the connection, which
                        // keeps the identity it proved at CONNECT (for its will).
                        Admission::Refused if reauthentication => {}
                        // A refused CONNECT on a reused client keeps nothing of the earlier one.
                        Admission::Refused => {
                            admitted[c] = None;
                            connected[c] = false;
                        }
                        Admission::NotOurs => {}
                    }
                }
                2 => {
                    let Some(access) = input.byte() else { break };
                    let Some(topic) = input.field() else { break };
                    let allowed = w.plugin.check(key, i32::from(access as i8), topic);
                    if allowed && access & 0x08 == 0 {
                        assert!(
                            admitted[c].is_some_and(valid),
                            "client {c} (let in with {:?}) was allowed access {access:#x} to {topic:?}",
                            admitted[c]
                        );
                    }
                }
                // A disconnected client keeps the identity it proved, for the checks that may
                // still come (its will, queued deliveries): not a reason to forget it here.
                3 => {
                    w.plugin.disconnect(key);
                    connected[c] = false;
                }
                _ => w.plugin.tick(),
            }
        }
        for c in 0..CLIENTS {
            w.plugin.disconnect(ClientKey(first + c));
        }
    });
});
