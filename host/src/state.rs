//! What every request of `mqtt-policy serve` shares: [`AppState`] (the live policy, the
//! identities and caches, sessions, audit, secrets), and how it is built from a
//! [`ServeConfig`]. Imports no handler: the endpoints depend on it, never the reverse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use axum::http::header;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;
use sha2::{Digest, Sha256};

use identity::devkey::{DEV_ISSUER, DevKey};
use identity::{Identities, KeySource, Verifier, VerifierConfig};
use policy_engine::{Generation, Live, Reloader, Runtime, Source};

use crate::auth::Auth;
use crate::respond::ResponseMode;

/// The largest request body go-auth could need, with room to spare.
pub const BODY_LIMIT: usize = 64 * 1024;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Names remembered as certificate names or not (with `--certificate-subject-type`).
const CERTIFICATE_NAMES: u64 = 10_000;

/// Everything a request needs.
pub struct AppState {
    pub live: Arc<Live>,
    /// Reloads from watched files and `SIGHUP`, on its own thread.
    pub reloader: Reloader,
    pub auth: Auth,
    pub response_mode: ResponseMode,
    /// Claims whose value, besides the subject id, may be a client's MQTT username.
    pub username_claims: Vec<String>,
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
    /// Clients known by their certificate are decided as subjects of this type (names in
    /// the policy's certificates section); `None`: they are denied.
    pub certificate_subject_type: Option<policy_engine::SubjectType>,
    /// Which names are certificate names under which generation, and their subjects: asked
    /// of every token-less call (every http-backend ACL call), so remembered.
    pub certificate_names: moka::sync::Cache<(u64, Box<str>), Option<Arc<policy_engine::Subject>>>,
}

impl AppState {
    /// The live generation (module + policy). Requests take it once and finish on it.
    pub fn generation(&self) -> Arc<Generation> {
        self.live.current()
    }

