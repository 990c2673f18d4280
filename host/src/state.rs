//! What every request of `mqtt-policy serve` shares: [`AppState`] (the authorizer, the
//! decision cache and sessions, audit, secrets), and how it is built from a
//! [`ServeConfig`]. Imports no handler: the endpoints depend on it, never the reverse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::http::header;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use sha2::{Digest, Sha256};

use authorizer::{Authorizer, KeysConfig, PolicyConfig, Spelling};
use identity::devkey::DevKey;
use identity::{Identities, Verifier};
use policy_engine::{Generation, Live, Reloader, Runtime, Source};

use crate::auth::Auth;
use crate::logqueue::QueueWriter;
use crate::respond::ResponseMode;

/// The largest request body go-auth could need, with room to spare.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything a request needs.
pub struct AppState {
    /// The engine, the identities, and the rules the service shares with the plugin.
    pub authorizer: Authorizer,
    /// Reloads from watched files and `SIGHUP`, on its own thread.
    pub reloader: Reloader,
    /// The shared decision cache and the http-backend sessions.
    pub auth: Auth,
    pub response_mode: ResponseMode,
    pub prometheus: PrometheusHandle,
    pub dev_jwks: Option<serde_json::Value>,
    pub started: SystemTime,
    /// SHA-256 of the admin token, when the admin endpoints are on.
    pub admin_token: Option<[u8; 32]>,
    /// Where audit lines go (and the log queue's count of dropped lines).
    pub audit: crate::audit::Audit,
    /// SHA-256 of the bundle token, when `GET /bundle` is on.
    pub bundle_token: Option<[u8; 32]>,
    /// What pulling `--policy-url` did last, when it is pulled.
    pub pull: Option<Arc<std::sync::Mutex<policy_engine::pull::PullStatus>>>,
    /// Shared http-backend sessions (`--sessions redis://...`); `None`: this process only.
    pub sessions: Option<Arc<crate::sessions::RedisSessions>>,
    /// Signs what `GET /bundle` serves, when given.
    pub bundle_signing_key: Option<policy_engine::bundle::SigningKey>,
    /// The last generation [`AppState::generation`] looked at for conditions and limits
    /// go-auth cannot serve (0: none yet).
    pub unseen_warned: std::sync::atomic::AtomicU64,
}

impl AppState {
    /// The live policy engine.
    pub fn live(&self) -> &Arc<Live> {
        &self.authorizer.live
    }

    /// The live generation (module + policy). Requests take it once and finish on it.
    pub fn generation(&self) -> Arc<Generation> {
        let generation = self.authorizer.live.current();
        if self.unseen_warned.load(std::sync::atomic::Ordering::Relaxed) != generation.id {
            self.warn_unseen(&generation);
        }
        generation
    }

    /// Once per generation that goes live (whichever way it came), what go-auth does not let
    /// this service see: it sends no QoS and no retain flag, so rules that read them decide
    /// as semantics.md §3 says for an unknown message, and the operator is told which rules
    /// those are; and the policy's limits need the traffic, which go-auth does not show.
    fn warn_unseen(&self, generation: &Generation) {
        let previous = self.unseen_warned.swap(generation.id, std::sync::atomic::Ordering::Relaxed);
        if previous == generation.id {
            return;
        }
        if generation.has_limits() {
            tracing::warn!(
                generation = generation.id,
                "the policy's limits are not applied to go-auth requests: go-auth tells this service \
                 no payload size, no retain flag and no unsubscribe, and answers repeated checks from \
                 its own cache, so rates and subscription counts cannot be counted here; the broker \
                 plugin enforces them (docs/http-service.md)"
            );
        }
        if !generation.reads_message() {
            return;
        }
        let rules = match generation.message_rules() {
            Some(rules) => format!("the rules {}", rules.join(", ")),
            None => String::from("the module (not the built-in one), which may read them"),
        };
        tracing::warn!(
            generation = generation.id,
            "go-auth sends no QoS and no retain flag: {rules} see the message as unknown, so a deny \
             among them applies to every go-auth request it otherwise covers and an allow among them \
             grants nothing through go-auth (but a subscription, for a retain condition: \
             docs/semantics.md §3); the broker plugin sees both"
        );
    }

