//! Verified tokens and the subjects they map to, cached.
//!
//! - A verified token is cached by its SHA-256 (never the token itself) until its `exp`, and
//!   holds only while the key that verified it is still in the key set: a key rotated out
//!   takes its cached verifications with it. So a signature is checked once per token, not
//!   once per message or reconnect.
//! - The subject a token maps to is cached per policy *generation*: the module owns the
//!   claims → subject mapping, so a swapped module never meets a subject mapped by the old one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;
use policy_engine::{Fault, Generation, Subject, SubjectError};
use sha2::{Digest, Sha256};

use crate::jwks::{Refused, Verified, Verifier, now};

/// Why a token stands for no subject: the client's CONNECT is refused, or its request denied.
/// `Display` is the reason to log and answer (`token refused: ...`); it never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// The verifier refused the token: malformed, not signed by a trusted key, expired, not
    /// an access token, issued to another audience or party.
    Refused(Refused),
    /// The token verified, but the policy module maps its claims to no subject (its reason).
    NoSubject(String),
    /// The policy module could not map the claims (a fault). Nothing was remembered: the same
    /// token may well map on the next try.
    Fault(Fault),
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            TokenError::Refused(r) => write!(f, "token refused: {r}"),
            TokenError::NoSubject(why) => write!(f, "token refused: {why}"),
            TokenError::Fault(fault) => write!(f, "token refused: {fault}"),
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::Refused(r) => Some(r),
            TokenError::NoSubject(_) => None,
            TokenError::Fault(fault) => Some(fault),
        }
    }
}

impl From<TokenError> for String {
    fn from(e: TokenError) -> String {
        e.to_string()
    }
}

pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A moka expiry that ends an entry at its token's `exp`: for `Arc<Verified>` values, and
/// for `(value, exp)` pairs.
pub struct UntilExp;

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

/// Counters for the token cache, registered once (a lookup per request would cost more).
struct CacheMetrics {
    hit: metrics::Counter,
    miss: metrics::Counter,
}

/// An estimate of what a value costs in memory, for caches bounded in bytes: a flood of large
/// or unique inputs then costs at most the budget, whatever the number of entries.
pub fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// What a subject costs: its strings and their headers.
pub fn subject_bytes(s: &Subject) -> usize {
    const STRING: usize = 24 + 16;
    96 + s.id.len() + s.groups.iter().chain(&s.scopes).map(|g| g.len() + STRING).sum::<usize>()
}

/// Verified tokens (by hash) and their subjects (by generation and hash), each cache bounded
/// by a share of a byte budget.
pub struct Identities {
    pub verifier: Arc<Verifier>,
    // Both keyed by token digests, which a fast keyed hash spreads as well as SipHash does.
    verified: Cache<TokenHash, Arc<Verified>, foldhash::fast::RandomState>,
    subjects: Cache<(u64, TokenHash), (Arc<Subject>, u64), foldhash::fast::RandomState>,
    metrics: CacheMetrics,
}

impl Identities {
    /// Caches verified tokens and subjects in at most about `budget` bytes (two thirds for the
    /// tokens, whose claims are the larger part, a third for the subjects).
    pub fn new(verifier: Arc<Verifier>, budget: u64) -> Identities {
        Identities {
            verifier,
            verified: Cache::builder()
                .max_capacity(budget / 3 * 2)
                .weigher(|_: &TokenHash, v: &Arc<Verified>| weight(64 + v.bytes))
                .expire_after(UntilExp)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            subjects: Cache::builder()
                .max_capacity(budget / 3)
                .weigher(|_: &(u64, TokenHash), v: &(Arc<Subject>, u64)| weight(64 + subject_bytes(&v.0)))
                .expire_after(UntilExp)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            metrics: CacheMetrics {
                hit: metrics::counter!("mqtt_policy_token_cache_total", "result" => "hit"),
                miss: metrics::counter!("mqtt_policy_token_cache_total", "result" => "miss"),
            },
        }
    }

    fn cached(&self, token: &str) -> (TokenHash, Option<Arc<Verified>>) {
        let hash = token_hash(token);
        let hit = self.verified.get(&hash).filter(|v| self.still_valid(v));
        match &hit {
            Some(_) => self.metrics.hit.increment(1),
            None => self.metrics.miss.increment(1),
        }
        (hash, hit)
    }

    fn remember(&self, hash: TokenHash, v: Verified) -> (TokenHash, Arc<Verified>) {
        let v = Arc::new(v);
        // With leeway a token can verify just after its exp: decide with it, do not cache it.
        if v.exp > now() {
            self.verified.insert(hash, Arc::clone(&v));
        }
        (hash, v)
    }

    /// Verifies a token (or finds it verified), waiting for a key refresh if it names an
    /// unknown key. The error is a reason safe to log and return.
    pub async fn verify(&self, token: &str) -> Result<(TokenHash, Arc<Verified>), TokenError> {
        match self.cached(token) {
            (hash, Some(v)) => Ok((hash, v)),
            (hash, None) => {
                let v = self.verifier.verify(token).await.map_err(TokenError::Refused)?;
                Ok(self.remember(hash, v))
            }
        }
    }

    /// Verifies a token (or finds it verified) with the keys held now, never waiting: the
    /// broker thread's path (see `Verifier::verify_now`).
    pub fn verify_now(&self, token: &str) -> Result<(TokenHash, Arc<Verified>), TokenError> {
        match self.cached(token) {
            (hash, Some(v)) => Ok((hash, v)),
            (hash, None) => {
                let v = self.verifier.verify_now(token).map_err(TokenError::Refused)?;
                Ok(self.remember(hash, v))
            }
        }
    }

    /// Would this verification still be accepted now: not expired, its key still trusted?
    pub fn still_valid(&self, v: &Verified) -> bool {
        v.exp > now() && self.verifier.still_trusts(v)
    }

    /// The subject a verified token maps to under `generation`'s module. Only subjects are
    /// remembered: a refusal is asked again, and a fault must be.
    pub fn subject(
        &self,
        generation: &Generation,
        hash: TokenHash,
        v: &Verified,
    ) -> Result<Arc<Subject>, TokenError> {
        let key = (generation.id, hash);
        if let Some((s, _)) = self.subjects.get(&key) {
            return Ok(s);
        }
        let s = Arc::new(generation.subject_from_claims(&v.claims.to_string()).map_err(|e| match e {
            SubjectError::Refused(why) => TokenError::NoSubject(why),
            SubjectError::Fault(fault) => TokenError::Fault(fault),
        })?);
        if v.exp > now() {
            self.subjects.insert(key, (Arc::clone(&s), v.exp));
        }
        Ok(s)
    }
}
