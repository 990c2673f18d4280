//! Pulling bundles: `--policy-url` in the server, `plugin_opt_policy_url` in the broker
//! plugin. Every `every` seconds a conditional GET (`If-None-Match`); a new bundle becomes a
//! candidate of the test-gated pipeline ([`Live::propose`]), on a blocking thread. A bundle
//! that is refused stays refused until the URL serves another one (its ETag is kept); a
//! failed pull is logged once per change of error, and its recovery once.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::bundle::{Bundle, Contents};
use crate::{Candidate, Live, Source};

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
}

impl PullStatus {
    pub fn json(&self) -> Value {
        json!({"url": self.url, "every_seconds": self.every_seconds, "pulls": self.pulls,
               "last_pull_at": self.last_pull_at, "last_change_at": self.last_change_at,
               "etag": self.etag, "last_error": self.last_error})
    }
}

enum Pulled {
    Unchanged,
    New(Box<Contents>, String),
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
    let etag = served_etag.unwrap_or_else(|| contents.etag.clone());
    Ok(Pulled::New(Box::new(contents), etag))
}

/// Pulls `url` now and every `every` until the runtime it is spawned on ends (call it within
/// a tokio runtime). `token` is sent as a Bearer token.
pub fn spawn_puller(
    live: Arc<Live>,
    url: String,
    token: Option<String>,
    every: Duration,
    status: Arc<Mutex<PullStatus>>,
) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    {
        let mut s = status.lock().unwrap();
        s.url = url.clone();
        s.every_seconds = every.as_secs();
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut etag: Option<String> = None;
        loop {
            tick.tick().await;
            let pulled = pull_once(&client, &url, token.as_deref(), etag.as_deref()).await;
            let (result, error) = match pulled {
                Ok(Pulled::Unchanged) => ("unchanged", None),
                Ok(Pulled::New(contents, new_etag)) => {
                    etag = Some(new_etag);
                    let live = Arc::clone(&live);
                    let source = Source::Bundle(url.clone());
                    let proposed = tokio::task::spawn_blocking(move || {
                        live.propose(Candidate::Bundle { contents: *contents, source })
                    })
                    .await;
                    match proposed {
                        Ok(Ok(g)) => {
                            tracing::info!(url = %url, generation = g.id, "pulled a bundle; it is live");
                            status.lock().unwrap().last_change_at = Some(secs_now());
                            ("updated", None)
                        }
                        Ok(Err(r)) => ("rejected", Some(format!("the bundle was refused: {}", r.reason))),
                        Err(_) => ("rejected", Some("building the bundle failed unexpectedly".to_string())),
                    }
                }
                Err(e) => ("failed", Some(e)),
            };
            metrics::counter!("mqtt_policy_bundle_pulls_total", "result" => result).increment(1);
            let mut s = status.lock().unwrap();
            s.pulls += 1;
            s.last_pull_at = Some(secs_now());
            s.etag.clone_from(&etag);
            if s.last_error != error {
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
        }
    });
    Ok(())
}
