//! How the broker-facing listener answers: the response body type its endpoints and its
//! router share, and the answer formats go-auth reads. Imports nothing of this crate.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::{HeaderValue, Response, StatusCode, header};
use http_body::{Frame, SizeHint};

/// How answers are written (go-auth's `*_response_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResponseMode {
    /// 200/403 with `{"ok": bool, "error": str}`: for go-auth's `status` and `json` modes.
    Json,
    /// 200 `ok`, or 403 with the reason as plain text: for go-auth's `text` mode.
    Text,
}

/// A response body: bytes known in full (go-auth's answers), or whatever the router made.
pub enum Out {
    Full(Option<Bytes>),
    Routed(axum::body::Body),
}

impl http_body::Body for Out {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.get_mut() {
            Out::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Out::Routed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Out::Full(b) => b.is_none(),
            Out::Routed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Out::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Out::Routed(b) => b.size_hint(),
        }
    }
}

/// A complete answer: status, content type, body.
pub fn answer(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Out> {
    let mut r = Response::new(Out::Full(Some(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
