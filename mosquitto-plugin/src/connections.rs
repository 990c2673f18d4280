//! Who each client is, from the moment the plugin learns it (its CONNECT, or for a client the
//! plugin did not admit, its first check) until it goes away, and the decisions it has
//! already been given.
//!
//! Entries are keyed by the address of the broker's client structure and kept with a
//! [`Binding`] (see `client.rs` for why and the rules that make it hold). An entry outlives
//! the disconnect event, because Mosquitto still asks about a client after it: its will is
//! checked as a publish right after the event, and messages queued for an offline persistent
//! session are checked as deliveries. A disconnected entry keeps only the identity (its
//! decision cache is freed). It goes at the next tick when its session surely ended with its
//! connection, when its token has expired (nothing it could ask would be allowed), when the
//! address turns out to hold another client, or, oldest first, when too many are kept.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use identity::{TokenHash, Verified};
use policy_core::{Limits, Message};
use policy_engine::{Action, Decision, Generation, Prepared, Request, Subject};

use crate::client::Binding;
pub use crate::client::ClientKey;
use crate::usage::Usage;

/// Topics longer than this are decided every time rather than remembered: a flood of long
/// unique topics must not grow the broker.
pub const MAX_CACHED_TOPIC: usize = 256;

/// Disconnected entries kept at most (each holds an identity, no decisions).
pub const MAX_DISCONNECTED: usize = 50_000;

/// Bytes of topics and decisions one connection's cache holds at most, whatever its entry
/// count: a client publishing on long unique topics cannot make its connection grow.
pub const MAX_CACHE_BYTES: usize = 64 << 10;

/// What an entry costs beside its strings: the map's slot, the decision's allocation and the
/// key's.
const ENTRY_OVERHEAD: usize = 96;

/// Decisions already made for one connection under one generation, by topic and action.
/// Bounded in entries (`decision_cache_size`) and in bytes ([`MAX_CACHE_BYTES`]): when full it
/// starts over (a miss costs one decision, never a wrong answer).
/// Topics are hashed with foldhash (seeded per cache): SipHash cost more than the rest of a
/// cached check, and the cache is too small to be worth flooding.
#[derive(Default)]
pub struct TopicCache {
    capacity: usize,
    bytes: usize,
    /// Per topic and action, the message the decision was made for (see [`TopicDecisions`]).
    by_topic: HashMap<Box<str>, [Option<Remembered>; 3], foldhash::fast::RandomState>,
}

/// A decision and the message it was made for.
type Remembered = (Message, Arc<Decision>);

fn slot(action: Action) -> usize {
    match action {
        Action::Subscribe => 0,
        Action::Read => 1,
        Action::Publish => 2,
    }
}

fn weight(d: &Decision) -> usize {
    d.reason.len() + d.rule.as_ref().map_or(0, String::len) + ENTRY_OVERHEAD
}

impl TopicCache {
    pub fn new(capacity: usize) -> TopicCache {
        TopicCache { capacity, bytes: 0, by_topic: HashMap::default() }
    }

    pub fn get(&self, action: Action, topic: &str, message: Message) -> Option<&Arc<Decision>> {
        let (made_for, decision) = self.by_topic.get(topic)?[slot(action)].as_ref()?;
        (*made_for == message).then_some(decision)
    }

    pub fn put(&mut self, action: Action, topic: &str, message: Message, decision: Arc<Decision>) {
        if self.capacity == 0 || topic.len() > MAX_CACHED_TOPIC {
            return;
        }
        let added = weight(&decision);
        if self.bytes + added + topic.len() > MAX_CACHE_BYTES {
            self.clear();
        }
        if let Some(d) = self.by_topic.get_mut(topic) {
            // A slot may hold the decision for another message: it is replaced, not added to.
            let replaced = d[slot(action)].replace((message, decision)).map_or(0, |(_, old)| weight(&old));
            self.bytes = self.bytes + added - replaced;
            return;
        }
        if self.by_topic.len() >= self.capacity {
            self.clear();
        }
        self.bytes += added + topic.len();
        let mut d = [None, None, None];
        d[slot(action)] = Some((message, decision));
        self.by_topic.insert(topic.into(), d);
    }

