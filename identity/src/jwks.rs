//! Verifying tokens: where the keys come from, when they are refreshed, what is checked.
//!
//! Keys come from a JWKS file, a JWKS URL, or OIDC discovery on the issuer
//! (`<issuer>/.well-known/openid-configuration` → `jwks_uri`), plus the dev key in dev
//! mode. An unknown `kid` triggers a refresh (at most one per `min_refresh`, 10 s by default); the
//! set is also refreshed periodically ([`Verifier::spawn_refresher`]). Verification itself is
//! synchronous and uses the keys already held ([`Verifier::verify_now`]); only
//! [`Verifier::verify`] waits for a refresh when a token names a key the set lacks. Only asymmetric algorithms are accepted, unless an HMAC
//! secret was configured explicitly for development; an HMAC token is then checked against that
//! secret only, never against a public key. `exp` is required; `nbf`, `iss` and `aud` are
//! checked (the last two when configured).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// The key set is refreshed this often in any case.
pub const PERIODIC_REFRESH: Duration = Duration::from_secs(300);

/// The longest a token by an unknown key waits for the key set to be fetched again (it may
/// be a rotated-in key): go-auth gives up on a backend call after 5 s, so the answer, a
/// refusal if the fetch is slower, must come before. The fetch itself goes on in the
/// background (up to [`FETCH_TIMEOUT`]) and serves the next tokens.
pub const KEY_WAIT: Duration = Duration::from_secs(3);

/// A key-set fetch (connect, answer and body) is given up after this long.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Redirects a key-set or discovery fetch follows at most.
const MAX_REDIRECTS: usize = 5;

/// The largest key set accepted. A real one is a few KB (Keycloak's: two to four keys); an
/// endless or enormous answer is refused while it arrives, never held whole.
pub const MAX_KEY_SET_BYTES: usize = 1 << 20;

/// Where the trusted keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// No remote or file source (dev key and/or HMAC secret only).
    None,
    File(PathBuf),
    Url(String),
    /// OIDC discovery on this issuer.
    Discovery(String),
}

#[derive(Debug, Clone)]
pub struct VerifierConfig {
    pub source: KeySource,
    /// Expected `iss`, when configured.
    pub issuer: Option<String>,
    /// Expected `aud`, when configured.
    pub audience: Option<String>,
    pub leeway: Duration,
    /// Trusted in addition to the source (dev mode).
    pub extra_keys: Vec<Jwk>,
    /// Development only: accept HS256/384/512 tokens signed with this secret.
    pub hmac_secret: Option<Vec<u8>>,
    /// An unknown `kid` refreshes the key set at most this often.
    pub min_refresh: Duration,
    /// When not empty, a token's `azp` (the client it was issued to) must be one of these.
    pub authorized_parties: Vec<String>,
    /// The key set is re-read this often ([`PERIODIC_REFRESH`] by default): a key the
    /// identity provider withdrew stops being trusted, by new and by cached verifications,
    /// at most this long (plus one fetch, at most [`FETCH_TIMEOUT`]) after it is gone.
    pub refresh_every: Duration,
    /// Key sets and discovery over plain `http://` from hosts other than loopback: only in
    /// dev mode or on the operator's explicit word for a private network. Otherwise anyone on
    /// the path could hand out the keys that decide who is who.
    pub plain_http: PlainHttp,
    /// Certificate authorities (PEM) trusted for `https://` key sets and discovery besides
    /// the public web PKI's roots: an identity provider behind a private CA, reached over TLS
    /// rather than through the plain-http opt-in.
    pub trusted_ca_pem: Option<Vec<u8>>,
}

/// Where key sets and OIDC discovery may be fetched over plain `http://`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PlainHttp {
    /// From loopback addresses only (`127.0.0.0/8`, `::1`, `localhost`).
    #[default]
    LoopbackOnly,
    /// From any host: dev mode, or the operator's opt-in for a private network.
    Allowed,
}

/// A configured value this crate cannot work with: a key URL that is no URL or would travel
/// in the clear, a list of names that names nothing. A caller sees it while reading its
/// configuration, before anything starts: stop, and tell the operator (the message says
/// which value and why; the caller adds which setting held it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting(pub String);

