//! Policy distribution between replicas and brokers: `GET /bundle` publishes the live
//! generation (policy, module, test cases) on the operations listener, signed with
//! `--bundle-signing-key` when given (pullers refuse unsigned bundles unless told otherwise). Pulling one
//! (`--policy-url`, from another service or any static HTTP server or object store holding a
//! file written by `mqtt-policy bundle`) is `policy_engine::pull`, shared with the plugin.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::{AppState, bearer_is};

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({"error": message.into()}))).into_response()
}

/// `GET /bundle`: the live generation as a bundle, with an ETag (`If-None-Match` → 304).
pub async fn get_bundle(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let Some(want) = st.bundle_token else {
        return error(StatusCode::NOT_FOUND, "publishing bundles is off: start with --bundle-token-file");
    };
    if !bearer_is(req.headers(), &want) {
        tracing::warn!("GET /bundle without the bundle token");
        return error(
            StatusCode::UNAUTHORIZED,
            "the bundle token is required: Authorization: Bearer <token>",
        );
    }
    let live = Arc::clone(st.live());
    let bundle = match tokio::task::spawn_blocking(move || live.bundle()).await {
        Ok(Ok(mut b)) => {
            if let Some(key) = &st.bundle_signing_key {
                b.sign(key, st.live().live_since());
            }
            b
        }
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
