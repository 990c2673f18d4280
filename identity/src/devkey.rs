//! Dev mode: a local signing key and Keycloak-shaped tokens, so the whole service can be tried
//! on one machine without Keycloak.
//!
//! The key (ES256, P-256) is created on first use in the state directory and kept there
//! (`dev-signing-key.pem`, mode 0600). `serve --dev` trusts it and publishes its public half at
//! `/dev/jwks.json`; `mqtt-policy token --dev` signs with it; the Mosquitto plugin trusts it
//! with `plugin_opt_dev true` (and `plugin_opt_state_dir`). Never use it in production.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::SecretKey;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use policy_engine::hex;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The issuer of dev tokens, unless `--issuer` names another.
pub const DEV_ISSUER: &str = "mqtt-policy-dev";
const KEY_FILE: &str = "dev-signing-key.pem";

pub struct DevKey {
    secret: SecretKey,
    pub kid: String,
}

/// The default state directory: `$XDG_STATE_HOME/mqtt-policy`, else `~/.local/state/mqtt-policy`.
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(x).join("mqtt-policy");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/state/mqtt-policy"),
        None => PathBuf::from(".mqtt-policy-state"),
    }
}

impl DevKey {
    /// Loads the dev key from `state_dir`, creating it on first use.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<DevKey> {
        let path = state_dir.join(KEY_FILE);
        let secret = if path.exists() {
            let pem =
                std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            SecretKey::from_pkcs8_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{}: not a P-256 PKCS#8 key: {e}", path.display()))?
        } else {
            std::fs::create_dir_all(state_dir)
                .with_context(|| format!("creating {}", state_dir.display()))?;
            let secret = SecretKey::random(&mut rand_core::OsRng);
            let pem = secret
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding the dev key: {e}"))?;
            write_private(&path, pem.as_bytes())?;
            tracing::info!(path = %path.display(), "created a dev signing key");
            secret
        };
        let public = secret.public_key().to_sec1_bytes();
        let kid = format!("dev-{}", &hex(&Sha256::digest(&public))[..16]);
        Ok(DevKey { secret, kid })
    }

    /// The public key as a JWK (with `kid`, `alg` and `use`).
    pub fn jwk(&self) -> anyhow::Result<Jwk> {
        let mut v: Value = serde_json::from_str(&self.secret.public_key().to_jwk_string())?;
        v["kid"] = json!(self.kid);
        v["alg"] = json!("ES256");
        v["use"] = json!("sig");
        serde_json::from_value(v).context("the dev key as a JWK")
    }

    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let der = self.secret.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding the dev key: {e}"))?;
        let key = EncodingKey::from_ec_der(der.as_bytes());
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &key).context("signing the token")
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("creating {}", path.display()))
}

/// What a dev token should say.
pub struct TokenSpec {
    pub sub: Option<String>,
    pub client_id: Option<String>,
    pub groups: Vec<String>,
    pub scopes: Vec<String>,
    pub issuer: String,
    pub audience: Option<String>,
    pub ttl_secs: u64,
}

impl TokenSpec {
    /// A user of the dev issuer, in `groups`, for `ttl_secs` (what tests and fuzzing mint).
    pub fn dev_user(sub: &str, groups: &[&str], ttl_secs: u64) -> TokenSpec {
        TokenSpec {
            sub: Some(sub.into()),
            client_id: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes: vec![],
            issuer: DEV_ISSUER.into(),
            audience: None,
            ttl_secs,
        }
    }
}

/// Claims shaped like Keycloak's: a service token (client credentials) when `client_id` is
/// given, else a user token with `groups` (leading `/`) and `realm_access.roles`.
pub fn claims(spec: &TokenSpec, now: u64) -> anyhow::Result<Value> {
    let mut c = json!({
        "iss": spec.issuer,
        "iat": now,
        "exp": now + spec.ttl_secs,
        "jti": hex(&Sha256::digest(format!("{now}-{:?}-{:?}", spec.sub, spec.client_id))[..8]),
        "typ": "Bearer",
        "scope": spec.scopes.join(" "),
    });
    if let Some(aud) = &spec.audience {
        c["aud"] = json!(aud);
    }
    match (&spec.client_id, &spec.sub) {
        (Some(client), sub) => {
            if !spec.groups.is_empty() {
                bail!("a service token (--client-id) has no groups; drop --groups");
            }
            c["sub"] = json!(sub.clone().unwrap_or_else(|| format!("service-account-{client}")));
            c["azp"] = json!(client);
            c["client_id"] = json!(client);
            c["preferred_username"] = json!(format!("service-account-{client}"));
        }
        (None, Some(sub)) => {
            c["sub"] = json!(sub);
            c["preferred_username"] = json!(sub);
            c["azp"] = json!("mqtt-dev");
            c["groups"] = json!(spec.groups.iter().map(|g| format!("/{g}")).collect::<Vec<_>>());
            c["realm_access"] = json!({"roles": []});
        }
        (None, None) => {
            bail!("say who the token is for: --sub USER (a user) or --client-id CLIENT (a service)")
        }
    }
    Ok(c)
}
