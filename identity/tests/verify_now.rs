//! `verify_now` decides with the keys held now (it is not async: it cannot wait): a known key
//! verifies, an unknown key id is refused with a reason that never holds the token, an
//! expired token is refused.

use std::sync::Arc;
use std::time::Duration;

use identity::devkey::{DEV_ISSUER, DevKey, TokenSpec, claims};
use identity::{Identities, KeySource, Verifier, VerifierConfig, now};

/// A viewer's claims, as `mqtt-policy token --dev` makes them.
fn alice(ttl_secs: u64) -> serde_json::Value {
    claims(&TokenSpec::dev_user("alice", &["viewers"], ttl_secs), now()).unwrap()
}

fn token(key: &DevKey, ttl_secs: u64) -> String {
    key.sign(&alice(ttl_secs)).unwrap()
}

fn verifier(trusted: &DevKey, source: KeySource) -> Arc<Verifier> {
    verifier_for(trusted, source, vec![])
}

fn verifier_for(trusted: &DevKey, source: KeySource, authorized_parties: Vec<String>) -> Arc<Verifier> {
    Arc::new(
        Verifier::new(VerifierConfig {
            source,
            issuer: Some(DEV_ISSUER.into()),
            audience: None,
            leeway: Duration::from_secs(0),
            extra_keys: vec![trusted.jwk().unwrap()],
            hmac_secret: None,
            min_refresh: Duration::from_secs(10),
            authorized_parties,
            plain_http: Default::default(),
            trusted_ca_pem: None,
            refresh_every: identity::jwks::PERIODIC_REFRESH,
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn known_keys_verify_and_unknown_ones_are_refused_without_waiting() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let trusted = DevKey::load_or_create(a.path()).unwrap();
    let stranger = DevKey::load_or_create(b.path()).unwrap();
    let v = verifier(&trusted, KeySource::None);
    v.refresh().await.unwrap();
    let ids = Identities::new(Arc::clone(&v), 1 << 20);
    let (_, verified) = ids.verify_now(&token(&trusted, 60)).unwrap();
    assert_eq!(verified.claims["sub"], "alice");
    let refused = ids.verify_now(&token(&stranger, 60)).unwrap_err().to_string();
    assert!(refused.contains("unknown signing key"), "{refused}");
    assert!(!refused.contains(&token(&stranger, 60)[..20]), "a reason never holds the token");
    assert!(ids.verify_now("not-a-token").unwrap_err().to_string().contains("malformed token"));
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let v = verifier(&key, KeySource::None);
    v.refresh().await.unwrap();
    let mut spec_claims = alice(0);
    spec_claims["exp"] = serde_json::json!(now() - 60);
    let expired = key.sign(&spec_claims).unwrap();
    let e = Identities::new(v, 1 << 20).verify_now(&expired).unwrap_err().to_string();
    assert!(e.contains("expired"), "{e}");
}

#[tokio::test]
async fn only_access_tokens_and_only_for_authorized_parties() {
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let sign = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut c = alice(60);
        edit(&mut c);
        key.sign(&c).unwrap()
    };
    let v = verifier(&key, KeySource::None);
    v.refresh().await.unwrap();
    let ids = Identities::new(Arc::clone(&v), 1 << 20);
    assert!(ids.verify_now(&sign(&|_| {})).is_ok(), "typ Bearer (as Keycloak's access tokens)");
    assert!(
        ids.verify_now(&sign(&|c| {
            c.as_object_mut().unwrap().remove("typ");
        }))
        .is_ok(),
        "no typ at all is still accepted"
    );
    for typ in ["ID", "Refresh", "Logout"] {
        let e = ids.verify_now(&sign(&|c| c["typ"] = serde_json::json!(typ))).unwrap_err().to_string();
        assert!(e.contains("not an access token"), "{typ}: {e}");
    }
    // Authorized parties: the token's azp must be listed.
    let config_key = verifier_for(&key, KeySource::None, vec!["mqtt-dashboard".into()]);
    config_key.refresh().await.unwrap();
    let restricted = Identities::new(config_key, 1 << 20);
    let e = restricted.verify_now(&sign(&|_| {})).unwrap_err().to_string();
    assert!(e.contains("issued to client \"mqtt-dev\", not to an authorized party (mqtt-dashboard)"), "{e}");
    assert!(restricted.verify_now(&sign(&|c| c["azp"] = serde_json::json!("mqtt-dashboard"))).is_ok());
    let e = restricted
        .verify_now(&sign(&|c| {
            c.as_object_mut().unwrap().remove("azp");
        }))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no client (no azp)"), "{e}");
}

/// Found by fuzzing (`fuzz/fuzz_targets/jwt_verify.rs`): a configured issuer or audience was
/// only compared when the token had the claim, so a token without it passed.
#[tokio::test]
async fn a_configured_issuer_or_audience_is_required_not_only_compared() {
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let without = |claim: &str| {
        let mut c = alice(60);
        c["aud"] = serde_json::json!("mqtt-broker");
        c.as_object_mut().unwrap().remove(claim);
        key.sign(&c).unwrap()
    };
    let v = Arc::new(
        Verifier::new(VerifierConfig {
            source: KeySource::None,
            issuer: Some(DEV_ISSUER.into()),
            audience: Some("mqtt-broker".into()),
            leeway: Duration::from_secs(0),
            extra_keys: vec![key.jwk().unwrap()],
            hmac_secret: None,
            min_refresh: Duration::from_secs(10),
            authorized_parties: vec![],
            plain_http: Default::default(),
            trusted_ca_pem: None,
            refresh_every: identity::jwks::PERIODIC_REFRESH,
        })
        .unwrap(),
    );
    v.refresh().await.unwrap();
    let ids = Identities::new(v, 1 << 20);
    assert!(ids.verify_now(&without("none-of-them")).is_ok(), "iss and aud present and right");
    for claim in ["iss", "aud"] {
        let e = ids.verify_now(&without(claim)).unwrap_err().to_string();
        assert!(e.contains(claim), "without {claim}: {e}");
    }
}

#[tokio::test]
async fn failed_refreshes_keep_the_keys_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    // A key URL nothing listens on: every refresh fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let v = verifier(&key, KeySource::Url(format!("http://{closed}/jwks.json")));
    for _ in 0..3 {
        assert!(v.refresh().await.is_err());
    }
    assert_eq!(v.readiness(), Ok(1), "the dev key is trusted once, not once per failed refresh");
    assert!(v.last_error().unwrap().contains("jwks.json"));
}

/// A key set on loopback that redirects to plain http:// elsewhere: not followed.
#[tokio::test]
async fn a_redirect_to_plain_http_elsewhere_is_not_followed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let answer = "HTTP/1.1 302 Found\r\nlocation: http://keys.example.net/jwks.json\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
            let _ = std::io::Write::write_all(&mut stream, answer.as_bytes());
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let v = verifier(&DevKey::load_or_create(dir.path()).unwrap(), KeySource::Url(url));
    let e = format!("{:#}", v.refresh().await.unwrap_err());
    assert!(e.contains("http://keys.example.net/jwks.json is plain http://"), "{e}");
}
