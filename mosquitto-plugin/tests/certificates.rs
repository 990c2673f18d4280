//! Clients known by their TLS certificate, inside a real Mosquitto (Debian's) with two
//! listeners: the plain one where clients show tokens, and a TLS one with
//! `require_certificate true` and `use_identity_as_username true`, where Mosquitto admits a
//! client by its certificate without asking the plugin. The plugin must never decide such a
//! client as anyone else (the last admin who left, whose freed client structure the
//! allocator hands to the next client), and with `plugin_opt_certificate_subject_type` must
//! decide it as exactly the subject its certificate names.
//!
//! Certificates are made by the test (rcgen): a CA, the broker's, and clients named `meter-1`
//! (in the policy's certificates section), `meter-2`, `adam` (the admin's username) and
//! `stranger` (in no section).

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use test_support::free_port;
use test_support::mosquitto::Broker;

mod common;
mod mqtt;
use common::{Issuer, broker_with};
use mqtt::{Client, Event, Version};

/// A CA, the broker's certificate it signed, and client certificates by name.
struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    broker_cert: String,
    broker_key: String,
}

impl Pki {
    fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "mqtt-policy test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "broker");
        let cert = params.signed_by(&key, &ca).unwrap();
        Pki { broker_cert: cert.pem(), broker_key: key.serialize_pem(), ca }
    }

    /// A client TLS configuration trusting the CA and showing a certificate named `cn`.
    fn client(&self, cn: &str) -> Arc<rustls::ClientConfig> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.ca.pem().as_bytes()).unwrap()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.pem().as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
            )
            .unwrap();
        Arc::new(config)
    }
}

/// The e2e broker with a second listener where clients are known by their certificate.
fn broker_with_certificates(issuer: &Issuer, pki: &Pki, certificate_subjects: bool) -> (Broker, u16) {
    let tls_port = free_port();
    let b = broker_with(issuer, |setup| {
        let ca = setup.file("ca.pem", pki.ca.pem());
        let cert = setup.file("broker.pem", &pki.broker_cert);
        let key = setup.file("broker-key.pem", &pki.broker_key);
        let setup = setup
            .config(&format!("listener {tls_port} 127.0.0.1"))
            .config(&format!("cafile {}", ca.display()))
            .config(&format!("certfile {}", cert.display()))
            .config(&format!("keyfile {}", key.display()))
            .config("require_certificate true")
            .config("use_identity_as_username true");
        if certificate_subjects { setup.option("certificate_subject_type", "device") } else { setup }
    });
    (b, tls_port)
}

/// An admin subscribed to everything under `celine/`, and another who publishes markers.
struct Observer {
    watching: Client,
    marking: Client,
}

impl Observer {
    fn new(b: &Broker, issuer: &Issuer) -> Observer {
        let token = issuer.user("adam", &["admins"]);
        let watching = Client::connected(Version::V311, b.port, "observer", "adam", &token);
        assert_eq!(watching.subscribe("celine/#"), 1);
        Observer { watching, marking: Client::connected(Version::V311, b.port, "marker", "adam", &token) }
    }
}

/// What a certificate client may do, asked of the broker: SUBACK codes for `filters`, and
/// whether each of `publishes` reached the observer.
fn try_everything(
    client: &Client,
    observer: &Observer,
    filters: &[&str],
    publishes: &[&str],
) -> (Vec<u8>, Vec<bool>) {
    let codes = filters.iter().map(|f| client.subscribe(f)).collect();
    let mut delivered = Vec::new();
    for (i, topic) in publishes.iter().enumerate() {
        let payload = format!("{}-{i}", client.id);
        client.publish(topic, &payload);
        // A marker after it: anything from the client reaches the observer before.
        observer.marking.publish("celine/marker", &format!("marker-{payload}"));
        let seen = observer.watching.messages_until(&format!("marker-{payload}"));
        delivered.push(seen.iter().any(|(_, p)| *p == payload));
    }
    (codes, delivered)
}

const DENIED: u8 = 0x80;