impl std::fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSetting {}

/// Is `url` one the verifier may fetch keys or discovery from? `https://` always; `http://`
/// from loopback, or anywhere with [`PlainHttp::Allowed`]. `what` names it in the error.
pub fn check_transport(url: &str, plain: PlainHttp, what: &str) -> Result<(), InvalidSetting> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| InvalidSetting(format!("{what} {url:?} is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if plain == PlainHttp::Allowed || is_loopback(&parsed) => Ok(()),
        "http" => Err(InvalidSetting(format!(
            "{what} {url} is plain http:// to a host that is not loopback: anyone on the path could \
             replace the signing keys. Use https://, or (on a private network only) turn on the \
             private-network opt-in (--private-network-http, plugin_opt_private_network_http true)"
        ))),
        other => Err(InvalidSetting(format!("{what} {url}: expected an https:// URL, not {other}://"))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

impl VerifierConfig {
    /// The URLs this configuration fetches keys or discovery from, checked against
    /// [`check_transport`].
    pub fn check_transport(&self) -> Result<(), InvalidSetting> {
        match &self.source {
            KeySource::Url(u) => check_transport(u, self.plain_http, "the key set URL"),
            KeySource::Discovery(iss) => check_transport(iss, self.plain_http, "the issuer (OIDC discovery)"),
            KeySource::None | KeySource::File(_) => Ok(()),
        }
    }

    /// Why any client's tokens from the trusted keys would be accepted, if they would be (no
    /// audience and no authorized parties): for a start-up warning.
    pub fn unrestricted(&self) -> Option<String> {
        (self.audience.is_none() && self.authorized_parties.is_empty()).then(|| {
            "tokens issued to any client of the identity provider are accepted: restrict them with an \
             audience or authorized parties (azp)"
                .to_string()
        })
    }
}

/// A verified token.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Value,
    /// Seconds since the epoch.
    pub exp: u64,
    /// The key that verified it (`None` for the HMAC dev secret): a cached verification holds
    /// only while the key set still has this key.
    pub key: Option<Arc<Jwk>>,
    /// About what it takes in memory (for caches bounded in bytes).
    pub bytes: usize,
}

/// Why a token was refused. The message is safe to log and return: it never holds the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Why a verifier has nothing to verify tokens with, so that every token would be refused:
/// a server is not ready (`/readyz`) until this passes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotReady {
    /// No key set was loaded yet: the first fetch has not ended.
    NotLoaded,
    /// The key set was loaded and holds no key that can verify a signature.
    Empty,
    /// Fetching the key set failed (the error), and no earlier key is held to fall back on.
    FetchFailed(String),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            NotReady::NotLoaded => f.write_str("signing keys not loaded yet"),
            NotReady::Empty => f.write_str("the key set is empty"),
            NotReady::FetchFailed(e) => write!(f, "no signing keys: {e}"),
        }
    }
}

impl std::error::Error for NotReady {}

struct KeyState {
    keys: JwkSet,
    loaded_at: Option<SystemTime>,
    last_error: Option<String>,
}

pub struct Verifier {
    config: VerifierConfig,
    http: reqwest::Client,
    state: ArcSwap<KeyState>,
    last_refresh: Mutex<Option<Instant>>,
    refresh_lock: tokio::sync::Mutex<()>,
    /// Posted by `verify_now` when a token names a key the set lacks; the refresher task
    /// answers it (rate-limited).
    refresh_wanted: tokio::sync::Notify,
    /// The same request, for an owner that schedules refreshes itself
    /// ([`Verifier::take_refresh_wanted`]).
    refresh_wanted_flag: std::sync::atomic::AtomicBool,
    /// When the fetch that tokens by unknown keys wait for began, while it runs.
    awaited_since: Mutex<Option<Instant>>,
    /// Counts the fetches tokens waited for, as they end.
    awaited_done: tokio::sync::watch::Sender<u64>,
}

/// Ends an awaited fetch however its task ends (even cancelled with its runtime), so that a
/// later unknown key starts a new one.
struct AwaitedFetch(Arc<Verifier>);