    /// What the entries hold, in bytes (as [`MAX_CACHE_BYTES`] counts them).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn clear(&mut self) {
        self.bytes = 0;
        self.by_topic.clear();
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

/// A connection's decisions about one topic, as the authorizer looks them up: found by the
/// action and the message (the cache is the connection's, and emptied whenever the connection
/// is mapped under a new generation, [`Connection::remap`]). Under a generation whose
/// decisions cannot depend on the message ([`Generation::reads_message`]) the message is
/// [`Message::UNKNOWN`] for every check, so one decision serves every QoS and retain flag.
pub struct TopicDecisions<'c, 't> {
    pub cache: &'c mut TopicCache,
    pub topic: &'t str,
    /// The connection's subject, prepared for this generation.
    pub prepared: Option<&'c Prepared>,
}

impl authorizer::DecisionLookup for TopicDecisions<'_, '_> {
    type Key = (Action, Message);
    type Entry = Arc<Decision>;

    fn decision(entry: &Arc<Decision>) -> &Decision {
        entry
    }

    fn with<R>(&mut self, key: &(Action, Message), found: impl FnOnce(&Arc<Decision>) -> R) -> Option<R> {
        self.cache.get(key.0, self.topic, key.1).map(found)
    }
}

impl authorizer::DecisionCache for TopicDecisions<'_, '_> {
    fn put(&mut self, (action, message): (Action, Message), decision: Decision) -> Arc<Decision> {
        let d = Arc::new(decision);
        self.cache.put(action, self.topic, message, Arc::clone(&d));
        d
    }

    fn unremembered(&mut self, decision: Decision) -> Arc<Decision> {
        Arc::new(decision)
    }

    fn prepared(&self) -> Option<&Prepared> {
        self.prepared
    }
}

/// The subject a connection's identity maps to under one policy generation (the fields a
/// check reads first, as in [`Connection`]).
#[repr(C)]
pub struct Mapped {
    pub generation: u64,
    pub superuser: bool,
    /// No limit applies to its publishes (`limits` read, and limiting no publish): one the
    /// residual allows is allowed at once. Kept with `limits` by [`Mapped::set_limits`].
    publishes_at_once: bool,
    /// The subject prepared for this generation, when it decides natively.
    pub prepared: Option<Prepared>,
    /// The subject's limits under this generation, or why the module could not say (its
    /// publishes and subscriptions are then refused).
    limits: Result<Limits, Box<str>>,
    /// The request the connection's checks reuse (subject, client id, proven username);
    /// each check only fills in the topic and the action. Boxed: rustc puts the "none" of
    /// `Option<Mapped>` where a field leaves it the most room, which a `Request`'s strings
    /// did, far out in the entry, for every check to read; without them it is within
    /// `prepared`, on the lines a check reads anyway (the disassembly of a check shows it).
    pub request: Box<Request>,
}

impl Mapped {
    pub fn limits(&self) -> &Result<Limits, Box<str>> {
        &self.limits
    }

    pub fn set_limits(&mut self, limits: Result<Limits, Box<str>>) {
        self.publishes_at_once = publishes_at_once(&limits);
        self.limits = limits;
    }

