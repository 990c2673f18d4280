//! `mqtt-policy serve`: flags (each also `MQTT_POLICY_<NAME>`) → [`ServeConfig`], checked
//! before anything starts. The keys and policy flags are the authorizer's
//! ([`KeysConfig`], [`PolicyConfig`]), the ones the broker plugin reads as `plugin_opt_*`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use authorizer::{KeysConfig, PolicyConfig, Spelling};

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
    #[command(flatten)]
    pub keys: KeysConfig,
    #[command(flatten)]
    pub policy: PolicyConfig,
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
    /// Development only: also accept HS256/384/512 tokens signed with the secret in this file
    #[arg(long, env = "MQTT_POLICY_HMAC_SECRET_FILE", value_name = "FILE")]
    pub hmac_secret_file: Option<PathBuf>,
    /// Memory all caches, the session table and the queue of log lines may take together, in
    /// MiB: a flood of unique topics or tokens evicts rather than grows the process beyond it
    #[arg(long, env = "MQTT_POLICY_CACHE_MEMORY", default_value_t = 64, value_name = "MIB",
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub cache_memory: u64,
    /// Serve GET /bundle on the operations listener to holders of the token in this file, and
    /// send it when pulling --policy-url (also MQTT_POLICY_BUNDLE_TOKEN)
    #[arg(long, env = "MQTT_POLICY_BUNDLE_TOKEN_FILE", value_name = "FILE")]
    pub bundle_token_file: Option<PathBuf>,
    /// Sign the bundles served at GET /bundle with this Ed25519 private key (PKCS#8 PEM, as
    /// `openssl genpkey -algorithm ed25519` writes it)
    #[arg(long, env = "MQTT_POLICY_BUNDLE_SIGNING_KEY", value_name = "FILE")]
    pub bundle_signing_key: Option<PathBuf>,
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

/// A secret that must be long enough to resist guessing.
fn long_secret(secret: Option<String>, what: &str) -> anyhow::Result<Option<String>> {
    match secret {
        Some(t) if t.len() < 16 => anyhow::bail!("{what} must be at least 16 characters"),
        other => Ok(other),
    }
}

/// Everything `serve` was given, checked and read before anything starts: no key is fetched,
/// no listener bound and no log or metrics recorder installed before a mistake is reported.
fn config(a: Args, deprecations: &[String]) -> anyhow::Result<(ServeConfig, LogFormat)> {
    let flag = Spelling::Flag;
    a.keys.validate(a.dev, a.hmac_secret_file.is_some(), flag)?;
    a.policy.validate(flag)?;
    if a.policy.policy_url.is_some() && (a.policy.policy.is_some() || a.policy.module.is_some()) {
        anyhow::bail!("--policy-url brings the policy and the module: do not also name --policy or --module");
    }
    let bundle_trust = a.policy.trust(flag)?;
    let bundle_signing_key = a
        .bundle_signing_key
        .as_deref()
        .map(policy_engine::bundle::SigningKey::read)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--bundle-signing-key: {e}"))?;
    let hmac_secret = match &a.hmac_secret_file {
        Some(p) => {
            let secret = std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("--hmac-secret-file {}: {e}", p.display()))?
                .trim_ascii()
                .to_vec();
            // An empty or short secret would let anyone sign tokens.
            if secret.len() < 16 {
                anyhow::bail!("--hmac-secret-file {}: the secret must be at least 16 bytes", p.display());
            }
            Some(secret)
        }
        None => None,
    };
    // TLS files are read and checked now: a mistake stops start-up before anything listens.
    let tls = match a.tls_cert.zip(a.tls_key) {
        Some((cert, key)) => Some(crate::tls::Certificates::load(&cert, &key)?),
        None => None,
    };
    let admin_token = long_secret(
        secret(&a.admin_token_file, "MQTT_POLICY_ADMIN_TOKEN", "the admin token")?,
        "the admin token",
    )?;
    let bundle_token = long_secret(
        secret(&a.bundle_token_file, "MQTT_POLICY_BUNDLE_TOKEN", "the bundle token")?,
        "the bundle token",
    )?;
    let sessions = a.sessions.as_deref().map(crate::sessions::RedisSessions::new).transpose()?;
    let state_dir = a.state_dir.unwrap_or_else(identity::devkey::default_state_dir);
    // Dev mode keeps its key there: a directory that cannot be made is a configuration error
    // (without dev mode it only costs the compiled-module cache, and the service warns).
    if a.dev {
        std::fs::create_dir_all(&state_dir).map_err(|e| {
            anyhow::anyhow!(
                "--state-dir: creating the state directory {} (dev mode keeps its key there): {e}",
                state_dir.display()
            )
        })?;
    }
    let cache_memory = a.cache_memory << 20;
    let cfg = ServeConfig {
        listen: a.listen,
        keys: a.keys,
        policy: a.policy,
        response_mode: a.response_mode,
        dev: a.dev,
        state_dir,
        hmac_secret,
        admin_token,
        ops_listen: a.ops_listen,
        tls,
        playground: !a.no_playground,
        bundle_trust,
        bundle_signing_key,
        cache_memory: cache_memory - log_budget(cache_memory),
        log_budget: log_budget(cache_memory),
        log_json: a.log_format == LogFormat::Json,
        bundle_token,
        sessions,
        deprecations: deprecations.to_vec(),
    };
    Ok((cfg, a.log_format))
}

pub fn run(a: Args, deprecations: &[String]) -> anyhow::Result<ExitCode> {
    let (cfg, log_format) = config(a, deprecations)?;
    // Held to the end: dropping it writes out what is queued.
    let log = init_logging(log_format, cfg.log_budget as usize)?;
    // A worker thread out of work hands the audit lines it gathered to the log queue.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(crate::logqueue::hand_over_gathered)
        .build()?;
    rt.block_on(crate::serve::run(cfg, log.writer()))?;
    Ok(ExitCode::SUCCESS)
}