    /// The live generation's status, what pulling bundles did last (`bundle_pull`), and the
    /// shared session store (`sessions`).
    pub fn status(&self) -> serde_json::Value {
        let mut s = self.live.status();
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

/// What `serve` was asked to do (flags and `MQTT_POLICY_*` variables, see `cli/serve.rs`).
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub policy: Option<PathBuf>,
    pub module: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub leeway: Duration,
    pub response_mode: ResponseMode,
    pub dev: bool,
    pub state_dir: PathBuf,
    pub hmac_secret_file: Option<PathBuf>,
    pub jwks_min_refresh: Duration,
    /// The key set is re-read this often: the bound on trusting a withdrawn key.
    pub jwks_refresh: Duration,
    /// When not empty, tokens must have been issued to one of these clients (`azp`).
    pub authorized_parties: Vec<String>,
    /// Policy test cases every candidate must pass.
    pub tests: Option<PathBuf>,
    /// Turns the admin endpoints on.
    pub admin_token: Option<String>,
    /// Where `/readyz`, `/metrics`, the admin endpoints and the playground are served.
    pub ops_listen: SocketAddr,
    /// TLS for the broker-facing listener: a PEM certificate chain and its key.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Serve the browser playground at `/playground/`.
    pub playground: bool,
    /// Claims whose value, besides the subject id, may be a client's MQTT username.
    pub username_claims: Vec<String>,
    /// Bytes all caches and the session table may take together.
    pub cache_memory: u64,
    /// The queue log lines go through.
    pub log: crate::logqueue::QueueWriter,
    /// Log lines are JSON (`--log-format json`): audit lines follow.
    pub log_json: bool,
    /// Pull bundles from here (`--policy-url`) every `policy_poll`.
    pub policy_url: Option<String>,
    pub policy_poll: Duration,
    /// Serves `GET /bundle` with it, and sends it when pulling.
    pub bundle_token: Option<String>,
    /// `redis://...`: keep http-backend sessions there (shared by replicas).
    pub sessions: Option<String>,
    /// Fetch key sets and discovery over plain `http://` from any host.
    pub private_network_http: bool,
    /// Which pulled bundles are taken (with `policy_url`).
    pub bundle_trust: Option<policy_engine::pull::Trust>,
    /// Signs what `GET /bundle` serves.
    pub bundle_signing_key: Option<policy_engine::bundle::SigningKey>,
    /// Decide clients known by their certificate as subjects of this type.
    pub certificate_subject_type: Option<policy_engine::SubjectType>,
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new().install_recorder().context("installing the metrics recorder")
}

/// Builds the state: module, policy, keys. Errors here stop start-up with a clear message.
pub async fn build_state(cfg: &ServeConfig) -> anyhow::Result<Arc<AppState>> {
    if cfg.jwks_file.is_none()
        && cfg.jwks_url.is_none()
        && cfg.issuer.is_none()
        && !cfg.dev
        && cfg.hmac_secret_file.is_none()
    {
        bail!("no way to verify tokens: give --issuer (OIDC discovery), --jwks-url, --jwks-file, or --dev");
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
    if cfg.policy_url.is_some() && (cfg.policy.is_some() || cfg.module.is_some()) {
        bail!("--policy-url brings the policy and the module: do not also name --policy or --module");
    }
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
    let module_source = choose(&cfg.module, policy_engine::KEPT_MODULE, "module", Source::BuiltIn);
    let default_policy = Path::new(crate::policy_file::DEFAULT_POLICY);
    let default_policy =
        if default_policy.exists() { Source::File(default_policy.to_path_buf()) } else { Source::BuiltIn };
    let policy_source = choose(&cfg.policy, policy_engine::KEPT_POLICY, "policy", default_policy);
    // The default policy's own test cases guard it; a policy named explicitly is guarded by
    // the cases named explicitly (--tests).
    let tests = crate::policy_file::tests_for(cfg.tests.as_deref(), cfg.policy.as_deref());
    let live = Live::start(runtime, module_source, policy_source, tests)?;
    for n in notes {
        tracing::warn!("{n}");
        live.note(n);
    }
    if usable_state {
        live.keep_uploads_in(kept);
    }
    let reloader =
        Reloader::start(Arc::clone(&live), true).context("watching the module and policy files")?;

    let dev_key = if cfg.dev { Some(DevKey::load_or_create(&cfg.state_dir)?) } else { None };
    let source = match (&cfg.jwks_file, &cfg.jwks_url, &cfg.issuer) {
        (Some(f), _, _) => KeySource::File(f.clone()),
        (None, Some(u), _) => KeySource::Url(u.clone()),
        (None, None, Some(iss)) if !cfg.dev => KeySource::Discovery(iss.clone()),
        _ => KeySource::None,
    };
    let hmac_secret = match &cfg.hmac_secret_file {
        Some(p) => {
            tracing::warn!("HMAC tokens are accepted (--hmac-secret-file): for development only");
            Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?.trim_ascii().to_vec())
        }
        None => None,
    };
    let issuer = cfg.issuer.clone().or_else(|| cfg.dev.then(|| DEV_ISSUER.to_string()));
    let extra_keys = match &dev_key {
        Some(k) => vec![k.jwk()?],
        None => vec![],
    };
    let dev_jwks = dev_key.as_ref().map(|k| k.jwk().map(|j| json!({"keys": [j]}))).transpose()?;
    let config = VerifierConfig {
        source,
        issuer,
        audience: cfg.audience.clone(),
        leeway: cfg.leeway,
        extra_keys,
        hmac_secret,
        min_refresh: cfg.jwks_min_refresh,
        authorized_parties: cfg.authorized_parties.clone(),
        refresh_every: cfg.jwks_refresh,
        plain_http: if cfg.dev || cfg.private_network_http {
            identity::PlainHttp::Allowed
        } else {
            identity::PlainHttp::LoopbackOnly
        },
    };
    if let (false, Some(why)) = (cfg.dev, config.unrestricted()) {
        tracing::warn!("{why}: --audience or --authorized-party");
    }
    if cfg.private_network_http {
        tracing::warn!(
            "--private-network-http: key sets and OIDC discovery are fetched over plain http:// from any \
             host; anyone on that network path can replace the signing keys"
        );
    }
    if matches!(cfg.bundle_trust, Some(policy_engine::pull::Trust::InsecureUnsigned)) {
        tracing::warn!(
            "--insecure-unsigned-bundles: pulled bundles are taken unsigned; whoever can answer for \
             --policy-url decides this service's policy"
        );
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
        rules = g.rule_count, generation = g.id, status = %live.status(),
        "policy loaded"
    );
    let admin_token = match &cfg.admin_token {
        Some(t) if t.len() < 16 => bail!("the admin token must be at least 16 characters"),
        Some(t) => Some(token_digest(t)),
        None => None,
    };
    Ok(Arc::new(AppState {
        live,
        reloader,
        // A quarter for verified tokens and subjects, the rest for decisions and sessions.
        auth: Auth::new(Identities::new(verifier, cfg.cache_memory / 4), cfg.cache_memory / 4 * 3),
        response_mode: cfg.response_mode,
        username_claims: cfg.username_claims.clone(),
        prometheus,
        dev_jwks,
        started: SystemTime::now(),
        admin_token,
        audit: crate::audit::Audit::new(cfg.log.clone(), cfg.log_json),
        bundle_token: match &cfg.bundle_token {
            Some(t) if t.len() < 16 => bail!("the bundle token must be at least 16 characters"),
            Some(t) => Some(token_digest(t)),
            None => None,
        },
        pull: cfg.policy_url.as_ref().map(|_| Default::default()),
        bundle_signing_key: cfg.bundle_signing_key.clone(),
        certificate_subject_type: cfg.certificate_subject_type,
        certificate_names: moka::sync::Cache::new(CERTIFICATE_NAMES),
        sessions: match &cfg.sessions {
            Some(url) => {
                let store = crate::sessions::RedisSessions::new(url)?;
                store.spawn_checker();
                Some(store)
            }
            None => None,
        },
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