    pub fn publishes_at_once(&self) -> bool {
        self.publishes_at_once
    }
}

fn publishes_at_once(limits: &Result<Limits, Box<str>>) -> bool {
    limits.as_ref().is_ok_and(|l| !l.limits_publish())
}

/// How a client proved who it is.
pub enum Identity {
    /// A token, at its CONNECT (password, username, or MQTT 5 enhanced authentication).
    Token {
        hash: TokenHash,
        verified: Arc<Verified>,
        /// The username `${username}` may be proven from: the one the client sent, or the
        /// subject id it was renamed to. (Proven again under every generation: a new policy
        /// may make it a certificate name.)
        given: Box<str>,
        /// The username the broker was given for this client in place of a token used as
        /// the username (Mosquitto logs usernames): the subject id.
        shown_username: Option<Box<str>>,
        /// Admitted through MQTT 5 enhanced authentication (method `jwt`): the broker holds
        /// no token for it (its reload re-check asks with the username alone).
        enhanced: bool,
        /// The username it sent was a JWT (records show `<token>` for it, never the token).
        token_as_username: bool,
    },
    /// A TLS certificate the broker verified, its name the client's username (a listener
    /// with `use_identity_as_username` or `use_subject_as_username`).
    Certificate { name: Box<str> },
    /// A client this plugin did not admit and cannot name: every check is denied with this
    /// reason. Forgotten after [`UNKNOWN_KEPT_SECS`] (seconds since the epoch it was met).
    Unknown { reason: Box<str>, since: u64 },
}

impl Identity {
    /// The username the client connected with, as a decision record shows it: `<token>` when
    /// it sent its token as the username (never the token), as the HTTP service shows it.
    pub fn username_label(&self) -> &str {
        match self {
            Identity::Token { token_as_username: true, .. } => "<token>",
            // Enhanced authentication without a username: known by its subject id.
            Identity::Token { shown_username: Some(_), .. } => "",
            Identity::Token { given, .. } => given,
            Identity::Certificate { name } => name,
            Identity::Unknown { .. } => "",
        }
    }
}

/// How long a client that could not be named is remembered (it only spares log lines and
/// work; the broker may free it without an event, when its session expires).
pub const UNKNOWN_KEPT_SECS: u64 = 600;

/// Denial log lines a client may cause in a burst, and how many more per second after it.
pub const LOG_BURST: u32 = 10;

/// A token bucket for one client's denial log lines: a client that floods a denied topic
/// costs one broker log line a second, and the lines it did not get are counted.
#[derive(Debug, Clone, Copy)]
pub struct LogBudget {
    tokens: u32,
    at: u64,
    /// Lines not written since the last one that was.
    pub suppressed: u64,
}

impl Default for LogBudget {
    fn default() -> LogBudget {
        LogBudget { tokens: LOG_BURST, at: 0, suppressed: 0 }
    }
}

impl LogBudget {
    /// May a line be written now (`now` in seconds)? Returns the lines suppressed before it
    /// (to be said in it), or `None` when this one is suppressed too.
    pub fn take(&mut self, now: u64) -> Option<u64> {
        if now > self.at {
            let refill = u32::try_from(now - self.at).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(refill).min(LOG_BURST);
            self.at = now;
        }
        if self.tokens == 0 {
            self.suppressed += 1;
            return None;
        }
        self.tokens -= 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// One client the plugin knows. The fields a check reads come first, in this order
/// (`repr(C)`), so that they share the entry's first cache lines (see `PerCheck` in
/// `plugin.rs` for why that matters).
#[repr(C)]
pub struct Connection {
    /// Between its CONNECT and its disconnect event.
    pub connected: bool,
    /// Admitted by this plugin in the CONNECT under way (Mosquitto 2.1's connect event
    /// confirms it).
    pub connecting: bool,
    /// When the identity stops being good (a token's `exp` plus the leeway), in seconds
    /// since the epoch: every check from then on is denied, and the connection is ended.
    /// `u64::MAX` for certificates (the broker checked their validity at the handshake).
    pub deadline: u64,
    pub binding: Binding,
    /// The subject under the generation that mapped it last. Only a proven identity (a token
    /// or a certificate name) is ever mapped ([`Connection::remap`] makes sure), and an
    /// identity never becomes `Unknown` (re-authentication replaces a token with a token): a
    /// check that finds a mapping needs not look at the identity (which lies further out).
    pub mapped: Option<Mapped>,
    pub identity: Identity,
    pub client_id: Box<str>,
    /// The MQTT username for `${username}`, only when it was proven to name the subject (a
    /// token's subject id or `preferred_username`, or the certificate's name); otherwise
    /// empty, so `${username}` can never be borrowed.
    pub username: Box<str>,
    pub cache: TopicCache,
    /// The number of its last disconnect (see [`Connections::disconnected`]).
    pub left: u64,
    pub log: LogBudget,
    /// What it has used of its limits (kept across generations).
    pub usage: Usage,
}

impl Connection {
    /// The mapping for `generation`, if the connection has one for it.
    pub fn mapped_for(&mut self, generation: u64) -> Option<&mut Mapped> {
        self.mapped.as_mut().filter(|m| m.generation == generation)
    }

    /// Records the subject under a new generation; earlier decisions no longer count. An
    /// entry whose identity is `Unknown` is never mapped (a check that finds a mapping relies
    /// on it): it is left without one.
    pub fn remap(&mut self, generation: &Generation, subject: &Subject, superuser: bool) {
        self.cache.clear();
        if matches!(self.identity, Identity::Unknown { .. }) {
            debug_assert!(false, "an unknown identity was to be mapped");
            self.mapped = None;
            return;
        }
        let limits = generation.limits(subject).map_err(|fault| fault.0.into());
        self.mapped = Some(Mapped {
            generation: generation.id,
            superuser,
            publishes_at_once: publishes_at_once(&limits),
            prepared: generation.prepare(subject, &self.client_id, &self.username),
            limits,
            request: Box::new(Request {
                subject: subject.clone(),
                topic: String::new(),
                action: Action::Read,
                clientid: self.client_id.to_string(),
                username: self.username.to_string(),
                qos: None,
                retain: None,
            }),
        });
    }

    pub fn token(&self) -> Option<(TokenHash, &Arc<Verified>)> {
        match &self.identity {
            Identity::Token { hash, verified, .. } => Some((*hash, verified)),
            _ => None,
        }
    }
}

/// foldhash with a seed of the map's own and the crate's fixed global seeds, which the
/// compiler folds into the code: `RandomState`'s global seed is one more cache line a check
/// would read.
#[derive(Clone)]
pub struct KeyHasher(foldhash::fast::FixedState);

impl Default for KeyHasher {
    fn default() -> KeyHasher {
        use std::hash::BuildHasher;
        KeyHasher(foldhash::fast::FixedState::with_seed(std::hash::RandomState::new().hash_one(0u8)))
    }
}

impl std::hash::BuildHasher for KeyHasher {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// (`repr(C)`: `by_client`, which every check reads, first; then `ending`, which every tick
/// reads.)
#[derive(Default)]
#[repr(C)]
pub struct Connections {
    /// Keyed by the broker's client structure, hashed with foldhash: the key is an address
    /// the broker chose, which no client can pick to collide (and SipHash showed in profiles).
    by_client: HashMap<ClientKey, Connection, KeyHasher>,
    /// Disconnected entries whose session surely ended with their connection: they go at
    /// the next tick (their will has been checked by then).
    ending: Vec<ClientKey>,
    /// The key of the last entry recorded for each client id (a client chooses its id, so
    /// this map hashes with SipHash's keyed default); an item whose entry has gone or holds
    /// another id is skipped, and such items are dropped by the sweep.
    by_id: HashMap<Box<str>, ClientKey>,
    /// Entries with `connected` set.
    connected: usize,
    /// Connected entries by deadline, earliest first. An item whose entry has gone, left, or
    /// moved its deadline (re-authentication) is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(u64, ClientKey)>>,
    /// Disconnected entries in the order they left (an item whose entry has gone or come
    /// back is skipped): the oldest go first when too many are kept.
    left: std::collections::VecDeque<(ClientKey, u64)>,
    /// Disconnects so far: tells an entry's disconnect apart from a later one's.
    disconnects: u64,
}

impl Connections {
    fn forget(&mut self, gone: Option<&Connection>) {
        if gone.is_some_and(|c| c.connected) {
            self.connected -= 1;
        }
    }

    /// Records a client's identity, replacing whatever the key held. Returns the entry
    /// replaced.
    pub fn insert(&mut self, key: ClientKey, c: Connection) -> Option<Connection> {
        if c.connected {
            self.connected += 1;
            if c.deadline != u64::MAX {
                self.watch(key, c.deadline);
            }
        }
        self.by_id.insert(c.client_id.clone(), key);
        let old = self.by_client.insert(key, c);
        self.forget(old.as_ref());
        old
    }

    /// What the last entry of client `client_id` used of its limits, as a new connection of
    /// that client carries it ([`Usage::carried`]: its subscriptions only when the new
    /// connection resumes a session that outlived the old one); nothing when there is no
    /// such entry.
    pub fn usage_of(&self, client_id: &str, resumes_session: bool) -> Usage {
        self.by_id
            .get(client_id)
            .and_then(|key| self.by_client.get(key))
            .filter(|c| *c.client_id == *client_id)
            .map(|c| c.usage.carried(resumes_session && !c.binding.ends_with_connection()))
            .unwrap_or_default()
    }

    pub fn get(&self, key: ClientKey) -> Option<&Connection> {
        self.by_client.get(&key)
    }

    pub fn get_mut(&mut self, key: ClientKey) -> Option<&mut Connection> {
        self.by_client.get_mut(&key)
    }

    pub fn remove(&mut self, key: ClientKey) -> Option<Connection> {
        let old = self.by_client.remove(&key);
        self.forget(old.as_ref());
        old
    }

    /// The client's connection ended: keep the identity for the checks that may still come
    /// (will, queued deliveries), free its decisions. A second disconnect of a disconnected
    /// entry is another client at the same address: the entry goes. Returns whether the
    /// entry was kept.
    pub fn disconnected(&mut self, key: ClientKey, cache_capacity: usize) -> bool {
        let Some(c) = self.by_client.get_mut(&key) else { return false };
        if !c.connected {
            self.remove(key);
            return false;
        }
        c.connected = false;
        c.connecting = false;
        c.cache = TopicCache::new(cache_capacity);
        self.connected -= 1;
        self.disconnects += 1;
        c.left = self.disconnects;
        if c.binding.ends_with_connection() {
            self.ending.push(key);
        }
        self.left.push_back((key, self.disconnects));
        true
    }

    /// Records the identity of a client met at its will, right after its disconnect: kept
    /// for that check only (it goes at the next tick).
    pub fn insert_leaving(&mut self, key: ClientKey, mut c: Connection) {
        c.connected = false;
        self.remove(key);
        self.by_client.insert(key, c);
        self.ending.push(key);
    }

    /// A disconnected entry's session ends (Mosquitto 2.1's disconnect event after its
    /// offline one, or its session expiring): it goes at the next tick.
    pub fn ending(&mut self, key: ClientKey) {
        self.ending.push(key);
    }

    /// Watches a connected entry's (new) deadline.
    pub fn watch(&mut self, key: ClientKey, deadline: u64) {
        self.deadlines.push(Reverse((deadline, key)));
        // Skipped items pile up with churn: start over from the entries when they dominate.
        if self.deadlines.len() > 2 * self.by_client.len() + 1024 {
            self.deadlines = self
                .by_client
                .iter()
                .filter(|(_, c)| c.connected && c.deadline != u64::MAX)
                .map(|(k, c)| Reverse((c.deadline, *k)))
                .collect();
        }
    }

    /// The connected entries whose deadline is at or before `now` (each once), with their
    /// client ids: the connections to end.
    pub fn due(&mut self, now: u64) -> Vec<(ClientKey, Box<str>)> {
        let mut due = Vec::new();
        while let Some(Reverse((deadline, key))) = self.deadlines.peek().copied() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            // (A key watched twice at one deadline comes up twice in a row: once is enough.)
            if let Some(c) = self.by_client.get(&key)
                && c.connected
                && c.deadline == deadline
                && due.last().is_none_or(|(k, _)| *k != key)
            {
                due.push((key, c.client_id.clone()));
            }
        }
        due
    }

    /// Drops the disconnected entries that can no longer be asked about: those whose session
    /// ended, and (when `now` is given) those whose deadline has passed; then the oldest
    /// disconnected ones beyond [`MAX_DISCONNECTED`]. A connected entry is never dropped
    /// here: its client may still act (re-authenticate, or be ended at its deadline).
    /// Returns how many went.
    pub fn sweep(&mut self, now: Option<u64>) -> usize {
        let before = self.by_client.len();
        for key in std::mem::take(&mut self.ending) {
            if self.by_client.get(&key).is_some_and(|c| !c.connected) {
                self.remove(key);
            }
        }
        if let Some(now) = now {
            let mut forgotten = 0;
            self.by_client.retain(|_, c| {
                let keep = match c.identity {
                    Identity::Unknown { since, .. } => since + UNKNOWN_KEPT_SECS > now,
                    _ => c.connected || c.deadline > now,
                };
                forgotten += usize::from(!keep && c.connected);
                keep
            });
            self.connected -= forgotten;
        }
        let mut excess = (self.by_client.len() - self.connected).saturating_sub(MAX_DISCONNECTED);
        while excess > 0 {
            let Some((key, n)) = self.left.pop_front() else { break };
            // (An item for an entry that came back, or left again later, is not its turn.)
            if self.by_client.get(&key).is_some_and(|c| !c.connected && c.left == n) {
                self.remove(key);
                excess -= 1;
            }
        }
        // Stale items (entries gone or back) pile up with churn: keep only live ones.
        if self.left.len() > 2 * (self.by_client.len() - self.connected) + 1024 {
            let live: std::collections::HashSet<ClientKey> =
                self.by_client.iter().filter(|(_, c)| !c.connected).map(|(k, _)| *k).collect();
            self.left.retain(|(k, _)| live.contains(k));
        }
        if self.by_id.len() > 2 * self.by_client.len() + 1024 {
            let by_client = &self.by_client;
            self.by_id.retain(|id, key| by_client.get(key).is_some_and(|c| c.client_id == *id));
        }
        before - self.by_client.len()
    }

    /// The keys of the connected entries.
    pub fn connected_keys(&self) -> Vec<ClientKey> {
        self.by_client.iter().filter(|(_, c)| c.connected).map(|(k, _)| *k).collect()
    }

    /// Entries between their CONNECT and their disconnect event.
    pub fn connected(&self) -> usize {
        self.connected
    }

    /// Whether sessions ended since the last sweep: the tick's sweep then has entries to drop.
    #[inline]
    pub fn sessions_ended(&self) -> bool {
        !self.ending.is_empty()
    }

    /// Entries in all (connected, and disconnected ones kept for late checks).
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

/// Points a connection's request at one check (its subject, client id and username stay).
pub fn aim(request: &mut Request, action: Action, topic: &str, message: Message) {
    request.action = action;
    request.topic.clear();
    request.topic.push_str(topic);
    request.qos = message.qos;
    request.retain = message.retain;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(allow: bool) -> Arc<Decision> {
        Arc::new(Decision { allow, rule: None, reason: String::new() })
    }

    #[test]
    fn what_a_tick_reads_of_the_table_lies_right_after_what_a_check_reads() {
        let map = std::mem::size_of::<HashMap<ClientKey, Connection, KeyHasher>>();
        assert_eq!(std::mem::offset_of!(Connections, by_client), 0);
        assert_eq!(std::mem::offset_of!(Connections, ending), map);
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_actions_apart() {
        let mut c = TopicCache::new(2);
        let allowed = |c: &TopicCache, a, t| c.get(a, t, Message::UNKNOWN).map(|d| d.allow);
        c.put(Action::Read, "a", Message::UNKNOWN, d(true));
        c.put(Action::Subscribe, "a", Message::UNKNOWN, d(false));
        assert_eq!(allowed(&c, Action::Read, "a"), Some(true));
        assert_eq!(allowed(&c, Action::Subscribe, "a"), Some(false));
        assert_eq!(allowed(&c, Action::Publish, "a"), None);
        c.put(Action::Read, "b", Message::UNKNOWN, d(true));
        assert_eq!(c.len(), 2);
        c.put(Action::Read, "c", Message::UNKNOWN, d(true));
        assert_eq!(c.len(), 1, "full: started over");
        assert_eq!(allowed(&c, Action::Read, "a"), None);
        let long = "x".repeat(MAX_CACHED_TOPIC + 1);
        c.put(Action::Read, &long, Message::UNKNOWN, d(true));
        assert_eq!(allowed(&c, Action::Read, &long), None, "long topics are not kept");
        // A decision is for the message it was made for.
        let (qos0, qos1) = (Message::known(0, false), Message::known(1, false));
        c.put(Action::Read, "m", qos0, d(true));
        assert_eq!(c.get(Action::Read, "m", qos0).map(|d| d.allow), Some(true));
        assert!(c.get(Action::Read, "m", qos1).is_none(), "another QoS is another decision");
        assert!(c.get(Action::Read, "m", Message::UNKNOWN).is_none());
        // Alternating messages replace each other's decision: the size stays put.
        let before = c.bytes();
        for _ in 0..1000 {
            c.put(Action::Read, "m", qos1, d(true));
            c.put(Action::Read, "m", qos0, d(true));
        }
        assert_eq!(c.bytes(), before);
        let mut off = TopicCache::new(0);
        off.put(Action::Read, "a", Message::UNKNOWN, d(true));
        assert!(off.is_empty());
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_whatever_its_entry_count() {
        let mut c = TopicCache::new(100_000);
        let reason = |topic: &str| {
            Arc::new(Decision {
                allow: true,
                rule: Some("r".into()),
                reason: format!("rule 'r' allows read on '{topic}'"),
            })
        };
        let mut most = 0;
        for n in 0..20_000 {
            let topic = format!("celine/telemetry/meter/{n:0>200}/readings");
            c.put(Action::Read, &topic, Message::UNKNOWN, reason(&topic));
            assert!(c.bytes() <= MAX_CACHE_BYTES, "{} bytes after {n} topics", c.bytes());
            most = most.max(c.len());
        }
        assert!(most > 50, "the budget holds a useful number of entries ({most})");
        assert!(most < 20_000);
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }

    fn entry(id: &str, deadline: u64) -> Connection {
        let client = crate::client::PlainClient::new(0, id, None);
        Connection {
            client_id: id.into(),
            username: "".into(),
            identity: Identity::Token {
                hash: [0; 32],
                verified: Arc::new(Verified {
                    claims: serde_json::Value::Null,
                    exp: deadline,
                    key: None,
                    bytes: 0,
                }),
                given: "".into(),
                shown_username: None,
                enhanced: false,
                token_as_username: false,
            },
            binding: Binding::of(&client),
            deadline,
            mapped: None,
            cache: TopicCache::new(4),
            connected: true,
            connecting: false,
            left: 0,
            log: LogBudget::default(),
            usage: Usage::default(),
        }
    }

    /// A connection whose token expired long ago (a leeway over a minute, or
    /// `disconnect_on_expiry false`) keeps its entry: its checks are denied, and a fresh token
    /// (re-authentication) is judged against the identity it holds, not taken for a CONNECT.
    #[test]
    fn a_record_never_shows_a_token_as_the_username() {
        let mut c = entry("c1", u64::MAX);
        let Identity::Token { given, shown_username, token_as_username, .. } = &mut c.identity else {
            unreachable!()
        };
        *given = "u-vera".into();
        *shown_username = Some("u-vera".into());
        *token_as_username = true;
        assert_eq!(c.identity.username_label(), "<token>");
        let Identity::Token { token_as_username, enhanced, .. } = &mut c.identity else { unreachable!() };
        (*token_as_username, *enhanced) = (false, true);
        assert_eq!(c.identity.username_label(), "", "enhanced authentication without a username");
        let named = Identity::Certificate { name: "meter-1".into() };
        assert_eq!(named.username_label(), "meter-1");
    }

    #[test]
    fn the_sweep_keeps_every_connected_entry_and_drops_what_can_no_longer_be_asked() {
        let mut table = Connections::default();
        let mut persistent = entry("persistent", 100);
        persistent.binding = {
            let mut c = crate::client::PlainClient::new(0, "persistent", None);
            c.clean = false;
            Binding::of(&c)
        };
        table.insert(ClientKey(1), entry("connected", 100));
        table.insert(ClientKey(2), persistent);
        table.insert(ClientKey(3), entry("clean", 10_000));
        table.disconnected(ClientKey(2), 4);
        table.disconnected(ClientKey(3), 4);
        assert_eq!(table.sweep(None), 1, "the clean session ended with its connection");
        assert!(table.get_mut(ClientKey(3)).is_none());
        assert_eq!(table.sweep(Some(1_000_000)), 1, "the offline session's token has expired");
        assert!(table.get_mut(ClientKey(1)).is_some(), "a connected client may still act");
        assert!(table.get_mut(ClientKey(2)).is_none());
        assert!(!table.disconnected(ClientKey(9), 4), "nothing to keep for an unknown client");
        table.disconnected(ClientKey(1), 4);
        assert!(!table.disconnected(ClientKey(1), 4), "a second disconnect is another client's");
        assert!(table.is_empty());
        // A client that could not be named is forgotten after a while, connected or not.
        let mut unknown = entry("unknown", u64::MAX);
        unknown.identity = Identity::Unknown { reason: "no token".into(), since: 1_000 };
        table.insert(ClientKey(4), unknown);
        assert_eq!(table.sweep(Some(1_000 + UNKNOWN_KEPT_SECS - 1)), 0);
        assert_eq!(table.sweep(Some(1_000 + UNKNOWN_KEPT_SECS)), 1);
        assert_eq!((table.len(), table.connected()), (0, 0));
    }

    #[test]
    fn a_flood_of_denials_writes_a_line_a_second_and_counts_the_rest() {
        let mut b = LogBudget::default();
        for _ in 0..LOG_BURST {
            assert_eq!(b.take(100), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(b.take(100), None);
        }
        assert_eq!(b.take(101), Some(5), "the next line says how many were not written");
        assert_eq!(b.take(101), None);
        assert_eq!(b.suppressed, 1);
    }
}
