//! The broker plugin's entry points where bytes from MQTT clients arrive: CONNECT (client
//! id, username, password), MQTT 5 enhanced authentication (method, data), and every access
//! check (access bits, topic), interleaved with disconnects, the broker's tick, and clients
//! that connect without the plugin seeing it (a certificate listener, another plugin),
//! driven through the safe core exactly as `entry.rs` calls it, with a stand-in broker.
//!
//! Never a panic (inside Mosquitto one would be caught, but it would still cost the client);
//! and nothing is allowed to a client that did not prove who it is: the fuzzer can choose
//! the plugin's own tokens (minted at start with a fresh dev key, so no input can hold one by
//! chance) or any bytes, and certificates named in or out of the policy's certificates
//! section. The oracle follows each address the way Mosquitto uses it: a client at an
//! address is either one this plugin admitted (a check may be allowed only if it was let in
//! with a valid token and not refused since), or one it never saw connect (allowed only as
//! the certificate subject it names, and only what the policy gives that subject). A new
//! client takes an address only after the previous one disconnected; it gets deliveries only
//! for subscriptions it was granted itself.
//!
//! Input: operations, each one byte (which one) followed by its fields; a field is a length
//! byte and that many bytes.
#![no_main]

use std::sync::Arc;

use identity::devkey::{DevKey, TokenSpec, claims};
use libfuzzer_sys::fuzz_target;
use mqtt_policy_mosquitto::{Admission, Broker, ClientKey, Options, PlainClient, Plugin, AclMessage, Removal};
use policy_core::{Action, Message, Policy, Query, Subject, SubjectType};

struct StandIn;

impl Broker for StandIn {
    fn log(&self, _: tracing::Level, _: &str) {}
    fn publish_retained(&self, _: &str, _: &[u8]) {}
    fn kick(&self, _: &str, _: bool) -> bool {
        true
    }
    fn removes_subscriptions(&self) -> bool {
        false
    }
    fn remove_subscription(&self, _: &str, _: &str) -> Removal {
        Removal::Failed(mqtt_policy_mosquitto::sys::MOSQ_ERR_NOT_SUPPORTED)
    }
}

/// The default policy with a certificates section: meters may publish their own readings.
const POLICY: &str = r##"{"celine": {"mqtt": {"acl": {"rules": [
  {"id": "admins", "subjects": {"groups": ["admins"]}, "topics": ["#"], "actions": "*"},
  {"id": "viewers", "subjects": {"groups": ["viewers"]}, "topics": ["celine/telemetry/+/+/readings"],
   "actions": ["subscribe", "read"]},
  {"id": "meters", "subjects": {"types": ["device"], "groups": ["meters"]},
   "topics": ["celine/telemetry/meter/${username}/readings", "celine/commands/${username}/#"], "actions": "*"}]},
  "certificates": [{"names": ["meter-*"], "groups": ["meters"]}]},
 "roles": {"group_permissions": {"admins": ["subscribe", "read", "publish", "superuser"],
   "viewers": ["subscribe", "read"], "meters": ["subscribe", "read", "publish"]}}}}"##;

/// Certificate names the fuzzer picks from: in the section, out of it, a token's user.
const NAMES: [&str; 4] = ["meter-1", "meter-2", "adam", "vera"];

struct World {
    plugin: Plugin,
    policy: Policy,
    /// Valid tokens (viewer, admin, a user in no group) and an expired one.
    tokens: Vec<String>,
    /// The subjects of the valid tokens, in the same order.
    subjects: Vec<Subject>,
    _state: tempfile::TempDir,
}

