//! Pulling bundles: `--policy-url` in the server, `plugin_opt_policy_url` in the broker
//! plugin. Every `every` seconds a conditional GET (`If-None-Match`); a new bundle must be
//! signed by one of the trusted keys ([`Trust`]), then becomes a candidate of the test-gated
//! pipeline ([`Live::propose`]), on a blocking thread. A bundle that is refused (untrusted,
//! or failing the pipeline) stays refused until the URL serves another one (its ETag is
//! kept), and the live generation stays; a failed pull is logged once per change of error,
//! and its recovery once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::bundle::{Bundle, BundleError, Contents, TrustedKeys};
use crate::{Candidate, Live, Source};

/// Which bundles a puller takes.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only bundles signed by one of these keys.
    Signed(TrustedKeys),
    /// Any bundle, signed or not: the operator chose it explicitly, knowing that whoever can
    /// answer for the URL then decides the policy.
    InsecureUnsigned,
}

/// The largest bundle a pull accepts (a module may be 32 MiB, as base64 a third more).
pub const MAX_BUNDLE_BYTES: usize = 48 << 20;

fn secs_now() -> u64 {
    crate::swap::secs(SystemTime::now())
}

/// What the puller did last, for `/readyz` and `/admin/status`.
#[derive(Debug, Default)]
pub struct PullStatus {
    pub url: String,
    pub every_seconds: u64,
    pub pulls: u64,
    pub last_pull_at: Option<u64>,
    pub last_change_at: Option<u64>,
    pub etag: Option<String>,
    pub last_error: Option<String>,
    /// Pulls by result: `unchanged`, `updated`, `rejected` (the test-gated pipeline refused
    /// it), `untrusted` (not signed by a trusted key), `failed` (not fetched or not a bundle).
    pub results: BTreeMap<&'static str, u64>,
}

impl PullStatus {
    pub fn json(&self) -> Value {
        json!({"url": self.url, "every_seconds": self.every_seconds, "pulls": self.pulls,
               "last_pull_at": self.last_pull_at, "last_change_at": self.last_change_at,
               "etag": self.etag, "last_error": self.last_error, "results": self.results})
    }
}

enum Pulled {
    Unchanged,
    /// A bundle, and the ETag its server sent, if any.
    New(Box<Contents>, Option<String>),
}

async fn pull_once(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    etag: Option<&str>,
) -> Result<Pulled, String> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(e) = etag {
        req = req.header(reqwest::header::IF_NONE_MATCH, e);
    }
    let mut resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Pulled::Unchanged);
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("GET {url}: {status} {}", body.chars().take(200).collect::<String>()));
    }
    let served_etag =
        resp.headers().get(reqwest::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
        if body.len() + chunk.len() > MAX_BUNDLE_BYTES {
            return Err(format!("GET {url}: the bundle is larger than {} MiB", MAX_BUNDLE_BYTES >> 20));
        }
        body.extend_from_slice(&chunk);
    }
    let contents = Bundle::read(&body).map_err(|e| format!("{url}: {e}"))?;
    Ok(Pulled::New(Box::new(contents), served_etag))
}

/// A signed bundle issued before the newest one taken is an old one replayed (to roll the
/// policy back): refused.
fn not_older(contents: &Contents, newest_issued: Option<u64>) -> Result<(), BundleError> {
    match (newest_issued, contents.issued_at) {
        (Some(newest), Some(issued)) if issued < newest => Err(BundleError::Untrusted(format!(
            "it was issued at {issued}, before the bundle already taken ({newest}): an old bundle served \
             again is not taken back"
        ))),
        _ => Ok(()),
    }
}

/// How a pulled bundle that was refused before the pipeline saw it is counted in
/// [`PullStatus::results`].
fn counted_as(e: &BundleError) -> &'static str {
    match e {
        BundleError::Untrusted(_) => "untrusted",
        BundleError::Malformed(_) | BundleError::Unreadable(_) => "failed",
    }
}

/// Pulls `url` now and every `every` until the runtime it is spawned on ends (call it within
/// a tokio runtime). `token` is sent as a Bearer token. `Err`: no HTTP client could be made
/// (nothing was spawned); a failing pull is never an error here, only a status and a log line.
pub fn spawn_puller(
    live: Arc<Live>,
    url: String,
    token: Option<String>,
    every: Duration,
    trust: Trust,
    status: Arc<Mutex<PullStatus>>,
) -> anyhow::Result<()> {
    let mut puller = Puller::new(live, url, token, every, trust, status)?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            puller.pull().await;
        }
    });
    Ok(())
}

