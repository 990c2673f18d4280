//! The plugin itself, in safe code: what happens at CONNECT, at each ACL check, at
//! disconnect, on the broker's tick and on its reload. `entry.rs` turns the broker's events
//! into these calls; nothing here sees a pointer.
//!
//! Everything here runs on the broker thread, so nothing here waits: a CONNECT verifies the
//! token with the keys already held, and a check is a lookup in the connection's decision
//! cache or one call into the policy module. Building candidates, refreshing keys and
//! serving metrics happen on background threads.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use goauth_wire::looks_like_jwt;
use identity::devkey::{DEV_ISSUER, DevKey};
use identity::{Identities, KeySource, Verified, Verifier, VerifierConfig, names_subject, now};
use policy_engine::{Action, Decision, Live, Reloader, Runtime, Source, Subject};

use crate::background::Background;
use crate::broker::Broker;
use crate::connections::{ClientKey, Connection, Connections, DecisionCache};
use crate::logging;
use crate::options::Options;
use crate::stats::{Stats, bump};

/// How long the first key load may take at start-up before the broker starts without keys
/// (connections are then refused, with that reason, until a refresh succeeds).
const FIRST_KEY_LOAD: Duration = Duration::from_secs(10);

/// Bytes for the verified tokens kept for reconnects (and their subjects).
const TOKEN_CACHE: u64 = 16 << 20;

/// One check in this many is timed for `mqtt_policy_check_duration_seconds`.
pub const LATENCY_SAMPLE: u64 = 8;

/// How often expired and surplus identities are dropped (on the broker's tick).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A CONNECT's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// CONNACK "not authorised".
    Refused,
    /// Let in; with `rename`, the broker should know the client by that username instead of
    /// the token it sent as its username (so the broker's own log never shows a token).
    Admitted { rename: Option<String> },
    /// An enhanced-authentication method other than `jwt`: for another plugin to decide.
    NotOurs,
}

/// What the broker tells the plugin about a connecting client.
pub struct Client<'a> {
    pub key: ClientKey,
    pub id: &'a str,
    pub address: &'a str,
}

/// Mosquitto's access bits (`MOSQ_ACL_*`).
pub mod access {
    pub const READ: i32 = 0x01;
    pub const WRITE: i32 = 0x02;
    pub const SUBSCRIBE: i32 = 0x04;
    pub const UNSUBSCRIBE: i32 = 0x08;
}

pub struct Plugin {
    // Dropped first: the threads that could still touch the engine stop before it goes.
    reloader: Option<Reloader>,
    background: Option<Background>,
    options: Options,
    broker: Arc<dyn Broker>,
    live: Arc<Live>,
    identities: Arc<Identities>,
    connections: RefCell<Connections>,
    stats: Arc<Stats>,
    last_sys: Cell<Option<Instant>>,
    last_sweep: Cell<Instant>,
    /// From Mosquitto's reload event until the next tick or check: the broker re-checks every
    /// client's stored credentials (see `readmit`).
    reauthenticating: Cell<bool>,
    /// Checks so far (which ones are timed).
    checks: Cell<u64>,
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Subscribe => "subscribe",
        Action::Read => "read",
        Action::Publish => "publish",
    }
}