fn world() -> World {
    let state = tempfile::tempdir().unwrap();
    let policy = state.path().join("policy.json");
    std::fs::write(&policy, POLICY).unwrap();
    // Compiling the module takes seconds with the sanitizers: keep the compiled code between
    // runs (the cache is checked and keyed by the module's hash).
    let cache = std::env::temp_dir().join("mqtt-policy-fuzz-module-cache");
    let pairs: Vec<(String, String)> = [
        ("policy", policy.to_str().unwrap()),
        ("dev", "true"),
        ("state_dir", state.path().to_str().unwrap()),
        ("cache_dir", cache.to_str().unwrap()),
        ("watch", "false"),
        ("log_level", "error"),
        ("certificate_subject_type", "device"),
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
    let user = |id: &str, groups: &[&str]| Subject {
        id: id.into(),
        kind: SubjectType::User,
        groups: groups.iter().map(|g| g.to_string()).collect(),
        scopes: vec![],
    };
    let subjects = vec![user("vera", &["viewers"]), user("adam", &["admins"]), user("nina", &[])];
    World { plugin, policy: Policy::load(POLICY).unwrap(), tokens, subjects, _state: state }
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

/// Who the client now at an address may act as.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Proved {
    /// Nothing (refused, or never seen and no certificate name).
    Nothing,
    /// Let in by this plugin with this token (`None`: bytes from the input).
    Token(Option<usize>),
    /// Never seen by this plugin; its username is this certificate name.
    Certificate(&'static str),
}

/// One address: the client there now, as the broker describes it, and what the oracle knows.
struct Slot {
    client: PlainClient,
    proved: Proved,
    connected: bool,
    /// It may receive deliveries: admitted here (its session's subscriptions), or granted a
    /// subscription itself.
    subscribed: bool,
    /// Gone, and a tick has passed since: Mosquitto frees a client's structure only at the
    /// top of its loop, after the tick that follows the disconnect, so only then can another
    /// client take the address.
    freed: bool,
    /// Connected with enhanced authentication, method `jwt` (it may re-authenticate).
    by_jwt: bool,
    /// The username and password the broker keeps for it (what a reload re-checks).
    stored: Option<(Option<Vec<u8>>, Option<Vec<u8>>)>,
}

/// The message of every check this target asks: QoS 0, not retained (a subscription has no
/// retain flag), as the plugin is told.
fn delivered(action: Action) -> Message {
    Message { qos: Some(0), retain: (action != Action::Subscribe).then_some(false) }
}

fn allowed_for(w: &World, proved: Proved, client: &PlainClient, action: Action, topic: &str) -> bool {
    match proved {
        Proved::Nothing => false,
        // Only what the token's own subject may do (no rule here depends on `${username}`).
        Proved::Token(Some(i)) if i < w.subjects.len() => {
            let subject = &w.subjects[i];
            let q = Query {
                subject,
                action,
                topic,
                clientid: &client.id,
                username: "",
                message: delivered(action),
            };
            w.policy.superuser(subject).allow || w.policy.check(&q).allow
        }
        Proved::Token(_) => false,
        Proved::Certificate(name) => match w.policy.certificate_subject(name, SubjectType::Device) {
            Err(_) => false,
            Ok(subject) => {
                let q = Query {
                    subject: &subject,
                    action,
                    topic,
                    clientid: &client.id,
                    username: name,
                    message: delivered(action),
                };
                w.policy.check(&q).allow
            }
        },
    }
}

fuzz_target!(|data: &[u8]| {
    WORLD.with(|w| {
        let first = NEXT_KEY.fetch_add(CLIENTS, std::sync::atomic::Ordering::Relaxed);
        let mut slots: Vec<Slot> = (0..CLIENTS)
            .map(|c| Slot {
                client: PlainClient::new(first + c, "", None),
                proved: Proved::Nothing,
                connected: false,
                subscribed: false,
                freed: true,
                by_jwt: false,
                stored: None,
            })
            .collect();
        let mut input = Input(data);
        while let Some(op) = input.byte() {
            let c = usize::from(op >> 4) % CLIENTS;
            let key = first + c;
            match op % 7 {
                6 => {
                    // Mosquitto's reload: it re-checks every client it keeps (connected or an
                    // offline session) with the credentials it stored; one refused is ended.
                    w.plugin.reload();
                    for (c, s) in slots.iter_mut().enumerate() {
                        let Some((username, password)) = s.stored.clone() else { continue };
                        let outcome =
                            w.plugin.authenticate(&s.client, username.as_deref(), password.as_deref());
                        if outcome == Admission::Refused {
                            if s.connected {
                                w.plugin.disconnect(ClientKey(first + c));
                                s.connected = false;
                            }
                            s.stored = None;
                        }
                    }
                }
                0 | 1 => {
                    let Some(id) = input.field() else { break };
                    let id = String::from_utf8_lossy(id).into_owned();
                    let Some(username) = input.field() else { break };
                    let username = (!username.is_empty()).then_some(username);
                    let Some((token, which)) = input.token(&w.tokens) else { break };
                    let s = &mut slots[c];
                    // An AUTH packet on a connected client is a re-authentication (Mosquitto
                    // ends a client that sends one without having connected with enhanced
                    // authentication, or with another method); anything else is a CONNECT,
                    // a new client at the address (the old one left).
                    let reauthentication = op % 7 == 1 && s.connected;
                    if reauthentication && !s.by_jwt {
                        w.plugin.disconnect(ClientKey(key));
                        s.connected = false;
                        continue;
                    }
                    if !reauthentication {
                        if s.connected {
                            w.plugin.disconnect(ClientKey(key));
                        }
                        let mut client = PlainClient::new(key, &id, None);
                        client.username = username.map(|u| String::from_utf8_lossy(u).into_owned());
                        client.protocol = if op % 7 == 1 { 5 } else { 4 };
                        client.clean = op & 0x08 == 0;
                        *s = Slot {
                            client,
                            proved: Proved::Nothing,
                            connected: true,
                            subscribed: false,
                            freed: false,
                            by_jwt: false,
                            stored: None,
                        };
                    }
                    let outcome = if op % 7 == 0 {
                        w.plugin.authenticate(&s.client, username, Some(token))
                    } else {
                        let Some(method) = input.field() else { break };
                        let method: &[u8] = if method.is_empty() { b"jwt" } else { method };
                        // Mosquitto ends a connection that re-authenticates with another
                        // method than its CONNECT's (a protocol error) without asking plugins.
                        if reauthentication && !method.eq_ignore_ascii_case(b"jwt") {
                            w.plugin.disconnect(ClientKey(key));
                            s.connected = false;
                            continue;
                        }
                        w.plugin.authenticate_ext(&s.client, method, Some(token), username)
                    };
                    match outcome {
                        // At CONNECT, or a re-authentication that keeps the connection with the
                        // new token.
                        Admission::Admitted { .. } => {
                            s.proved = Proved::Token(which);
                            s.subscribed = true;
                            s.by_jwt = op % 7 == 1;
                            // The broker keeps the username it knows (a rename included) and the
                            // password (none with enhanced authentication).
                            let kept = s.client.renamed.get().cloned().or_else(|| s.client.username.clone());
                            let password = (op % 7 == 0).then(|| token.to_vec());
                            s.stored = Some((kept.map(String::into_bytes), password));
                        }
                        // A refused re-authentication: the broker ends the connection, which
                        // keeps the identity it proved at CONNECT (for its will).
                        Admission::Refused if reauthentication => {
                            w.plugin.disconnect(ClientKey(key));
                            s.connected = false;
                        }
                        // A refused CONNECT: the client never gets in.
                        Admission::Refused => s.connected = false,
                        // Another method: another plugin decides, without this one.
                        Admission::NotOurs => s.proved = Proved::Nothing,
                    }
                }
                2 => {
                    let Some(access) = input.byte() else { break };
                    let Some(topic) = input.field() else { break };
                    let s = &mut slots[c];
                    let bits = i32::from(access as i8);
                    // Deliveries only reach a client with subscriptions; a client that is gone
                    // asks nothing but for its will (right after its disconnect) and its
                    // queued deliveries.
                    if bits == 1 && !s.subscribed {
                        continue;
                    }
                    let allowed = w.plugin.check(&s.client, bits, topic, AclMessage::default());
                    if allowed && access & 0x08 == 0 {
                        let action = match bits {
                            1 => Action::Read,
                            2 => Action::Publish,
                            _ => Action::Subscribe,
                        };
                        let topic = String::from_utf8_lossy(topic);
                        assert!(
                            allowed_for(w, s.proved, &s.client, action, &topic),
                            "client {c} ({:?}) was allowed access {access:#x} to {topic:?}",
                            s.proved
                        );
                        if bits == 4 {
                            s.subscribed = true;
                        }
                    }
                }
                // A disconnected client keeps the identity it proved, for the checks that may
                // still come (its will, queued deliveries): not a reason to forget it here.
                3 => {
                    let s = &mut slots[c];
                    if s.connected {
                        w.plugin.disconnect(ClientKey(key));
                        s.connected = false;
                    }
                }
                // A client this plugin never sees connect takes the address (the previous one
                // having left and been freed): a certificate client, or another plugin's.
                4 => {
                    let Some(b) = input.byte() else { break };
                    let Some(id) = input.field() else { break };
                    let s = &mut slots[c];
                    if !s.freed {
                        continue;
                    }
                    let name = NAMES[usize::from(b) % NAMES.len()];
                    let with_certificate = b & 0x10 != 0;
                    let mut client = if with_certificate {
                        PlainClient::with_certificate(key, &String::from_utf8_lossy(id), name)
                    } else {
                        PlainClient::new(key, &String::from_utf8_lossy(id), Some(name))
                    };
                    client.protocol = if b & 0x20 != 0 { 5 } else { 4 };
                    client.clean = b & 0x40 == 0;
                    let proved = if with_certificate { Proved::Certificate(name) } else { Proved::Nothing };
                    *s = Slot {
                        client,
                        proved,
                        connected: true,
                        subscribed: false,
                        freed: false,
                        by_jwt: false,
                        stored: None,
                    };
                }
                _ => {
                    w.plugin.tick();
                    for s in slots.iter_mut().filter(|s| !s.connected) {
                        s.freed = true;
                    }
                }
            }
        }
        for c in 0..CLIENTS {
            if slots[c].connected {
                w.plugin.disconnect(ClientKey(first + c));
            }
        }
        w.plugin.tick();
    });
});