/// One bundle source and what its pulls so far have seen: [`Puller::pull`] pulls once. For an
/// owner that schedules pulls itself (the broker plugin, which keeps no thread waiting);
/// [`spawn_puller`] pulls on a timer.
pub struct Puller {
    live: Arc<Live>,
    url: String,
    token: Option<String>,
    trust: Trust,
    status: Arc<Mutex<PullStatus>>,
    client: reqwest::Client,
    /// The server's ETag of the last bundle taken: asked with If-None-Match. (Not that of a
    /// refused one: a forged answer must not be able to hide the next good bundle.)
    taken: Option<String>,
    /// The last bundle seen, taken or refused, by its content: a server that ignores
    /// If-None-Match serves it again, which is no news.
    seen: Option<String>,
    /// When the newest bundle taken was issued: an older one is a replay.
    newest_issued: Option<u64>,
    /// The last new bundle was refused (its error stands while the URL serves it).
    refused: bool,
}

impl Puller {
    /// `Err`: no HTTP client could be made.
    pub fn new(
        live: Arc<Live>,
        url: String,
        token: Option<String>,
        every: Duration,
        trust: Trust,
        status: Arc<Mutex<PullStatus>>,
    ) -> anyhow::Result<Puller> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot make an HTTP client: {e}"))?;
        {
            let mut s = status.lock().unwrap();
            s.url = url.clone();
            s.every_seconds = every.as_secs();
        }
        Ok(Puller {
            live,
            url,
            token,
            trust,
            status,
            client,
            taken: None,
            seen: None,
            newest_issued: None,
            refused: false,
        })
    }

    /// Pulls once: a new, trusted bundle is proposed to the live generation (built on a
    /// blocking thread); the outcome goes to the status, the metrics and, when news, the log.
    pub async fn pull(&mut self) {
        let url = self.url.as_str();
        let pulled = pull_once(&self.client, url, self.token.as_deref(), self.taken.as_deref()).await;
        let (result, error) = match pulled {
            Ok(Pulled::Unchanged) => ("unchanged", None),
            Ok(Pulled::New(contents, _)) if self.seen.as_ref() == Some(&contents.etag) => ("unchanged", None),
            Ok(Pulled::New(contents, served)) => 'new: {
                self.seen = Some(contents.etag.clone());
                if let Trust::Signed(keys) = &self.trust
                    && let Err(why) =
                        keys.verify(&contents).and_then(|_| not_older(&contents, self.newest_issued))
                {
                    break 'new (counted_as(&why), Some(format!("the bundle was refused: {why}")));
                }
                let issued = contents.issued_at;
                let content_etag = contents.etag.clone();
                let live = Arc::clone(&self.live);
                let source = Source::Bundle(url.to_string());
                let proposed =
                    tokio::task::spawn_blocking(move || live.propose(Candidate::Bundle { contents, source }))
                        .await;
                match proposed {
                    Ok(Ok(g)) => {
                        tracing::info!(url = %url, generation = g.id, "pulled a bundle; it is live");
                        self.status.lock().unwrap().last_change_at = Some(secs_now());
                        self.taken = Some(served.unwrap_or(content_etag));
                        self.newest_issued = self.newest_issued.max(issued);
                        ("updated", None)
                    }
                    Ok(Err(r)) => ("rejected", Some(format!("the bundle was refused: {}", r.reason))),
                    Err(_) => ("rejected", Some("building the bundle failed unexpectedly".to_string())),
                }
            }
            Err(e) => ("failed", Some(e)),
        };
        metrics::counter!("mqtt_policy_bundle_pulls_total", "result" => result).increment(1);
        let mut s = self.status.lock().unwrap();
        s.pulls += 1;
        *s.results.entry(result).or_default() += 1;
        s.last_pull_at = Some(secs_now());
        s.etag.clone_from(&self.seen);
        // A refused bundle is news each time (a new ETag each time); a failing fetch only
        // when its error changes.
        if result == "unchanged" && self.refused {
            // The last new bundle was refused and is still what the URL serves.
        } else if let (Some(e), "untrusted" | "rejected") = (&error, result) {
            tracing::warn!(url = %url, error = %e, result, "a pulled policy bundle was refused; the live policy stays");
            s.last_error = error;
            self.refused = true;
        } else if s.last_error != error {
            match &error {
                Some(e) => {
                    tracing::warn!(url = %url, error = %e, "pulling the policy bundle failed; the live policy stays")
                }
                None if s.last_error.is_some() => {
                    tracing::info!(url = %url, "pulling the policy bundle works again")
                }
                None => {}
            }
            s.last_error = error;
        }
        if matches!(result, "updated" | "failed") {
            self.refused = false;
        }
    }
}
