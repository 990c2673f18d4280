//! What the broker tests share: a token issuer the broker trusts, and a broker with the
//! end-to-end policy (`e2e/policy.json`), its test cases and that issuer's key.
#![allow(dead_code)]

use std::time::Duration;

use identity::devkey::{DevKey, TokenSpec, claims};
use identity::now;
use serde_json::{Value, json};
use test_support::mosquitto::{Broker, Setup};

pub const ISSUER: &str = "https://keycloak.test/realms/celine";
pub const POLICY: &str = include_str!("../e2e/policy.json");
pub const CASES: &str = include_str!("../e2e/cases.json");
pub const SWAP_WAIT: Duration = Duration::from_secs(30);

/// Signs tokens the broker trusts (its JWKS file holds this key's public half).
pub struct Issuer {
    key: DevKey,
    _dir: tempfile::TempDir,
}

impl Issuer {
    pub fn new() -> Issuer {
        let dir = tempfile::tempdir().unwrap();
        Issuer { key: DevKey::load_or_create(dir.path()).unwrap(), _dir: dir }
    }

    pub fn jwks(&self) -> String {
        json!({"keys": [self.key.jwk().unwrap()]}).to_string()
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.key.sign(claims).unwrap()
    }

    pub fn claims(
        &self,
        sub: Option<&str>,
        client: Option<&str>,
        groups: &[&str],
        scopes: &[&str],
        ttl: u64,
    ) -> Value {
        let spec = TokenSpec {
            sub: sub.map(str::to_string),
            client_id: client.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            issuer: ISSUER.into(),
            audience: None,
            ttl_secs: ttl,
        };
        claims(&spec, now()).unwrap()
    }

    pub fn user(&self, sub: &str, groups: &[&str]) -> String {
        self.sign(&self.claims(Some(sub), None, groups, &[], 600))
    }

    pub fn service(&self, client: &str, scopes: &[&str]) -> String {
        self.sign(&self.claims(None, Some(client), &[], scopes, 600))
    }
}

/// A broker with the e2e policy, its test cases and `issuer`'s key; `more` adds to it.
pub fn broker_with(issuer: &Issuer, more: impl FnOnce(Setup) -> Setup) -> Broker {
    let setup = Setup::new();
    let policy = setup.file("policy.json", POLICY);
    let cases = setup.file("cases.json", CASES);
    let jwks = setup.file("jwks.json", issuer.jwks());
    let setup = setup
        .option("policy", policy.display().to_string())
        .option("tests", cases.display().to_string())
        .option("jwks_file", jwks.display().to_string())
        .option("issuer", ISSUER);
    Broker::start(more(setup))
}

pub fn broker(issuer: &Issuer) -> Broker {
    broker_with(issuer, |s| s)
}
