//! Admin endpoints: roll out a policy or module, reload from disk, see what is live.
//!
//! Off unless an admin token is configured; every call needs it as `Authorization: Bearer`.
//! They are served on the operations listener (`--ops-listen`), never on go-auth's address.
//!
//! - `PUT /admin/policy` (a policy document), `PUT /admin/module` (a component): a candidate;
//!   200 with the new status when it went live (its `last_swap.diff` says what changed), 422
//!   with the reason when it was rejected. With `?dry_run=true`: built, tested and compared
//!   with the live generation, never swapped in; 200 with `{"dry_run": true, "diff": ...}`,
//!   or 422 with why it would be rejected.
//! - `POST /admin/reload`: re-read the module and policy files (as `SIGHUP` does).
//! - `GET /admin/status`: generation, module and policy (source, hash, version, rules),
//!   when it was loaded, how many swaps, the last swap and what it changed (a diff summary:
//!   counts per action, the first witnesses), the last rejected candidate and why.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;
use tower_http::limit::RequestBodyLimitLayer;

use policy_engine::{Candidate, Source};

use crate::state::{AppState, bearer_is};

/// A module upload may be this large.
pub const ADMIN_BODY_LIMIT: usize = 32 << 20;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

async fn require_token(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(want) = st.admin_token else {
        return error(StatusCode::NOT_FOUND, "the admin endpoints are off");
    };
    if !bearer_is(req.headers(), &want) {
        tracing::warn!(path = %req.uri().path(), "admin call without a valid admin token");
        return error(StatusCode::UNAUTHORIZED, "an admin token is required: Authorization: Bearer <token>");
    }
    next.run(req).await
}

async fn answer(st: &AppState, candidate: Candidate) -> Response {
    // A build can take a second or more: off the async workers.
    let live = Arc::clone(st.live());
    let proposed = tokio::task::spawn_blocking(move || live.propose(candidate)).await;
    let Ok(proposed) = proposed else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the candidate build failed unexpectedly");
    };
    match proposed {
        Ok(_) => (StatusCode::OK, axum::Json(st.status())).into_response(),
        Err(r) => (StatusCode::UNPROCESSABLE_ENTITY, axum::Json(json!({"rejected": r, "live": st.status()})))
            .into_response(),
    }
}

/// `?dry_run=true`: build, test and diff the candidate, but do not swap it in.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    #[serde(default)]
    dry_run: bool,
}

fn upload_params(q: Result<Query<Upload>, QueryRejection>) -> Result<Upload, String> {
    q.map(|Query(u)| u).map_err(|e| format!("{}: the only parameter is dry_run=true|false", e.body_text()))
}

async fn dry_run(st: &AppState, candidate: Candidate) -> Response {
    let live = Arc::clone(st.live());
    let Ok(tried) = tokio::task::spawn_blocking(move || live.dry_run(candidate)).await else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "the candidate build failed unexpectedly");
    };
    match tried {
        Ok(report) => (StatusCode::OK, axum::Json(report)).into_response(),
        Err(r) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({"dry_run": true, "rejected": r, "live": st.status()})),
        )
            .into_response(),
    }
}

/// A candidate swapped in, or with `?dry_run=true` only built, tested and diffed.
async fn submit(st: &AppState, q: Result<Query<Upload>, QueryRejection>, candidate: Candidate) -> Response {
    match upload_params(q) {
        Err(why) => error(StatusCode::BAD_REQUEST, why),
        Ok(Upload { dry_run: true }) => dry_run(st, candidate).await,
        Ok(_) => answer(st, candidate).await,
    }
}

async fn put_policy(
    State(st): State<Arc<AppState>>,
    q: Result<Query<Upload>, QueryRejection>,
    body: Bytes,
) -> Response {
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return error(StatusCode::BAD_REQUEST, "a policy document is UTF-8 JSON");
    };
    submit(&st, q, Candidate::Policy { text, source: Source::Uploaded }).await
}

async fn put_module(
    State(st): State<Arc<AppState>>,
    q: Result<Query<Upload>, QueryRejection>,
    body: Bytes,
) -> Response {
    submit(&st, q, Candidate::Module { bytes: body.to_vec(), source: Source::Uploaded }).await
}

async fn reload(State(st): State<Arc<AppState>>) -> Response {
    answer(&st, Candidate::Reload).await
}

async fn status(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(st.status()).into_response()
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/admin/policy", put(put_policy))
        .route("/admin/module", put(put_module))
        .route("/admin/reload", post(reload))
        .route("/admin/status", get(status))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), require_token))
        .layer(RequestBodyLimitLayer::new(ADMIN_BODY_LIMIT))
        .with_state(state)
}