impl Plugin {
    /// Loads the policy through the test-gated pipeline, loads the keys, starts the
    /// background work. An error stops the broker's start with its message.
    pub fn start(options: Options, broker: Arc<dyn Broker>) -> anyhow::Result<Plugin> {
        let runtime = Runtime::new(options.cache_dir.clone())?;
        let module_source = options.module.clone().map(Source::File).unwrap_or(Source::BuiltIn);
        let live =
            Live::start(runtime, module_source, Source::File(options.policy.clone()), options.tests.clone())?;

        let dev_key = match &options.dev_state_dir {
            Some(dir) => Some(DevKey::load_or_create(dir).with_context(|| {
                format!(
                    "plugin_opt_dev_state_dir {}: the dev signing key cannot be read or created",
                    dir.display()
                )
            })?),
            None => None,
        };
        let source = match (&options.jwks_file, &options.jwks_url, &options.issuer) {
            (Some(f), _, _) => KeySource::File(f.clone()),
            (None, Some(u), _) => KeySource::Url(u.clone()),
            (None, None, Some(iss)) if dev_key.is_none() => KeySource::Discovery(iss.clone()),
            _ => KeySource::None,
        };
        let file_source = matches!(source, KeySource::File(_));
        let config = VerifierConfig {
            source,
            issuer: options.issuer.clone().or_else(|| dev_key.as_ref().map(|_| DEV_ISSUER.to_string())),
            audience: options.audience.clone(),
            leeway: options.leeway,
            extra_keys: dev_key.as_ref().map(|k| k.jwk()).transpose()?.into_iter().collect(),
            hmac_secret: None,
            min_refresh: options.jwks_min_refresh,
            authorized_parties: options.authorized_parties.clone(),
            refresh_every: options.jwks_refresh,
        };
        if let (None, Some(why)) = (&dev_key, config.unrestricted()) {
            tracing::warn!("{why}: plugin_opt_audience or plugin_opt_authorized_parties");
        }
        let verifier = Arc::new(Verifier::new(config)?);
        let background = Background::start()?;
        match background.block_on(async { tokio::time::timeout(FIRST_KEY_LOAD, verifier.refresh()).await }) {
            Ok(Ok(n)) => tracing::info!("signing keys loaded: {n}"),
            // A key file is configuration: unreadable or not a key set is a mistake to fix now.
            Ok(Err(e)) if file_source => return Err(e.context("plugin_opt_jwks_file")),
            Ok(Err(e)) => tracing::error!(
                "could not load signing keys ({e:#}); connections are refused until a refresh succeeds"
            ),
            Err(_) => tracing::error!(
                "loading signing keys took over {}s; connections are refused until a refresh succeeds",
                FIRST_KEY_LOAD.as_secs()
            ),
        }
        background.spawn_key_refresher(&verifier);
        if let Some(url) = &options.policy_url {
            let token = match &options.bundle_token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("plugin_opt_bundle_token_file {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            background.spawn_puller(&live, url, token, options.policy_poll)?;
            tracing::info!("pulling policy bundles from {url} every {}s", options.policy_poll.as_secs());
        }
        let stats = Arc::new(Stats::default());
        if let Some(addr) = options.metrics_listen {
            let bound = background.serve_metrics(addr, Arc::clone(&stats), Arc::clone(&live))?;
            tracing::info!("metrics at http://{bound}/metrics");
        }
        let reloader = Reloader::start(Arc::clone(&live), options.watch)?;
        let g = live.current();
        tracing::info!(
            "ready: policy {} ({} rules, generation {}), module {} ({}), test cases {}",
            options.policy.display(),
            g.rule_count,
            g.id,
            g.module.version,
            &g.module.hash[..16],
            options.tests.as_ref().map(|t| t.display().to_string()).unwrap_or_else(|| "none".into()),
        );
        Ok(Plugin {
            reloader: Some(reloader),
            background: Some(background),
            options,
            broker,
            live,
            identities: Arc::new(Identities::new(verifier, TOKEN_CACHE)),
            connections: RefCell::new(Connections::default()),
            stats,
            last_sys: Cell::new(None),
            last_sweep: Cell::new(Instant::now()),
            reauthenticating: Cell::new(false),
            checks: Cell::new(0),
        })
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.live
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// CONNECT with a username and password (either may be absent). Refused answers CONNACK
    /// "not authorised". Either way the reason is logged, never the token.
    pub fn authenticate(
        &self,
        client: &Client,
        username: Option<&[u8]>,
        password: Option<&[u8]>,
    ) -> Admission {
        logging::flush();
        let Some(mut connections) = self.table(client) else { return Admission::Refused };
        if let Some(admitted) = self.readmit(&mut connections, client, username, password) {
            return admitted;
        }
        let tried = self.try_authenticate(client, username, password, false);
        self.admit(&mut connections, client, tried)
    }

    /// MQTT 5 enhanced authentication with the method `jwt` (compared case-insensitively),
    /// the token as the authentication data. At CONNECT it admits like a password would, and
    /// a client that sent no username is known to the broker by its subject id. On a
    /// connected client (an AUTH packet with reason 0x19, re-authenticate) it is a fresh
    /// token: see [`Plugin::reauthenticate`].
    pub fn authenticate_ext(
        &self,
        client: &Client,
        method: &[u8],
        data: Option<&[u8]>,
        username: Option<&[u8]>,
    ) -> Admission {
        logging::flush();
        if !method.eq_ignore_ascii_case(b"jwt") {
            return Admission::NotOurs;
        }
        let Some(mut connections) = self.table(client) else { return Admission::Refused };
        let token = data.filter(|d| !d.is_empty());
        if connections.get_mut(client.key).is_some_and(|c| c.connected) {
            return self.reauthenticate(&mut connections, client, token, username);
        }
        let tried = match token {
            None => Err("no token: with the authentication method jwt, send the JWT as the \
                         authentication data"
                .to_string()),
            Some(t) => self.try_authenticate(client, username, Some(t), true),
        };
        self.admit(&mut connections, client, tried)
    }

    /// The connection table, for an authentication; `None` (refused, and logged) if it is
    /// already borrowed, which only a re-entered callback could do.
    fn table(&self, client: &Client) -> Option<std::cell::RefMut<'_, Connections>> {
        let table = self.connections.try_borrow_mut().ok();
        if table.is_none() {
            tracing::error!("refused client {:?}: the connection table is busy (re-entered)", client.id);
        }
        table
    }

    /// When a token stops being good: its `exp` plus the leeway.
    fn deadline(&self, v: &Verified) -> u64 {
        v.exp.saturating_add(self.options.leeway.as_secs())
    }

    /// A connected client shows a fresh token (MQTT 5 re-authentication). It must name the
    /// same subject as the connection's token (both mapped by the live generation); then it
    /// replaces the connection's identity (claims, groups, scopes: the very next check is
    /// decided with them) and its deadline. Otherwise it is refused and Mosquitto ends the
    /// connection.
    fn reauthenticate(
        &self,
        connections: &mut Connections,
        client: &Client,
        token: Option<&[u8]>,
        username: Option<&[u8]>,
    ) -> Admission {
        let Some(conn) = connections.get_mut(client.key) else { return Admission::Refused };
        let generation = self.live.current();
        let tried = (|| {
            let token = token.ok_or("no token in the AUTH packet's authentication data")?;
            let token = std::str::from_utf8(token).map_err(|_| "the token is not UTF-8".to_string())?;
            let (hash, verified) = self.identities.verify_now(token)?;
            let fresh = self.identities.subject(&generation, hash, &verified)?;
            let held = self.identities.subject(&generation, conn.token, &conn.verified)?;
            if fresh.id != held.id || fresh.kind_str() != held.kind_str() {
                return Err(format!(
                    "the new token names {} {:?}, the connection is {} {:?}: a connection keeps its \
                     identity (connect again to change it)",
                    fresh.kind_str(),
                    fresh.id,
                    held.kind_str(),
                    held.id
                ));
            }
            Ok((hash, verified, fresh))
        })();
        let (hash, verified, subject) = match tried {
            Ok(t) => t,
            Err(reason) => {
                bump(&self.stats.reauth_refused);
                tracing::info!(
                    "refused the re-authentication of client {:?} from {}: {reason}; the broker ends \
                     the connection",
                    client.id,
                    client.address
                );
                return Admission::Refused;
            }
        };
        // `${username}` stays a name proven to belong to the subject, by the new claims.
        if conn.shown_username.is_none() {
            let given = username.and_then(|u| std::str::from_utf8(u).ok()).unwrap_or("");
            let proven = names_subject(given, &subject, &verified.claims, &self.options.username_claims);
            conn.username = if proven { given.into() } else { "".into() };
        }
        conn.token = hash;
        conn.deadline = self.deadline(&verified);
        conn.verified = verified;
        let superuser = generation.superuser(&subject).allow;
        conn.remap(generation.id, &subject, superuser);
        let deadline = conn.deadline;
        connections.watch(client.key, deadline);
        bump(&self.stats.reauth_accepted);
        tracing::info!(
            "re-authenticated client {:?} as {} {:?}{}: new token good until {}",
            client.id,
            subject.kind_str(),
            subject.id,
            if superuser { " (superuser)" } else { "" },
            deadline
        );
        Admission::Admitted { rename: None }
    }

    /// Records an authentication's outcome: the connection, counters and the log line.
    fn admit(
        &self,
        connections: &mut Connections,
        client: &Client,
        tried: Result<(Connection, Arc<Subject>), String>,
    ) -> Admission {
        let outcome = match tried {
            Ok((mut connection, subject)) => {
                let superuser = connection.mapped.as_ref().is_some_and(|m| m.superuser);
                let described = format!(
                    "client {:?} from {} as {} {:?}{}",
                    client.id,
                    client.address,
                    subject.kind_str(),
                    subject.id,
                    if superuser { " (superuser)" } else { "" }
                );
                // Mosquitto re-authenticates every client after a reload: the same token on
                // the same client is not news, and a kept session stays disconnected. (Outside
                // a reload, the same address is a new connection, even with the same token.)
                let again = connections
                    .get_mut(client.key)
                    .filter(|c| self.reauthenticating.get() && c.token == connection.token);
                if let Some(old) = again {
                    connection.connected = old.connected;
                    tracing::debug!("re-authenticated {described}");
                } else {
                    tracing::info!("connected {described}");
                    bump(&self.stats.connections_accepted);
                }
                let rename = connection.shown_username.as_deref().map(str::to_string);
                connections.insert(client.key, connection);
                Admission::Admitted { rename }
            }
            Err(reason) => {
                // An address reused by a refused client keeps nothing of an earlier one.
                connections.remove(client.key);
                bump(&self.stats.connections_refused);
                tracing::info!("refused client {:?} from {}: {reason}", client.id, client.address);
                Admission::Refused
            }
        };
        self.stats.connections_current.store(connections.connected() as u64, Relaxed);
        outcome
    }

    /// After a reload Mosquitto re-checks every client with the credentials it stored. A
    /// client that sent its token as the username now has its subject id as the username
    /// (see [`Admission::Admitted`]) and no password, and one admitted through enhanced
    /// authentication has no password either (Mosquitto asks through this event all the
    /// same): it is readmitted on the identity it proved, while that is still valid. Only
    /// during the reload's re-check, and only for the same, still connected client: a new
    /// connection always has to show a token.
    fn readmit(
        &self,
        connections: &mut Connections,
        client: &Client,
        username: Option<&[u8]>,
        password: Option<&[u8]>,
    ) -> Option<Admission> {
        if !self.reauthenticating.get() || password.is_some() {
            return None;
        }
        let conn = connections.get_mut(client.key)?;
        let by_name = conn.shown_username.as_deref().is_some_and(|shown| username == Some(shown.as_bytes()));
        if !conn.connected || !(by_name || conn.enhanced) {
            return None;
        }
        if !self.identities.still_valid(&conn.verified) {
            tracing::info!(
                "refused client {:?} on reload: its token expired or its key was withdrawn",
                client.id
            );
            return Some(Admission::Refused);
        }
        tracing::debug!("re-authenticated client {:?} on the token it presented", client.id);
        Some(Admission::Admitted { rename: None })
    }

    /// Verifies the token (the password, else a JWT username; with `enhanced`, the password
    /// is the authentication data) and builds the connection it admits.
    fn try_authenticate(
        &self,
        client: &Client,
        username: Option<&[u8]>,
        password: Option<&[u8]>,
        enhanced: bool,
    ) -> Result<(Connection, Arc<Subject>), String> {
        let username = username
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| "the username is not UTF-8".to_string())?;
        let token = match (password, username) {
            (Some(p), _) => std::str::from_utf8(p)
                .map_err(|_| "the password is not UTF-8 (send the JWT as the password)")?,
            (None, Some(u)) if looks_like_jwt(u) => u,
            _ => {
                return Err("no token: send the JWT as the MQTT password (with any username, or none) \
                            or as the username"
                    .into());
            }
        };
        let (hash, verified) = self.identities.verify_now(token)?;
        let generation = self.live.current();
        let subject = self.identities.subject(&generation, hash, &verified)?;
        let superuser = generation.superuser(&subject).allow;
        // A token sent as the username, or enhanced authentication without one: the broker
        // will know the client by its subject id.
        let renamed = password.is_none() || (enhanced && username.is_none());
        let mut connection = Connection {
            client_id: client.id.into(),
            // `${username}` is only ever a name proven to belong to the subject.
            username: match username {
                _ if renamed => subject.id.clone(),
                Some(u) if names_subject(u, &subject, &verified.claims, &self.options.username_claims) => {
                    u.to_string()
                }
                _ => String::new(),
            }
            .into(),
            token: hash,
            deadline: self.deadline(&verified),
            verified,
            mapped: None,
            cache: DecisionCache::new(self.options.decision_cache_size),
            connected: true,
            shown_username: renamed.then(|| subject.id.clone().into()),
            enhanced,
        };
        connection.remap(generation.id, &subject, superuser);
        Ok((connection, subject))
    }

