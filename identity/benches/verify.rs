//! What a CONNECT costs: verifying a token's signature and claims (`Verifier::verify_now`,
//! nothing cached), ES256 (the dev key, as Keycloak's EC keys) and RS256 (Keycloak's default),
//! for the capacity figures in `docs/scaling.md`.
//!
//! Run: `cargo bench -p identity --bench verify`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use identity::devkey::{DevKey, TokenSpec};
use identity::jwks::PERIODIC_REFRESH;
use identity::{KeySource, Verifier, VerifierConfig, now};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const ISSUER: &str = "https://keycloak.test/realms/celine";

fn verifier(keys: Vec<jsonwebtoken::jwk::Jwk>) -> Verifier {
    Verifier::new(VerifierConfig {
        source: KeySource::None,
        issuer: Some(ISSUER.into()),
        audience: None,
        leeway: Duration::from_secs(30),
        extra_keys: keys,
        hmac_secret: None,
        min_refresh: Duration::from_secs(10),
        authorized_parties: vec![],
        plain_http: Default::default(),
        trusted_ca_pem: None,
        refresh_every: PERIODIC_REFRESH,
    })
    .inspect(|v| {
        // The key set (here only the extra keys) is installed by a refresh.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(v.refresh()).unwrap();
    })
    .unwrap()
}

fn verify(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::load_or_create(dir.path()).unwrap();
    let mut spec = TokenSpec::dev_user("u1", &["viewers"], 600);
    spec.issuer = ISSUER.into();
    let es256 = key.sign(&identity::devkey::claims(&spec, now()).unwrap()).unwrap();
    let es = verifier(vec![key.jwk().unwrap()]);

    // The package folder at run time: one target directory may serve two checkouts.
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let fixtures = package.join("../host/tests/fixtures");
    let set: JwkSet = serde_json::from_slice(&std::fs::read(fixtures.join("jwks-a.json")).unwrap()).unwrap();
    let pem = std::fs::read(fixtures.join("rsa-a.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("key-a".into());
    let claims = identity::devkey::claims(&spec, now()).unwrap();
    let rs256 = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
    let rs = verifier(set.keys);

    es.verify_now(&es256).expect("the ES256 token verifies");
    rs.verify_now(&rs256).expect("the RS256 token verifies");
    let mut g = c.benchmark_group("verify");
    g.bench_function("ES256", |b| b.iter(|| es.verify_now(black_box(&es256)).unwrap()));
    g.bench_function("RS256", |b| b.iter(|| rs.verify_now(black_box(&rs256)).unwrap()));
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    targets = verify
}
criterion_main!(benches);