    /// The live generation's status, what pulling bundles did last (`bundle_pull`), and the
    /// shared session store (`sessions`).
    pub fn status(&self) -> serde_json::Value {
        let mut s = self.authorizer.live.status();
        if let Some(p) = &self.pull {
            s["bundle_pull"] = p.lock().unwrap().json();
        }
        s["sessions"] = match &self.sessions {
            Some(r) => r.status(),
            None => json!({"backend": "memory"}),
        };
        s
    }
}

/// What `serve` was asked to do, checked (flags and `MQTT_POLICY_*` variables, see
/// `cli/serve.rs`).
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// How tokens are verified (shared with the plugin).
    pub keys: KeysConfig,
    /// Where the policy comes from (shared with the plugin).
    pub policy: PolicyConfig,
    pub response_mode: ResponseMode,
    pub dev: bool,
    pub state_dir: PathBuf,
    /// Development only: HS256/384/512 tokens signed with this secret are accepted too.
    pub hmac_secret: Option<Vec<u8>>,
    /// Turns the admin endpoints on (at least 16 characters).
    pub admin_token: Option<String>,
    /// Where `/readyz`, `/metrics`, the admin endpoints and the playground are served.
    pub ops_listen: SocketAddr,
    /// TLS for the broker-facing listener: the certificate chain and key, read.
    pub tls: Option<Arc<crate::tls::Certificates>>,
    /// Serve the browser playground at `/playground/`.
    pub playground: bool,
    /// Bytes all caches and the session table may take together.
    pub cache_memory: u64,
    /// Bytes the queue of log lines may take.
    pub log_budget: u64,
    /// Log lines are JSON (`--log-format json`): audit lines follow.
    pub log_json: bool,
    /// Serves `GET /bundle` with it, and sends it when pulling (at least 16 characters).
    pub bundle_token: Option<String>,
    /// Shared http-backend sessions (`--sessions redis://...`), not yet connected.
    pub sessions: Option<Arc<crate::sessions::RedisSessions>>,
    /// Which pulled bundles are taken (with `--policy-url`).
    pub bundle_trust: Option<policy_engine::pull::Trust>,
    /// Signs what `GET /bundle` serves.
    pub bundle_signing_key: Option<policy_engine::bundle::SigningKey>,
    /// Old flag spellings that were used, to warn about at start.
    pub deprecations: Vec<String>,
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")
}

