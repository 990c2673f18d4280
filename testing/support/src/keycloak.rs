//! A real Keycloak (the distribution `cargo xtask keycloak` downloads), in dev mode with the
//! realm `keycloak/celine-realm.json` imported, on free loopback ports.
//!
//! Needs `MQTT_POLICY_KEYCLOAK_HOME` and `MQTT_POLICY_KEYCLOAK_JAVA_HOME`, which `cargo xtask
//! keycloak|e2e|test` set after installing it; without them `start` fails and says so.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const ADMIN_PASSWORD: &str = "admin-password";

/// A Keycloak server of the test's own, stopped (by PID) when dropped.
pub struct Keycloak {
    child: Child,
    pub base: String,
    dir: tempfile::TempDir,
}

impl Keycloak {
    /// A fresh Keycloak in dev mode (its own copy of the distribution, hard-linked, so its
    /// embedded database starts empty) with the realm imported, on free loopback ports.
    pub fn start() -> Keycloak {
        let env = |k: &str| {
            std::env::var_os(k).map(PathBuf::from).unwrap_or_else(|| {
                panic!("{k} is not set: run these tests with `cargo xtask keycloak` (it installs Keycloak)")
            })
        };
        let (home, java) = (env("MQTT_POLICY_KEYCLOAK_HOME"), env("MQTT_POLICY_KEYCLOAK_JAVA_HOME"));
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("keycloak");
        let linked =
            Command::new("cp").arg("-al").arg(&home).arg(&kc).stderr(Stdio::null()).status().unwrap();
        if !linked.success() {
            // Another file system than the cache: a plain copy (~190 MB).
            let _ = std::fs::remove_dir_all(&kc);
            let status = Command::new("cp").arg("-a").arg(&home).arg(&kc).status().unwrap();
            assert!(status.success(), "copying {}", home.display());
        }
        let _ = std::fs::remove_dir_all(kc.join("data"));
        std::fs::create_dir_all(kc.join("data/import")).unwrap();
        let realm = crate::repository().join("keycloak/celine-realm.json");
        std::fs::copy(realm, kc.join("data/import/celine-realm.json")).unwrap();
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("keycloak.log")).unwrap();
        let child = Command::new(kc.join("bin/kc.sh"))
            .args(["start-dev", "--import-realm", "--http-host=127.0.0.1", "--hostname-strict=false"])
            .arg(format!("--http-port={port}"))
            .arg(format!("--http-management-port={}", crate::free_port()))
            .env("JAVA_HOME", &java)
            .env("KC_BOOTSTRAP_ADMIN_USERNAME", "admin")
            .env("KC_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start Keycloak");
        let mut k = Keycloak { child, base: format!("http://127.0.0.1:{port}"), dir };
        k.wait_ready();
        k
    }

    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.dir.path().join("keycloak.log"))
            .and_then(|mut f| f.read_to_string(&mut s));
        s.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        let url = format!("{}/realms/celine/.well-known/openid-configuration", self.base);
        loop {
            if let Ok(r) = crate::http().get(&url).send()
                && r.status().is_success()
            {
                println!("Keycloak ready in {:.1}s at {}", started.elapsed().as_secs_f64(), self.base);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Keycloak exited ({status}) before it was ready:\n{}", self.log_tail());
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "Keycloak not ready in 300 s:\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn issuer(&self) -> String {
        format!("{}/realms/celine", self.base)
    }

    pub fn token(&self, form: &[(&str, &str)]) -> String {
        let r = crate::http()
            .post(format!("{}/protocol/openid-connect/token", self.issuer()))
            .form(form)
            .send()
            .unwrap();
        let status = r.status();
        let body: Value = r.json().unwrap();
        assert!(status.is_success(), "token endpoint: {status} {body}");
        body["access_token"].as_str().unwrap().to_string()
    }

    pub fn service_token(&self, client_id: &str, scope: Option<&str>) -> String {
        let secret = format!("{client_id}-secret");
        let mut form =
            vec![("grant_type", "client_credentials"), ("client_id", client_id), ("client_secret", &secret)];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        self.token(&form)
    }

    pub fn user_token(&self, user: &str) -> String {
        let password = format!("{user}-password");
        self.token(&[
            ("grant_type", "password"),
            ("client_id", "mqtt-dashboard"),
            ("username", user),
            ("password", &password),
        ])
    }

    pub fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let token = {
            let r = crate::http()
                .post(format!("{}/realms/master/protocol/openid-connect/token", self.base))
                .form(&[
                    ("grant_type", "password"),
                    ("client_id", "admin-cli"),
                    ("username", "admin"),
                    ("password", ADMIN_PASSWORD),
                ])
                .send()
                .unwrap();
            r.json::<Value>().unwrap()["access_token"].as_str().unwrap().to_string()
        };
        let mut req = crate::http()
            .request(method.clone(), format!("{}/admin/realms/celine{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().unwrap();
        let status = r.status();
        let text = r.text().unwrap();
        assert!(status.is_success(), "admin {method} {path}: {status} {text}");
        if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap() }
    }

    pub fn stop(&mut self) {
        // kc.sh execs the JVM, so this PID is Keycloak's.
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

impl Drop for Keycloak {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
