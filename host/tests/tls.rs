//! TLS on the broker-facing listener (`--tls-cert`, `--tls-key`): go-auth can call over TLS,
//! and production traffic crosses hosts. The clients here verify the server against a test CA,
//! as go-auth does against the CAs it trusts.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};

mod common;
use common::*;

const TELEMETRY_READ: &str = r#"{"clientid":"c1","topic":"celine/telemetry/meter/m1/readings","acc":1}"#;

/// A test CA and a server certificate it signed for `localhost` and 127.0.0.1, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(name: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, format!("mqtt-policy test CA {name}"));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "mqtt-policy");
    let cert = params.signed_by(&key, &ca).unwrap();
    Pki { ca: ca.pem(), cert: cert.pem(), key: key.serialize_pem() }
}

fn write_pair(dir: &Path, pki: &Pki) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    std::fs::write(&cert, &pki.cert).unwrap();
    std::fs::write(&key, &pki.key).unwrap();
    (cert, key)
}

/// A client that trusts only `ca`.
fn trusting(ca: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn tls_server(dir: &Path, pki: &Pki) -> Server {
    let (cert, key) = write_pair(dir, pki);
    Server::start(&["--dev", "--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()])
}

#[test]
fn go_auth_calls_over_tls_are_answered_and_the_certificate_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let ours = pki("a");
    let s = tls_server(dir.path(), &ours);
    assert!(s.url.starts_with("https://127.0.0.1:"), "{}", s.url);
    let http = trusting(&ours.ca);
    let token = dev_token(&s, &["--sub", "alice", "--groups", "viewers"]);

    // The http backend over TLS: the user call binds the session, the ACL call uses it.
    let user = send(
        http.post(s.url("/mqtt/user"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(format!("username=alice&password={token}&clientid=c1")),
    );
    assert_eq!(user.status, 200, "{}", user.body);
    let acl = send(
        http.post(s.url("/mqtt/acl"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body("username=alice&clientid=c1&topic=celine%2Ftelemetry%2Fmeter%2Fm1%2Freadings&acc=1"),
    );
    assert_eq!(acl.status, 200, "{}", acl.body);
    assert_eq!(send(http.get(s.url("/healthz"))).status, 200);
    // Also by name: the certificate names localhost.
    let by_name = s.url("/healthz").replace("127.0.0.1", "localhost");
    assert_eq!(send(http.get(by_name)).status, 200);

    // A client that does not trust the CA refuses the server; plain HTTP gets no answer.
    let other = trusting(&pki("other").ca);
    let refused = other.post(s.url("/mqtt/acl")).bearer_auth(&token).body(TELEMETRY_READ).send();
    assert!(refused.is_err(), "a server certificate from an untrusted CA was accepted");
    let plain = client().post(s.url("/mqtt/acl").replace("https://", "http://")).body(TELEMETRY_READ).send();
    assert!(!plain.is_ok_and(|r| r.status().as_u16() == 200), "plain HTTP was decided");
    // The operations listener stays plain HTTP on its own address.
    assert!(s.ops_url.starts_with("http://"), "{}", s.ops_url);
    let metrics = send(client().get(s.ops("/metrics"))).body;
    assert!(metrics.contains("mqtt_policy_tls_handshake_failures_total"), "{metrics}");
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first = pki("first");
    let s = tls_server(dir.path(), &first);
    assert_eq!(send(trusting(&first.ca).get(s.url("/healthz"))).status, 200);

    let renewed = pki("renewed");
    write_pair(dir.path(), &renewed);
    let hup = std::process::Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let http = trusting(&renewed.ca);
    test_support::wait_for("the renewed certificate", Duration::from_secs(10), || {
        http.get(s.url("/healthz")).send().is_ok_and(|r| r.status().as_u16() == 200)
    });
    assert!(
        trusting(&first.ca).get(s.url("/healthz")).send().is_err(),
        "the old certificate is still served"
    );

    // A broken renewal keeps the last good pair in service.
    std::fs::write(dir.path().join("server-key.pem"), "not a key").unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &s.child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    for _ in 0..20 {
        assert_eq!(send(http.get(s.url("/healthz"))).status, 200);
    }
}

#[test]
fn start_up_refuses_tls_files_that_do_not_fit_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (pki("a"), pki("b"));
    let (cert, _) = write_pair(dir.path(), &a);
    let wrong_key = dir.path().join("other-key.pem");
    std::fs::write(&wrong_key, &b.key).unwrap();
    let missing = dir.path().join("missing.pem");
    let cases: [(&[&str], &str); 3] = [
        (&["--tls-cert", cert.to_str().unwrap(), "--tls-key", wrong_key.to_str().unwrap()], "does not fit"),
        (&["--tls-cert", missing.to_str().unwrap(), "--tls-key", wrong_key.to_str().unwrap()], "missing.pem"),
        (&["--tls-cert", cert.to_str().unwrap()], "--tls-key"),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// An identity provider behind a private certificate authority: its https:// key set is not
/// trusted until the operator names that authority with `--jwks-ca-file`, and then it is;
/// the plain-http opt-in is never needed. The provider here is a dev-mode service of the
/// test's own, serving its key set (`/dev/jwks.json`) over TLS with a certificate of `pki`.
#[test]
fn a_key_set_behind_a_private_ca_is_trusted_once_that_ca_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let private = pki("identity provider");
    let idp = tls_server(dir.path(), &private);
    let jwks = idp.url("/dev/jwks.json").replace("127.0.0.1", "localhost");
    let token = dev_token(&idp, &["--sub", "alice", "--groups", "viewers"]);
    let user_call = |s: &Server| bearer_call(s, "/mqtt/user", &token, "null");

    let refuses_the_certificate = |s: &Server| {
        test_support::wait_for("/readyz to name the refused certificate", Duration::from_secs(10), || {
            let ready = send(client().get(s.ops("/readyz")));
            ready.status == 503 && ready.body.contains("certificate") && ready.body.contains("--jwks-ca-file")
        })
    };
    let untrusting = Server::start(&["--jwks-url", &jwks, "--jwks-min-refresh", "1"]);
    refuses_the_certificate(&untrusting);
    assert_eq!(user_call(&untrusting).status, 403);

    let ca = dir.path().join("private-ca.pem");
    std::fs::write(&ca, &private.ca).unwrap();
    let trusting = Server::start(&["--jwks-url", &jwks, "--jwks-ca-file", ca.to_str().unwrap()]);
    test_support::wait_for("/readyz to answer 200", Duration::from_secs(10), || {
        send(client().get(trusting.ops("/readyz"))).status == 200
    });
    assert_eq!(user_call(&trusting).status, 200);

    // Another authority's certificate does not open the way; a file that is no certificate
    // stops the start, naming it.
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, pki("other").ca).unwrap();
    let wrong = Server::start(&["--jwks-url", &jwks, "--jwks-ca-file", other.to_str().unwrap()]);
    refuses_the_certificate(&wrong);
    assert_eq!(user_call(&wrong).status, 403);
    let garbage = dir.path().join("not-a-certificate.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mqtt-policy"))
        .args(["serve", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--jwks-url", &jwks])
        .arg("--jwks-ca-file")
        .arg(&garbage)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not-a-certificate.pem") && said.contains("no PEM certificate"), "{said}");
}
