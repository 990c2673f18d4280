//! The plugin itself, in safe code: what happens at CONNECT, at each ACL check, at
//! disconnect, on the broker's tick and on its reload. `entry.rs` turns the broker's events
//! into these calls; nothing here sees a pointer.
//!
//! Everything here runs on the broker thread, so nothing here waits: a CONNECT verifies the
//! token with the keys already held, and a check is a lookup in the connection's decision
//! cache or one decision (natively for the built-in module, else one call into the policy
//! module; never an instance build: the broker thread is marked with
//! `policy_engine::runtime::must_not_wait`). Building candidates, refreshing keys, pulling
//! bundles and serving metrics happen on threads that the tick starts when there is such
//! work and that end when it is done (`background.rs`): between them the broker runs alone.
//!
//! Who a check is for comes from the connection table (`connections.rs`), kept bound to the
//! clients that proved each identity (`client.rs`). A client this plugin did not admit (a
//! certificate listener, another plugin, another enhanced-authentication method) is decided
//! as the subject its certificate names, when `plugin_opt_certificate_subject_type` is set
//! and the policy's `certificates` section names it, and is denied every check otherwise.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::Context;
use authorizer::{Authorizer, DecisionRecord, Spelling, action_name};
use identity::devkey::DevKey;
use identity::{Identities, KeySource, Verified, Verifier, now};
use policy_core::Message;
use policy_engine::pull::{PullStatus, Puller, Trust};
use policy_engine::{Action, Generation, Live, Reloader, Runtime, Source, Subject};

use crate::background::Background;
use crate::broker::{Broker, Removal};
use crate::client::{Binding, BrokerClient, ClientKey};
use crate::connections::{
    Connection, Connections, Identity, LOG_BURST, LogBudget, Mapped, TopicCache, TopicDecisions, aim,
};
use crate::logging;
use crate::options::{CertificateName, Options};
use crate::revocation::{self, Cause, Lost, OnRevoke, Pass};
use crate::stats::{REVOKED_DISCONNECTED, REVOKED_KEPT, REVOKED_UNSUBSCRIBED, Stats, add, bump};
use crate::sys;
use crate::usage::{Admitted, Over, Usage};

/// How long the first key load may take at start-up before the broker starts without keys
/// (connections are then refused, with that reason, until a refresh succeeds).
const FIRST_KEY_LOAD: Duration = Duration::from_secs(10);

/// Bytes for the verified tokens kept for reconnects (and their subjects).
const TOKEN_CACHE: u64 = 16 << 20;

/// How often expired and surplus identities are dropped (on the broker's tick).
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How often the broker's tick does its timed work (background work, token expiry, the full
/// sweep, `$SYS`), at most, in milliseconds. Mosquitto 2.0 ticks plugins on every pass of its
/// event loop, tens of thousands of times a second under load; in between, a tick does only
/// what must follow an event at once (see [`Plugin::tick`]).
const TICK_WORK_EVERY_MS: u64 = 10;

/// What Mosquitto reports of the message an ACL check is about: its QoS and retain flag
/// (for a subscribe: the requested QoS, and no flag) and its payload size.
#[derive(Debug, Clone, Copy, Default)]
pub struct AclMessage {
    pub qos: u8,
    pub retain: bool,
    pub payload_len: u32,
}

/// Who asks a check, and on what topic, as its decision record names them.
#[derive(Clone, Copy)]
struct Who<'a> {
    username: &'a str,
    client_id: &'a str,
    topic: &'a str,
}

/// The broker's time a revocation pass may take per tick.
const REVOKE_SLICE: Duration = Duration::from_millis(2);
/// Clients whose lost subscriptions a revocation report names one by one.
const REVOKED_SHOWN: usize = 20;
/// Clients that lost a subscription disconnected per tick, at most (`on_revoke disconnect`).
const REVOKED_KICKS: usize = 100;

/// A CONNECT's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// CONNACK "not authorised".
    Refused,
    /// Let in; with `rename`, the broker now knows the client by that username instead of the
    /// token it sent as its username (so the broker's own log never shows a token).
    Admitted { rename: Option<String> },
    /// An enhanced-authentication method other than `jwt`: for another plugin to decide.
    NotOurs,
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
    reloader: Option<Arc<Reloader>>,
    /// What every check reads or writes, kept together.
    per_check: PerCheck,
    background: Option<Background>,
    options: Options,
    broker: Arc<dyn Broker>,
    /// The engine, the identities, and the rules the plugin shares with the service.
    authorizer: Authorizer,
    stats: Arc<Stats>,
    last_sys: Cell<Option<Instant>>,
    last_sweep: Cell<Instant>,
    /// The clock of the publish-rate buckets.
    started: Instant,
    /// The re-decision of connected clients' subscriptions under a new generation, under way
    /// (`revocation.rs`), and the last generation one finished for.
    revocation: RefCell<Option<Pass>>,
    revoked_for: Cell<u64>,
    /// Connections re-authenticated since the last look: their subject may have changed.
    recheck: RefCell<Vec<ClientKey>>,
    /// Clients a finished pass found, to disconnect (`on_revoke disconnect`), a few per tick.
    to_disconnect: RefCell<std::collections::VecDeque<(ClientKey, Box<str>)>>,
}

/// The plugin's state that every check or tick reads or writes: the fields in this order
/// (`repr(C)`) up to the connection table's own header (its map's, which `Connections` holds
/// first) fill the struct's first two cache lines; of the rest of the table a check reads
/// nothing on the fast path, and a tick only whether sessions ended. Between two checks the
/// broker's and the kernel's work evict from the CPU's caches what a check touches, so
/// inside Mosquitto a check (and a tick) costs about the lines it touches.
#[repr(C, align(64))]
struct PerCheck {
    /// The client whose disconnect event was the last event: Mosquitto checks its will as a
    /// publish right after the event, before any other event. Any other event ends it.
    will_window: Cell<Option<ClientKey>>,
    /// When a check next looks for background work (coarse seconds since the epoch; a check
    /// that finds the clock behind the time this was set looks then too).
    next_background: Cell<u64>,
    /// The [`Live::version`] `generation` was taken at: a check takes the live generation
    /// from here, touching none of the swap's shared state, and from `Live` only after a swap.
    generation_seen: Cell<u64>,
    /// `generation`'s id, which is all a check the residual allows needs of it.
    generation_id: Cell<u64>,
    /// The authorizer's, for [`Live::version`].
    live: Arc<Live>,
    /// Checks [`Plugin::allowed_at_once`] allowed, by action (read, publish), not yet added to
    /// the shared metrics: they are at the next look for background work (at least once a
    /// second while checks come), so that a check touches no counter another thread reads
    /// (but for the one in [`authorizer::metrics::SAMPLE`] that is timed, which
    /// `checks_seen` counts to).
    allowed_uncounted: [Cell<u32>; 2],
    checks_seen: Cell<u32>,
    /// Debug lines are logged (they record allows too), which the process's log level,
    /// set once, decides.
    debug_lines: bool,
    /// From Mosquitto's reload event until the next tick: the broker re-checks every client's
    /// stored credentials (see `readmit`). The re-check runs in one go right after the event
    /// and the tick comes later in the same loop; checks in between (log lines published to
    /// `$SYS`) do not end it. (A broker built with websockets services them in between too: a
    /// CONNECT then may be taken for a re-check, which readmits only an entry whose whole
    /// binding matches, and leaves a disconnected one disconnected: it gets no subscription.)
    reauthenticating: Cell<bool>,
    /// A revocation pass is under way, or a re-authentication's recheck asks for one, or a
    /// pass's disconnects are waiting (see [`Plugin::revocation_under_way`]): every tick goes
    /// on with it. Set when a recheck is queued, and after each step. (A swap's pass starts at
    /// the timed work.)
    revoking: Cell<bool>,
    /// When the tick next does its timed work ([`coarse_ms`]).
    next_tick_work: Cell<u64>,
    connections: RefCell<Connections>,
    generation: RefCell<Arc<Generation>>,
}

/// Whether a kept identity belongs to the client a check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Yes,
    /// Another client's (or a stale one's): it goes.
    No,
    /// Its own, but not for this: the check is denied, the identity kept.
    NotNow,
}

