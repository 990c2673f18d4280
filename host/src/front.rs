//! The broker-facing listener (`--listen`), served by hyper directly.
//!
//! go-auth's three endpoints are the service's hot path: a request for one of them goes from
//! hyper straight to [`goauth::handle`], with no router, no boxed request body and no
//! body-limit wrapper (`goauth` bounds the body's size and the time it takes itself). Anything
//! else on this listener (`/healthz`, and in dev mode the dev key set and the playground) goes
//! to an axum router. Connections speak HTTP/1.1, which is what go-auth's client speaks.
//!
//! Shutdown: no new connections are accepted; each open one finishes the request it is serving
//! and closes; the listener waits at most [`DRAIN_FOR`] for them.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower::ServiceExt;

use crate::goauth::{self, Endpoint};
use crate::respond::{Out, answer};
use crate::state::AppState;

/// The longest shutdown waits for open connections to finish their requests.
pub const DRAIN_FOR: Duration = Duration::from_secs(15);

/// Which of go-auth's endpoints a path names.
fn endpoint(path: &str) -> Option<Endpoint> {
    match path {
        "/mqtt/acl" => Some(Endpoint::Acl),
        "/mqtt/user" => Some(Endpoint::User),
        "/mqtt/superuser" => Some(Endpoint::Superuser),
        _ => None,
    }
}

/// The listener's request handler.
#[derive(Clone)]
struct Front {
    /// The service's state lives as long as the process; borrowing it costs no reference count
    /// per request.
    state: &'static AppState,
    rest: Router,
}

type Answer = Pin<Box<dyn Future<Output = Result<Response<Out>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Front {
    type Response = Response<Out>;
    type Error = Infallible;
    type Future = Answer;

    fn call(&self, req: Request<Incoming>) -> Answer {
        match endpoint(req.uri().path()) {
            Some(e) if matches!(*req.method(), Method::POST | Method::GET | Method::PUT) => {
                let state = self.state;
                Box::pin(async move { Ok(goauth::handle(e, state, req).await) })
            }
            Some(_) => {
                let mut r = answer(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "application/json",
                    Bytes::from_static(
                        br#"{"error":"go-auth's endpoints take POST, GET or PUT","ok":false}"#,
                    ),
                );
                r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET,POST,PUT"));
                Box::pin(std::future::ready(Ok(r)))
            }
            None => {
                let rest = self.rest.clone();
                Box::pin(async move {
                    let r = rest.oneshot(req.map(axum::body::Body::new)).await.unwrap_or_else(|e| match e {});
                    Ok(r.map(Out::Routed))
                })
            }
        }
    }
}

/// Connections told to finish: a flag checked on every poll (one load, no lock), and the
/// wakers of the connections waiting, woken once when it is set.
#[derive(Default)]
struct Drain {
    on: AtomicBool,
    waiting: Mutex<HashMap<u64, Waker>>,
    next: AtomicU64,
}

impl Drain {
    fn start(&self) {
        self.on.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> =
            self.waiting.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, w)| w).collect();
        wakers.into_iter().for_each(Waker::wake);
    }
}

type Http1<I> = hyper::server::conn::http1::Connection<TokioIo<I>, Front>;

/// One connection, which finishes its request and closes once the drain starts.
struct Conn<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> {
    conn: Pin<Box<Http1<I>>>,
    drain: Arc<Drain>,
    id: u64,
    /// The waker registered with `drain` (a task's waker rarely changes).
    registered: Option<Waker>,
    closing: bool,
}

impl<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn<I> {
    fn close_if_draining(&mut self) {
        if !self.closing && self.drain.on.load(Ordering::SeqCst) {
            self.closing = true;
            self.conn.as_mut().graceful_shutdown();
        }
    }
}

impl<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Future for Conn<I> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.close_if_draining();
        loop {
            if let Poll::Ready(r) = this.conn.as_mut().poll(cx) {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "a broker connection ended with an error");
                }
                return Poll::Ready(());
            }
            if this.closing || this.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            this.drain.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(this.id, cx.waker().clone());
            this.registered = Some(cx.waker().clone());
            // The drain may have started before the waker was in place: look again.
            this.close_if_draining();
            if !this.closing {
                return Poll::Pending;
            }
        }
    }
}

impl<I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Drop for Conn<I> {
    fn drop(&mut self) {
        if self.registered.take().is_some() {
            self.drain.waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        }
    }
}

/// Serves the broker-facing listener until `shutdown` completes, then drains its connections.
pub async fn serve<L>(
    mut listener: L,
    state: &'static AppState,
    rest: Router,
    shutdown: impl Future<Output = ()>,
) where
    L: axum::serve::Listener,
{
    let front = Front { state, rest };
    let drain = Arc::new(Drain::default());
    // Every connection holds a receiver: all are gone when `open.closed()` completes.
    let (open, held) = tokio::sync::watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, _peer) = tokio::select! {
            c = listener.accept() => c,
            () = &mut shutdown => break,
        };
        let conn = Conn {
            conn: Box::pin(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), front.clone()),
            ),
            drain: Arc::clone(&drain),
            id: drain.next.fetch_add(1, Ordering::Relaxed),
            registered: None,
            closing: false,
        };
        let held = held.clone();
        tokio::spawn(async move {
            conn.await;
            drop(held);
        });
    }
    drop(listener);
    drop(held);
    drain.start();
    let open_now = open.receiver_count();
    if open_now > 0 {
        tracing::info!(connections = open_now, "finishing the requests of open broker connections");
    }
    if tokio::time::timeout(DRAIN_FOR, open.closed()).await.is_err() {
        tracing::warn!(
            connections = open.receiver_count(),
            "broker connections still open after {} s; closing them",
            DRAIN_FOR.as_secs()
        );
    }
}
