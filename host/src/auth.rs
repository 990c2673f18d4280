//! The service's own state over identities: the shared ACL decision cache, and go-auth
//! http-backend sessions. Verifying tokens is `identity`'s; deciding, and what a cache may
//! hold, is the authorizer's ([`SharedDecisions`] and [`DecisionsFor`] are this cache as its
//! `DecisionLookup` and `DecisionCache`).
//!
//! - An ACL decision is cached per (generation, token, action, topic, clientid, username),
//!   keyed by their digest, until the token's `exp`: decisions are pure functions of those,
//!   so the cache is exact, and a swapped policy or module (a new generation) never meets an
//!   old entry. Delivery checks (`read`) repeat the same key for every message on a topic.
//!   Module faults are never cached (the authorizer does not hand them to the cache).
//! - go-auth's http backend sends no token with ACL and superuser calls. A session belongs to
//!   an identity, found by its MQTT username: a user call binds a username to the verified
//!   token only when the username names the token's subject (`identity::names`), so the
//!   username itself is proven. ACL and superuser calls look the username up, whatever the
//!   client id: reconnects, second connections and CONNECTs that go-auth's cache answered
//!   (no user call reaches us) keep the right identity, and no client is decided as someone
//!   whose token it did not show. Only a successful user call creates or replaces a binding;
//!   a binding lasts while its token would still verify.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use identity::tokens::weight;
use identity::{Identities, TokenHash, UntilExp, Verified, now};
use moka::sync::Cache;
use policy_engine::{Action, Decision, Prepared, Subject};
use sha2::{Digest, Sha256};

/// Everything an ACL decision depends on, as one SHA-256 digest: (generation, the token's
/// hash, action, topic, clientid, username), each part tagged or length-prefixed so no two
/// requests share an encoding. A lookup allocates nothing, and an entry's key is 32 bytes
/// however long the topic; a digest collision is as infeasible as the token hash's.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionKey([u8; 32]);