impl Plugin {
    /// Loads the policy through the test-gated pipeline, loads the keys, starts the
    /// background work. An error stops the broker's start with its message.
    pub fn start(options: Options, broker: Arc<dyn Broker>) -> anyhow::Result<Plugin> {
        for d in &options.deprecations {
            tracing::warn!("{d}");
        }
        if options.on_revoke == OnRevoke::Unsubscribe && !broker.removes_subscriptions() {
            anyhow::bail!(
                "plugin_opt_on_revoke unsubscribe needs Mosquitto 2.1 or newer, which lets a plugin remove a \
                 single subscription (mosquitto_subscription_delete); this broker cannot: use keep or disconnect"
            );
        }
        let dev_key = match (&options.state_dir, options.dev) {
            (Some(dir), true) => Some(DevKey::load_or_create(dir).with_context(|| {
                format!(
                    "plugin_opt_state_dir {}: the dev signing key cannot be read or created",
                    dir.display()
                )
            })?),
            _ => None,
        };
        let config = options.keys.verifier_config(dev_key.as_ref())?;
        let file_source = matches!(config.source, KeySource::File(_));
        for w in options.keys.warnings(&config, options.dev, Spelling::PluginOption) {
            tracing::warn!("{w}");
        }
        for w in options.policy.warnings(Spelling::PluginOption) {
            tracing::warn!("{w}");
        }
        let trust = options.policy.trust(Spelling::PluginOption)?;
        let verifier = Arc::new(Verifier::new(config)?);

        let runtime = Runtime::new(options.module_cache())?;
        let module_source = options.policy.module.clone().map(Source::File).unwrap_or(Source::BuiltIn);
        let policy_file = options.policy.policy.clone().context("plugin_opt_policy is required")?;
        let live = Live::start(
            runtime,
            module_source,
            Source::File(policy_file.clone()),
            options.policy.tests.clone(),
        )?;

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
        background.refresh_keys(&verifier);
        let authorizer = Authorizer::new(
            Arc::clone(&live),
            Arc::new(Identities::new(verifier, TOKEN_CACHE)),
            &options.keys,
        );
        let stats = Arc::new(Stats::new(Arc::clone(&authorizer.metrics)));
        if let (Some(url), Some(trust)) = (&options.policy.policy_url, trust) {
            let token = match &options.bundle_token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .with_context(|| format!("plugin_opt_bundle_token_file {}", f.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let signed_by = match &trust {
                Trust::Signed(keys) => format!("signed by {}", keys.ids().join(" or ")),
                Trust::InsecureUnsigned => "unsigned bundles accepted".into(),
            };
            let every = Duration::from_secs(options.policy.policy_poll);
            let status = Arc::new(std::sync::Mutex::new(PullStatus::default()));
            let puller =
                Puller::new(Arc::clone(&live), url.clone(), token, every, trust, Arc::clone(&status))?;
            background.pull_every(puller, every);
            let _ = stats.pull.set(status);
            tracing::info!("pulling policy bundles from {url} every {}s ({signed_by})", every.as_secs());
        }
        if let Some(addr) = options.metrics_listen {
            let bound = background.serve_metrics(addr, Arc::clone(&stats), Arc::clone(&live))?;
            tracing::info!("metrics at http://{bound}/metrics");
        }
        let watch = if options.watch {
            policy_engine::reload::Watch::Poll
        } else {
            policy_engine::reload::Watch::Off
        };
        let reloader = Arc::new(Reloader::start(Arc::clone(&live), watch)?);
        background.watch_files(&reloader);
        // From now on the broker's thread decides with the instances it finds ready and never
        // builds one (the start-up pipeline above could).
        policy_engine::runtime::must_not_wait();
        let g = live.current();
        tracing::info!(
            "ready: policy {} ({} rules, generation {}), module {} ({}), checks decided {}, test cases {}, certificate clients {}",
            policy_file.display(),
            g.rule_count,
            g.id,
            g.module.version,
            &g.module.hash[..16],
            g.deciding(),
            options.policy.tests.as_ref().map(|t| t.display().to_string()).unwrap_or_else(|| "none".into()),
            match authorizer.certificate_subject_type() {
                Some(t) => format!("decided as {} subjects (the policy's certificates section)", t.as_str()),
                None => "denied (plugin_opt_certificate_subject_type is not set)".into(),
            }
        );
        // The version first: a swap in between is taken again at the first check.
        let generation_seen = live.version();
        let generation = live.current();
        Ok(Plugin {
            reloader: Some(reloader),
            per_check: PerCheck {
                will_window: Cell::new(None),
                next_background: Cell::new(0),
                generation_seen: Cell::new(generation_seen),
                generation_id: Cell::new(generation.id),
                allowed_uncounted: [Cell::new(0), Cell::new(0)],
                checks_seen: Cell::new(0),
                live: live.clone(),
                debug_lines: tracing::enabled!(tracing::Level::DEBUG),
                reauthenticating: Cell::new(false),
                revoking: Cell::new(false),
                next_tick_work: Cell::new(0),
                connections: RefCell::new(Connections::default()),
                generation: RefCell::new(generation),
            },
            background: Some(background),
            options,
            broker,
            authorizer,
            stats,
            last_sys: Cell::new(None),
            last_sweep: Cell::new(Instant::now()),
            revocation: RefCell::new(None),
            revoked_for: Cell::new(live.current().id),
            recheck: RefCell::new(Vec::new()),
            to_disconnect: RefCell::new(std::collections::VecDeque::new()),
            started: Instant::now(),
        })
    }

    pub fn live(&self) -> &Arc<Live> {
        &self.authorizer.live
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// What every event does, a tick that goes further than [`Plugin::tick_untimed`]'s look
    /// included: log lines queued on other threads are written, and the will window ends
    /// (only a disconnect's will check is in it).
    fn every_event(&self) {
        logging::flush();
        self.per_check.will_window.set(None);
    }

    /// Every event but a disconnect's will check ends the will window; log lines queued on
    /// other threads are written first.
    fn event(&self) {
        self.every_event();
        self.background_work();
    }

    /// Adds the checks [`Plugin::allowed_at_once`] allowed to the shared metrics.
    fn count_allowed(&self) {
        for (action, n) in [Action::Read, Action::Publish].into_iter().zip(&self.per_check.allowed_uncounted)
        {
            self.authorizer.metrics.allowed_at_once(action, u64::from(n.take()));
        }
    }

    /// Looks for background work (watched files, key refreshes, bundle pulls, scrapes; each
    /// rate-limited) and hands it to a thread that ends when it is done. From the tick's timed
    /// work and every other event, and from checks at most once a second: a Mosquitto that sends no
    /// tick (2.0 with `per_listener_settings true`) still gets it done while clients act.
    fn background_work(&self) {
        self.per_check.next_background.set(coarse_now() + 1);
        self.count_allowed();
        // A swapped-out generation is not kept for the next check, which may be far off.
        drop(self.live_generation());
        if let Some(b) = &self.background {
            b.poll();
        }
    }

    /// CONNECT with a username and password (either may be absent). Refused answers CONNACK
    /// "not authorised". Either way the reason is logged, never the token.
    pub fn authenticate(
        &self,
        client: &dyn BrokerClient,
        username: Option<&[u8]>,
        password: Option<&[u8]>,
    ) -> Admission {
        self.event();
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
    /// token: see [`Plugin::reauthenticate`]. Another method is not ours: whatever the
    /// client's address held is forgotten (this CONNECT is another client's).
    pub fn authenticate_ext(
        &self,
        client: &dyn BrokerClient,
        method: &[u8],
        data: Option<&[u8]>,
        username: Option<&[u8]>,
    ) -> Admission {
        self.event();
        let Some(mut connections) = self.table(client) else { return Admission::Refused };
        let key = client.key();
        let token = data.filter(|d| !d.is_empty());
        let ours = method.eq_ignore_ascii_case(b"jwt");
        // Only a client that proved a token here re-authenticates with one.
        let reauthentication = connections.get_mut(key).is_some_and(|c| {
            c.connected && matches!(c.identity, Identity::Token { .. }) && c.binding.still_names(client)
        });
        if !ours {
            // Mosquitto requires a re-authentication to use the CONNECT's method, so this is
            // a CONNECT: the address now belongs to a client this plugin does not know.
            if !reauthentication && connections.remove(key).is_some() {
                self.stats.connections_current.store(connections.connected() as u64, Relaxed);
            }
            return Admission::NotOurs;
        }
        if reauthentication {
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
    fn table(&self, client: &dyn BrokerClient) -> Option<std::cell::RefMut<'_, Connections>> {
        let table = self.per_check.connections.try_borrow_mut().ok();
        if table.is_none() {
            tracing::error!(
                "refused client {:?}: the connection table is busy (re-entered)",
                client.id_text()
            );
        }
        table
    }

    /// When a token stops being good: its `exp` plus the leeway.
    fn deadline(&self, v: &Verified) -> u64 {
        v.exp.saturating_add(self.options.keys.leeway)
    }

    /// `${username}` for an identity under `generation`: a token's proven username (it names
    /// the subject and is no certificate name, [`Authorizer::proven_username`]), a
    /// certificate's name.
    fn username_for(&self, generation: &Generation, identity: &Identity, subject: &Subject) -> Box<str> {
        match identity {
            Identity::Token { given, verified, .. } => {
                self.authorizer.proven_username(generation, given, subject, verified).into()
            }
            Identity::Certificate { name } => name.clone(),
            Identity::Unknown { .. } => "".into(),
        }
    }

    /// A connected client shows a fresh token (MQTT 5 re-authentication). It must name the
    /// same subject as the connection's token (both mapped by the live generation); then it
    /// replaces the connection's identity (claims, groups, scopes: the very next check is
    /// decided with them) and its deadline. Otherwise it is refused and Mosquitto ends the
    /// connection.
    fn reauthenticate(
        &self,
        connections: &mut Connections,
        client: &dyn BrokerClient,
        token: Option<&[u8]>,
        username: Option<&[u8]>,
    ) -> Admission {
        let key = client.key();
        let Some(conn) = connections.get_mut(key) else { return Admission::Refused };
        let generation = self.authorizer.live.current();
        let tried = (|| {
            let Identity::Token { hash: held_hash, verified: held, shown_username, .. } = &conn.identity
            else {
                return Err("this connection did not prove itself with a token".to_string());
            };
            let token = token.ok_or("no token in the AUTH packet's authentication data")?;
            let token = std::str::from_utf8(token).map_err(|_| "the token is not UTF-8".to_string())?;
            let (hash, verified) = self.authorizer.identities.verify_now(token)?;
            let fresh = self.authorizer.identities.subject(&generation, hash, &verified)?;
            let held = self.authorizer.identities.subject(&generation, *held_hash, held)?;
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
            Ok((hash, verified, fresh, shown_username.is_none()))
        })();
        let (hash, verified, subject, as_sent) = match tried {
            Ok(t) => t,
            Err(reason) => {
                bump(&self.stats.reauth_refused);
                tracing::info!(
                    "refused the re-authentication of client {:?} from {}: {reason}; the broker ends \
                     the connection",
                    client.id_text(),
                    client.address_text()
                );
                return Admission::Refused;
            }
        };
        if let Identity::Token { hash: h, verified: v, given, .. } = &mut conn.identity {
            *h = hash;
            conn.deadline = self.deadline(&verified);
            *v = verified;
            if as_sent {
                *given = username.and_then(|u| std::str::from_utf8(u).ok()).unwrap_or("").into();
            }
        }
        // `${username}` stays a name proven to belong to the subject, by the new claims.
        conn.username = self.username_for(&generation, &conn.identity, &subject);
        let superuser = self.authorizer.superuser(&generation, &subject).allow;
        conn.remap(&generation, &subject, superuser);
        if let Ok(mut recheck) = self.recheck.try_borrow_mut() {
            recheck.push(key);
            self.per_check.revoking.set(true);
        }
        let deadline = conn.deadline;
        connections.watch(key, deadline);
        bump(&self.stats.reauth_accepted);
        tracing::info!(
            "re-authenticated client {:?} as {} {:?}{}: new token good until {}",
            client.id_text(),
            subject.kind_str(),
            subject.id,
            if superuser { " (superuser)" } else { "" },
            deadline
        );
        Admission::Admitted { rename: None }
    }

    /// Records an authentication's outcome: the connection (renaming the client when its
    /// token was its username), counters and the log line.
    fn admit(
        &self,
        connections: &mut Connections,
        client: &dyn BrokerClient,
        tried: Result<(Connection, Arc<Subject>), String>,
    ) -> Admission {
        let key = client.key();
        let tried = tried.and_then(|(mut connection, subject)| {
            // A token sent as the username: the broker must show the subject id instead, or
            // its own log would show the token. If it cannot, the client does not get in.
            if let Identity::Token { shown_username: Some(name), .. } = &connection.identity {
                let same = client.username() == Some(name.as_bytes());
                if !same && !client.set_username(name) {
                    return Err(format!(
                        "the broker refused to show the client as {name:?} in place of the token it sent \
                         as its username"
                    ));
                }
                connection.binding.renamed(name);
            }
            Ok((connection, subject))
        });
        let outcome = match tried {
            Ok((mut connection, subject)) => {
                let superuser = connection.mapped.as_ref().is_some_and(|m| m.superuser);
                let described = format!(
                    "client {:?} from {} as {} {:?}{}",
                    client.id_text(),
                    client.address_text(),
                    subject.kind_str(),
                    subject.id,
                    if superuser { " (superuser)" } else { "" }
                );
                // Mosquitto re-authenticates every client after a reload: the same token on
                // the same client is not news, and a kept session stays disconnected. (Outside
                // a reload, the same address is a new connection, even with the same token.)
                let again = connections.get_mut(key).filter(|c| {
                    self.per_check.reauthenticating.get()
                        && c.token().map(|t| t.0) == connection.token().map(|t| t.0)
                        && c.binding.describes(client)
                });
                let rename = match &connection.identity {
                    Identity::Token { shown_username, .. } => shown_username.as_deref().map(str::to_string),
                    _ => None,
                };
                if let Some(old) = again {
                    connection.connected = old.connected;
                    connection.connecting = old.connecting;
                    connection.binding = old.binding.clone();
                    connection.usage = std::mem::take(&mut old.usage);
                    tracing::debug!("re-authenticated {described}");
                } else {
                    // Limits count per client: a reconnect earns no fresh burst, and a
                    // resumed session's subscriptions still count.
                    connection.usage = connections.usage_of(&connection.client_id, !client.clean_start());
                    tracing::info!("connected {described}");
                    bump(&self.stats.connections_accepted);
                }
                connections.insert(key, connection);
                Admission::Admitted { rename }
            }
            Err(reason) => {
                // An address reused by a refused client keeps nothing of an earlier one.
                connections.remove(key);
                bump(&self.stats.connections_refused);
                tracing::info!(
                    "refused client {:?} from {}: {reason}",
                    client.id_text(),
                    client.address_text()
                );
                Admission::Refused
            }
        };
        self.stats.connections_current.store(connections.connected() as u64, Relaxed);
        outcome
    }

    /// After a reload Mosquitto re-checks every client with the credentials it stored, the
    /// offline persistent sessions too. A client that sent its token as the username now has
    /// its subject id as the username (see [`Admission::Admitted`]) and no token, and one
    /// admitted through enhanced authentication has no password either (Mosquitto asks
    /// through this event all the same): it is readmitted on the identity it proved, while
    /// that is still valid. Only during the reload's re-check, and only for the client that
    /// proved it: a new connection always has to show a token.
    fn readmit(
        &self,
        connections: &mut Connections,
        client: &dyn BrokerClient,
        username: Option<&[u8]>,
        password: Option<&[u8]>,
    ) -> Option<Admission> {
        // A password that is a JWT is proof enough on its own: verified afresh.
        let token_in_password =
            password.and_then(|p| std::str::from_utf8(p).ok()).is_some_and(identity::looks_like_jwt);
        if !self.per_check.reauthenticating.get() || token_in_password {
            return None;
        }
        let conn = connections.get_mut(client.key())?;
        let Identity::Token { verified, shown_username, enhanced, .. } = &conn.identity else { return None };
        let by_name = shown_username.as_deref().is_some_and(|shown| username == Some(shown.as_bytes()));
        if !(by_name || *enhanced) || !conn.binding.describes(client) {
            return None;
        }
        if !self.authorizer.identities.still_valid(verified) {
            tracing::info!(
                "refused client {:?} on reload: its token expired or its key was withdrawn",
                client.id_text()
            );
            return Some(Admission::Refused);
        }
        tracing::debug!("re-authenticated client {:?} on the token it presented", client.id_text());
        Some(Admission::Admitted { rename: None })
    }

    /// Verifies the token (the password, else a JWT username; with `enhanced`, the password
    /// is the authentication data) and builds the connection it admits.
    fn try_authenticate(
        &self,
        client: &dyn BrokerClient,
        username: Option<&[u8]>,
        password: Option<&[u8]>,
        enhanced: bool,
    ) -> Result<(Connection, Arc<Subject>), String> {
        let username = username
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| "the username is not UTF-8".to_string())?;
        let password = password
            .map(std::str::from_utf8)
            .transpose()
            .map_err(|_| "the password is not UTF-8 (send the JWT as the password)".to_string())?;
        // Where the token is: the rule the HTTP service follows too (identity::token_in).
        let Some((token, _)) = identity::token_in(password, username) else {
            return Err(match password {
                Some(p) if !p.is_empty() => {
                    "the password is not a JWT (three base64url parts, the first a JSON header): send \
                            the JWT as the MQTT password (with any username, or none) or as the username"
                }
                _ => {
                    "no token: send the JWT as the MQTT password (with any username, or none) or as the \
                         username"
                }
            }
            .into());
        };
        let (hash, verified) = self.authorizer.identities.verify_now(token)?;
        let generation = self.authorizer.live.current();
        let subject = self.authorizer.identities.subject(&generation, hash, &verified)?;
        let superuser = self.authorizer.superuser(&generation, &subject).allow;
        // A JWT as the username (the token, or another one), or enhanced authentication
        // without a username: the broker will know the client by its subject id, so no log of
        // the broker's shows a token.
        let token_as_username = username.is_some_and(identity::looks_like_jwt);
        let renamed = token_as_username || (enhanced && username.is_none());
        let identity = Identity::Token {
            hash,
            given: if renamed { subject.id.as_str() } else { username.unwrap_or("") }.into(),
            shown_username: renamed.then(|| subject.id.as_str().into()),
            enhanced,
            token_as_username,
            verified: Arc::clone(&verified),
        };
        let mut connection = Connection {
            client_id: client.id_text().into(),
            // `${username}` is only ever a name proven to belong to the subject.
            username: self.username_for(&generation, &identity, &subject),
            deadline: self.deadline(&verified),
            identity,
            binding: Binding::of(client),
            mapped: None,
            cache: TopicCache::new(self.options.decision_cache_size),
            connected: true,
            connecting: true,
            left: 0,
            log: LogBudget::default(),
            usage: Usage::default(),
        };
        connection.remap(&generation, &subject, superuser);
        Ok((connection, subject))
    }

    /// An ACL check: `true` allows. `access` is Mosquitto's bit (read = delivery, write =
    /// publish or will, subscribe, unsubscribe); `topic` a name, or a filter for subscribe;
    /// `message` the QoS, retain flag and payload size as Mosquitto reports them (for
    /// subscribe: the requested QoS, and no retain flag).
    pub fn check(&self, client: &impl BrokerClient, access: i32, topic: &[u8], message: AclMessage) -> bool {
        // Only the check right after a disconnect event may be that client's will.
        let will = self.per_check.will_window.take() == Some(client.key());
        let now = coarse_now();
        // Due, or the wall clock stepped back (then it would not be due until the clock caught
        // up).
        let next_background = self.per_check.next_background.get();
        if now >= next_background || now + 1 < next_background {
            // Lines other threads logged go out at the tick's timed work (Mosquitto ticks its
            // plugins on every pass of its loop, unless 2.0 runs with `per_listener_settings
            // true`) and every other event, and at a check only with the background work:
            // the queue's flag is two more lines of memory for a check to find.
            logging::flush();
            self.background_work();
        }
        // Two comparisons rather than a `match`, which compiles to a jump table: a line of
        // memory more for every check to find.
        let action = if access == access::READ {
            Action::Read
        } else if access == access::WRITE {
            Action::Publish
        } else {
            return self.check_other(client, access, topic, message, will, now);
        };
        if !will && self.allowed_at_once(client, action, topic, now) {
            return true;
        }
        self.decide(client, action, topic, message, will, now)
    }

    /// [`Plugin::check`] of an access other than read and publish.
    #[cold]
    #[inline(never)]
    fn check_other(
        &self,
        client: &dyn BrokerClient,
        access: i32,
        topic: &[u8],
        message: AclMessage,
        will: bool,
        now: u64,
    ) -> bool {
        match access {
            access::SUBSCRIBE => self.decide(client, Action::Subscribe, topic, message, will, now),
            // Leaving a subscription never widens anything; it frees one under the limit.
            access::UNSUBSCRIBE => {
                self.unsubscribed(client, topic);
                true
            }
            other => {
                tracing::warn!("denied an ACL check with an unknown access value {other}");
                false
            }
        }
    }

    /// Forgets the filter: it frees a place under the subscription limit, and a swap no
    /// longer re-decides it.
    fn unsubscribed(&self, client: &dyn BrokerClient, filter: &[u8]) {
        if let Ok(filter) = std::str::from_utf8(filter)
            && let Ok(mut connections) = self.per_check.connections.try_borrow_mut()
            && let Some(conn) = connections.get_mut(client.key())
            && conn.binding.still_names(client)
        {
            conn.usage.unsubscribed(filter);
        }
    }

    /// Nanoseconds on the plugin's monotonic clock: the publish-rate buckets' time.
    fn clock_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The common case of a check, kept small and apart from the rest: between two checks the
    /// broker's own work (and the kernel's) evicts from the CPU's caches whatever a check
    /// touches, code and data, so inside Mosquitto a check costs about what it touches. A
    /// connected client, still bound to its entry, mapped under the live generation, whose
    /// residual allows the publish or read (or a superuser), is allowed here; anything else
    /// (and every check while debug lines, which record allows, are on) goes to
    /// [`Plugin::decide`], from the start.
    #[inline]
    fn allowed_at_once(&self, client: &impl BrokerClient, action: Action, topic: &[u8], now: u64) -> bool {
        if action == Action::Subscribe || self.per_check.debug_lines {
            return false;
        }
        // Before the table is borrowed: taking a new generation may hand the old one over,
        // which may log, and a log line may be a publish that is checked.
        let generation = self.live_generation_id();
        let Ok(connections) = self.per_check.connections.try_borrow() else { return false };
        let Some(conn) = connections.get(client.key()) else { return false };
        if !conn.connected || conn.deadline <= now {
            return false;
        }
        // An entry whose identity is `Unknown` is never mapped (see `Connection::mapped`).
        let Some(mapped) = conn.mapped.as_ref().filter(|m| m.generation == generation) else {
            return false;
        };
        // A publish its limits may refuse is counted against them in `decide`.
        if action == Action::Publish && !mapped.publishes_at_once() {
            return false;
        }
        if !conn.binding.still_names(client) {
            return false;
        }
        let seen = self.per_check.checks_seen.get();
        self.per_check.checks_seen.set(seen.wrapping_add(1));
        let started = u64::from(seen).is_multiple_of(authorizer::metrics::SAMPLE).then(Instant::now);
        // The prepared subject was made with this connection's client id and username. A
        // topic that is not UTF-8 is denied, a superuser's too, in `decide`.
        let allowed = if mapped.superuser {
            std::str::from_utf8(topic).is_ok()
        } else {
            mapped.prepared.as_ref().is_some_and(|p| p.allowed_under(generation, action, topic).is_some())
        };
        if allowed {
            let tally = &self.per_check.allowed_uncounted[usize::from(action == Action::Publish)];
            tally.set(tally.get().wrapping_add(1));
            if let Some(t) = started {
                self.authorizer.metrics.check_took(t.elapsed());
            }
        }
        allowed
    }

    /// The live generation, taken from `Live` again only after a swap.
    #[inline]
    fn live_generation(&self) -> std::cell::Ref<'_, Arc<Generation>> {
        self.live_generation_id();
        self.per_check.generation.borrow()
    }

    /// The live generation's id (see [`Plugin::live_generation`]).
    #[inline]
    fn live_generation_id(&self) -> u64 {
        let version = self.per_check.live.version();
        if version != self.per_check.generation_seen.get() {
            self.take_live_generation(version);
        }
        self.per_check.generation_id.get()
    }

    /// Takes the live generation after a swap (`version`), handing the one held until now
    /// to a background thread to free.
    #[cold]
    #[inline(never)]
    fn take_live_generation(&self, version: u64) {
        let previous = self.per_check.generation.try_borrow_mut().ok().map(|mut held| {
            let current = self.per_check.live.current();
            self.per_check.generation_seen.set(version);
            self.per_check.generation_id.set(current.id);
            std::mem::replace(&mut *held, current)
        });
        // This thread may hold it last: its instances are freed off the broker thread.
        // (Handing it over may log, and a log line may be a publish that is checked: nothing
        // is borrowed by then.)
        if let (Some(previous), Some(background)) = (previous, &self.background) {
            background.retire(previous);
        }
    }

    /// Decides a check at `now` (seconds, [`coarse_now`]): everything
    /// [`Plugin::allowed_at_once`] does not allow.
    #[cold]
    #[inline(never)]
    fn decide(
        &self,
        client: &dyn BrokerClient,
        action: Action,
        topic: &[u8],
        seen: AclMessage,
        will: bool,
        now: u64,
    ) -> bool {
        let metrics = &self.authorizer.metrics;
        let message = Message {
            qos: (seen.qos <= 2).then_some(seen.qos),
            retain: (action != Action::Subscribe).then_some(seen.retain),
        };
        let Ok(topic) = std::str::from_utf8(topic) else {
            metrics.decided(action, false, None);
            tracing::info!(
                "deny {} for client {:?}: the topic is not UTF-8",
                action_name(action),
                client.id_text()
            );
            return false;
        };
        let Ok(mut connections) = self.per_check.connections.try_borrow_mut() else {
            metrics.decided(action, false, None);
            tracing::error!(
                "deny {} {topic:?}: the connection table is busy (re-entered)",
                action_name(action)
            );
            return false;
        };
        let key = client.key();
        let generation = Arc::clone(&self.live_generation());
        let bound = connections.get_mut(key).map_or(Bound::No, |c| self.still_bound(c, client, action, will));
        if bound == Bound::NotNow {
            if let Some(conn) = connections.get_mut(key) {
                self.refuse(conn, action, topic, "it left, and a client that left publishes only its will");
            }
            return false;
        }
        if bound == Bound::No {
            if connections.remove(key).is_some() {
                bump(&self.stats.stale_entries);
                tracing::debug!(
                    "client {:?}: the identity kept for its address belonged to an earlier client",
                    client.id_text()
                );
            }
            let mut newcomer = self.unadmitted(client);
            newcomer.usage = connections.usage_of(&newcomer.client_id, !client.clean_start());
            if will {
                // Met at its will, right after its disconnect: its structure goes soon.
                connections.insert_leaving(key, newcomer);
            } else {
                connections.insert(key, newcomer);
            }
            self.stats.connections_current.store(connections.connected() as u64, Relaxed);
        }
        let Some(conn) = connections.get_mut(key) else { return false };
        let refused = if let Identity::Unknown { reason, .. } = &conn.identity {
            Some(reason.to_string())
        } else if conn.deadline <= now {
            Some("its token has expired".to_string())
        } else {
            self.map_under(conn, &generation).err()
        };
        if let Some(reason) = refused {
            self.refuse(conn, action, topic, &reason);
            return false;
        }
        let Connection { mapped: Some(mapped), cache, client_id, log, identity, usage, .. } = conn else {
            return false;
        };
        if action != Action::Read && mapped.limits().is_err() {
            // The module could not say at the mapping (no instance ready, a fault): ask again.
            mapped.set_limits(generation.limits(&mapped.request.subject).map_err(|fault| fault.0.into()));
        }
        // Limits first: a request over one is refused whatever the rules grant, and takes
        // nothing from the buckets.
        // `Err(Err(_))`: the limits could not be read.
        let over: Result<Option<Admitted>, Result<Over, &str>> = match (action, mapped.limits()) {
            (Action::Read, _) => Ok(None),
            (_, Err(fault)) => Err(Err(fault)),
            (Action::Publish, Ok(limits)) => usage
                .admits_publish(limits, seen.payload_len, message.retain, self.clock_ns())
                .map(Some)
                .map_err(Ok),
            (Action::Subscribe, Ok(limits)) => {
                usage.admits_subscription(limits, topic).map(|()| None).map_err(Ok)
            }
        };
        let who = Who { username: identity.username_label(), client_id, topic };
        let admitted = match over {
            Ok(admitted) => admitted,
            Err(over) => {
                metrics.decided(action, false, None);
                self.over_limit(log, who, &mapped.request.subject, action, over);
                return false;
            }
        };
        let allowed = self.decided(&generation, mapped, cache, log, who, action, message);
        if allowed {
            match admitted {
                Some(admitted) => usage.published(admitted),
                None if action == Action::Subscribe => usage.subscribed(topic, seen.qos),
                None => {}
            }
        }
        allowed
    }

    /// Maps the connection's identity under `generation` when it is not yet (a new
    /// generation: its module maps the identity again, and earlier decisions go); `Err` says
    /// why it maps to no subject.
    fn map_under(&self, conn: &mut Connection, generation: &Arc<Generation>) -> Result<(), String> {
        if conn.mapped_for(generation.id).is_some() {
            return Ok(());
        }
        match self.subject_of(generation, &conn.identity) {
            Ok(s) => {
                let superuser = self.authorizer.superuser(generation, &s).allow;
                conn.username = self.username_for(generation, &conn.identity, &s);
                conn.remap(generation, &s, superuser);
                Ok(())
            }
            Err(reason) => {
                conn.mapped = None;
                Err(reason)
            }
        }
    }

    /// Records a request refused for being over a limit (or because its limits could not be
    /// read), counted; the reason is formatted only when the record is written.
    fn over_limit(
        &self,
        log: &mut LogBudget,
        who: Who<'_>,
        subject: &Subject,
        action: Action,
        over: Result<Over, &str>,
    ) {
        if let Ok(over) = over {
            bump(&self.stats.limit_refusals[over.index()]);
        }
        self.within_budget(log, who.client_id, || {
            let reason = match over {
                Ok(over) => over.reason(),
                Err(fault) => format!("its limits could not be read: {fault}"),
            };
            let record = DecisionRecord::about("acl", Some(subject), who.username, who.client_id, who.topic);
            tracing::info!("audit: {}", record.outcome(action_name(action), false, &reason).to_json());
        });
    }

    /// What the policy says of a check by a connection mapped under `generation`, recorded.
    #[allow(clippy::too_many_arguments)]
    fn decided(
        &self,
        generation: &Generation,
        mapped: &mut Mapped,
        cache: &mut TopicCache,
        log: &mut LogBudget,
        who: Who<'_>,
        action: Action,
        message: Message,
    ) -> bool {
        let metrics = &self.authorizer.metrics;
        let topic = who.topic;
        let record =
            |subject| DecisionRecord::about("acl", Some(subject), who.username, who.client_id, topic);
        if mapped.superuser {
            metrics.decided(action, true, None);
            let r = record(&mapped.request.subject).outcome(action_name(action), true, "superuser");
            self.audit(log, self.watched(r, action, &mapped.request.subject, topic));
            return true;
        }
        // The prepared subject was made with this connection's client id and username.
        if let Some(prepared) = &mapped.prepared
            && let Some(rule) = self.authorizer.allowed_as_prepared(generation, prepared, action, topic)
        {
            // Allows are recorded at debug level: the decision is made only to be shown.
            if self.per_check.debug_lines
                && let Some(decision) = generation.allowed_by(rule, action, topic)
            {
                self.audit(log, record(&mapped.request.subject).decided(action_name(action), &decision));
            }
            return true;
        }
        aim(&mut mapped.request, action, topic, message);
        let mut decisions = TopicDecisions { cache, topic, prepared: mapped.prepared.as_ref() };
        // Decisions that cannot depend on the message are remembered for every message.
        let key = (action, if generation.reads_message() { message } else { Message::UNKNOWN });
        self.authorizer.check(generation, &mapped.request, key, &mut decisions, |decision, _| {
            let r = record(&mapped.request.subject).decided(action_name(action), decision);
            self.audit(
                log,
                if decision.allow { self.watched(r, action, &mapped.request.subject, topic) } else { r },
            );
            decision.allow
        })
    }

    /// Denies a check before the policy is asked (an identity that cannot be named, an
    /// expired token, a client that left), with a record of why.
    fn refuse(&self, conn: &mut Connection, action: Action, topic: &str, reason: &str) {
        self.authorizer.metrics.decided(action, false, None);
        let Connection { mapped, client_id, log, identity, .. } = conn;
        let subject = mapped.as_ref().map(|m| &m.request.subject);
        let record = DecisionRecord::about("acl", subject, identity.username_label(), client_id, topic);
        self.audit(log, record.outcome(action_name(action), false, reason));
    }

    /// The record of an allowed check, marked watched when it grants a wildcard subscription
    /// (which is counted too: [`Authorizer::watch_subscription`]).
    fn watched<'r>(
        &self,
        record: DecisionRecord<'r>,
        action: Action,
        subject: &Subject,
        filter: &str,
    ) -> DecisionRecord<'r> {
        if action == Action::Subscribe && self.authorizer.watch_subscription(subject, filter) {
            record.watched("wildcard")
        } else {
            record
        }
    }

    /// Logs a decision record (`audit: {...}`, the HTTP service's record): an allow at debug
    /// level, a denial or a watched allow (a wildcard subscription) at information level
    /// within the client's log budget, counting the ones it does not write.
    fn audit(&self, log: &mut LogBudget, record: DecisionRecord<'_>) {
        if record.decision == "allow" && record.watch.is_none() {
            // Formatted only when debug lines are on.
            tracing::debug!("audit: {}", record.to_json());
            return;
        }
        self.within_budget(log, record.clientid, || tracing::info!("audit: {}", record.to_json()));
    }

    /// Writes an information-level record with `write` when the client's log budget allows,
    /// saying first how many were not written; else counts it as suppressed.
    fn within_budget(&self, log: &mut LogBudget, client_id: &str, write: impl FnOnce()) {
        match log.take(coarse_now()) {
            Some(0) => write(),
            Some(n) => {
                tracing::info!(
                    "client {client_id:?}: {n} denial records not written (over its log budget of {LOG_BURST}, then 1 a second)"
                );
                write();
            }
            None => bump(&self.stats.log_lines_suppressed),
        }
    }

    /// Does the entry kept for this client's address still belong to this client? A
    /// connected entry does while the broker's client id and username for it are unchanged;
    /// a disconnected one only when everything the broker says matches, and never for a
    /// subscribe (an offline session does not subscribe). A disconnected entry publishes only
    /// its will, right after its disconnect: any other publish is refused, the entry kept.
    fn still_bound(&self, c: &Connection, client: &dyn BrokerClient, action: Action, will: bool) -> Bound {
        let bound = if c.connected {
            c.binding.still_names(client)
        } else {
            action != Action::Subscribe && c.binding.describes(client)
        };
        match bound {
            false => Bound::No,
            true if !c.connected && action == Action::Publish && !will => Bound::NotNow,
            true => Bound::Yes,
        }
    }

    /// The subject an identity maps to under `generation`.
    fn subject_of(&self, generation: &Arc<Generation>, identity: &Identity) -> Result<Arc<Subject>, String> {
        match identity {
            Identity::Token { hash, verified, .. } => {
                self.authorizer.identities.subject(generation, *hash, verified).map_err(String::from)
            }
            Identity::Certificate { name } => match self.authorizer.certificate_subject(generation, name)? {
                Some(subject) => Ok(subject),
                None => Err(format!(
                    "the certificate name {} is no client of this policy (its certificates section)",
                    policy_core::quote(name)
                )),
            },
            Identity::Unknown { reason, .. } => Err(reason.to_string()),
        }
    }

    /// The identity of a client that reached a check without this plugin having admitted it:
    /// the subject its certificate names, or none (every check denied, saying why).
    fn unadmitted(&self, client: &dyn BrokerClient) -> Connection {
        let named = self.certificate_name(client);
        let username: Box<str> = named.as_deref().unwrap_or("").into();
        let identity = match named {
            Ok(name) => {
                bump(&self.stats.certificate_clients);
                tracing::info!(
                    "client {:?} from {} is known by its certificate as {:?}",
                    client.id_text(),
                    client.address_text(),
                    name
                );
                Identity::Certificate { name: name.into() }
            }
            Err(reason) => {
                bump(&self.stats.unknown_clients);
                tracing::info!(
                    "client {:?} from {} was not admitted by this plugin: {reason}; its checks are denied",
                    client.id_text(),
                    client.address_text()
                );
                Identity::Unknown { reason: reason.into(), since: coarse_now() }
            }
        };
        Connection {
            client_id: client.id_text().into(),
            username,
            identity,
            binding: Binding::of(client),
            deadline: u64::MAX,
            mapped: None,
            cache: TopicCache::new(self.options.decision_cache_size),
            connected: true,
            connecting: false,
            left: 0,
            log: LogBudget::default(),
            usage: Usage::default(),
        }
    }

    /// The name the broker took from the client's verified certificate as its username, when
    /// certificate clients are decided.
    fn certificate_name(&self, client: &dyn BrokerClient) -> Result<String, String> {
        if self.authorizer.certificate_subject_type().is_none() {
            return Err("it showed no token to this plugin (a certificate listener, another plugin or \
                        another authentication method); to decide clients known by their certificate, \
                        set plugin_opt_certificate_subject_type"
                .into());
        }
        let Some(names) = client.certificate_names() else {
            return Err("it showed no token to this plugin and no certificate".into());
        };
        let username = client.username().and_then(|u| std::str::from_utf8(u).ok()).unwrap_or("");
        if username.is_empty() {
            return Err("its username is empty, so the broker did not take it from its certificate".into());
        }
        // One form only, as the listener makes it: a common name that reads like another
        // certificate's subject must not stand for it.
        let (name, form) = match self.options.certificate_name {
            CertificateName::CommonName => (names.common_name, "common name (use_identity_as_username)"),
            CertificateName::Subject => (names.subject, "subject (use_subject_as_username)"),
        };
        if name.as_deref() == Some(username) {
            return Ok(username.to_string());
        }
        Err(format!(
            "its username {username:?} is not its certificate's {form}, the form plugin_opt_certificate_name names"
        ))
    }

    /// The client's connection ended. Its identity stays for the checks that may follow (its
    /// will right away, messages queued for its persistent session) until its token expires.
    pub fn disconnect(&self, key: ClientKey) {
        self.event();
        if let Ok(mut connections) = self.per_check.connections.try_borrow_mut() {
            connections.disconnected(key, self.options.decision_cache_size);
            self.stats.connections_current.store(connections.connected() as u64, Relaxed);
        }
        // Its will comes next, whether or not the plugin knew the client.
        self.per_check.will_window.set(Some(key));
    }

    /// Mosquitto 2.1: the client's session ends now (its disconnect event; an offline
    /// persistent session gets [`Plugin::offline`] instead). Its will is checked right after;
    /// the entry goes at the next tick.
    pub fn session_ended(&self, key: ClientKey) {
        self.disconnect(key);
        if let Ok(mut connections) = self.per_check.connections.try_borrow_mut() {
            connections.ending(key);
        }
    }

    /// Mosquitto 2.1: the client went offline and its session stays.
    pub fn offline(&self, key: ClientKey) {
        self.disconnect(key);
    }

    /// Mosquitto 2.1: a client finished connecting. Unless this plugin admitted it in this
    /// CONNECT, whatever its address held belongs to someone else.
    pub fn connected(&self, client: &dyn BrokerClient) {
        self.event();
        let Ok(mut connections) = self.per_check.connections.try_borrow_mut() else { return };
        let key = client.key();
        match connections.get_mut(key) {
            Some(c) if c.connecting && c.binding.still_names(client) => c.connecting = false,
            Some(_) => {
                connections.remove(key);
                bump(&self.stats.stale_entries);
                self.stats.connections_current.store(connections.connected() as u64, Relaxed);
            }
            None => {}
        }
    }

    /// The broker's periodic event. Every tick ends the reload's re-check and the will
    /// window, drops the entries of sessions that ended (Mosquitto frees their clients right
    /// after) and goes on with a revocation pass under way; every [`TICK_WORK_EVERY_MS`] it
    /// also does the timed work: queued log lines, background work, expired connections, the
    /// identities that can no longer be asked about, `$SYS` counters when due.
    pub fn tick(&self) {
        // No reading makes the timed work due, and sets no time for the next.
        let now = coarse_ms();
        let timed = now.is_none_or(|now| now >= self.per_check.next_tick_work.get());
        if !timed {
            return self.tick_untimed();
        }
        if let Some(now) = now {
            self.per_check.next_tick_work.set(now.saturating_add(TICK_WORK_EVERY_MS));
        }
        self.tick_with(true);
    }

    /// A tick without the timed work, as almost all of Mosquitto 2.0's are: it ticks on every
    /// pass of its loop, under load once for every few messages, so this touches no more than
    /// the clock and three lines of memory unless sessions ended or a revocation pass goes on.
    /// (Public for tests of what every tick must do.)
    #[doc(hidden)]
    #[inline]
    pub fn tick_untimed(&self) {
        let per_check = &self.per_check;
        per_check.will_window.set(None);
        per_check.reauthenticating.set(false);
        // (A table borrowed here is a tick inside another event, where `tick_with` would do
        // nothing either.)
        let ended = per_check.connections.try_borrow().is_ok_and(|c| c.sessions_ended());
        if ended || per_check.revoking.get() {
            self.tick_with(false);
        }
    }

    #[inline(never)]
    fn tick_with(&self, timed: bool) {
        self.every_event();
        self.per_check.reauthenticating.set(false);
        if timed {
            self.background_work();
            if self.options.disconnect_on_expiry {
                self.end_expired();
            }
        }
        let full = timed && self.last_sweep.get().elapsed() >= SWEEP_EVERY;
        if let Ok(mut connections) = self.per_check.connections.try_borrow_mut() {
            // Sessions that ended go at every tick (their will has been checked); expired
            // and surplus identities every SWEEP_EVERY.
            let dropped = connections.sweep(full.then(coarse_now));
            if dropped > 0 {
                tracing::debug!("dropped {dropped} identities that can no longer be asked about");
                self.stats.connections_current.store(connections.connected() as u64, Relaxed);
            }
        }
        if full {
            self.last_sweep.set(Instant::now());
        }
        // A pass under way, and its disconnects, go on at every tick: its slices are bounded.
        if timed || self.per_check.revoking.get() {
            self.revoke_step();
            self.per_check.revoking.set(self.revocation_under_way());
        }
        let interval = self.options.sys_interval;
        if !timed || interval.is_zero() || self.last_sys.get().is_some_and(|t| t.elapsed() < interval) {
            return;
        }
        self.last_sys.set(Some(Instant::now()));
        // Publishing may call back into the plugin (ACL checks of subscribers): nothing is
        // borrowed here.
        for (name, value) in self.stats.sys_values(&self.authorizer.live) {
            self.broker.publish_retained(&format!("$SYS/broker/mqtt-policy/{name}"), value.as_bytes());
        }
    }

    /// A slice of the revocation pass: the subscriptions connected clients hold, decided again
    /// under the live generation after a swap (and for re-authenticated clients), at most
    /// [`REVOKE_SLICE`] of the broker's time per tick; when the pass is done, its report and
    /// what `on_revoke` says to do.
    fn revoke_step(&self) {
        self.disconnect_revoked();
        let current = self.authorizer.live.current();
        let (mut finished, replaced, unremoved) = {
            let (Ok(mut pass), Ok(mut connections), Ok(mut recheck)) = (
                self.revocation.try_borrow_mut(),
                self.per_check.connections.try_borrow_mut(),
                self.recheck.try_borrow_mut(),
            ) else {
                return;
            };
            let mut replaced = None;
            match pass.as_mut() {
                Some(p) if p.generation.id == current.id => p.add(recheck.drain(..)),
                _ if current.id != self.revoked_for.get() => {
                    recheck.clear();
                    let keys = connections.connected_keys();
                    replaced = pass.replace(Pass::new(Arc::clone(&current), keys, Cause::Swap));
                }
                _ if !recheck.is_empty() => {
                    let keys = std::mem::take(&mut *recheck);
                    replaced = pass.replace(Pass::new(Arc::clone(&current), keys, Cause::Reauthentication));
                }
                _ => {}
            }
            let Some(p) = pass.as_mut() else { return };
            let found_before = p.lost.len();
            let started = Instant::now();
            while started.elapsed() < REVOKE_SLICE
                && let Some(key) = p.next_key()
            {
                if let Some(conn) = connections.get_mut(key).filter(|c| c.connected) {
                    if let Some(lost) = self.lost_by(key, conn, &p.generation) {
                        p.lost.push(lost);
                    }
                    // Listed as the new generation sees it (mapped again if the pass did
                    // not already), so the report decides for the subject its checks will have.
                    if p.cause == Cause::Swap
                        && conn.deadline > coarse_now()
                        && !matches!(conn.identity, Identity::Unknown { .. })
                        && self.map_under(conn, &p.generation).is_ok()
                        && let Some(mapped) = conn.mapped.as_ref().filter(|m| m.generation == p.generation.id)
                    {
                        p.identities.push(policy_engine::Identity {
                            label: conn.client_id.to_string(),
                            subject: policy_core::Subject::from(&mapped.request.subject),
                            username: mapped.request.username.clone(),
                            clientid: Some(mapped.request.clientid.clone()),
                        });
                    }
                }
            }
            // Removed in the tick that found them, under the identity and generation that
            // refused them: no client event comes in between.
            let unremoved = if self.options.on_revoke == OnRevoke::Unsubscribe {
                self.remove_revoked(&mut connections, &mut p.lost[found_before..])
            } else {
                Vec::new()
            };
            let done = if p.done() { pass.take() } else { None };
            if let Some(p) = done.as_ref().filter(|p| p.cause == Cause::Swap) {
                self.revoked_for.set(p.generation.id);
            }
            (done, replaced, unremoved)
        };
        // Nothing is borrowed from here on: reporting logs, and logging may publish.
        for (client_id, filter, rc) in unremoved {
            tracing::warn!(
                "client {client_id:?}: the broker did not remove its subscription to {} (error {rc}); \
                 disconnecting it instead",
                policy_core::quote(&filter)
            );
        }
        // A pass a newer generation replaced reports and acts on what it found so far (with
        // `unsubscribe`, those subscriptions are gone already); the new pass looks at every
        // client, and a filter reported once is not reported again.
        for pass in
            [replaced.as_ref().filter(|p| !p.lost.is_empty()), finished.as_ref()].into_iter().flatten()
        {
            self.act_on_revocations(pass);
        }
        if let (Some(pass), Some(background)) =
            (finished.as_mut().filter(|p| p.cause == Cause::Swap), &self.background)
        {
            // Moved, not copied: the broker thread neither copies nor frees the list.
            let identities = std::mem::take(&mut pass.identities);
            background.report_identities(Arc::clone(&self.authorizer.live), pass.generation.id, identities);
        }
        for pass in [replaced, finished].into_iter().flatten() {
            // This thread may hold the generation last: it is freed off the broker thread.
            if let Some(background) = &self.background {
                background.retire(pass.generation);
            }
        }
    }

    /// Whether a pass is under way or asked for (re-authenticated clients), or clients a
    /// pass found are still to be disconnected: what the tick goes on with between its timed
    /// work. (A swap starts a pass at the next timed work.)
    fn revocation_under_way(&self) -> bool {
        self.revocation.try_borrow().map_or(true, |p| p.is_some())
            || self.recheck.try_borrow().map_or(true, |r| !r.is_empty())
            || self.to_disconnect.try_borrow().map_or(true, |q| !q.is_empty())
    }

    /// Whether the subscriptions of connected clients are still to be decided again under
    /// the live generation (after a swap or a re-authentication), or clients a pass found
    /// are still to be disconnected.
    pub fn revocation_pending(&self) -> bool {
        self.revocation_under_way() || self.authorizer.live.current().id != self.revoked_for.get()
    }

    /// The subscriptions of one connected client that `generation` no longer grants and no
    /// earlier pass reported. A client whose identity does not map under it (refused, or a
    /// module fault) is passed over: every check of it is denied with the reason anyway.
    fn lost_by(&self, key: ClientKey, conn: &mut Connection, generation: &Arc<Generation>) -> Option<Lost> {
        if conn.usage.filters().next().is_none()
            || conn.deadline <= coarse_now()
            || matches!(conn.identity, Identity::Unknown { .. })
            || self.map_under(conn, generation).is_err()
        {
            return None;
        }
        let Connection { mapped: Some(mapped), usage, client_id, .. } = conn else { return None };
        if mapped.superuser {
            return None;
        }
        let filters = revocation::lost_filters(generation, mapped, usage);
        let subject = mapped.request.subject.id.clone();
        (!filters.is_empty()).then(|| Lost {
            key,
            client_id: client_id.clone(),
            subject,
            filters,
            removal_failed: false,
        })
    }

    /// Removes each lost subscription from the broker (`on_revoke unsubscribe`) and forgets
    /// it; a client the broker could not remove one for is marked, to be disconnected
    /// instead. Returns those failures (client, filter, error), to log once nothing is
    /// borrowed. Removing calls back into no plugin event (Mosquitto 2.1's
    /// `mosquitto_subscription_delete` only edits its subscription tree), so the connections
    /// may stay borrowed.
    fn remove_revoked(
        &self,
        connections: &mut Connections,
        found: &mut [Lost],
    ) -> Vec<(Box<str>, Box<str>, i32)> {
        let mut unremoved = Vec::new();
        for lost in found {
            let Some(conn) = connections.get_mut(lost.key).filter(|c| c.client_id == lost.client_id) else {
                continue;
            };
            for (filter, _) in &lost.filters {
                match self.broker.remove_subscription(&lost.client_id, filter) {
                    Removal::Removed => conn.usage.unsubscribed(filter),
                    // Gone from the broker: nothing to remove, nobody to disconnect.
                    Removal::NoSuchClient => {}
                    Removal::Failed(rc) => {
                        lost.removal_failed = true;
                        unremoved.push((lost.client_id.clone(), filter.clone(), rc));
                    }
                }
            }
        }
        unremoved
    }

    /// Reports a pass (a log line, each client's lost filters, the counters) and, with
    /// `on_revoke disconnect` (or a subscription `unsubscribe` could not remove), queues its
    /// clients to be disconnected. A client that left since is not reported, unless its
    /// subscriptions were removed already (`unsubscribe`).
    fn act_on_revocations(&self, pass: &Pass) {
        let id = pass.generation.id;
        let on_revoke = self.options.on_revoke;
        let Ok(connections) = self.per_check.connections.try_borrow() else { return };
        let lost: Vec<&Lost> = pass
            .lost
            .iter()
            .filter(|l| {
                on_revoke == OnRevoke::Unsubscribe
                    || connections.get(l.key).is_some_and(|c| c.connected && c.client_id == l.client_id)
            })
            .collect();
        drop(connections);
        let cause = match pass.cause {
            Cause::Swap => format!("generation {id}"),
            Cause::Reauthentication => format!("re-authentication under generation {id}"),
        };
        if lost.is_empty() {
            if pass.cause == Cause::Swap {
                tracing::info!(
                    "{cause}: no connected client lost a subscription ({} looked at)",
                    pass.checked()
                );
            }
            return;
        }
        let filters: usize = lost.iter().map(|l| l.filters.len()).sum();
        let to_disconnect: Vec<&Lost> =
            lost.iter().copied().filter(|l| on_revoke == OnRevoke::Disconnect || l.removal_failed).collect();
        add(&self.stats.revoked_subscriptions, filters as u64);
        let by_action = &self.stats.revoked_clients;
        let stayed = if on_revoke == OnRevoke::Unsubscribe { REVOKED_UNSUBSCRIBED } else { REVOKED_KEPT };
        add(&by_action[REVOKED_DISCONNECTED], to_disconnect.len() as u64);
        add(&by_action[stayed], (lost.len() - to_disconnect.len()) as u64);
        let what = match on_revoke {
            OnRevoke::Keep => {
                "they stay connected, and each delivery on those subscriptions is denied".to_string()
            }
            OnRevoke::Disconnect => "disconnecting them, to subscribe again under the new policy".to_string(),
            OnRevoke::Unsubscribe if to_disconnect.is_empty() => {
                "those subscriptions are removed; the clients stay connected".to_string()
            }
            OnRevoke::Unsubscribe => format!(
                "those subscriptions are removed; the clients stay connected, but for {} the broker did not \
                 remove, which are disconnected instead",
                to_disconnect.len()
            ),
        };
        tracing::warn!(
            "{cause}: {} connected clients hold {filters} subscriptions the policy no longer grants; on_revoke {}: {what}",
            lost.len(),
            on_revoke.as_str(),
        );
        for l in lost.iter().take(REVOKED_SHOWN) {
            let filters: Vec<String> =
                l.filters.iter().map(|(f, why)| format!("{} ({why})", policy_core::quote(f))).collect();
            tracing::info!(
                "revoked: client {:?} (subject {:?}) no longer may subscribe to {}",
                l.client_id,
                l.subject,
                filters.join(", ")
            );
        }
        if lost.len() > REVOKED_SHOWN {
            tracing::info!("revoked: and {} more clients", lost.len() - REVOKED_SHOWN);
        }
        if !to_disconnect.is_empty()
            && let Ok(mut queue) = self.to_disconnect.try_borrow_mut()
        {
            queue.extend(to_disconnect.iter().map(|l| (l.key, l.client_id.clone())));
        }
    }

    /// Disconnects up to [`REVOKED_KICKS`] queued clients (those a pass found), each only if
    /// its entry still holds it, connected.
    fn disconnect_revoked(&self) {
        let batch: Vec<Box<str>> = {
            let (Ok(mut queue), Ok(connections)) =
                (self.to_disconnect.try_borrow_mut(), self.per_check.connections.try_borrow())
            else {
                return;
            };
            let n = queue.len().min(REVOKED_KICKS);
            queue
                .drain(..n)
                .filter(|(key, id)| connections.get(*key).is_some_and(|c| c.connected && c.client_id == *id))
                .map(|(_, id)| id)
                .collect()
        };
        if batch.is_empty() {
            return;
        }
        for client_id in batch {
            if !self.broker.kick(&client_id, false) {
                tracing::debug!("client {client_id:?}, which lost a subscription, was already gone");
            }
        }
        // The kicks' wills (none are sent) were checked during the kicks.
        self.per_check.will_window.set(None);
    }

    /// Disconnects the connections whose token has expired (its `exp` plus the leeway). The
    /// broker reports each disconnect while it is being done, so nothing is borrowed then.
    fn end_expired(&self) {
        let due = match self.per_check.connections.try_borrow_mut() {
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
        // The kicks' wills were checked during the kicks.
        self.per_check.will_window.set(None);
    }

    /// Mosquitto's reload (`SIGHUP`): re-read the policy and module files in the background.
    pub fn reload(&self) {
        self.event();
        self.per_check.reauthenticating.set(true);
        if let Some(r) = &self.reloader {
            r.request("Mosquitto reload (SIGHUP)");
        }
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.count_allowed();
        // Join the background worker (it holds the reloader too), then the reload thread,
        // before the engine goes.
        self.background = None;
        self.reloader = None;
    }
}

/// Milliseconds on the coarse monotonic clock (read without a system call, like
/// [`coarse_now`]): when the tick's timed work is due.
fn coarse_ms() -> Option<u64> {
    let (secs, nanos) = sys::coarse_clock(sys::CoarseClock::Monotonic)?;
    let (secs, nanos) = (u64::try_from(secs).ok()?, u64::try_from(nanos).ok()?);
    Some(secs.saturating_mul(1000).saturating_add(nanos / 1_000_000))
}

/// Seconds since the epoch from the coarse real-time clock (a few ms of resolution, read
/// without a system call and cheaper than the precise one): what an `exp` comparison needs.
fn coarse_now() -> u64 {
    sys::coarse_clock(sys::CoarseClock::Realtime).and_then(|(s, _)| u64::try_from(s).ok()).unwrap_or_else(now)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::mem::{offset_of, size_of};

    use crate::connections::{ClientKey, Connection, KeyHasher};

    #[test]
    fn what_a_check_reads_of_the_plugin_is_its_first_two_cache_lines() {
        // `Connections` is `repr(C)` with its map first: the borrow flag and the map's header
        // are what a check reads of the table.
        let read_to = offset_of!(super::PerCheck, connections)
            + size_of::<RefCell<HashMap<ClientKey, Connection, KeyHasher>>>();
        assert!(read_to <= 128, "a check reads PerCheck up to byte {read_to}: a third cache line");
    }
}
