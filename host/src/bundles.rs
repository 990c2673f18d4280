//! Policy distribution between replicas and brokers: `GET /bundle` publishes the live
//! generation (policy, module, test cases) on the operations listener, and `--policy-url`
//! pulls one (from another service, or any static HTTP server or object store holding a file
//! written by `mqtt-policy bundle`) every `--policy-poll` seconds with a conditional request,
//! into the same test-gated pipeline as any other candidate. A bundle that fails there is
//! refused and reported; the last good one stays live.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use policy_engine::bundle::Bundle;
use policy_engine::{Candidate, Live, Source};

use crate::serve::AppState;

/// The largest bundle a pull accepts (a module may be 32 MiB, as base64 a third more).
pub const MAX_BUNDLE_BYTES: usize = 48 << 20;

fn secs_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// `GET /bundle`: the live generation as a bundle, with an ETag (`If-None-Match` → 304).
pub async fn get_bundle(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let Some(want) = st.bundle_token else {
        return error(StatusCode::NOT_FOUND, "publishing bundles is off: start with --bundle-token-file");
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(crate::admin::token_digest);
    if given != Some(want) {
        tracing::warn!("GET /bundle without the bundle token");
        return error(
            StatusCode::UNAUTHORIZED,
            "the bundle token is required: Authorization: Bearer <token>",
        );
    }
    let live = Arc::clone(&st.live);
    let bundle = match tokio::task::spawn_blocking(move || live.bundle()).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return error(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot make the bundle: {e}"));
        }
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "making the bundle failed unexpectedly"),
    };
    let etag = bundle.etag();
    let etag_header = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    if matches {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_header)]).into_response();
    }
    (
        StatusCode::OK,
        [(header::ETAG, etag_header), (header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        axum::Json(bundle),
    )
        .into_response()
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
    New(Box<policy_engine::bundle::Contents>, String),
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
        req = req.header(header::IF_NONE_MATCH, e);
    }
    let mut resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    if resp.status() == StatusCode::NOT_MODIFIED {
        return Ok(Pulled::Unchanged);
    }
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(format!("GET {url}: {status} {}", body.chars().take(200).collect::<String>()));
    }
    let served_etag = resp.headers().get(header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_string);
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

/// Pulls `url` now and every `every`, until the process ends. Each new bundle becomes a
/// candidate; failures are logged once per change of error and counted.
pub fn spawn_puller(
    live: Arc<Live>,
    url: String,
    token: Option<String>,
    every: Duration,
    status: Arc<Mutex<PullStatus>>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(60))
        .build()?;
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
