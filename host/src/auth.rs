//! Who is asking: tokens, the caches over them, and go-auth http-backend sessions.
//!
//! - A verified token is cached (by its SHA-256, never the token itself) until its `exp`, so
//!   the signature is checked once per token, not once per message.
//! - The subject a token maps to is cached per policy *generation*: a new module may map
//!   claims differently, so a swap never serves a subject mapped by the old one.
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
use crate::runtime::{Generation, Subject};

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

impl<K> Expiry<K, (Arc<Subject>, u64)> for UntilExp {
    fn expire_after_create(&self, _: &K, v: &(Arc<Subject>, u64), _: Instant) -> Option<Duration> {
        Some(Duration::from_secs(v.1.saturating_sub(now())))
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
    /// username → clientid → session.
    sessions: Mutex<HashMap<String, HashMap<String, Session>>>,
}

impl Auth {
    pub fn new(verifier: Arc<Verifier>) -> Auth {
        Auth {
            verifier,
            verified: Cache::builder().max_capacity(100_000).expire_after(UntilExp).build(),
            subjects: Cache::builder().max_capacity(100_000).expire_after(UntilExp).build(),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// Verifies a token (or finds it verified in the cache).
    pub async fn verify(&self, token: &str) -> Result<(TokenHash, Arc<Verified>), String> {
        let hash = token_hash(token);
        if let Some(v) = self.verified.get(&hash)
            && v.exp > now()
        {
            metrics::counter!("mqtt_policy_token_cache_total", "result" => "hit").increment(1);
            return Ok((hash, v));
        }
        metrics::counter!("mqtt_policy_token_cache_total", "result" => "miss").increment(1);
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
        (s.verified.exp > now()).then(|| (s.token, Arc::clone(&s.verified)))
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