    /// An ACL check: `true` allows. `access` is Mosquitto's bit (read = delivery, write =
    /// publish or will, subscribe, unsubscribe); `topic` a name, or a filter for subscribe.
    pub fn check(&self, client: ClientKey, access: i32, topic: &[u8]) -> bool {
        logging::flush();
        self.reauthenticating.set(false);
        // One check in LATENCY_SAMPLE is timed: reading the clock twice costs about as much
        // as a cached decision.
        let n = self.checks.get().wrapping_add(1);
        self.checks.set(n);
        let started = (n % LATENCY_SAMPLE == 1).then(Instant::now);
        let action = match access {
            access::READ => Action::Read,
            access::WRITE => Action::Publish,
            access::SUBSCRIBE => Action::Subscribe,
            // Leaving a subscription never widens anything.
            access::UNSUBSCRIBE => return true,
            other => {
                tracing::warn!("denied an ACL check with an unknown access value {other}");
                return false;
            }
        };
        let allow = self.decide(client, action, topic);
        self.stats.decided(action, allow);
        if let Some(t) = started {
            self.stats.check_latency.record(t.elapsed());
        }
        allow
    }

    fn decide(&self, key: ClientKey, action: Action, topic: &[u8]) -> bool {
        let Ok(topic) = std::str::from_utf8(topic) else {
            tracing::info!("deny {}: the topic is not UTF-8", action_name(action));
            return false;
        };
        let Ok(mut connections) = self.connections.try_borrow_mut() else {
            tracing::error!(
                "deny {} {topic:?}: the connection table is busy (re-entered)",
                action_name(action)
            );
            return false;
        };
        let Some(conn) = connections.get_mut(key) else {
            tracing::info!(
                "deny {} {topic:?}: this connection has no verified identity",
                action_name(action)
            );
            return false;
        };
        if conn.deadline <= coarse_now() {
            tracing::info!(
                "deny {} {topic:?} for client {:?}: its token has expired",
                action_name(action),
                conn.client_id
            );
            return false;
        }
        let generation = self.live.peek();
        if conn.mapped_for(generation.id).is_none() {
            // A new generation: its module maps the claims again, and earlier decisions go.
            match self.identities.subject(&generation, conn.token, &conn.verified) {
                Ok(s) => {
                    let superuser = generation.superuser(&s).allow;
                    conn.remap(generation.id, &s, superuser);
                }
                Err(reason) => {
                    conn.mapped = None;
                    tracing::info!(
                        "deny {} {topic:?} for client {:?}: {reason}",
                        action_name(action),
                        conn.client_id
                    );
                    return false;
                }
            }
        }
        let Connection { mapped: Some(mapped), cache, client_id, .. } = conn else { return false };
        if mapped.superuser {
            tracing::debug!("allow {} {topic:?} for client {client_id:?}: superuser", action_name(action));
            return true;
        }
        if let Some(d) = cache.get(action, topic) {
            bump(&self.stats.cache_hits);
            audit(action, topic, &mapped.request.subject, client_id, d);
            return d.allow;
        }
        bump(&self.stats.cache_misses);
        mapped.request.topic.clear();
        mapped.request.topic.push_str(topic);
        mapped.request.action = action;
        let decision = match generation.try_check(&mapped.request) {
            Ok(d) => {
                let d = Arc::new(d);
                cache.put(action, topic, Arc::clone(&d));
                d
            }
            // A module fault denies this request and is not remembered.
            Err(fault) => Arc::new(Decision { allow: false, rule: None, reason: fault }),
        };
        audit(action, topic, &mapped.request.subject, client_id, &decision);
        decision.allow
    }

