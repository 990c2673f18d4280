//! `/playground/`: the browser playground (`web-playground/`), its files embedded in this
//! binary at build time (see `build.rs`). Static files only: the page runs `policy-core` in
//! the browser and sends nothing back to this server.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

include!(concat!(env!("OUT_DIR"), "/playground_assets.rs"));

/// Whether this binary carries the playground.
pub fn embedded() -> bool {
    !ASSETS.is_empty()
}

pub fn router() -> Router {
    Router::new()
        .route("/playground", get(|| async { Redirect::permanent("/playground/") }))
        .route("/playground/", get(|| async { asset("index.html") }))
        .route("/playground/{*path}", get(|Path(path): Path<String>| async move { asset(&path) }))
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("wasm") => "application/wasm",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// The page needs its own scripts, styles and WebAssembly, nothing from elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; \
                   img-src 'self' data: blob:; connect-src 'self'; worker-src 'self'; object-src 'none'; \
                   base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(path: &str) -> Response {
    if !embedded() {
        return (
            StatusCode::NOT_FOUND,
            "this mqtt-policy was built without the playground: build it with `cargo xtask build`\n",
        )
            .into_response();
    }
    let Some((_, bytes)) = ASSETS.iter().find(|(p, _)| *p == path) else {
        return (StatusCode::NOT_FOUND, "no such playground file\n").into_response();
    };
    let mut res = bytes.into_response();
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(path)));
    // Revalidate every time: the service worker keeps the page usable offline.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    res
}
