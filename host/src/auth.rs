//! The server's own state over identities: ACL decisions cached per token, and go-auth
//! http-backend sessions. Verifying tokens and mapping them to subjects is `identity`'s.
//!
//! - An ACL decision is cached per (generation, token, action, topic, clientid, username)
//!   until the token's `exp`: decisions are pure functions of those, so the cache is exact,
//!   and a swapped policy or module (a new generation) never meets an old entry. Delivery
//!   checks (`read`) repeat the same key for every message on a topic. Module faults are
//!   never cached.
//! - go-auth's http backend sends no token with ACL and superuser calls. A session belongs to
//!   an identity, found by its MQTT username: a user call binds a username to the verified
//!   token only when the username names the token's subject (`identity::names`), so the
//!   username itself is proven. ACL and superuser calls look the username up, whatever the
//!   client id: reconnects, second connections and CONNECTs that go-auth's cache answered
//!   (no user call reaches us) keep the right identity, and no client is decided as someone
//!   whose token it did not show. Only a successful user call creates or replaces a binding;
//!   a binding lasts while its token would still verify.

use std::sync::Arc;

use identity::tokens::weight;
use identity::{Identities, TokenHash, UntilExp, Verified, now};
use moka::sync::Cache;
use policy_engine::{Action, Decision};

/// Everything an ACL decision depends on.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    pub generation: u64,
    pub token: TokenHash,
    pub action: u8,
    pub topic: Box<str>,
    pub clientid: Box<str>,
    pub username: Box<str>,
}

impl DecisionKey {
    pub fn new(
        generation: u64,
        token: TokenHash,
        action: Action,
        topic: &str,
        clientid: &str,
        username: &str,
    ) -> Self {
        DecisionKey {
            generation,
            token,
            action: action as u8,
            topic: topic.into(),
            clientid: clientid.into(),
            username: username.into(),
        }
    }
}

/// Counters for the decision cache, registered once (a lookup per request would cost more).
struct CacheMetrics {
    decision_hit: metrics::Counter,
    decision_miss: metrics::Counter,
}

#[derive(Clone)]
struct Session {
    token: TokenHash,
    verified: Arc<Verified>,
}

pub struct Auth {
    pub identities: Identities,
    decisions: Cache<DecisionKey, (Arc<Decision>, u64)>,
    metrics: CacheMetrics,
    /// username (proven to name the token's subject) → session, until the token's `exp`.
    sessions: Cache<String, (Session, u64)>,
}

impl DecisionKey {
    /// About what an entry takes in memory: a flood of long unique topics then costs at most
    /// the cache's byte budget.
    fn bytes(&self, d: &Decision) -> usize {
        160 + self.topic.len()
            + self.clientid.len()
            + self.username.len()
            + d.reason.len()
            + d.rule.as_ref().map_or(0, String::len)
    }
}

impl Auth {
    /// `budget`: bytes for the decisions and the sessions (the identities have their own).
    pub fn new(identities: Identities, budget: u64) -> Auth {
        Auth {
            identities,
            decisions: Cache::builder()
                .max_capacity(budget / 5 * 4)
                .weigher(|k: &DecisionKey, v: &(Arc<Decision>, u64)| weight(k.bytes(&v.0)))
                .expire_after(UntilExp)
                .build(),
            metrics: CacheMetrics {
                decision_hit: metrics::counter!("mqtt_policy_decision_cache_total", "result" => "hit"),
                decision_miss: metrics::counter!("mqtt_policy_decision_cache_total", "result" => "miss"),
            },
            sessions: Cache::builder()
                .max_capacity(budget / 5)
                .weigher(|u: &String, _: &(Session, u64)| weight(128 + u.len()))
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// What the caches hold now, in bytes (as weighed).
    pub fn cached_bytes(&self) -> u64 {
        self.decisions.weighted_size() + self.sessions.weighted_size()
    }

    /// The decision for `key`: cached, or computed by `decide` and cached until `exp`. A module
    /// fault (`Err`) is answered as a denial but never cached.
    pub fn decision(
        &self,
        key: DecisionKey,
        exp: u64,
        decide: impl FnOnce() -> Result<Decision, String>,
    ) -> Arc<Decision> {
        if let Some((d, _)) = self.decisions.get(&key) {
            self.metrics.decision_hit.increment(1);
            return d;
        }
        self.metrics.decision_miss.increment(1);
        match decide() {
            Ok(d) => {
                let d = Arc::new(d);
                if exp > now() {
                    self.decisions.insert(key, (Arc::clone(&d), exp));
                }
                d
            }
            Err(why) => Arc::new(Decision { allow: false, rule: None, reason: why }),
        }
    }

    /// Binds a username, already proven to name the token's subject, to the verified token,
    /// replacing any earlier binding (the newest token of an identity decides for it).
    pub fn bind(&self, username: &str, token: TokenHash, verified: Arc<Verified>) {
        let exp = verified.exp;
        self.sessions.insert(username.to_string(), (Session { token, verified }, exp));
    }

    /// The live binding of a username.
    pub fn session(&self, username: &str) -> Option<(TokenHash, Arc<Verified>)> {
        let (s, _) = self.sessions.get(username)?;
        // A session lasts while its token would still verify: not expired, key still published.
        self.identities.still_valid(&s.verified).then(|| (s.token, Arc::clone(&s.verified)))
    }

    /// Lets the caches drop what expired; returns how many sessions remain.
    pub fn sweep(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.decisions.run_pending_tasks();
        self.sessions.entry_count()
    }
}
