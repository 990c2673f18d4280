//! The throughput floor for `cargo xtask bench-http`: a trivial axum endpoint that reads the
//! same request body as `/mqtt/acl` and answers `{"ok":true,"error":""}`, with nothing else
//! (no parsing, no token, no policy). `mqtt-policy serve` is measured against it in the
//! same run.

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let app = Router::new().route(
        "/mqtt/acl",
        post(|body: Bytes| async move {
            std::hint::black_box(body);
            axum::Json(serde_json::json!({"ok": true, "error": ""}))
        }),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("floor listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
