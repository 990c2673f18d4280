//! The plugin's background work, off the broker thread: refreshing signing keys and serving
//! Prometheus metrics, on a one-worker tokio runtime of its own. Dropping it shuts the
//! runtime down and waits (a bounded time) for its threads, so nothing of the plugin runs
//! once Mosquitto unloads it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use identity::Verifier;
use policy_engine::Live;

use crate::stats::Stats;

/// How long shutting down may wait for a key fetch in flight.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

pub struct Background {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Background {
    pub fn start() -> anyhow::Result<Background> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .thread_name("mqtt-policy-bg")
            .enable_all()
            .build()
            .context("starting the plugin's background runtime")?;
        Ok(Background { runtime: Some(runtime) })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until drop")
    }

    /// Runs `f` to completion on the background runtime (start-up only).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime().block_on(f)
    }

    /// Pulls bundles from `url` every `every` (`policy_engine::pull`).
    pub fn spawn_puller(
        &self,
        live: &Arc<policy_engine::Live>,
        url: &str,
        token: Option<String>,
        every: std::time::Duration,
        trust: policy_engine::pull::Trust,
        status: Arc<std::sync::Mutex<policy_engine::pull::PullStatus>>,
    ) -> anyhow::Result<()> {
        let _in_runtime = self.runtime().enter();
        policy_engine::pull::spawn_puller(Arc::clone(live), url.to_string(), token, every, trust, status)
    }

    /// Periodic key refreshes, and a refresh when a CONNECT names an unknown key id.
    pub fn spawn_key_refresher(&self, verifier: &Arc<Verifier>) {
        let _in_runtime = self.runtime().enter();
        verifier.spawn_refresher();
    }

    /// Serves `GET /metrics` on `addr`; returns the bound address. Binding happens now, so a
    /// taken address stops the start with a clear message.
    pub fn serve_metrics(
        &self,
        addr: SocketAddr,
        stats: Arc<Stats>,
        live: Arc<Live>,
    ) -> anyhow::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("plugin_opt_metrics_listen: cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        let _in_runtime = self.runtime().enter();
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let (stats, live) = (Arc::clone(&stats), Arc::clone(&live));
                async move { stats.render_prometheus(&live) }
            }),
        );
        self.runtime().spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("the metrics listener stopped: {e}");
            }
        });
        Ok(bound)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(SHUTDOWN_WAIT);
        }
    }
}
