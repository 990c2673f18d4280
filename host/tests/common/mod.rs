//! Shared by the integration tests: a `mqtt-policy serve` started on a free loopback port
//! (stopped by PID on drop), fixture keys and tokens, and go-auth-shaped requests.
#![allow(dead_code)]

pub mod idp;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub fn fixtures() -> PathBuf {
    test_support::package_dir().join("tests/fixtures")
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub const ISSUER: &str = "https://keycloak.test/realms/celine";

pub struct Server {
    pub child: Child,
    pub url: String,
    /// The operations listener (`--ops-listen`): `/readyz`, `/metrics`, admin, playground.
    pub ops_url: String,
    pub state: tempfile::TempDir,
}

impl Server {
    /// Starts `mqtt-policy serve` with `args` on 127.0.0.1:0 and waits for its "listening" line.
    pub fn start(args: &[&str]) -> Server {
        Server::spawn(args, "warn", Stdio::inherit(), None)
    }

    /// As [`Server::start`], logging at `info` into the file `log`.
    pub fn start_logged(args: &[&str], log: &std::path::Path) -> Server {
        Server::spawn(args, "info", Stdio::from(std::fs::File::create(log).unwrap()), None)
    }

    /// As [`Server::start_logged`], with `state_dir` as the state directory.
    pub fn start_in(state_dir: &std::path::Path, args: &[&str], log: &std::path::Path) -> Server {
        Server::spawn(args, "info", Stdio::from(std::fs::File::create(log).unwrap()), Some(state_dir))
    }

    fn spawn(args: &[&str], level: &str, stderr: Stdio, state_dir: Option<&std::path::Path>) -> Server {
        let state = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
            .current_dir(test_support::repository())
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--state-dir"])
            .arg(state_dir.unwrap_or(state.path()))
            .args(args)
            .env("MQTT_POLICY_LOG", level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start mqtt-policy serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("mqtt-policy listening on ") {
                    let _ = tx.send((false, url.to_string()));
                } else if let Some(url) = line.strip_prefix("mqtt-policy ops listening on ") {
                    let _ = tx.send((true, url.to_string()));
                }
            }
        });
        // The operations line comes before the main one.
        let mut ops_url = None;
        let url = loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok((true, u)) => ops_url = Some(u),
                Ok((false, u)) => break u,
                Err(_) => {
                    let _ = child.kill();
                    panic!("the server did not start: {:?}", child.wait());
                }
            }
        };
        let ops_url = ops_url.expect("the operations listener's line comes first");
        Server { child, url, ops_url, state }
    }

    pub fn rsa(extra: &[&str]) -> Server {
        let jwks = fixtures().join("jwks-a.json");
        let mut args = vec!["--jwks-file", jwks.to_str().unwrap(), "--issuer", ISSUER];
        args.extend_from_slice(extra);
        Server::start(&args)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// A path on the operations listener.
    pub fn ops(&self, path: &str) -> String {
        format!("{}{path}", self.ops_url)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sign(key_file: &str, kid: &str, claims: &Value) -> String {
    let pem = std::fs::read(fixtures().join(key_file)).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap()
}

pub fn viewer_claims() -> Value {
    json!({"iss": ISSUER, "sub": "u-viewer", "preferred_username": "vera", "groups": ["/viewers"],
           "realm_access": {"roles": []}, "scope": "openid", "exp": now() + 600, "iat": now()})
}

pub fn service_claims() -> Value {
    json!({"iss": ISSUER, "sub": "s-1", "azp": "svc-digital-twin", "client_id": "svc-digital-twin",
           "preferred_username": "service-account-svc-digital-twin", "scope": "mqtt.write",
           "exp": now() + 600, "iat": now()})
}

pub fn admin_claims() -> Value {
    json!({"iss": ISSUER, "sub": "u-admin", "groups": ["/admins"], "exp": now() + 600})
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn allowed(&self) -> bool {
        assert!(self.status < 500, "a 5xx for a client's request: {} {}", self.status, self.body);
        self.status == 200 && self.json()["ok"] == true
    }
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::new()
}

pub fn send(req: reqwest::blocking::RequestBuilder) -> Reply {
    let resp = req.send().expect("request");
    let status = resp.status().as_u16();
    Reply { status, body: resp.text().unwrap() }
}

/// go-auth http backend, `http_params_mode json` (POST, GET or PUT: always a JSON body).
pub fn json_call(s: &Server, method: reqwest::Method, path: &str, body: &Value) -> Reply {
    send(
        client()
            .request(method, s.url(path))
            .header("Content-Type", "application/json")
            .header("User-Agent", "mosquitto-2.0.18")
            .body(body.to_string()),
    )
}

/// go-auth http backend, `http_params_mode form` (always POST).
pub fn form_call(s: &Server, path: &str, pairs: &[(&str, &str)]) -> Reply {
    send(client().post(s.url(path)).form(pairs))
}

/// go-auth jwt backend, `jwt_mode remote`: the token (MQTT username) as Bearer on every call.
pub fn bearer_call(s: &Server, path: &str, token: &str, body: &str) -> Reply {
    send(
        client()
            .post(s.url(path))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .body(body.to_string()),
    )
}

/// Where `cargo xtask build` puts the policy modules (the embedded one, the example and the
/// test-only ones): `<target>/policy-module`.
pub fn built_modules() -> PathBuf {
    let root = test_support::repository();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    target.join("policy-module")
}

/// A built module's path, or a clear failure if `cargo xtask build` has not run.
pub fn built_module(name: &str) -> PathBuf {
    let p = built_modules().join(name);
    assert!(p.exists(), "{} is missing: run `cargo xtask build` first", p.display());
    p
}

/// A dev token minted by `mqtt-policy token --dev` with the server's dev key.
pub fn dev_token(s: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .args(["token", "--dev", "--state-dir"])
        .arg(s.state.path())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
