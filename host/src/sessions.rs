//! Shared http-backend sessions (`--sessions redis://...`): the binding of a proven MQTT
//! username to its verified token, kept in Redis so that a user call answered by one replica
//! and the ACL and superuser calls answered by others decide as one service would.
//!
//! What is stored, under `mqtt-policy:session:<username>` and expiring with the token: the
//! token's SHA-256 (a decision-cache key, not the token), its verified claims (the subject is
//! derived from them by each generation's module), its `exp`, and the public key that
//! verified it (so that a replica stops trusting the session when that key leaves the key
//! set). Never the token.
//!
//! A replica keeps a binding it wrote or read for at most [`LOCAL_TTL`] before it reads Redis
//! again: a newer binding of the same username made on another replica (the same person's
//! newer token) is seen within that time. Redis unreachable: a call that needs a binding this
//! replica does not hold is denied with the reason, a user call is refused (its binding
//! could not be shared), `/readyz` says so, and everything works again by itself once Redis
//! answers (the connection is re-made on demand and checked every [`CHECK_EVERY`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use identity::{TokenHash, Verified};
use jsonwebtoken::jwk::Jwk;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a replica keeps a binding before it reads Redis again.
pub const LOCAL_TTL: Duration = Duration::from_secs(5);
/// The longest a Redis command may take before the call it serves is answered without it.
pub const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often the connection is checked (for `/readyz` and to notice recovery).
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
const PREFIX: &str = "mqtt-policy:session:";

#[derive(Serialize, Deserialize)]
struct Stored {
    token_sha256: String,
    claims: Value,
    exp: u64,
    key: Option<Jwk>,
}

pub struct RedisSessions {
    client: redis::Client,
    /// `redis://host:port/db`, without a password: for logs and `/readyz`.
    label: String,
    /// Made on first use (retried on the next use until it succeeds); it reconnects by itself
    /// afterwards.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    /// The last error, `None` while Redis answers.
    error: Mutex<Option<String>>,
}

impl RedisSessions {
    pub fn new(url: &str) -> anyhow::Result<Arc<RedisSessions>> {
        let client =
            redis::Client::open(url).map_err(|e| anyhow::anyhow!("--sessions {}: {e}", redact(url)))?;
        Ok(Arc::new(RedisSessions {
            client,
            label: redact(url),
            conn: tokio::sync::OnceCell::new(),
            error: Mutex::new(None),
        }))
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let made = self.conn.get_or_try_init(|| async {
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(OP_TIMEOUT)
                .set_response_timeout(OP_TIMEOUT)
                .set_number_of_retries(1);
            tokio::time::timeout(
                OP_TIMEOUT * 2,
                ConnectionManager::new_with_config(self.client.clone(), config),
            )
            .await
            .map_err(|_| "connecting timed out".to_string())?
            .map_err(|e| e.to_string())
        });
        made.await.cloned()
    }

    /// Runs one command, bounded in time; records (and logs once per change) whether Redis
    /// answers.
    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, String> {
        let result = async {
            let mut c = self.connection().await?;
            tokio::time::timeout(OP_TIMEOUT, cmd.query_async::<T>(&mut c))
                .await
                .map_err(|_| "no answer in time".to_string())?
                .map_err(|e| e.to_string())
        }
        .await;
        let mut error = self.error.lock().unwrap();
        match (&result, error.as_ref()) {
            (Err(e), last) if last != Some(e) => {
                tracing::error!(sessions = %self.label, error = %e, "the session store (Redis) is unreachable: calls that need a session this replica does not hold are denied");
                *error = Some(e.clone());
            }
            (Ok(_), Some(_)) => {
                tracing::info!(sessions = %self.label, "the session store (Redis) answers again");
                *error = None;
            }
            _ => {}
        }
        metrics::counter!("mqtt_policy_session_store_total", "result" => if result.is_ok() { "ok" } else { "error" })
            .increment(1);
        result.map_err(|e| format!("the session store ({}) is unreachable: {e}", self.label))
    }

    /// Shares a binding until the token's `exp`.
    pub async fn put(&self, username: &str, token: TokenHash, v: &Verified) -> Result<(), String> {
        let stored = Stored {
            token_sha256: hex::encode(token),
            claims: v.claims.clone(),
            exp: v.exp,
            key: v.key.as_deref().cloned(),
        };
        let value = serde_json::to_string(&stored).map_err(|e| e.to_string())?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{PREFIX}{username}")).arg(value).arg("EXAT").arg(v.exp);
        self.run::<()>(cmd).await
    }

    /// The shared binding of a username, if there is one.
    pub async fn get(&self, username: &str) -> Result<Option<(TokenHash, Verified)>, String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{PREFIX}{username}"));
        let Some(text) = self.run::<Option<String>>(cmd).await? else { return Ok(None) };
        // Written by a replica: anything else there is not a session (and not trusted).
        let Ok(s) = serde_json::from_str::<Stored>(&text) else {
            tracing::warn!(sessions = %self.label, "a session entry in Redis is not one this service wrote; ignored");
            return Ok(None);
        };
        let mut token = [0u8; 32];
        if hex::decode_to_slice(&s.token_sha256, &mut token).is_err() {
            return Ok(None);
        }
        let bytes = 256 + text.len();
        Ok(Some((token, Verified { claims: s.claims, exp: s.exp, key: s.key.map(Arc::new), bytes })))
    }

    /// The store, whether Redis answers and its last error: for `/readyz` and `/admin/status`.
    pub fn status(&self) -> Value {
        let error = self.error.lock().unwrap().clone();
        serde_json::json!({"backend": "redis", "url": self.label, "reachable": error.is_none(), "error": error})
    }

    pub fn reachable(&self) -> bool {
        self.error.lock().unwrap().is_none()
    }

    /// Checks the connection every [`CHECK_EVERY`] (a `PING`), so that `/readyz` and the log
    /// follow Redis going away and coming back even without traffic.
    pub fn spawn_checker(self: &Arc<Self>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECK_EVERY);
            loop {
                tick.tick().await;
                let _ = me.run::<String>(redis::cmd("PING")).await;
            }
        });
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| rest.split_once('@').map(|(_, host)| (scheme, host)))
    {
        Some((scheme, host)) => format!("{scheme}://***@{host}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_password_never_reaches_the_log() {
        assert_eq!(super::redact("redis://:secret@10.0.0.1:6379/0"), "redis://***@10.0.0.1:6379/0");
        assert_eq!(super::redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
