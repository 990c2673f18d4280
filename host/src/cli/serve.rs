//! `mqtt-policy serve`: flags (each also `MQTT_POLICY_<NAME>`) → `serve::ServeConfig`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::logqueue::LogQueue;
use crate::respond::ResponseMode;
use crate::state::ServeConfig;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on
    #[arg(long, env = "MQTT_POLICY_LISTEN", default_value = "127.0.0.1:8009")]
    pub listen: SocketAddr,
    /// Policy document [default: policies/celine.json, else the built-in copy]
    #[arg(long, env = "MQTT_POLICY_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Policy module (a WebAssembly component) [default: the built-in one]
    #[arg(long, env = "MQTT_POLICY_MODULE", value_name = "FILE")]
    pub module: Option<PathBuf>,
    /// Token issuer: the expected `iss`, and (without --jwks-*) where keys are discovered
    /// (<issuer>/.well-known/openid-configuration)
    #[arg(long, env = "MQTT_POLICY_ISSUER", value_name = "URL")]
    pub issuer: Option<String>,
    /// Expected `aud` (not checked when absent)
    #[arg(long, env = "MQTT_POLICY_AUDIENCE")]
    pub audience: Option<String>,
    /// Accept only tokens issued to these clients (their `azp`; comma-separated or repeated)
    #[arg(
        long = "authorized-party",
        env = "MQTT_POLICY_AUTHORIZED_PARTIES",
        value_delimiter = ',',
        value_name = "CLIENT"
    )]
    pub authorized_parties: Vec<String>,
    /// Key set URL (JWKS)
    #[arg(long, env = "MQTT_POLICY_JWKS_URL", value_name = "URL", conflicts_with = "jwks_file")]
    pub jwks_url: Option<String>,
    /// Key set file (JWKS), re-read periodically
    #[arg(long, env = "MQTT_POLICY_JWKS_FILE", value_name = "FILE")]
    pub jwks_file: Option<PathBuf>,
    /// Private networks only: fetch key sets and OIDC discovery over plain http:// from hosts
    /// other than loopback (logged at start; dev mode allows it anyway)
    #[arg(long, env = "MQTT_POLICY_PRIVATE_NETWORK_HTTP")]
    pub private_network_http: bool,
    /// Clock skew allowed on exp and nbf, in seconds
    #[arg(long, env = "MQTT_POLICY_LEEWAY", default_value_t = 30, value_name = "SECONDS")]
    pub leeway: u64,
    /// json: 200/403 with {"ok","error"} (go-auth status and json modes); text: "ok" or the reason
    #[arg(long, env = "MQTT_POLICY_RESPONSE_MODE", value_enum, default_value = "json")]
    pub response_mode: ResponseMode,
    /// Development: trust a local signing key (see `mqtt-policy token --dev`) and serve its
    /// JWKS at /dev/jwks.json
    #[arg(long, env = "MQTT_POLICY_DEV", conflicts_with = "issuer")]
    pub dev: bool,
    /// Where the dev key and the compiled-module cache live
    /// [default: $XDG_STATE_HOME/mqtt-policy or ~/.local/state/mqtt-policy]
    #[arg(long, env = "MQTT_POLICY_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Policy test cases every new policy or module must pass before it goes live (a file or
    /// a directory of *.json) [default: policies/tests with the default policy]
    #[arg(long, env = "MQTT_POLICY_TESTS", value_name = "PATH")]
    pub tests: Option<PathBuf>,
    /// Turn the admin endpoints (/admin/...) on, with the token in this file (also
    /// MQTT_POLICY_ADMIN_TOKEN)
    #[arg(long, env = "MQTT_POLICY_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Address of the operations listener: /healthz, /readyz, /metrics, the admin endpoints
    /// and the playground (--listen serves only go-auth's endpoints and /healthz)
    #[arg(long, env = "MQTT_POLICY_OPS_LISTEN", default_value = "127.0.0.1:8010")]
    pub ops_listen: SocketAddr,
    /// TLS for --listen: a PEM certificate chain (re-read when it changes and on SIGHUP)
    #[arg(long, env = "MQTT_POLICY_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS for --listen: the certificate's PEM private key
    #[arg(long, env = "MQTT_POLICY_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// An unknown key id refreshes the key set at most this often, in seconds
    #[arg(long, env = "MQTT_POLICY_JWKS_MIN_REFRESH", default_value_t = 10, value_name = "SECONDS")]
    pub jwks_min_refresh: u64,
    /// Re-read the key set this often, in seconds: a key withdrawn by the identity provider
    /// stops being trusted by every replica (and every cached verification or session) within
    /// this time plus one fetch (at most 10 s)
    #[arg(long, env = "MQTT_POLICY_JWKS_REFRESH", default_value_t = 300, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub jwks_refresh: u64,
    /// Development only: also accept HS256/384/512 tokens signed with the secret in this file
    #[arg(long, env = "MQTT_POLICY_HMAC_SECRET_FILE", value_name = "FILE")]
    pub hmac_secret_file: Option<PathBuf>,
    /// Claims whose value (besides the subject id) may be a client's MQTT username: the
    /// http backend binds a session only to a username that names the token's subject
    /// (comma-separated; `none` for the subject id only)
    #[arg(
        long,
        env = "MQTT_POLICY_USERNAME_CLAIMS",
        default_value = "preferred_username",
        value_name = "CLAIMS"
    )]
    pub username_claims: String,
    /// Memory all caches, the session table and the queue of log lines may take together, in
    /// MiB: a flood of unique topics or tokens evicts rather than grows the process beyond it
    #[arg(long, env = "MQTT_POLICY_CACHE_MEMORY", default_value_t = 64, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub cache_memory: u64,
    /// Pull the policy, the module and their test cases as a bundle from this URL (another
    /// service's GET /bundle, or a file written by `mqtt-policy bundle` on any web server)
    #[arg(long, env = "MQTT_POLICY_POLICY_URL", value_name = "URL")]
    pub policy_url: Option<String>,
    /// How often to pull --policy-url, in seconds (a conditional request: cheap when unchanged)
    #[arg(long, env = "MQTT_POLICY_POLICY_POLL", default_value_t = 10, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub policy_poll: u64,
    /// Serve GET /bundle on the operations listener to holders of the token in this file, and
    /// send it when pulling --policy-url (also MQTT_POLICY_BUNDLE_TOKEN)
    #[arg(long, env = "MQTT_POLICY_BUNDLE_TOKEN_FILE", value_name = "FILE")]
    pub bundle_token_file: Option<PathBuf>,
    /// Sign the bundles served at GET /bundle with this Ed25519 private key (PKCS#8 PEM, as
    /// `openssl genpkey -algorithm ed25519` writes it)
    #[arg(long, env = "MQTT_POLICY_BUNDLE_SIGNING_KEY", value_name = "FILE")]
    pub bundle_signing_key: Option<PathBuf>,
    /// Take a pulled bundle only when this Ed25519 public key (PEM, as `openssl pkey -pubout`
    /// writes it) signed it; repeat for a rotation (any of them will do)
    #[arg(
        long = "bundle-public-key",
        env = "MQTT_POLICY_BUNDLE_PUBLIC_KEYS",
        value_delimiter = ',',
        value_name = "FILE",
        conflicts_with = "insecure_unsigned_bundles"
    )]
    pub bundle_public_keys: Vec<PathBuf>,
    /// Take pulled bundles unsigned: whoever can answer for --policy-url then decides the
    /// policy (logged at start)
    #[arg(long, env = "MQTT_POLICY_INSECURE_UNSIGNED_BUNDLES")]
    pub insecure_unsigned_bundles: bool,
    /// Decide clients known by their TLS certificate as subjects of this type (only device:
    /// users and services come from tokens): go-auth sends their certificate's name as the
    /// username (http backend) or the Bearer value (jwt backend), and names in the policy's
    /// certificates section are taken as such (never as a token holder's username)
    #[arg(long, env = "MQTT_POLICY_CERTIFICATE_SUBJECT_TYPE", value_name = "TYPE",
          value_parser = ["device"])]
    pub certificate_subject_type: Option<String>,
    /// Keep http-backend sessions in Redis (redis://[:password@]host:port[/db]) so that
    /// replicas share them [default: in this process's memory]
    #[arg(long, env = "MQTT_POLICY_SESSIONS", value_name = "URL")]
    pub sessions: Option<String>,
    /// Do not serve the browser playground at /playground/
    #[arg(long, env = "MQTT_POLICY_NO_PLAYGROUND")]
    pub no_playground: bool,
    /// Log format
    #[arg(long, env = "MQTT_POLICY_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
}

