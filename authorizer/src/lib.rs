//! The one authorizer both front ends call: the HTTP service for mosquitto-go-auth (`host`)
//! and the Mosquitto plugin (`mosquitto-plugin`). A front end only translates its wire format
//! (go-auth's HTTP calls, Mosquitto's events) into these calls and back; what follows is
//! decided here, once:
//!
//! - [`config`]: the configuration both read, defined once per concern, validated before
//!   anything starts.
//! - admission: where a client's token is among its credentials
//!   ([`identity::token_in`]), and which MQTT username is proven to stand for its subject
//!   ([`Authorizer::proven_username`]: it names the subject and is not a certificate name).
//! - deciding: [`Authorizer::check`] through a [`DecisionCache`] each front end implements
//!   (the service's shared cache, the plugin's per-connection one); a module fault denies and
//!   is never remembered. [`Authorizer::superuser`].
//! - [`record`]: the one decision record both log (a JSON line; never a token).
//! - [`metrics`]: the one set of decision metrics and the one latency histogram.
//!
//! Not here: the wire formats, sessions (the service's), connections (the plugin's), how
//! modules run (`policy-engine`), how tokens verify (`identity`), what a decision means
//! (`policy-core`, inside the module).

pub mod config;
pub mod metrics;
pub mod record;

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use identity::{Identities, Verified, names_subject};
use policy_engine::{
    Action, Decision, Fault, Generation, Live, Prepared, Request, Subject, SubjectError, SubjectType,
};

pub use config::{ConfigError, KeysConfig, PolicyConfig, Spelling};
pub use metrics::DecisionMetrics;
pub use record::DecisionRecord;

/// An action's name, as records, metrics and messages say it.
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Subscribe => "subscribe",
        Action::Read => "read",
        Action::Publish => "publish",
    }
}

/// How a front end finds the decisions it remembers. The service keeps one cache for every
/// client, found by a digest of the generation, the token, the action, the topic, the client
/// id and the username (a hit needs no token verified); the plugin keeps one per connection
/// and generation, found by action and topic.
pub trait DecisionLookup {
    /// Whether this is a cache at all: lookups in one that is not are not counted in
    /// `mqtt_policy_decision_cache_total`.
    const REMEMBERS: bool = true;
    /// What a decision is found by.
    type Key;
    /// What is remembered: a decision, with whatever the front end keeps beside it.
    type Entry;
    /// The decision in an entry.
    fn decision(entry: &Self::Entry) -> &Decision;
    /// `found` of the entry remembered for `key`, if there is one (lent, not cloned: a hit
    /// need not touch a reference count other threads share).
    fn with<R>(&mut self, key: &Self::Key, found: impl FnOnce(&Self::Entry) -> R) -> Option<R>;
}

/// How a front end remembers a decision the module made.
pub trait DecisionCache: DecisionLookup {
    /// Remembers a decision; returns its entry.
    fn put(&mut self, key: Self::Key, decision: Decision) -> Self::Entry;
    /// An entry for a decision that is not remembered (a module fault's denial).
    fn unremembered(&mut self, decision: Decision) -> Self::Entry;
    /// The subject of these checks prepared for the generation, when the front end keeps one
    /// (a broker connection does: [`Generation::prepare`]); it spares each decision the work
    /// of finding what the policy says about the subject.
    fn prepared(&self) -> Option<&Prepared> {
        None
    }
}

/// A check the cache did not answer, for [`Authorizer::decide`] (or, when the front end
/// denies it before asking the policy, [`Authorizer::refused`]).
#[must_use]
pub struct Pending {
    action: Action,
    /// This check is one of the timed sample.
    timed: bool,
}

/// Why a username may not stand for a token's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsernameRefused {
    /// It is a certificate name (the policy's `certificates` section): never a token's.
    CertificateName,
    /// It is neither the subject's id nor the value of a configured username claim.
    NotTheSubjects,
    /// The module could not say whether it is a certificate name.
    Fault(Fault),
}

thread_local! {
    /// Checks this thread has looked up: which ones are timed.
    static CHECKS: Cell<u64> = const { Cell::new(0) };
}

/// The engine and the identities, with the rules both front ends share.
pub struct Authorizer {
    pub live: Arc<Live>,
    pub identities: Arc<Identities>,
    pub metrics: Arc<DecisionMetrics>,
    username_claims: Vec<String>,
    certificates: Option<SubjectType>,
    /// Which names are certificate names under which generation, and their subjects.
    certificate_names: moka::sync::Cache<(u64, Box<str>), Option<Arc<Subject>>>,
}

/// Bytes of names remembered as certificate names or not (a flood of long unique usernames
/// evicts, it does not grow the process).
const CERTIFICATE_NAMES_BYTES: u64 = 4 << 20;