/// Admins connect and leave on the plain listener, each followed by a certificate client on
/// the TLS listener (some with the admin's client id, some named like the admin): each
/// certificate client gets exactly what its certificate's subject may do (`meter-1` its own
/// commands and readings when `devices` is on), and nothing of the admin's.
fn admins_then_certificate_clients(issuer: &Issuer, pki: &Pki, devices: bool) {
    let (b, tls_port) = broker_with_certificates(issuer, pki, devices);
    let admin_token = issuer.user("adam", &["admins"]);
    let observer = Observer::new(&b, issuer);
    let filters = ["celine/#", "$SYS/#", "#", "celine/commands/meter-1/#"];
    let publishes = [
        "celine/telemetry/meter/meter-1/readings",
        "celine/telemetry/meter/meter-2/readings",
        "celine/digital-twin/events/pump/p1",
    ];
    for round in 0..12 {
        // The next client may well get the freed admin client structure's address.
        let admin_id = format!("admin-{round}");
        let admin = Client::connected(Version::V311, b.port, &admin_id, "adam", &admin_token);
        assert_eq!(admin.subscribe("$SYS/#"), 1);
        admin.disconnect();
        let (id, cn) = match round % 4 {
            0 => (admin_id.clone(), "adam"),
            1 => (format!("stranger-{round}"), "stranger"),
            2 => (admin_id.clone(), "meter-1"),
            _ => (format!("meter-1-{round}"), "meter-1"),
        };
        let version = if round % 2 == 0 { Version::V311 } else { Version::V5 };
        let (client, first) = Client::connect_tls(version, tls_port, &id, pki.client(cn));
        assert_eq!(first, Event::Connected, "round {round}: {cn} was not let in by its certificate");
        let (codes, delivered) = try_everything(&client, &observer, &filters, &publishes);
        let denied = if version == Version::V311 { DENIED } else { 0x87 };
        if cn == "meter-1" && devices {
            // Its own commands and readings, nothing more.
            assert_eq!(codes[..3], [denied; 3], "round {round}: {cn} subscribed beyond its own");
            assert_ne!(codes[3], denied, "round {round}: {cn} may follow its own commands");
            assert_eq!(delivered, [true, false, false], "round {round}: {cn}'s publishes");
        } else {
            assert_eq!(codes, [denied; 4], "round {round}: {cn} got a subscription");
            assert_eq!(delivered, [false; 3], "round {round}: {cn}'s publish went through");
        }
        client.disconnect();
    }
    let log = b.log();
    if devices {
        assert!(log.contains("is known by its certificate as \"meter-1\""), "{log}");
    } else {
        assert!(log.contains("set plugin_opt_certificate_subject_type"), "{log}");
    }
}

#[test]
fn certificate_clients_never_inherit_an_admins_rights_and_a_device_gets_exactly_its_own() {
    admins_then_certificate_clients(&Issuer::new(), &Pki::new(), true);
}

#[test]
fn without_the_option_certificate_clients_are_denied_everything_and_told_why() {
    admins_then_certificate_clients(&Issuer::new(), &Pki::new(), false);
}

/// A token client that proves nothing about its certificate keeps its token's identity; and
/// a certificate client's checks, logged, name its certificate's subject.
#[test]
fn a_device_publishes_its_readings_to_a_viewer_through_the_broker() {
    let issuer = Issuer::new();
    let pki = Pki::new();
    let (b, tls_port) = broker_with_certificates(&issuer, &pki, true);
    let viewer = Client::connected(Version::V5, b.port, "vera-1", "vera", &issuer.user("vera", &["viewers"]));
    assert_eq!(viewer.subscribe("celine/telemetry/+/+/readings"), 1);
    let (meter, first) = Client::connect_tls(Version::V5, tls_port, "m1", pki.client("meter-1"));
    assert_eq!(first, Event::Connected);
    meter.publish("celine/telemetry/meter/meter-1/readings", "7 kWh");
    assert_eq!(viewer.message(), ("celine/telemetry/meter/meter-1/readings".into(), "7 kWh".into()));
    meter.publish("celine/telemetry/meter/meter-2/readings", "forged");
    let record =
        b.wait_for_record_after(0, "publish", "celine/telemetry/meter/meter-2/readings", "deny", mqtt::WAIT);
    assert_eq!(
        (&record["subject"], &record["subject_type"]),
        (&"meter-1".into(), &"device".into()),
        "{record}"
    );
}
