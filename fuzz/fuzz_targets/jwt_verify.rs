//! JWT handling up to and including the signature check (`identity`'s `Verifier`, with the
//! keys it holds: `verify_now`, what the broker plugin calls).
//!
//! - First byte even: the rest is a bearer token, any text. Refused with a reason or, never,
//!   verified: no input the fuzzer makes carries a valid signature, so one that verifies is
//!   a forgery.
//! - First byte odd: the rest is a claims object, signed correctly (HS256 with the configured
//!   development secret; the second byte picks the header's `typ`). Verified or refused,
//!   never a panic; and when verified, the claims passed every check the configuration asks
//!   for (`exp`, `nbf`, `iss`, `aud`, `typ`, `azp`), compared with a reference written here.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use identity::{KeySource, Verifier, VerifierConfig};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const SECRET: &[u8] = b"fuzzing-only-shared-secret";
const ISSUER: &str = "https://keycloak.test/realms/celine";
const AUDIENCE: &str = "mqtt-broker";
const PARTY: &str = "mqtt-dashboard";
const LEEWAY: u64 = 30;

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| {
    // An RSA key beside the secret, so that tokens naming RS256 reach a key too.
    let rsa: JwkSet = serde_json::from_str(include_str!("../../host/tests/fixtures/jwks-a.json")).unwrap();
    Verifier::new(VerifierConfig {
        source: KeySource::None,
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        leeway: Duration::from_secs(LEEWAY),
        extra_keys: rsa.keys,
        hmac_secret: Some(SECRET.to_vec()),
        min_refresh: Duration::from_secs(3600),
        authorized_parties: vec![PARTY.into()],
        refresh_every: identity::jwks::PERIODIC_REFRESH,
        plain_http: Default::default(),
        trusted_ca_pem: None,
    })
    .unwrap()
});

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Would this configuration accept these claims? (The reference for a verified token.)
fn acceptable(claims: &Value) -> Result<(), String> {
    let now = now();
    let number = |k: &str| claims.get(k).and_then(Value::as_f64);
    match number("exp") {
        Some(exp) if exp + LEEWAY as f64 >= now - 1.0 => {}
        other => return Err(format!("exp {other:?}")),
    }
    if claims.get("nbf").is_some() && !number("nbf").is_some_and(|nbf| nbf <= now + LEEWAY as f64 + 1.0) {
        return Err("nbf".into());
    }
    if claims.get("iss").and_then(Value::as_str) != Some(ISSUER) {
        return Err("iss".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(AUDIENCE)),
        _ => false,
    };
    if !aud_ok {
        return Err("aud".into());
    }
    match claims.get("typ") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("Bearer") => {}
        Some(_) => return Err("typ".into()),
    }
    if claims.get("azp").and_then(Value::as_str) != Some(PARTY) {
        return Err("azp".into());
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 {
        let Ok(token) = std::str::from_utf8(rest) else { return };
        if let Ok(v) = VERIFIER.verify_now(token) {
            panic!("an input without a valid signature verified: {token:?} as {:?}", v.claims);
        }
        return;
    }
    let Some((&typ, rest)) = rest.split_first() else { return };
    let Ok(claims) = serde_json::from_slice::<Value>(rest) else { return };
    if !claims.is_object() {
        return;
    }
    let mut header = Header::new(Algorithm::HS256);
    header.typ = [None, Some("JWT"), Some("at+jwt"), Some("")][usize::from(typ) % 4].map(str::to_string);
    let token = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(SECRET)).unwrap();
    match VERIFIER.verify_now(&token) {
        Ok(v) => {
            if let Err(why) = acceptable(&claims) {
                panic!("verified, but the claims fail the reference ({why}): {claims}");
            }
            // The claims as the token carries them (JSON text, read back: serde_json reads
            // some long floats back a unit off, which is not the verifier's doing).
            let carried: Value = serde_json::from_str(&claims.to_string()).unwrap();
            assert_eq!(v.claims, carried);
            assert_eq!(Some(v.exp as f64), claims["exp"].as_f64().map(f64::trunc), "{claims}");
        }
        Err(refused) => assert!(!refused.0.is_empty()),
    }
});