impl Authorizer {
    pub fn new(live: Arc<Live>, identities: Arc<Identities>, keys: &KeysConfig) -> Authorizer {
        Authorizer {
            live,
            identities,
            metrics: Arc::new(DecisionMetrics::default()),
            username_claims: keys.username_claims(),
            certificates: keys.certificate_subject_type(),
            certificate_names: moka::sync::Cache::builder()
                .max_capacity(CERTIFICATE_NAMES_BYTES)
                .weigher(|(_, name): &(u64, Box<str>), named: &Option<Arc<Subject>>| {
                    let subject = named.as_ref().map_or(0, |s| s.id.len() + 64);
                    u32::try_from(name.len() + subject + 64).unwrap_or(u32::MAX)
                })
                .build(),
        }
    }

    /// Clients known by their certificate are decided as subjects of this type, if at all.
    pub fn certificate_subject_type(&self) -> Option<SubjectType> {
        self.certificates
    }

    /// The subject of a certificate name under `generation`: `Ok(None)` when it is no
    /// certificate name (or certificate clients are not decided), `Err` when the module
    /// could not say (a fault, never remembered). Remembered per generation: the service asks
    /// it of every call without a token.
    pub fn certificate_subject(
        &self,
        generation: &Generation,
        name: &str,
    ) -> Result<Option<Arc<Subject>>, Fault> {
        let Some(kind) = self.certificates else { return Ok(None) };
        let key = (generation.id, Box::<str>::from(name));
        if let Some(known) = self.certificate_names.get(&key) {
            return Ok(known);
        }
        let named = match generation.certificate_subject(name, kind) {
            Ok(subject) => Some(Arc::new(subject)),
            Err(SubjectError::Refused(_)) => None,
            Err(SubjectError::Fault(fault)) => return Err(fault),
        };
        self.certificate_names.insert(key, named.clone());
        Ok(named)
    }

    /// May `username` stand for the token's subject under `generation` (an http-backend
    /// session bound to it, `${username}` filled with it)? Only when it names the subject
    /// (its id or one of the configured claims) and is not a certificate name: the two
    /// namespaces stay apart. A module that cannot say whether it is a certificate name (a
    /// fault) leaves it unproven.
    pub fn username_stands_for(
        &self,
        generation: &Generation,
        username: &str,
        subject: &Subject,
        verified: &Verified,
    ) -> Result<(), UsernameRefused> {
        match self.certificate_subject(generation, username) {
            Ok(Some(_)) => return Err(UsernameRefused::CertificateName),
            Err(fault) => return Err(UsernameRefused::Fault(fault)),
            Ok(None) => {}
        }
        if names_subject(username, subject, &verified.claims, &self.username_claims) {
            Ok(())
        } else {
            Err(UsernameRefused::NotTheSubjects)
        }
    }