/// Builds the state: module, policy, keys. Errors here stop start-up with a clear message.
pub async fn build_state(cfg: &ServeConfig, log: QueueWriter) -> anyhow::Result<Arc<AppState>> {
    for d in &cfg.deprecations {
        tracing::warn!("{d}");
    }
    // First: metric handles registered before the recorder exists would be no-ops.
    let prometheus = install_metrics()?;
    // The state directory holds the compiled-module cache (and in dev mode the dev key). A
    // read-only or unusable one costs the cache, not the service: modules are compiled at
    // each start instead.
    let cache_dir = match std::fs::create_dir_all(&cfg.state_dir) {
        Ok(()) => Some(cfg.state_dir.join("cache")),
        Err(e) if !cfg.dev => {
            tracing::warn!(
                state_dir = %cfg.state_dir.display(),
                error = %e,
                "the state directory cannot be created: compiled modules are not cached (each start compiles them)"
            );
            None
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "creating the state directory {} (dev mode keeps its key there)",
                    cfg.state_dir.display()
                )
            });
        }
    };
    let usable_state = cache_dir.is_some();
    let runtime = Runtime::new(cache_dir)?;
    // Uploads (and pulled bundles) are kept in the state directory and restored at start,
    // unless a file is named explicitly.
    let kept = cfg.state_dir.join("live");
    let mut notes = Vec::new();
    let mut choose = |named: &Option<PathBuf>, name: &str, what: &str, fallback: Source| match (
        named,
        usable_state.then(|| Live::kept(&kept, name)).flatten(),
    ) {
        (Some(p), Some(k)) => {
            notes.push(format!(
                "the {what} named on the command line ({}) wins over the upload kept in {}",
                p.display(),
                k.display()
            ));
            Source::File(p.clone())
        }
        (Some(p), None) => Source::File(p.clone()),
        (None, Some(k)) => {
            notes.push(format!(
                "the {what} was restored from the last upload or bundle, kept in {}",
                k.display()
            ));
            Source::Restored(k)
        }
        (None, None) => fallback,
    };
    let module_source = choose(&cfg.policy.module, policy_engine::KEPT_MODULE, "module", Source::BuiltIn);
    let default_policy = Path::new(crate::policy_file::DEFAULT_POLICY);
    let default_policy =
        if default_policy.exists() { Source::File(default_policy.to_path_buf()) } else { Source::BuiltIn };
    let policy_source = choose(&cfg.policy.policy, policy_engine::KEPT_POLICY, "policy", default_policy);
    // The default policy's own test cases guard it; a policy named explicitly is guarded by
    // the cases named explicitly (--tests).
    let tests = crate::policy_file::tests_for(cfg.policy.tests.as_deref(), cfg.policy.policy.as_deref());
    let live = Live::start(runtime, module_source, policy_source, tests)?;
    for n in notes {
        tracing::warn!("{n}");
        live.note(n);
    }
    if usable_state {
        live.keep_uploads_in(kept);
    }
    let reloader = Reloader::start(Arc::clone(&live), policy_engine::reload::Watch::Notify)
        .context("watching the module and policy files")?;

    let dev_key = if cfg.dev { Some(DevKey::load_or_create(&cfg.state_dir)?) } else { None };
    let mut config = cfg.keys.verifier_config(dev_key.as_ref())?;
    if cfg.hmac_secret.is_some() {
        tracing::warn!("HMAC tokens are accepted (--hmac-secret-file): for development only");
        config.hmac_secret = cfg.hmac_secret.clone();
    }
    let dev_jwks = dev_key.as_ref().map(|k| k.jwk().map(|j| json!({"keys": [j]}))).transpose()?;
    for w in cfg.keys.warnings(&config, cfg.dev, Spelling::Flag) {
        tracing::warn!("{w}");
    }
    for w in cfg.policy.warnings(Spelling::Flag) {
        tracing::warn!("{w}");
    }
    let verifier = Arc::new(Verifier::new(config)?);
    match verifier.refresh().await {
        Ok(n) => tracing::info!(keys = n, "signing keys loaded"),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "could not load signing keys; /readyz reports it, retrying on demand")
        }
    }
    verifier.spawn_refresher();

    let g = live.current();
    tracing::info!(
        module_hash = %&g.module.hash[..16], module_version = %g.module.version,
        rules = g.rule_count, generation = g.id, status = %live.status(), checks_decided = g.deciding(),
        "policy loaded"
    );
    // A quarter for verified tokens and subjects, the rest for decisions and sessions.
    let identities = Arc::new(Identities::new(verifier, cfg.cache_memory / 4));
    if let Some(store) = &cfg.sessions {
        store.spawn_checker();
    }
    let auth = Auth::new(Arc::clone(&identities), cfg.cache_memory / 4 * 3);
    // A swap reports which bound sessions its changes reach (under the new generation).
    let sessions = auth.identity_lister();
    live.list_identities_with(Box::new(sessions));
    Ok(Arc::new(AppState {
        authorizer: Authorizer::new(live, Arc::clone(&identities), &cfg.keys),
        reloader,
        auth,
        response_mode: cfg.response_mode,
        prometheus,
        dev_jwks,
        started: SystemTime::now(),
        admin_token: cfg.admin_token.as_deref().map(token_digest),
        audit: crate::audit::Audit::new(log, cfg.log_json),
        bundle_token: cfg.bundle_token.as_deref().map(token_digest),
        pull: cfg.policy.policy_url.as_ref().map(|_| Default::default()),
        bundle_signing_key: cfg.bundle_signing_key.clone(),
        unseen_warned: std::sync::atomic::AtomicU64::new(0),
        sessions: cfg.sessions.clone(),
    }))
}

pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

/// Whether the request's `Authorization: Bearer` token is the one whose digest is `want`.
/// Digests are compared: equal-length values, and nothing learnt about the token from timing.
/// (The admin and bundle tokens are kept as digests.)
pub fn bearer_is(headers: &axum::http::HeaderMap, want: &[u8; 32]) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(token_digest)
        .is_some_and(|given| given == *want)
}