impl Drop for AwaitedFetch {
    fn drop(&mut self) {
        *self.0.awaited_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.0.awaited_done.send_modify(|n| *n += 1);
    }
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The algorithms a key may verify: its `alg` if it names one, else its key type's family.
fn algorithms_for(jwk: &Jwk) -> Vec<Algorithm> {
    if let Some(alg) = jwk.common.key_algorithm {
        let a = match alg {
            KeyAlgorithm::RS256 => Some(Algorithm::RS256),
            KeyAlgorithm::RS384 => Some(Algorithm::RS384),
            KeyAlgorithm::RS512 => Some(Algorithm::RS512),
            KeyAlgorithm::PS256 => Some(Algorithm::PS256),
            KeyAlgorithm::PS384 => Some(Algorithm::PS384),
            KeyAlgorithm::PS512 => Some(Algorithm::PS512),
            KeyAlgorithm::ES256 => Some(Algorithm::ES256),
            KeyAlgorithm::ES384 => Some(Algorithm::ES384),
            KeyAlgorithm::EdDSA => Some(Algorithm::EdDSA),
            _ => None,
        };
        return a.into_iter().collect();
    }
    match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        // A symmetric key in a JWKS is never trusted: it would let anyone holding the
        // "public" key set mint tokens.
        AlgorithmParameters::OctetKey(_) => vec![],
    }
}

/// `url` without the user name and password it may carry (`https://user:pass@host/...`).
fn shown(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

/// The certificates of a PEM bundle, at least one; an error says what is wrong with it.
pub fn trusted_certificates(pem: &[u8]) -> anyhow::Result<Vec<reqwest::Certificate>> {
    const EXPECTED: &str = "expected one or more blocks `-----BEGIN CERTIFICATE-----`";
    let certificates = reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|e| anyhow::anyhow!("holds no PEM certificate ({e}; {EXPECTED})"))?;
    if certificates.is_empty() {
        anyhow::bail!("holds no PEM certificate ({EXPECTED})");
    }
    Ok(certificates)
}

