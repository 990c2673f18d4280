//! Who is asking: tokens, the caches over them, and go-auth http-backend sessions.
//!
//! - A verified token is cached (by its SHA-256, never the token itself) until its `exp`, so
//!   the signature is checked once per token, not once per message.
//! - The subject a token maps to is cached per policy *generation*: a new module may map
//!   claims differently, so a swap never serves a subject mapped by the old one.
//! - An ACL decision is cached per (generation, token, action, topic, clientid, username)
//!   until the token's `exp`: decisions are pure functions of those, so the cache is exact,
//!   and a swapped policy or module (a new generation) never meets an old entry. Delivery
//!   checks (`read`) repeat the same key for every message on a topic. Module faults are
//!   never cached.
//! - go-auth's http backend sends no token with ACL and superuser calls. A successful user
//!   call binds (username, clientid) to the verified token until its `exp`; ACL calls look
//!   the binding up. Only a successful user call creates or replaces a binding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use sha2::{Digest, Sha256};

use crate::jwks::{Verified, Verifier, now};
use crate::runtime::{Action, Decision, Generation, Subject};

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Expires an entry at its token's `exp`.
struct UntilExp;

impl<K> Expiry<K, Arc<Verified>> for UntilExp {
    fn expire_after_create(&self, _: &K, v: &Arc<Verified>, _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(v.exp.saturating_sub(now())))
    }
}

impl<K, V> Expiry<K, (V, u64)> for UntilExp {
    fn expire_after_create(&self, _: &K, v: &(V, u64), _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(v.1.saturating_sub(now())))
    }
}

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

/// Counters for the caches, registered once (a lookup per request would cost more).
struct CacheMetrics {
    token_hit: metrics::Counter,
    token_miss: metrics::Counter,
    decision_hit: metrics::Counter,
    decision_miss: metrics::Counter,
}

impl CacheMetrics {
    fn register() -> CacheMetrics {
        CacheMetrics {
            token_hit: metrics::counter!("mqtt_policy_token_cache_total", "result" => "hit"),
            token_miss: metrics::counter!("mqtt_policy_token_cache_total", "result" => "miss"),
            decision_hit: metrics::counter!("mqtt_policy_decision_cache_total", "result" => "hit"),
            decision_miss: metrics::counter!("mqtt_policy_decision_cache_total", "result" => "miss"),
        }
    }
}

struct Session {
    token: TokenHash,
    verified: Arc<Verified>,
}

pub struct Auth {
    pub verifier: Arc<Verifier>,
    verified: Cache<TokenHash, Arc<Verified>>,
    subjects: Cache<(u64, TokenHash), (Arc<Subject>, u64)>,
    decisions: Cache<DecisionKey, (Arc<Decision>, u64)>,
    metrics: CacheMetrics,
    /// username → clientid → session.
    sessions: Mutex<HashMap<String, HashMap<String, Session>>>,
}

impl Auth {
    pub fn new(verifier: Arc<Verifier>) -> Auth {
        Auth {
            verifier,
            verified: Cache::builder().max_capacity(100_000).expire_after(UntilExp).build(),
            subjects: Cache::builder().max_capacity(100_000).expire_after(UntilExp).build(),
            decisions: Cache::builder().max_capacity(200_000).expire_after(UntilExp).build(),
            metrics: CacheMetrics::register(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies a token (or finds it verified in the cache).
    pub async fn verify(&self, token: &str) -> Result<(TokenHash, Arc<Verified>), String> {
        let hash = token_hash(token);
        if let Some(v) = self.verified.get(&hash)
            && v.exp > now()
            && self.verifier.still_trusts(&v)
        {
            self.metrics.token_hit.increment(1);
            return Ok((hash, v));
        }
        self.metrics.token_miss.increment(1);
        let v = Arc::new(self.verifier.verify(token).await.map_err(|r| format!("token refused: {r}"))?);
        // With leeway a token can verify just after its exp: decide with it, do not cache it.
        if v.exp > now() {
            self.verified.insert(hash, Arc::clone(&v));
        }
        Ok((hash, v))
    }

    /// The subject a verified token maps to under `generation`'s module.
    pub fn subject(
        &self,
        generation: &Generation,
        hash: TokenHash,
        v: &Verified,
    ) -> Result<Arc<Subject>, String> {
        let key = (generation.id, hash);
        if let Some((s, _)) = self.subjects.get(&key) {
            return Ok(s);
        }
        let s = Arc::new(
            generation
                .subject_from_claims(&v.claims.to_string())
                .map_err(|e| format!("token refused: {e}"))?,
        );
        if v.exp > now() {
            self.subjects.insert(key, (Arc::clone(&s), v.exp));
        }
        Ok(s)
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

    /// Binds (username, clientid) to a verified token, replacing any earlier binding.
    pub fn bind(&self, username: &str, clientid: &str, token: TokenHash, verified: Arc<Verified>) {
        let mut sessions = self.sessions.lock().unwrap();
        sessions
            .entry(username.to_string())
            .or_default()
            .insert(clientid.to_string(), Session { token, verified });
    }

    /// The live binding of (username, clientid).
    pub fn session(&self, username: &str, clientid: &str) -> Option<(TokenHash, Arc<Verified>)> {
        let sessions = self.sessions.lock().unwrap();
        let s = sessions.get(username)?.get(clientid)?;
        // A session lasts while its token would still verify: not expired, key still published.
        (s.verified.exp > now() && self.verifier.still_trusts(&s.verified))
            .then(|| (s.token, Arc::clone(&s.verified)))
    }

    /// Drops expired bindings; returns how many remain.
    pub fn sweep(&self) -> usize {
        let mut sessions = self.sessions.lock().unwrap();
        let t = now();
        sessions.retain(|_, m| {
            m.retain(|_, s| s.verified.exp > t);
            !m.is_empty()
        });
        sessions.values().map(HashMap::len).sum()
    }
}