impl DecisionKey {
    pub fn new(
        generation: u64,
        token: TokenHash,
        action: Action,
        topic: &str,
        clientid: &str,
        username: &str,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(generation.to_le_bytes());
        h.update(token);
        h.update([action as u8]);
        for s in [topic, clientid, username] {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        DecisionKey(h.finalize().into())
    }
}

/// Slots in each worker thread's memo of token hashes, and the longest token kept there.
const TOKEN_MEMO_SLOTS: usize = 16;
const TOKEN_MEMO_MAX: usize = 4096;

/// A token-memo slot: the token and its hash.
type TokenMemoSlot = Option<(Box<str>, TokenHash)>;

thread_local! {
    static TOKEN_MEMO: std::cell::RefCell<Vec<TokenMemoSlot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The SHA-256 of a token ([`identity::token_hash`]), remembered per worker thread for the
/// last few tokens: a client with a bearer token sends the same one on every check, and
/// hashing a Keycloak token (about 1 KB) was the largest cost of a cached decision. The slot
/// comes from the token's last bytes (its signature, which differs between tokens); a hit
/// needs the whole token to be equal, so the hash is always the token's own.
pub fn token_hash(token: &str) -> TokenHash {
    if token.len() > TOKEN_MEMO_MAX {
        return identity::token_hash(token);
    }
    let tail = &token.as_bytes()[token.len().saturating_sub(8)..];
    let slot = near_slot(tail, TOKEN_MEMO_SLOTS);
    TOKEN_MEMO.with_borrow_mut(|memo| {
        if memo.is_empty() {
            memo.resize_with(TOKEN_MEMO_SLOTS, || None);
        }
        match &memo[slot] {
            Some((t, hash)) if **t == *token => *hash,
            _ => {
                let hash = identity::token_hash(token);
                memo[slot] = Some((token.into(), hash));
                hash
            }
        }
    })
}

struct Session {
    token: TokenHash,
    verified: Arc<Verified>,
    /// A later bind of the username replaced this one (near caches then stop using it).
    replaced: AtomicBool,
    /// Kept only until then (seconds since the epoch) when it is a copy of a binding shared
    /// through the session store; `u64::MAX` otherwise (the token's `exp` still ends it).
    until: u64,
}

impl Session {
    fn current(&self) -> bool {
        !self.replaced.load(Ordering::Acquire) && (self.until == u64::MAX || now() < self.until)
    }
}

/// A decision, with the identity it was made for: a cache hit needs no other lookup, only a
/// check that the token would still verify. Shared whole (one reference count per hit).
pub struct Decided {
    pub decision: Decision,
    pub subject: Arc<Subject>,
    verified: Arc<Verified>,
}

/// Slots in each worker thread's near cache of decisions.
const NEAR_SLOTS: usize = 256;
/// Larger entries (long reasons quoting long topics) stay in the shared cache only: a near
/// cache holds at most about `NEAR_SLOTS` × this many bytes of its own.
const NEAR_ENTRY_MAX: usize = 1024;

/// A near-cache slot: the `Auth` it belongs to, the key, the decision.
type NearSlot = Option<(u64, DecisionKey, Arc<Decided>)>;
/// A near session slot: the `Auth` it belongs to, the username, the binding.
type NearSessionSlot = Option<(u64, Box<str>, Arc<Session>)>;

/// Slots in each worker thread's near cache of sessions, and the longest username kept there.
const NEAR_SESSION_SLOTS: usize = 64;
const NEAR_USERNAME_MAX: usize = 256;

thread_local! {
    static NEAR: std::cell::RefCell<Vec<NearSlot>> = const { std::cell::RefCell::new(Vec::new()) };
    static NEAR_SESSIONS: std::cell::RefCell<Vec<NearSessionSlot>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A slot for `bytes` among `slots` (FNV-1a: usernames are short, and a collision only
/// costs a lookup in the shared table).
fn near_slot(bytes: &[u8], slots: usize) -> usize {
    (fnv1a(bytes) % slots as u64) as usize
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// An identity ready for decisions under one generation, for one client id and username:
/// the verified token, its subject, and the subject prepared ([`Generation::prepare`]) so
/// that its residual allows a publish or read at once.
///
/// [`Generation::prepare`]: policy_engine::Generation::prepare
pub struct PreparedIdentity {
    pub verified: Arc<Verified>,
    pub subject: Arc<Subject>,
    /// `${username}` for its decisions: the username, when it is proven to name the subject.
    pub username: String,
    /// `None` when the generation does not decide natively.
    pub prepared: Option<Prepared>,
}

/// What a prepared identity is found by: everything a decision depends on but the action and
/// the topic (as [`DecisionKey`]), so an entry answers exactly what the decision cache would.
struct IdentityKey {
    /// The `Auth` it belongs to.
    owner: u64,
    generation: u64,
    token: TokenHash,
    clientid: Box<str>,
    username: Box<str>,
}

impl IdentityKey {
    fn is(&self, owner: u64, generation: u64, token: &TokenHash, clientid: &str, username: &str) -> bool {
        self.owner == owner
            && self.generation == generation
            && self.token == *token
            && *self.clientid == *clientid
            && *self.username == *username
    }
}

/// Slots in each worker thread's near cache of prepared identities, and the most bytes an
/// entry may take there (larger ones are not kept: they are decided through the caches).
const NEAR_IDENTITY_SLOTS: usize = 64;
const NEAR_IDENTITY_MAX: usize = 16 << 10;

type NearIdentitySlot = Option<(IdentityKey, Arc<PreparedIdentity>)>;

thread_local! {
    static NEAR_IDENTITIES: std::cell::RefCell<Vec<NearIdentitySlot>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The near-identity slot of a token and client id.
fn identity_slot(token: &TokenHash, clientid: &str) -> usize {
    let from_token =
        u64::from_le_bytes([token[0], token[1], token[2], token[3], token[4], token[5], token[6], 0]);
    ((from_token ^ fnv1a(clientid.as_bytes())) % NEAR_IDENTITY_SLOTS as u64) as usize
}

pub struct Auth {
    /// Tells this instance's near-cache entries from another's (tests run several).
    id: u64,
    /// The authorizer's identities: whether a token would still verify.
    identities: Arc<Identities>,
    /// Keyed by digests, which a fast keyed hash spreads as well as SipHash does.
    decisions: Cache<DecisionKey, (Arc<Decided>, u64), foldhash::fast::RandomState>,
    /// username (proven to name the token's subject) → session, until the token's `exp`.
    sessions: Cache<String, (Arc<Session>, u64)>,
}

/// About what an entry takes in memory (the key, the entry, the decision's strings; the
/// subject and the verified token are shared with the identity caches): a flood of long
/// unique topics, whose reasons may quote them, then costs at most the cache's byte budget.
fn entry_bytes(d: &Decision) -> usize {
    192 + d.reason.len() + d.rule.as_ref().map_or(0, String::len)
}

impl Auth {
    /// `budget`: bytes for the decisions and the sessions (the identities have their own).
    pub fn new(identities: Arc<Identities>, budget: u64) -> Auth {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Auth {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            identities,
            decisions: Cache::builder()
                .max_capacity(budget / 5 * 4)
                .weigher(|_: &DecisionKey, v: &(Arc<Decided>, u64)| weight(entry_bytes(&v.0.decision)))
                .expire_after(UntilExp)
                .build_with_hasher(foldhash::fast::RandomState::default()),
            sessions: Cache::builder()
                .max_capacity(budget / 5)
                .weigher(|u: &String, _: &(Arc<Session>, u64)| weight(160 + u.len()))
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// Lists the bound sessions as live identities, each subject mapped from its claims by
    /// the generation given (a swap's new one), for the swap's report of whom it reaches.
    /// Sessions whose token would no longer verify, or whose claims the generation maps to
    /// no subject, are left out. A session has no client id of its own (each go-auth call
    /// names one).
    pub fn identity_lister(
        &self,
    ) -> impl Fn(&policy_engine::Generation) -> Vec<policy_engine::Identity> + Send + Sync + 'static {
        let (sessions, identities) = (self.sessions.clone(), Arc::clone(&self.identities));
        move |generation| {
            sessions
                .iter()
                .filter(|(_, (s, _))| identities.still_valid(&s.verified))
                .filter_map(|(username, (s, _))| {
                    let subject = generation.subject_from_claims(&s.verified.claims.to_string()).ok()?;
                    Some(policy_engine::Identity {
                        label: username.to_string(),
                        subject: policy_core::Subject::from(&subject),
                        username: username.to_string(),
                        clientid: None,
                    })
                })
                .collect()
        }
    }

    /// What the caches hold now, in bytes (as weighed).
    pub fn cached_bytes(&self) -> u64 {
        self.decisions.weighted_size() + self.sessions.weighted_size()
    }

    /// `f` of the cached decision for `key` (and the subject it was made for), while its
    /// token would still verify (not expired, its key still trusted); `None` when there is
    /// none.
    ///
    /// Each worker thread first looks in its own small direct-mapped cache of recent
    /// decisions ([`NEAR_SLOTS`] slots, small entries only), then in the shared one. The near
    /// cache takes no lock and touches no cache line another thread writes (a hit does not
    /// even count a reference), which is what repeated checks of one topic (every delivery
    /// of a stream) cost most in the shared cache; the shared cache keeps its admission
    /// policy, so a flood of unique topics only churns the near one. Keys are exact digests
    /// that include the generation, so a near entry is never stale; it only outlives an
    /// eviction from the shared cache until its slot is reused.
    pub fn with_cached<R>(&self, key: DecisionKey, f: impl FnOnce(&Arc<Decided>) -> R) -> Option<R> {
        let slot = usize::from(u16::from_le_bytes([key.0[0], key.0[1]])) % NEAR_SLOTS;
        NEAR.with_borrow_mut(|near| {
            if near.is_empty() {
                near.resize(NEAR_SLOTS, None);
            }
            let entry = &mut near[slot];
            let fresh = entry.as_ref().is_some_and(|(owner, k, d)| {
                *owner == self.id && *k == key && self.identities.still_valid(&d.verified)
            });
            if !fresh {
                let (d, _) =
                    self.decisions.get(&key).filter(|(d, _)| self.identities.still_valid(&d.verified))?;
                if entry_bytes(&d.decision) > NEAR_ENTRY_MAX {
                    return Some(f(&d));
                }
                *entry = Some((self.id, key, d));
            }
            entry.as_ref().map(|(_, _, d)| f(d))
        })
    }

    /// The identity this worker thread prepared for (generation, token, client id, username),
    /// while its token would still verify (not expired, its key still trusted). Each thread
    /// keeps a few ([`NEAR_IDENTITY_SLOTS`]), none shared: a client that checks many topics
    /// (every delivery on a wildcard subscription) is decided by its residual with no lookup
    /// in a shared table and nothing remembered per topic.
    pub fn prepared_identity(
        &self,
        generation: u64,
        token: &TokenHash,
        clientid: &str,
        username: &str,
    ) -> Option<Arc<PreparedIdentity>> {
        let slot = identity_slot(token, clientid);
        NEAR_IDENTITIES.with_borrow(|near| {
            let (key, identity) = near.get(slot)?.as_ref()?;
            (key.is(self.id, generation, token, clientid, username)
                && self.identities.still_valid(&identity.verified))
            .then(|| Arc::clone(identity))
        })
    }

    /// Keeps `identity` in this worker thread's near cache (unless it is too large: see
    /// [`NEAR_IDENTITY_MAX`]), replacing whatever its slot held.
    pub fn keep_prepared_identity(
        &self,
        generation: u64,
        token: TokenHash,
        clientid: &str,
        username: &str,
        identity: &Arc<PreparedIdentity>,
    ) {
        let prepared = identity.prepared.as_ref().map_or(0, Prepared::bytes);
        if prepared + clientid.len() + 2 * username.len() > NEAR_IDENTITY_MAX {
            return;
        }
        let key = IdentityKey {
            owner: self.id,
            generation,
            token,
            clientid: clientid.into(),
            username: username.into(),
        };
        let slot = identity_slot(&token, clientid);
        NEAR_IDENTITIES.with_borrow_mut(|near| {
            if near.is_empty() {
                near.resize_with(NEAR_IDENTITY_SLOTS, || None);
            }
            near[slot] = Some((key, Arc::clone(identity)));
        });
    }

    /// Remembers a decision the module made for this identity until its token's `exp`.
    pub fn remember(
        &self,
        key: DecisionKey,
        decision: Decision,
        verified: &Arc<Verified>,
        subject: &Arc<Subject>,
    ) -> Arc<Decided> {
        let decided =
            Arc::new(Decided { decision, subject: Arc::clone(subject), verified: Arc::clone(verified) });
        if verified.exp > now() {
            self.decisions.insert(key, (Arc::clone(&decided), verified.exp));
        }
        decided
    }

    /// Binds a username, already proven to name the token's subject, to the verified token,
    /// replacing any earlier binding (the newest token of an identity decides for it).
    pub fn bind(&self, username: &str, token: TokenHash, verified: Arc<Verified>) {
        self.bind_until(username, token, verified, u64::MAX);
    }

    /// As [`Auth::bind`], kept here only until `until` (seconds since the epoch; at most the
    /// token's `exp`): a binding shared through the session store is read again after that.
    pub fn bind_until(&self, username: &str, token: TokenHash, verified: Arc<Verified>, until: u64) {
        let exp = until.min(verified.exp);
        let new = Arc::new(Session { token, verified, replaced: AtomicBool::new(false), until });
        if let Some((old, _)) = self.sessions.get(username) {
            old.replaced.store(true, Ordering::Release);
        }
        self.sessions.insert(username.to_string(), (Arc::clone(&new), exp));
        // Two binds at once: the one the table kept decides, the other counts as replaced.
        if self.sessions.get(username).is_some_and(|(kept, _)| !Arc::ptr_eq(&kept, &new)) {
            new.replaced.store(true, Ordering::Release);
        }
    }

    /// The live binding of a username.
    pub fn session(&self, username: &str) -> Option<(TokenHash, Arc<Verified>)> {
        let (s, _) = self.sessions.get(username)?;
        // A session lasts while its token would still verify: not expired, key still published.
        self.identities.still_valid(&s.verified).then(|| (s.token, Arc::clone(&s.verified)))
    }

    /// The hash of the token a username is bound to, for a decision key: from this thread's
    /// near cache of sessions while no later bind replaced the binding, else from the table
    /// (then checked to still verify). A near hit does not re-check the token: the decision
    /// found by the key does ([`Auth::with_cached`]), and a miss decides through
    /// [`Auth::session`], which checks it.
    pub fn session_token(&self, username: &str) -> Option<TokenHash> {
        let slot = near_slot(username.as_bytes(), NEAR_SESSION_SLOTS);
        NEAR_SESSIONS.with_borrow_mut(|near| {
            if near.is_empty() {
                near.resize_with(NEAR_SESSION_SLOTS, || None);
            }
            let entry = &mut near[slot];
            if let Some((owner, name, s)) = entry.as_ref()
                && *owner == self.id
                && **name == *username
                && s.current()
            {
                return Some(s.token);
            }
            let (s, _) =
                self.sessions.get(username).filter(|(s, _)| self.identities.still_valid(&s.verified))?;
            let token = s.token;
            if username.len() <= NEAR_USERNAME_MAX {
                *entry = Some((self.id, username.into(), s));
            }
            Some(token)
        })
    }

    /// Lets the caches drop what expired; returns how many sessions remain.
    pub fn sweep(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.decisions.run_pending_tasks();
        self.sessions.entry_count()
    }
}

/// The shared cache, as the authorizer looks decisions up in it (before any token is
/// verified: the key is all a hit needs).
pub struct SharedDecisions<'a>(pub &'a Auth);

impl authorizer::DecisionLookup for SharedDecisions<'_> {
    type Key = DecisionKey;
    type Entry = Arc<Decided>;

    fn decision(entry: &Arc<Decided>) -> &Decision {
        &entry.decision
    }

    fn with<R>(&mut self, key: &DecisionKey, found: impl FnOnce(&Arc<Decided>) -> R) -> Option<R> {
        self.0.with_cached(*key, found)
    }
}

/// The shared cache, remembering what the module decides for one verified identity.
pub struct DecisionsFor<'a> {
    pub auth: &'a Auth,
    pub verified: &'a Arc<Verified>,
    pub subject: &'a Arc<Subject>,
    /// The subject prepared for the generation, client id and username decided, if it is.
    pub prepared: Option<&'a Prepared>,
}

impl authorizer::DecisionLookup for DecisionsFor<'_> {
    type Key = DecisionKey;
    type Entry = Arc<Decided>;

    fn decision(entry: &Arc<Decided>) -> &Decision {
        &entry.decision
    }

    fn with<R>(&mut self, key: &DecisionKey, found: impl FnOnce(&Arc<Decided>) -> R) -> Option<R> {
        self.auth.with_cached(*key, found)
    }
}

impl authorizer::DecisionCache for DecisionsFor<'_> {
    fn put(&mut self, key: DecisionKey, decision: Decision) -> Arc<Decided> {
        self.auth.remember(key, decision, self.verified, self.subject)
    }

    fn unremembered(&mut self, decision: Decision) -> Arc<Decided> {
        Arc::new(Decided { decision, subject: Arc::clone(self.subject), verified: Arc::clone(self.verified) })
    }

    fn prepared(&self) -> Option<&Prepared> {
        self.prepared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_memo_gives_each_token_its_own_hash() {
        // Tokens that share their last bytes meet in one slot: each must still get its own
        // hash, whichever was remembered before it.
        let tokens: Vec<String> = (0..40).map(|i| format!("header.payload-{i}.same-signature")).collect();
        for round in 0..3 {
            for t in &tokens {
                assert_eq!(token_hash(t), identity::token_hash(t), "round {round}, token {t}");
            }
        }
        let long = "x".repeat(TOKEN_MEMO_MAX + 1);
        assert_eq!(token_hash(&long), identity::token_hash(&long));
    }

    fn identities() -> Arc<Identities> {
        let verifier = identity::Verifier::new(identity::VerifierConfig {
            source: identity::KeySource::None,
            issuer: None,
            audience: None,
            leeway: std::time::Duration::ZERO,
            extra_keys: vec![],
            hmac_secret: Some(b"a development secret".to_vec()),
            min_refresh: std::time::Duration::from_secs(10),
            authorized_parties: vec![],
            plain_http: Default::default(),
            trusted_ca_pem: None,
            refresh_every: identity::jwks::PERIODIC_REFRESH,
        })
        .unwrap();
        Arc::new(Identities::new(Arc::new(verifier), 1 << 20))
    }

    fn prepared_identity(exp: u64) -> Arc<PreparedIdentity> {
        Arc::new(PreparedIdentity {
            verified: Arc::new(Verified {
                claims: serde_json::json!({"sub": "u-vera"}),
                exp,
                key: None,
                bytes: 0,
            }),
            subject: Arc::new(Subject {
                id: "u-vera".into(),
                type_: policy_engine::SubjectType::User,
                groups: vec![],
                scopes: vec![],
            }),
            username: "vera".into(),
            prepared: None,
        })
    }

    #[test]
    fn a_prepared_identity_answers_only_its_own_key_and_only_while_its_token_verifies() {
        let ids = identities();
        let (auth, other) = (Auth::new(Arc::clone(&ids), 1 << 20), Auth::new(ids, 1 << 20));
        let token = identity::token_hash("token-a");
        auth.keep_prepared_identity(7, token, "dash-1", "vera", &prepared_identity(now() + 600));
        let found = |a: &Auth, generation, token: &TokenHash, clientid, username| {
            a.prepared_identity(generation, token, clientid, username).is_some()
        };
        assert!(found(&auth, 7, &token, "dash-1", "vera"));
        assert!(!found(&auth, 8, &token, "dash-1", "vera"), "another generation");
        assert!(!found(&auth, 7, &identity::token_hash("token-b"), "dash-1", "vera"), "another token");
        assert!(!found(&auth, 7, &token, "dash-2", "vera"), "another client id");
        assert!(!found(&auth, 7, &token, "dash-1", "olga"), "another username");
        assert!(!found(&auth, 7, &token, "dash-1", ""), "no username");
        assert!(!found(&other, 7, &token, "dash-1", "vera"), "another service's");
        // Expired: not an answer, though the slot still holds it.
        auth.keep_prepared_identity(7, token, "dash-1", "vera", &prepared_identity(now() - 1));
        assert!(!found(&auth, 7, &token, "dash-1", "vera"));
        // Too large to keep near: not kept (the slot keeps what it had).
        auth.keep_prepared_identity(7, token, "dash-1", "vera", &prepared_identity(now() + 600));
        let long = "c".repeat(NEAR_IDENTITY_MAX);
        auth.keep_prepared_identity(7, token, &long, "vera", &prepared_identity(now() + 600));
        assert!(!found(&auth, 7, &token, &long, "vera"));
    }
}