impl Verifier {
    pub fn new(config: VerifierConfig) -> anyhow::Result<Verifier> {
        config.check_transport()?;
        // A redirect is held to the same rule as the URL it came from: an https:// key set
        // that redirects to plain http:// elsewhere is refused, not followed.
        let plain = config.plain_http;
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                return attempt.error(format!("more than {MAX_REDIRECTS} redirects"));
            }
            match check_transport(attempt.url().as_str(), plain, "a redirect to") {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        });
        let mut http =
            reqwest::Client::builder().connect_timeout(KEY_WAIT).timeout(FETCH_TIMEOUT).redirect(redirects);
        if let Some(pem) = &config.trusted_ca_pem {
            for ca in trusted_certificates(pem)? {
                http = http.add_root_certificate(ca);
            }
        }
        let http = http.build().context("building the HTTP client for key sets")?;
        Ok(Verifier {
            config,
            http,
            state: ArcSwap::from_pointee(KeyState {
                keys: JwkSet { keys: vec![] },
                loaded_at: None,
                last_error: None,
            }),
            last_refresh: Mutex::new(None),
            refresh_lock: tokio::sync::Mutex::new(()),
            refresh_wanted: tokio::sync::Notify::new(),
            refresh_wanted_flag: std::sync::atomic::AtomicBool::new(false),
            awaited_since: Mutex::new(None),
            awaited_done: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A JSON document of at most [`MAX_KEY_SET_BYTES`] from `url`.
    async fn fetch_json(&self, url: &str) -> anyhow::Result<Value> {
        // The URL as messages show it: without credentials a URL may carry.
        let display = shown(url);
        let mut resp = match self.http.get(url).send().await {
            Ok(resp) => resp,
            Err(e) => {
                let e = anyhow::Error::new(e.without_url());
                let hint = if format!("{e:#}").contains("UnknownIssuer") {
                    "; signed by a private certificate authority? Trust it with --jwks-ca-file \
                     (plugin_opt_jwks_ca_file)"
                } else {
                    ""
                };
                return Err(e.context(format!("GET {display}{hint}")));
            }
        };
        let status = resp.status();
        if !status.is_success() {
            bail!("GET {display}: HTTP {status}");
        }
        let too_large = || {
            anyhow!(
                "GET {display}: the answer is larger than {} KiB, which no key set is",
                MAX_KEY_SET_BYTES >> 10
            )
        };
        if resp.content_length().is_some_and(|n| n > MAX_KEY_SET_BYTES as u64) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            anyhow::Error::new(e.without_url()).context(format!("GET {display}: reading the answer"))
        })? {
            if body.len() + chunk.len() > MAX_KEY_SET_BYTES {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| anyhow!("GET {display}: not JSON ({e})"))
    }

    async fn fetch_keys(&self) -> anyhow::Result<JwkSet> {
        let raw = match &self.config.source {
            KeySource::None => return Ok(JwkSet { keys: vec![] }),
            KeySource::File(p) => {
                let text =
                    tokio::fs::read_to_string(p).await.with_context(|| format!("reading {}", p.display()))?;
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?
            }
            KeySource::Url(u) => self.fetch_json(u).await?,
            KeySource::Discovery(issuer) => {
                let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
                let doc = self.fetch_json(&url).await?;
                let jwks_uri = doc["jwks_uri"]
                    .as_str()
                    .with_context(|| format!("{url}: no jwks_uri in the discovery document"))?;
                check_transport(jwks_uri, self.config.plain_http, "the discovery document's jwks_uri")?;
                self.fetch_json(jwks_uri).await?
            }
        };
        // Only keys that can verify a signature count: Keycloak also publishes encryption keys
        // (`use: enc`, RSA-OAEP), and keys jsonwebtoken cannot parse are skipped too.
        let list = raw["keys"].as_array().context("the key set has no \"keys\" list")?;
        let keys: Vec<Jwk> = list
            .iter()
            .filter(|k| k.get("use").and_then(Value::as_str) != Some("enc"))
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !algorithms_for(k).is_empty())
            .collect();
        Ok(JwkSet { keys })
    }

    /// Reloads the key set now. On failure the previous keys stay in use; the caller reports
    /// the error (the background refreshes log their own, [`Verifier::refresh_logged`]).
    pub async fn refresh(&self) -> anyhow::Result<usize> {
        let _one_at_a_time = self.refresh_lock.lock().await;
        self.refresh_locked().await
    }

    /// Refreshes and logs the outcome once per change: a failure when it differs from the
    /// last one (a provider down for an hour is one line, not one per attempt or request),
    /// and the first success after failures.
    async fn refresh_logged(&self) {
        let before = self.state.load().last_error.clone();
        match self.refresh_locked().await {
            Ok(n) if before.is_some() => tracing::info!(keys = n, "key set refresh works again"),
            Ok(_) => {}
            Err(e) => {
                let error = format!("{e:#}");
                if before.as_deref() != Some(error.as_str()) {
                    tracing::warn!(%error, "key set refresh failed; keeping the previous keys (logged again when the error changes)");
                }
            }
        }
    }

    async fn refresh_locked(&self) -> anyhow::Result<usize> {
        *self.last_refresh.lock().unwrap() = Some(Instant::now());
        let result = self.fetch_keys().await;
        let old = self.state.load();
        match result {
            Ok(mut set) => {
                set.keys.extend(self.config.extra_keys.iter().cloned());
                let n = set.keys.len();
                self.state.store(Arc::new(KeyState {
                    keys: set,
                    loaded_at: Some(SystemTime::now()),
                    last_error: None,
                }));
                metrics::counter!("mqtt_policy_jwks_refresh_total", "result" => "ok").increment(1);
                Ok(n)
            }
            Err(e) => {
                // Keep what was trusted; before any successful load that is the extra keys
                // alone (added once, not again at every failed attempt).
                let keys = if old.loaded_at.is_some() || !old.keys.keys.is_empty() {
                    old.keys.clone()
                } else {
                    JwkSet { keys: self.config.extra_keys.clone() }
                };
                self.state.store(Arc::new(KeyState {
                    keys,
                    loaded_at: old.loaded_at,
                    last_error: Some(format!("{e:#}")),
                }));
                metrics::counter!("mqtt_policy_jwks_refresh_total", "result" => "error").increment(1);
                Err(e)
            }
        }
    }

    /// For an owner that schedules refreshes itself instead of [`Verifier::spawn_refresher`]
    /// (the broker plugin, which keeps no thread waiting): whether `verify_now` met an unknown
    /// key id since this was last asked; then [`Verifier::refresh_wanted_now`].
    pub fn take_refresh_wanted(&self) -> bool {
        self.refresh_wanted_flag.swap(false, std::sync::atomic::Ordering::AcqRel)
    }

    /// The refresh a token by an unknown key id asked for, unless one happened within
    /// `min_refresh` (the outcome logged).
    pub async fn refresh_wanted_now(&self) {
        self.refresh_rate_limited().await
    }

    /// The periodic refresh (a JWKS file is re-read too), its outcome logged: what
    /// [`Verifier::spawn_refresher`] does every [`Verifier::next_refresh_in`].
    pub async fn refresh_scheduled(&self) {
        let _one_at_a_time = self.refresh_lock.lock().await;
        self.refresh_logged().await;
    }

    /// How often the key set is refreshed.
    pub fn refresh_every(&self) -> Duration {
        self.config.refresh_every.max(Duration::from_secs(1))
    }

    /// How long until the next scheduled refresh: [`Verifier::refresh_every`], or, while
    /// there is no key to verify with (the identity provider could not be reached yet, as
    /// when a broker starts before it), `min_refresh` (at least a second), so tokens are
    /// accepted and readiness reported within seconds of the keys becoming reachable rather
    /// than a whole refresh period later.
    pub fn next_refresh_in(&self) -> Duration {
        let every = self.refresh_every();
        match self.readiness() {
            Ok(_) => every,
            Err(_) => self.config.min_refresh.max(Duration::from_secs(1)).min(every),
        }
    }

    /// Refreshes unless one happened within `min_refresh`.
    async fn refresh_rate_limited(&self) {
        // Decide under the lock: two tokens with an unknown key id at once make one fetch.
        let _one_at_a_time = self.refresh_lock.lock().await;
        if self.refresh_due() {
            self.refresh_logged().await;
        }
    }

    /// Waits, at most until [`KEY_WAIT`] after it began, for a fetch of the key set: the
    /// running one, or a new one when due. The fetch runs in its own task, so a token that
    /// stops waiting does not cancel it.
    async fn await_refresh(self: &Arc<Self>) {
        let mut done = self.awaited_done.subscribe();
        let began = {
            let mut since = self.awaited_since.lock().unwrap_or_else(|p| p.into_inner());
            match *since {
                Some(t) => t,
                None if !self.refresh_due() => return,
                None => {
                    let now = Instant::now();
                    *since = Some(now);
                    let fetch = AwaitedFetch(Arc::clone(self));
                    tokio::spawn(async move {
                        fetch.0.refresh_rate_limited().await;
                        drop(fetch);
                    });
                    now
                }
            }
        };
        let _ = tokio::time::timeout_at((began + KEY_WAIT).into(), done.changed()).await;
    }

    fn refresh_due(&self) -> bool {
        !self.last_refresh.lock().unwrap().is_some_and(|t| t.elapsed() < self.config.min_refresh)
    }

    /// Is there anything to verify tokens with? `Err` says what is wrong (for `/readyz`).
    pub fn readiness(&self) -> Result<usize, NotReady> {
        let s = self.state.load();
        let n = s.keys.keys.len() + usize::from(self.config.hmac_secret.is_some());
        if n > 0 {
            // A failing refresh with keys still in use is reported by `last_error`.
            return Ok(n);
        }
        Err(match (&s.last_error, s.loaded_at) {
            (Some(e), _) => NotReady::FetchFailed(e.clone()),
            (None, None) => NotReady::NotLoaded,
            (None, Some(_)) => NotReady::Empty,
        })
    }

    /// The last refresh error, if the most recent refresh failed.
    pub fn last_error(&self) -> Option<String> {
        self.state.load().last_error.clone()
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        // jsonwebtoken checks `iss` and `aud` only when the token has them: a configured issuer
        // or audience must also make the claim required, or a token without it would pass
        // (found by fuzzing, `fuzz/fuzz_targets/jwt_verify.rs`).
        let mut required = vec!["exp"];
        match &self.config.issuer {
            Some(iss) => {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            None => v.iss = None,
        }
        match &self.config.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        v.set_required_spec_claims(&required);
        v
    }

    fn decode_with(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
        jwk: Option<&Jwk>,
    ) -> Result<Verified, Refused> {
        let data = jsonwebtoken::decode::<Value>(token, key, &self.validation(alg))
            .map_err(|e| Refused(describe(&e)))?;
        let exp =
            data.claims["exp"].as_u64().ok_or_else(|| Refused("the token's exp is not a number".into()))?;
        self.check_kind_and_party(&data.claims)?;
        // A parsed JSON value takes about twice its text.
        let bytes = 2 * data.claims.to_string().len() + 256;
        Ok(Verified { claims: data.claims, exp, key: jwk.map(|k| Arc::new(k.clone())), bytes })
    }

    /// Only access tokens (Keycloak also signs ID and refresh tokens with the same keys; a
    /// token without `typ` is accepted), and only those issued to an authorized party when
    /// a list is configured.
    fn check_kind_and_party(&self, claims: &Value) -> Result<(), Refused> {
        match claims.get("typ") {
            None => {}
            Some(Value::String(t)) if t.eq_ignore_ascii_case("Bearer") => {}
            Some(other) => {
                let shown =
                    other.as_str().map(|t| truncate(t).to_string()).unwrap_or_else(|| other.to_string());
                return Err(Refused(format!(
                    "not an access token (typ {:?}): send the access token, not an ID or refresh token",
                    truncate(&shown)
                )));
            }
        }
        if !self.config.authorized_parties.is_empty() {
            let azp = claims.get("azp").and_then(Value::as_str);
            if !azp.is_some_and(|a| self.config.authorized_parties.iter().any(|p| p == a)) {
                return Err(Refused(format!(
                    "the token was issued to {}, not to an authorized party ({})",
                    azp.map(|a| format!("client {:?}", truncate(a)))
                        .unwrap_or_else(|| "no client (no azp)".into()),
                    self.config.authorized_parties.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Verifies a token: signature, algorithm, `exp`, `nbf`, `iss`, `aud`. A key id the set
    /// does not hold may be a rotated-in key: this waits for a (rate-limited) refresh first.
    /// The wait is bounded by [`KEY_WAIT`].
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<Verified, Refused> {
        let header = header_of(token)?;
        if !is_hmac(header.alg) && self.candidate_keys(&header).is_empty() {
            self.await_refresh().await;
        }
        self.verify_with(token, &header)
    }

    /// Verifies a token with the keys held now, without waiting for anything: what a broker's
    /// event loop can afford. A key id the set does not hold is refused and a refresh is
    /// requested from the refresher task, so a client that retries after it is accepted.
    pub fn verify_now(&self, token: &str) -> Result<Verified, Refused> {
        let header = header_of(token)?;
        if !is_hmac(header.alg) && self.candidate_keys(&header).is_empty() && self.refresh_due() {
            self.refresh_wanted.notify_one();
            self.refresh_wanted_flag.store(true, std::sync::atomic::Ordering::Release);
        }
        self.verify_with(token, &header)
    }

    fn verify_with(&self, token: &str, header: &jsonwebtoken::Header) -> Result<Verified, Refused> {
        if is_hmac(header.alg) {
            return match &self.config.hmac_secret {
                Some(secret) => self.decode_with(token, &DecodingKey::from_secret(secret), header.alg, None),
                None => Err(Refused(format!(
                    "algorithm {:?} is not accepted: only asymmetric signatures (RS*, PS*, ES*, EdDSA)",
                    header.alg
                ))),
            };
        }
        self.verify_with_known(token, header)
    }

    /// Does the key that verified `v` still belong to the key set? A key removed from the
    /// issuer's set (rotated out) takes its cached verifications with it.
    pub fn still_trusts(&self, v: &Verified) -> bool {
        match &v.key {
            None => self.config.hmac_secret.is_some(),
            Some(k) => self.state.load().keys.keys.iter().any(|have| have == k.as_ref()),
        }
    }

    /// The keys that may have signed a token with this header: those with its `kid`, or all
    /// when it names none.
    fn candidate_keys(&self, header: &jsonwebtoken::Header) -> Vec<Jwk> {
        let state = self.state.load();
        match &header.kid {
            Some(kid) => {
                state.keys.keys.iter().filter(|k| k.common.key_id.as_deref() == Some(kid)).cloned().collect()
            }
            None => state.keys.keys.clone(),
        }
    }

    fn verify_with_known(&self, token: &str, header: &jsonwebtoken::Header) -> Result<Verified, Refused> {
        let candidates = self.candidate_keys(header);
        if candidates.is_empty() {
            let mut why = match &header.kid {
                Some(kid) => format!("unknown signing key (kid {:?})", truncate(kid)),
                None => "unknown signing key (the token has no kid and no key is configured)".into(),
            };
            if let Some(e) = &self.state.load().last_error {
                why.push_str("; the key set could not be fetched again: ");
                why.push_str(e);
            }
            return Err(Refused(why));
        }
        let mut last = Refused(format!("no key accepts algorithm {:?}", header.alg));
        for jwk in &candidates {
            if !algorithms_for(jwk).contains(&header.alg) {
                continue;
            }
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(k) => k,
                Err(e) => {
                    last = Refused(format!("unusable key: {}", describe(&e)));
                    continue;
                }
            };
            match self.decode_with(token, &key, header.alg, Some(jwk)) {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Refreshes the key set on the current tokio runtime until it shuts down: every
    /// [`Verifier::next_refresh_in`] (a JWKS file is re-read too, so a rotated file is picked
    /// up), and when `verify_now` met an unknown key id (at most once per `min_refresh`).
    /// Requests for a refresh never postpone the scheduled one.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut due = tokio::time::Instant::now() + me.next_refresh_in();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {
                        me.refresh_scheduled().await;
                        due = tokio::time::Instant::now() + me.next_refresh_in();
                    }
                    _ = me.refresh_wanted.notified() => me.refresh_rate_limited().await,
                }
            }
        })
    }
}

fn header_of(token: &str) -> Result<jsonwebtoken::Header, Refused> {
    jsonwebtoken::decode_header(token).map_err(|e| Refused(format!("malformed token: {}", describe(&e))))
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A short reason for a jsonwebtoken error, without the token.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidIssuer => "wrong issuer (iss)".into(),
        K::InvalidAudience => "wrong audience (aud)".into(),
        K::InvalidSignature => "invalid signature".into(),
        K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        K::InvalidAlgorithm => "the algorithm does not match the key".into(),
        K::InvalidToken => "not a JWT".into(),
        K::Base64(_) => "not a JWT (bad base64)".into(),
        K::Json(_) | K::Utf8(_) => "not a JWT (bad JSON)".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_key_set_urls_without_credentials() {
        assert_eq!(shown("https://user:secret@idp.example/jwks"), "https://idp.example/jwks");
        assert_eq!(shown("https://idp.example/realms/c/certs"), "https://idp.example/realms/c/certs");
        assert_eq!(shown("not a url"), "not a url");
    }

    #[test]
    fn keys_travel_over_tls_or_loopback_unless_the_operator_says_otherwise() {
        use PlainHttp::*;
        for ok in [
            "https://idp.example/realms/c",
            "http://127.0.0.1:8080/realms/c",
            "http://[::1]/jwks",
            "http://localhost/jwks",
        ] {
            assert!(check_transport(ok, LoopbackOnly, "the key set URL").is_ok(), "{ok}");
        }
        let e = check_transport("http://keycloak:8080/realms/c", LoopbackOnly, "the issuer").unwrap_err().0;
        assert!(e.starts_with("the issuer http://keycloak:8080/realms/c is plain http://"), "{e}");
        assert!(e.contains("--private-network-http"), "{e}");
        assert!(check_transport("http://keycloak:8080/realms/c", Allowed, "the issuer").is_ok());
        assert!(check_transport("http://127.1.2.3/jwks", LoopbackOnly, "x").is_ok(), "all of 127/8");
        assert!(check_transport("ftp://idp/jwks", Allowed, "x").unwrap_err().0.contains("not ftp://"));
        assert!(check_transport("not a url", Allowed, "x").unwrap_err().0.contains("is not a URL"));
    }
}
