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
use policy_engine::{Action, Decision, Generation, Live, Request, Subject, SubjectType};

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

/// Decisions a front end remembers, and how it finds them: for a request under a generation
/// (its subject, client id and proven username are the request's; the front end's own key
/// may add what it knows, such as the token).
pub trait DecisionCache {
    fn get(&mut self, generation: u64, request: &Request) -> Option<Arc<Decision>>;
    fn put(&mut self, generation: u64, request: &Request, decision: &Arc<Decision>);
}

/// A decision, and where it came from.
pub struct Decided {
    pub decision: Arc<Decision>,
    /// Found in the front end's cache.
    pub cached: bool,
}

thread_local! {
    /// Checks this thread has decided: which ones are timed.
    static CHECKS: Cell<u64> = const { Cell::new(0) };
}

/// The engine and the identities, with the rules both front ends share.
pub struct Authorizer {
    pub live: Arc<Live>,
    pub identities: Arc<Identities>,
    pub metrics: Arc<DecisionMetrics>,
    username_claims: Vec<String>,
    certificates: Option<SubjectType>,
}

impl Authorizer {
    pub fn new(live: Arc<Live>, identities: Arc<Identities>, keys: &KeysConfig) -> Authorizer {
        Authorizer {
            live,
            identities,
            metrics: Arc::new(DecisionMetrics::default()),
            username_claims: keys.username_claims(),
            certificates: keys.certificate_subject_type(),
        }
    }

    /// Clients known by their certificate are decided as subjects of this type, if at all.
    pub fn certificate_subject_type(&self) -> Option<SubjectType> {
        self.certificates
    }

    /// The subject of a certificate name under `generation`: `Ok(None)` when it is no
    /// certificate name (or certificate clients are not decided), `Err` when the module
    /// could not say (a fault).
    pub fn certificate_subject(
        &self,
        generation: &Generation,
        name: &str,
    ) -> Result<Option<Subject>, String> {
        let Some(kind) = self.certificates else { return Ok(None) };
        Ok(generation.certificate_subject(name, kind)?.ok())
    }

    /// `${username}` for a token's subject: `given` when it names the subject (its id or one
    /// of the configured claims) and is not a certificate name; otherwise empty, so a name can
    /// never be borrowed. A module that cannot say whether it is a certificate name (a fault)
    /// leaves it unproven.
    pub fn proven_username<'a>(
        &self,
        generation: &Generation,
        given: &'a str,
        subject: &Subject,
        verified: &Verified,
    ) -> &'a str {
        let named = names_subject(given, subject, &verified.claims, &self.username_claims);
        if named && matches!(self.certificate_subject(generation, given), Ok(None)) { given } else { "" }
    }

    /// The usernames that name a subject, for telling a user how to connect.
    pub fn subject_names(&self, subject: &Subject, verified: &Verified) -> Vec<String> {
        identity::subject_names(subject, &verified.claims, &self.username_claims)
    }

    /// Does `username` name the subject (before the certificate namespace is considered)?
    pub fn names_subject(&self, username: &str, subject: &Subject, verified: &Verified) -> bool {
        names_subject(username, subject, &verified.claims, &self.username_claims)
    }

    /// Decides `request` under `generation`: from `cache` when it holds the answer, else
    /// through the module (and then remembered). A module fault denies this request, saying
    /// so, and is not remembered. Counted in [`Authorizer::metrics`].
    pub fn check(
        &self,
        generation: &Generation,
        request: &Request,
        cache: &mut impl DecisionCache,
    ) -> Decided {
        let started = CHECKS.with(|n| {
            let seen = n.get();
            n.set(seen.wrapping_add(1));
            (seen % metrics::SAMPLE == 0).then(Instant::now)
        });
        let decided = match cache.get(generation.id, request) {
            Some(decision) => Decided { decision, cached: true },
            None => {
                let decision = match generation.try_check(request) {
                    Ok(d) => {
                        let d = Arc::new(d);
                        cache.put(generation.id, request, &d);
                        d
                    }
                    Err(fault) => Arc::new(Decision { allow: false, rule: None, reason: fault }),
                };
                Decided { decision, cached: false }
            }
        };
        self.metrics.decided(request.action, decided.decision.allow, decided.cached);
        if let Some(t) = started {
            self.metrics.check_took(t.elapsed());
        }
        decided
    }

    /// Is `subject` a superuser under `generation` (a module fault: no, saying so)?
    pub fn superuser(&self, generation: &Generation, subject: &Subject) -> Decision {
        generation.superuser(subject)
    }
}

/// No remembering: every check asks the module (tests, and callers that cache otherwise).
pub struct NoCache;

impl DecisionCache for NoCache {
    fn get(&mut self, _: u64, _: &Request) -> Option<Arc<Decision>> {
        None
    }
    fn put(&mut self, _: u64, _: &Request, _: &Arc<Decision>) {}
}