    /// The client's connection ended. Its identity stays for the checks that may follow (its
    /// will, messages queued for its persistent session) until its token expires.
    pub fn disconnect(&self, key: ClientKey) {
        logging::flush();
        if let Ok(mut connections) = self.connections.try_borrow_mut() {
            connections.disconnected(key, self.options.decision_cache_size);
            self.stats.connections_current.store(connections.connected() as u64, Relaxed);
        }
    }

    /// The broker's periodic event: send queued log lines, drop expired identities, publish
    /// `$SYS` counters when due.
    pub fn tick(&self) {
        logging::flush();
        self.reauthenticating.set(false);
        if self.options.disconnect_on_expiry {
            self.end_expired();
        }
        if self.last_sweep.get().elapsed() >= SWEEP_EVERY {
            self.last_sweep.set(Instant::now());
            if let Ok(mut connections) = self.connections.try_borrow_mut() {
                let dropped = connections.sweep(now());
                if dropped > 0 {
                    tracing::debug!("dropped {dropped} identities whose tokens expired");
                }
                self.stats.connections_current.store(connections.connected() as u64, Relaxed);
            }
        }
        let interval = self.options.sys_interval;
        if interval.is_zero() || self.last_sys.get().is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        self.last_sys.set(Some(Instant::now()));
        // Publishing may call back into the plugin (ACL checks of subscribers): nothing is
        // borrowed here.
        for (name, value) in self.stats.sys_values(&self.live) {
            self.broker.publish_retained(&format!("$SYS/broker/mqtt-policy/{name}"), value.as_bytes());
        }
    }

