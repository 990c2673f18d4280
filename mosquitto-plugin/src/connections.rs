//! Who each connection is, from its CONNECT until it goes away, and the decisions it has
//! already been given.
//!
//! The broker has no per-client user data for plugins, so connections are kept here, keyed by
//! the address of the broker's client structure. An entry is made by a successful
//! authentication; every new connection authenticates first (Mosquitto asks the plugin at
//! every CONNECT, anonymous ones included), so a client id taken over, or an address reused,
//! gets the new connection's identity, never the old one's.
//!
//! An entry outlives the disconnect event: Mosquitto still asks about a client after it
//! (its will message is checked as a publish when it is sent, and messages queued for an
//! offline persistent session are checked as deliveries). A disconnected entry keeps only
//! the identity (its decision cache is freed) and is dropped when its token has expired,
//! or earliest-expiring first when too many are kept.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use identity::{TokenHash, Verified};
use policy_engine::{Action, Decision, Request, Subject};

/// A connection as the broker identifies it: the address of its `struct mosquitto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub usize);

/// Topics longer than this are decided every time rather than remembered: a flood of long
/// unique topics must not grow the broker.
pub const MAX_CACHED_TOPIC: usize = 256;

/// Disconnected entries kept at most (each holds an identity, no decisions).
pub const MAX_DISCONNECTED: usize = 50_000;

/// An entry whose token expired this long ago is dropped.
pub const EXPIRED_GRACE_SECS: u64 = 60;

/// Decisions already made for one connection under one generation, by topic and action.
/// Bounded: when full it starts over (a miss costs one module call, never a wrong answer).
/// Topics are hashed with foldhash (seeded per cache): SipHash cost more than the rest of a
/// cached check, and the cache is too small to be worth flooding.
#[derive(Default)]
pub struct DecisionCache {
    capacity: usize,
    by_topic: HashMap<Box<str>, [Option<Arc<Decision>>; 3], foldhash::fast::RandomState>,
}

fn slot(action: Action) -> usize {
    match action {
        Action::Subscribe => 0,
        Action::Read => 1,
        Action::Publish => 2,
    }
}

impl DecisionCache {
    pub fn new(capacity: usize) -> DecisionCache {
        DecisionCache { capacity, by_topic: HashMap::default() }
    }

    pub fn get(&self, action: Action, topic: &str) -> Option<&Arc<Decision>> {
        self.by_topic.get(topic).and_then(|d| d[slot(action)].as_ref())
    }

    pub fn put(&mut self, action: Action, topic: &str, decision: Arc<Decision>) {
        if self.capacity == 0 || topic.len() > MAX_CACHED_TOPIC {
            return;
        }
        if let Some(d) = self.by_topic.get_mut(topic) {
            d[slot(action)] = Some(decision);
            return;
        }
        if self.by_topic.len() >= self.capacity {
            self.by_topic.clear();
        }
        let mut d = [None, None, None];
        d[slot(action)] = Some(decision);
        self.by_topic.insert(topic.into(), d);
    }

    pub fn clear(&mut self) {
        self.by_topic.clear();
    }

    pub fn len(&self) -> usize {
        self.by_topic.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_topic.is_empty()
    }
}

/// The subject a connection's token maps to under one policy generation.
pub struct Mapped {
    pub generation: u64,
    pub superuser: bool,
    /// The request the connection's checks reuse (subject, client id, proven username);
    /// each check only fills in the topic and the action.
    pub request: Request,
}

/// One authenticated connection.
pub struct Connection {
    pub client_id: Box<str>,
    /// The MQTT username, only when it was proven to name the token's subject (its id or
    /// `preferred_username`); otherwise empty, so `${username}` can never be borrowed.
    pub username: Box<str>,
    pub token: TokenHash,
    pub verified: Arc<Verified>,
    /// When the token stops being good (its `exp` plus the leeway), in seconds since the
    /// epoch: every check from then on is denied, and the connection is ended.
    pub deadline: u64,
    pub mapped: Option<Mapped>,
    pub cache: DecisionCache,
    /// Between its CONNECT and its disconnect event.
    pub connected: bool,
    /// The username the broker was given for this client in place of a token used as the
    /// username (Mosquitto logs usernames): the subject id.
    pub shown_username: Option<Box<str>>,
    /// Admitted through MQTT 5 enhanced authentication (method `jwt`): the broker holds no
    /// token for it (its reload re-check asks with the username alone).
    pub enhanced: bool,
}

impl Connection {
    /// The mapping for `generation`, if the connection has one for it.
    pub fn mapped_for(&mut self, generation: u64) -> Option<&mut Mapped> {
        self.mapped.as_mut().filter(|m| m.generation == generation)
    }

