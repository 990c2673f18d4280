//! TLS for the broker-facing listener (`--tls-cert`, `--tls-key`): rustls with the `ring`
//! provider, HTTP/1.1, TLS 1.2 and 1.3.
//!
//! - The certificate chain and key are PEM files. Start-up fails with the file and the reason
//!   when they cannot be read, hold nothing usable, or do not belong together.
//! - They are re-read when either file changes (checked every [`CHECK_EVERY`]) and on
//!   `SIGHUP`, so a renewed certificate is served without a restart; a renewal that cannot be
//!   loaded is logged once and the previous pair stays in use.
//! - Handshakes run on their own tasks, each bounded by [`HANDSHAKE_TIMEOUT`], so a slow or
//!   silent client never holds up the others; failures are counted
//!   (`mqtt_policy_tls_handshake_failures_total`) and logged at debug.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to finish its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate files are checked for a renewal.
pub const CHECK_EVERY: Duration = Duration::from_secs(30);

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key being served, and where they come from.
#[derive(Debug)]
pub struct Certificates {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when last loaded (or last tried).
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Reads a PEM certificate chain and its private key, checking that they belong together.
pub fn load_pair(cert: &Path, key: &Path) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("reading the TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(anyhow!("the TLS certificate file {} holds no PEM CERTIFICATE", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        anyhow!("reading the TLS key {}: {e} (a PEM PRIVATE KEY, RSA or EC, unencrypted)", key.display())
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        anyhow!("the TLS key {} does not fit the certificate {}: {e}", key.display(), cert.display())
    })
}

impl Certificates {
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<Certificates>> {
        let stamps = (modified(cert), modified(key));
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(pair)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// Re-reads the files when `force`d or when either changed; keeps the old pair on error.
    /// Returns whether a new pair is now served.
    pub fn reload(&self, force: bool) -> bool {
        let now = (modified(&self.cert), modified(&self.key));
        {
            let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if !force && *stamps == now {
                return false;
            }
            *stamps = now;
        }
        match load_pair(&self.cert, &self.key) {
            Ok(pair) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
                tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                // Logged once per change of the files, not per connection.
                tracing::error!(error = %format!("{e:#}"), "the TLS certificate was not reloaded; still serving the previous one");
                false
            }
        }
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner())))
    }
}

/// The server configuration serving `certs`.
pub fn server_config(certs: Arc<Certificates>) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener handing out connections whose TLS handshake has completed.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `tcp`; handshakes run concurrently, each on its own task.
    pub fn start(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let failures = metrics::counter!("mqtt_policy_tls_handshake_failures_total");
        // A small queue: connections wait in the kernel's backlog, not in memory here.
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, then go on.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let (acceptor, ready, failures) = (acceptor.clone(), tx.clone(), failures.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = ready.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            failures.increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            failures.increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task only ends when this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