    /// Disconnects the connections whose token has expired (its `exp` plus the leeway). The
    /// broker reports each disconnect while it is being done, so nothing is borrowed then.
    fn end_expired(&self) {
        let due = match self.connections.try_borrow_mut() {
            Ok(mut connections) => connections.due(coarse_now()),
            Err(_) => return,
        };
        for (_, client_id) in due {
            if self.broker.kick(&client_id, self.options.will_on_expiry) {
                bump(&self.stats.expiry_disconnects);
                tracing::info!(
                    "disconnected client {client_id:?}: its token expired{}",
                    if self.options.will_on_expiry { "" } else { " (its will is not sent)" }
                );
            } else {
                tracing::debug!("client {client_id:?}, whose token expired, was already gone");
            }
        }
    }

    /// Mosquitto's reload (`SIGHUP`): re-read the policy and module files in the background.
    pub fn reload(&self) {
        logging::flush();
        self.reauthenticating.set(true);
        if let Some(r) = &self.reloader {
            r.request("Mosquitto reload (SIGHUP)");
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        // Join the reload thread and the background runtime before the engine goes.
        self.reloader = None;
        self.background = None;
    }
}

/// Seconds since the epoch from the coarse real-time clock (a few ms of resolution, read
/// without a system call and cheaper than the precise one): what an `exp` comparison needs.
fn coarse_now() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return now();
    }
    u64::try_from(ts.tv_sec).unwrap_or(0)
}

/// One audit line per denial (information), per allow at debug level.
fn audit(action: Action, topic: &str, subject: &Subject, client_id: &str, d: &Decision) {
    let rule = d.rule.as_deref().unwrap_or("-");
    if d.allow {
        tracing::debug!(
            "allow {} {topic:?} for {} {:?} (client {client_id:?}): rule {rule}: {}",
            action_name(action),
            subject.kind_str(),
            subject.id,
            d.reason
        );
    } else {
        tracing::info!(
            "deny {} {topic:?} for {} {:?} (client {client_id:?}): rule {rule}: {}",
            action_name(action),
            subject.kind_str(),
            subject.id,
            d.reason
        );
    }
}