    /// Records the subject under a new generation; earlier decisions no longer count.
    pub fn remap(&mut self, generation: u64, subject: &Subject, superuser: bool) -> &mut Mapped {
        self.cache.clear();
        self.mapped.insert(Mapped {
            generation,
            superuser,
            request: Request {
                subject: subject.clone(),
                topic: String::new(),
                action: Action::Read,
                clientid: self.client_id.to_string(),
                username: self.username.to_string(),
            },
        })
    }
}

#[derive(Default)]
pub struct Connections {
    by_client: HashMap<ClientKey, Connection>,
    /// Entries with `connected` set.
    connected: usize,
    /// Connected entries by deadline, earliest first. An item whose entry has gone, left, or
    /// moved its deadline (re-authentication) is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(u64, ClientKey)>>,
}

impl Connections {
    fn forget(&mut self, gone: Option<&Connection>) {
        if gone.is_some_and(|c| c.connected) {
            self.connected -= 1;
        }
    }

    /// Records a connection's identity, replacing whatever the key held. Returns the entry
    /// replaced.
    pub fn insert(&mut self, key: ClientKey, c: Connection) -> Option<Connection> {
        if c.connected {
            self.connected += 1;
            self.watch(key, c.deadline);
        }
        let old = self.by_client.insert(key, c);
        self.forget(old.as_ref());
        old
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
    /// (will, queued deliveries), free its decisions.
    pub fn disconnected(&mut self, key: ClientKey, cache_capacity: usize) {
        if let Some(c) = self.by_client.get_mut(&key) {
            if c.connected {
                c.connected = false;
                self.connected -= 1;
            }
            c.cache = DecisionCache::new(cache_capacity);
        }
    }

    /// Watches a connected entry's (new) deadline.
    pub fn watch(&mut self, key: ClientKey, deadline: u64) {
        self.deadlines.push(Reverse((deadline, key)));
        // Skipped items pile up with churn: start over from the entries when they dominate.
        if self.deadlines.len() > 2 * self.by_client.len() + 1024 {
            self.deadlines = self
                .by_client
                .iter()
                .filter(|(_, c)| c.connected)
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

    /// Drops entries whose token expired over [`EXPIRED_GRACE_SECS`] ago, then the
    /// earliest-expiring disconnected ones beyond [`MAX_DISCONNECTED`]. Returns how many went.
    pub fn sweep(&mut self, now: u64) -> usize {
        let expired: Vec<ClientKey> = self
            .by_client
            .iter()
            .filter(|(_, c)| c.verified.exp + EXPIRED_GRACE_SECS <= now)
            .map(|(k, _)| *k)
            .collect();
        for k in &expired {
            self.remove(*k);
        }
        let excess = (self.by_client.len() - self.connected).saturating_sub(MAX_DISCONNECTED);
        if excess > 0 {
            let mut oldest: Vec<(u64, ClientKey)> = self
                .by_client
                .iter()
                .filter(|(_, c)| !c.connected)
                .map(|(k, c)| (c.verified.exp, *k))
                .collect();
            oldest.sort_unstable_by_key(|(exp, _)| *exp);
            for (_, k) in &oldest[..excess] {
                self.remove(*k);
            }
        }
        expired.len() + excess
    }

    /// Entries between their CONNECT and their disconnect event.
    pub fn connected(&self) -> usize {
        self.connected
    }

    /// Entries in all (connected, and disconnected ones kept for late checks).
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(allow: bool) -> Arc<Decision> {
        Arc::new(Decision { allow, rule: None, reason: String::new() })
    }

    #[test]
    fn the_cache_is_bounded_and_keeps_actions_apart() {
        let mut c = DecisionCache::new(2);
        let allowed = |c: &DecisionCache, a, t| c.get(a, t).map(|d| d.allow);
        c.put(Action::Read, "a", d(true));
        c.put(Action::Subscribe, "a", d(false));
        assert_eq!(allowed(&c, Action::Read, "a"), Some(true));
        assert_eq!(allowed(&c, Action::Subscribe, "a"), Some(false));
        assert_eq!(allowed(&c, Action::Publish, "a"), None);
        c.put(Action::Read, "b", d(true));
        assert_eq!(c.len(), 2);
        c.put(Action::Read, "c", d(true));
        assert_eq!(c.len(), 1, "full: started over");
        assert_eq!(allowed(&c, Action::Read, "a"), None);
        let long = "x".repeat(MAX_CACHED_TOPIC + 1);
        c.put(Action::Read, &long, d(true));
        assert_eq!(allowed(&c, Action::Read, &long), None, "long topics are not kept");
        let mut off = DecisionCache::new(0);
        off.put(Action::Read, "a", d(true));
        assert!(off.is_empty());
    }
}