    /// `${username}` for a token's subject: `given` when it may stand for the subject
    /// ([`Authorizer::username_stands_for`]), otherwise empty, so a name can never be borrowed.
    pub fn proven_username<'a>(
        &self,
        generation: &Generation,
        given: &'a str,
        subject: &Subject,
        verified: &Verified,
    ) -> &'a str {
        match self.username_stands_for(generation, given, subject, verified) {
            Ok(()) => given,
            Err(_) => "",
        }
    }

    /// The usernames that name a subject, for telling a user how to connect.
    pub fn subject_names(&self, subject: &Subject, verified: &Verified) -> Vec<String> {
        identity::subject_names(subject, &verified.claims, &self.username_claims)
    }

    /// A publish or read that the prepared subject's residual allows at once (exactly as a
    /// decision would: no cache needed, nothing formatted), for the client id and username
    /// the subject was prepared with, counted and timed as a decision; the rule that allows
    /// it ([`Generation::allowed_by`] makes its decision for a record). `None`: look it up and
    /// decide it ([`Authorizer::check`]).
    pub fn allowed_as_prepared(
        &self,
        generation: &Generation,
        prepared: &Prepared,
        action: Action,
        topic: &str,
    ) -> Option<usize> {
        if action == Action::Subscribe {
            return None;
        }
        // The sample is drawn only for checks answered here; the others are drawn by the
        // lookup that follows.
        let started = CHECKS.with(|n| n.get() % metrics::SAMPLE == 0).then(Instant::now);
        let rule = generation.allowed_as_prepared(prepared, action, topic)?;
        CHECKS.with(|n| n.set(n.get().wrapping_add(1)));
        if let Some(t) = started {
            self.metrics.check_took(t.elapsed());
        }
        self.metrics.decided(action, true, None);
        Some(rule)
    }

    /// Looks a check up in the front end's cache: a hit is counted as a decision (and timed,
    /// for a sample of checks) and handed to `on_hit`; a miss is a [`Pending`] check for
    /// [`Authorizer::decide`] (or [`Authorizer::refused`]).
    ///
    /// What is timed is the same in both front ends: the lookup of a hit, the module call of
    /// a miss; never the front end's own work (verifying a token, a session store, logging).
    pub fn lookup<C: DecisionLookup, R>(
        &self,
        action: Action,
        key: &C::Key,
        cache: &mut C,
        on_hit: impl FnOnce(&C::Entry) -> R,
    ) -> Result<R, Pending> {
        let timed = next_is_timed();
        let started = timed.then(Instant::now);
        let hit = cache.with(key, |entry| {
            if let Some(t) = started {
                self.metrics.check_took(t.elapsed());
            }
            self.metrics.decided(action, C::decision(entry).allow, Some(true));
            on_hit(entry)
        });
        hit.ok_or(Pending { action, timed })
    }

    /// Decides a check the cache did not answer, through the module, and remembers the
    /// decision under `key`. A module fault denies this request, saying so, and is never
    /// remembered.
    pub fn decide<C: DecisionCache>(
        &self,
        pending: Pending,
        generation: &Generation,
        request: &Request,
        key: C::Key,
        cache: &mut C,
    ) -> C::Entry {
        let started = pending.timed.then(Instant::now);
        let entry = match generation.try_check_prepared(cache.prepared(), request) {
            Ok(d) => cache.put(key, d),
            Err(fault) => cache.unremembered(Decision { allow: false, rule: None, reason: fault.0 }),
        };
        if let Some(t) = started {
            self.metrics.check_took(t.elapsed());
        }
        self.metrics.decided(pending.action, C::decision(&entry).allow, C::REMEMBERS.then_some(false));
        entry
    }

    /// A check the cache did not answer that the front end denies before asking the policy
    /// (no identity could be found for it): counted as a denial, not as a cache lookup.
    pub fn refused(&self, pending: Pending) {
        self.metrics.decided(pending.action, false, None);
    }

    /// [`Authorizer::lookup`], then on a miss [`Authorizer::decide`], for a front end that
    /// has the request at hand before it looks: `then` gets the decision's entry, and whether
    /// the cache held it (it is called once).
    pub fn check<C: DecisionCache, R>(
        &self,
        generation: &Generation,
        request: &Request,
        key: C::Key,
        cache: &mut C,
        mut then: impl FnMut(&C::Entry, bool) -> R,
    ) -> R {
        match self.lookup(request.action, &key, cache, |entry| then(entry, true)) {
            Ok(r) => r,
            Err(pending) => {
                let entry = self.decide(pending, generation, request, key, cache);
                then(&entry, false)
            }
        }
    }

    /// A subscription to `filter` was granted to `subject`: when the filter has a wildcard it
    /// is watched (counted in `mqtt_policy_wildcard_subscriptions_total`), and the front end
    /// records it as such ([`DecisionRecord::watched`]) whatever level it records allows at.
    pub fn watch_subscription(&self, subject: &Subject, filter: &str) -> bool {
        if !has_wildcard(filter) {
            return false;
        }
        self.metrics.wildcard_granted(subject);
        true
    }

    /// Is `subject` a superuser under `generation` (a module fault: no, saying so)?
    pub fn superuser(&self, generation: &Generation, subject: &Subject) -> Decision {
        generation.superuser(subject)
    }
}

/// Whether a subscription filter has a wildcard level (`+` or `#`), a shared subscription's
/// `$share/<group>/` aside.
pub fn has_wildcard(filter: &str) -> bool {
    let filter = match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((_group, shared)) => shared,
        None => filter,
    };
    filter.split('/').any(|level| level == "+" || level == "#")
}

/// Whether the next check of this thread is one of the timed sample.
fn next_is_timed() -> bool {
    CHECKS.with(|n| {
        let seen = n.get();
        n.set(seen.wrapping_add(1));
        seen % metrics::SAMPLE == 0
    })
}

/// No remembering: every check asks the module (the CLI, tests).
pub struct NoCache;

impl DecisionLookup for NoCache {
    const REMEMBERS: bool = false;
    type Key = ();
    type Entry = Decision;
    fn decision(entry: &Decision) -> &Decision {
        entry
    }
    fn with<R>(&mut self, _: &(), _: impl FnOnce(&Decision) -> R) -> Option<R> {
        None
    }
}

impl DecisionCache for NoCache {
    fn put(&mut self, _: (), decision: Decision) -> Decision {
        decision
    }
    fn unremembered(&mut self, decision: Decision) -> Decision {
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::has_wildcard;

    #[test]
    fn a_wildcard_is_a_whole_level_of_the_filter_itself() {
        for (filter, wild) in [
            ("celine/telemetry/+/+/readings", true),
            ("#", true),
            ("celine/#", true),
            ("celine/telemetry/meter/m1/readings", false),
            ("a+b/c#", false),
            ("$share/group/celine/#", true),
            ("$share/group/celine/x", false),
            ("$share/+/celine/x", false),
        ] {
            assert_eq!(has_wildcard(filter), wild, "{filter}");
        }
    }
}