/// Log lines (audit lines included) go to standard error through a queue of at most `budget`
/// bytes, written by its own thread: requests never wait for the log.
fn init_logging(format: LogFormat, budget: usize) -> anyhow::Result<LogQueue> {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("MQTT_POLICY_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let queue = LogQueue::start(budget, Box::new(std::io::stderr()))?;
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(queue.writer()).with_ansi(ansi);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(queue)
}

/// The log queue's share of `--cache-memory`.
fn log_budget(cache_memory: u64) -> u64 {
    (cache_memory / 16).max(64 << 10)
}

/// A secret from `file`, else from the variable `env`, trimmed; `None` when neither is given.
fn secret(file: &Option<PathBuf>, env: &str, what: &str) -> anyhow::Result<Option<String>> {
    Ok(match (file, std::env::var(env).ok()) {
        (Some(f), _) => Some(
            std::fs::read_to_string(f)
                .map_err(|e| anyhow::anyhow!("reading {what} {}: {e}", f.display()))?
                .trim()
                .to_string(),
        ),
        (None, Some(t)) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => None,
    })
}

/// The pulled bundles `serve` takes, from its flags: refused before anything starts when
/// `--policy-url` has neither keys nor the explicit opt-out.
fn bundle_trust(a: &Args) -> anyhow::Result<Option<policy_engine::pull::Trust>> {
    use policy_engine::pull::Trust;
    match (&a.policy_url, a.bundle_public_keys.is_empty(), a.insecure_unsigned_bundles) {
        (None, false, _) => {
            anyhow::bail!("--bundle-public-key without --policy-url: there is nothing to verify")
        }
        (None, true, true) => {
            anyhow::bail!("--insecure-unsigned-bundles without --policy-url: nothing is pulled")
        }
        (None, true, false) => Ok(None),
        (Some(_), true, false) => anyhow::bail!(
            "--policy-url needs --bundle-public-key (the operator's Ed25519 public key, PEM): without it, \
             anyone who can answer for the URL would decide this service's policy. To take unsigned \
             bundles anyway, give --insecure-unsigned-bundles"
        ),
        (Some(_), _, true) => Ok(Some(Trust::InsecureUnsigned)),
        (Some(_), false, false) => Ok(Some(Trust::Signed(
            policy_engine::bundle::TrustedKeys::read(&a.bundle_public_keys)
                .map_err(|e| anyhow::anyhow!("--bundle-public-key: {e}"))?,
        ))),
    }
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cache_memory = a.cache_memory << 20;
    let authorized_parties = match a.authorized_parties.is_empty() {
        true => Vec::new(),
        false => identity::parse_names(&a.authorized_parties.join(","))
            .map_err(|e| anyhow::anyhow!("--authorized-party: {e}"))?,
    };
    let username_claims = identity::parse_username_claims(&a.username_claims)
        .map_err(|e| anyhow::anyhow!("--username-claims: {e}"))?;
    let bundle_trust = bundle_trust(&a)?;
    let bundle_signing_key = a
        .bundle_signing_key
        .as_deref()
        .map(policy_engine::bundle::SigningKey::read)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--bundle-signing-key: {e}"))?;
    let certificate_subject_type =
        a.certificate_subject_type.as_deref().and_then(policy_engine::SubjectType::parse);
    // Held to the end: dropping it writes out what is queued.
    let log = init_logging(a.log_format, log_budget(cache_memory) as usize)?;
    let admin_token = secret(&a.admin_token_file, "MQTT_POLICY_ADMIN_TOKEN", "the admin token")?;
    let bundle_token = secret(&a.bundle_token_file, "MQTT_POLICY_BUNDLE_TOKEN", "the bundle token")?;
    let cfg = ServeConfig {
        listen: a.listen,
        policy: a.policy,
        module: a.module,
        issuer: a.issuer,
        audience: a.audience,
        jwks_url: a.jwks_url,
        jwks_file: a.jwks_file,
        leeway: std::time::Duration::from_secs(a.leeway),
        response_mode: a.response_mode,
        dev: a.dev,
        state_dir: a.state_dir.unwrap_or_else(identity::devkey::default_state_dir),
        hmac_secret_file: a.hmac_secret_file,
        jwks_min_refresh: std::time::Duration::from_secs(a.jwks_min_refresh),
        jwks_refresh: std::time::Duration::from_secs(a.jwks_refresh),
        authorized_parties,
        tests: a.tests,
        admin_token,
        ops_listen: a.ops_listen,
        tls: a.tls_cert.zip(a.tls_key),
        playground: !a.no_playground,
        username_claims,
        private_network_http: a.private_network_http,
        bundle_trust,
        bundle_signing_key,
        certificate_subject_type,
        cache_memory: cache_memory - log_budget(cache_memory),
        log: log.writer(),
        log_json: a.log_format == LogFormat::Json,
        policy_url: a.policy_url,
        policy_poll: std::time::Duration::from_secs(a.policy_poll),
        bundle_token,
        sessions: a.sessions,
    };
    // A worker thread out of work hands the audit lines it gathered to the log queue.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(crate::logqueue::hand_over_gathered)
        .build()?;
    rt.block_on(crate::serve::run(cfg))?;
    Ok(ExitCode::SUCCESS)
}
