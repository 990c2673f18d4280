//! The operations listener's endpoints (`/healthz`, `/readyz`, `/metrics`, the dev key set)
//! and the two routers: what operators call, and what brokers call besides go-auth's
//! endpoints. Handlers over [`AppState`] only.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::state::{AppState, BODY_LIMIT, REQUEST_TIMEOUT};

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    let verifier = &st.authorizer.identities.verifier;
    let keys = verifier.readiness();
    let mut body = st.status();
    let sessions_ok = st.sessions.as_ref().is_none_or(|r| r.reachable());
    body["ready"] = json!(keys.is_ok() && sessions_ok);
    body["keys"] = match &keys {
        Ok(n) => json!({"count": n, "last_error": verifier.last_error()}),
        Err(e) => json!({"error": e.to_string()}),
    };
    body["uptime_seconds"] = json!(st.started.elapsed().map(|d| d.as_secs()).unwrap_or(0));
    let status = if keys.is_ok() && sessions_ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(body)).into_response()
}

async fn metrics_endpoint(State(st): State<Arc<AppState>>) -> String {
    metrics::counter!("mqtt_policy_log_lines_dropped_total").absolute(st.audit.dropped());
    let mut text = st.prometheus.render();
    crate::reqmetrics::render(&mut text);
    st.authorizer.metrics.render(&mut text);
    text
}

async fn dev_jwks(State(st): State<Arc<AppState>>) -> Response {
    match &st.dev_jwks {
        Some(j) => axum::Json(j.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// What brokers call besides go-auth's endpoints (which `front.rs` serves itself):
/// `/healthz`, and in dev mode the dev key set.
pub fn broker_router(state: Arc<AppState>, dev: bool) -> Router {
    let mut router = Router::new().route("/healthz", get(healthz));
    if dev {
        router = router.route("/dev/jwks.json", get(dev_jwks));
    }
    router.layer(RequestBodyLimitLayer::new(BODY_LIMIT)).with_state(state)
}

/// What operators call: health, readiness, metrics, and the admin endpoints when on.
pub fn ops_router(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_endpoint))
        .route("/bundle", get(crate::bundles::get_bundle))
        .route("/dev/jwks.json", get(dev_jwks));
    let router = router
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        // Spans name the method and path only: a query string may hold a token.
        .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
            tracing::debug_span!("http", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(Arc::clone(&state));
    match state.admin_token {
        Some(_) => router.merge(crate::admin::router(state)),
        None => router,
    }
}
