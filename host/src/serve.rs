//! `mqtt-policy serve`: assembles the state ([`crate::state`]), the two listeners and
//! shutdown.
//!
//! - The broker-facing listener (`--listen`, optionally TLS) serves go-auth's three endpoints
//!   and `/healthz`, nothing else: what brokers can reach cannot administer the service.
//!   In dev mode it also serves the playground and the dev key set, as the README shows.
//! - The operations listener (`--ops-listen`) serves `/healthz`, `/readyz`, `/metrics`, the
//!   admin API (with an admin token) and the playground ([`crate::ops`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use identity::devkey::DEV_ISSUER;

use crate::Failed;
use crate::logqueue::QueueWriter;
use crate::ops::{broker_router, ops_router};
use crate::state::{AppState, ServeConfig, build_state};

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Starts the service and serves until a shutdown signal. An error before it serves is the
/// configuration's (certificates, policy, keys); one after is a [`Failed`] run.
pub async fn run(cfg: ServeConfig, log: QueueWriter) -> anyhow::Result<()> {
    let certs = cfg.tls.clone();
    // The state lives as long as the process: the broker-facing listener borrows it for good.
    let state: &'static Arc<AppState> = Box::leak(Box::new(build_state(&cfg, log).await?));
    serve(cfg, state, certs).await.map_err(|e| Failed(e).into())
}

async fn serve(
    cfg: ServeConfig,
    state: &'static Arc<AppState>,
    certs: Option<Arc<crate::tls::Certificates>>,
) -> anyhow::Result<()> {
    if let (Some(url), Some(pull), Some(trust)) = (&cfg.policy.policy_url, &state.pull, &cfg.bundle_trust) {
        policy_engine::pull::spawn_puller(
            Arc::clone(state.live()),
            url.clone(),
            cfg.bundle_token.clone(),
            Duration::from_secs(cfg.policy.policy_poll),
            trust.clone(),
            Arc::clone(pull),
        )?;
    }
    let sweeper = Arc::clone(state);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            // At start and after a swap, however it came: warns about rules go-auth cannot serve.
            let _ = sweeper.generation();
            let live = sweeper.auth.sweep();
            metrics::gauge!("mqtt_policy_sessions").set(live as f64);
            metrics::gauge!("mqtt_policy_cache_bytes").set(sweeper.auth.cached_bytes() as f64);
        }
    });
    spawn_sighup(state, certs.clone());
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", cfg.listen))?;
    let addr = listener.local_addr()?;
    let ops_listener = tokio::net::TcpListener::bind(cfg.ops_listen)
        .await
        .with_context(|| format!("cannot listen on {} (--ops-listen)", cfg.ops_listen))?;
    let ops_addr = ops_listener.local_addr()?;
    let playground = cfg.playground && crate::playground::embedded();
    if cfg.playground && !playground {
        tracing::warn!("this binary was built without the playground (`cargo xtask build` adds it)");
    }
    let mut ops = ops_router(Arc::clone(state));
    if playground {
        ops = ops.merge(crate::playground::router());
    }
    // One signal (and one log line) stops both listeners.
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stopping.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let (ops_stop, stop) = (until_stopped(stopped.clone()), until_stopped(stopped));
    tokio::spawn(async move {
        if let Err(e) = axum::serve(ops_listener, ops).with_graceful_shutdown(ops_stop).await {
            tracing::error!(error = %e, "the operations listener stopped");
        }
    });
    // Lines a test or a script can wait for: the operations address first, then this one.
    println!("mqtt-policy ops listening on http://{ops_addr}");
    let scheme = if certs.is_some() { "https" } else { "http" };
    println!("mqtt-policy listening on {scheme}://{addr}");
    // Dev mode keeps the playground where the README shows it, beside go-auth's endpoints.
    let mut app = broker_router(Arc::clone(state), cfg.dev);
    if playground && cfg.dev {
        app = app.merge(crate::playground::router());
        println!("mqtt-policy playground at {scheme}://{addr}/playground/");
    } else if playground {
        println!("mqtt-policy playground at http://{ops_addr}/playground/");
    }
    if cfg.dev {
        print_dev_help(addr, ops_addr, &cfg);
    }
    match certs {
        Some(certs) => {
            let renewals = Arc::clone(&certs);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(crate::tls::CHECK_EVERY);
                loop {
                    tick.tick().await;
                    renewals.reload(false);
                }
            });
            let tls = crate::tls::TlsListener::start(listener, crate::tls::server_config(certs)?)?;
            crate::front::serve(tls, state, app, stop).await
        }
        None => crate::front::serve(listener, state, app, stop).await,
    }
    tracing::info!("stopped");
    Ok(())
}

/// `SIGHUP` asks the reloader to re-read the module and policy files, and the TLS files.
fn spawn_sighup(state: &Arc<AppState>, certs: Option<Arc<crate::tls::Certificates>>) {
    #[cfg(unix)]
    {
        let state = Arc::clone(state);
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!(
                    "cannot listen for SIGHUP; reload with POST /admin/reload or by editing the files"
                );
                return;
            };
            while hup.recv().await.is_some() {
                state.reloader.request("SIGHUP");
                if let Some(c) = &certs {
                    c.reload(true);
                }
            }
        });
    }
}

fn print_dev_help(addr: SocketAddr, ops: SocketAddr, cfg: &ServeConfig) {
    let state = cfg.state_dir.display();
    println!(
        "dev mode: tokens signed by the key in {state} are accepted (issuer '{DEV_ISSUER}').\n\
         Try it:\n  \
         TOKEN=$(mqtt-policy token --dev --state-dir {state} --sub alice --groups viewers)\n  \
         curl -i -X POST http://{addr}/mqtt/acl -H \"Authorization: Bearer $TOKEN\" \\\n       \
         -H 'Content-Type: application/json' -d '{{\"clientid\":\"c1\",\"topic\":\"celine/telemetry/meter/m1/readings\",\"acc\":1}}'\n\
         Readiness and metrics: http://{ops}/readyz, http://{ops}/metrics"
    );
}
