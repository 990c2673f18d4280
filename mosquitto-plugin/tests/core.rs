//! The plugin's safe core, called the way `entry.rs` calls it, with a stand-in broker: what
//! a connection is allowed after CONNECT, after a disconnect, when its address is reused, and
//! across Mosquitto's reload re-check.

use std::sync::{Arc, Mutex};

use identity::devkey::{DevKey, TokenSpec, claims};
use mqtt_policy_mosquitto::{Admission, Broker, Client, ClientKey, Options, Plugin, access};

#[derive(Default)]
struct StandIn {
    published: Mutex<Vec<(String, String)>>,
    /// Clients kicked: (client id, with its will).
    kicked: Mutex<Vec<(String, bool)>>,
}

impl Broker for StandIn {
    fn log(&self, _: tracing::Level, _: &str) {}
    fn kick(&self, client_id: &str, with_will: bool) -> bool {
        self.kicked.lock().unwrap().push((client_id.to_string(), with_will));
        true
    }
    fn publish_retained(&self, topic: &str, payload: &[u8]) {
        self.published
            .lock()
            .unwrap()
            .push((topic.to_string(), String::from_utf8_lossy(payload).into_owned()));
    }
}

struct Fixture {
    plugin: Plugin,
    key: DevKey,
    broker: Arc<StandIn>,
    _state: tempfile::TempDir,
}

fn fixture(extra: &[(&str, &str)]) -> Fixture {
    let state = tempfile::tempdir().unwrap();
    let policy = test_support::package_dir().join("tests/e2e/policy.json");
    let mut pairs = vec![
        ("policy".to_string(), policy.display().to_string()),
        ("dev_state_dir".to_string(), state.path().display().to_string()),
        ("watch".to_string(), "false".to_string()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let broker = Arc::new(StandIn::default());
    let plugin = Plugin::start(Options::parse(&pairs).unwrap(), broker.clone()).unwrap();
    let key = DevKey::load_or_create(state.path()).unwrap();
    Fixture { plugin, key, broker, _state: state }
}

impl Fixture {
    fn token(&self, sub: &str, groups: &[&str]) -> String {
        self.token_for(sub, groups, 600)
    }

    /// A token that expires `ttl_secs` after the current whole second: short-lived tokens here
    /// take 2, which leaves at least one whole second of validity (1 may leave a millisecond).
    fn token_for(&self, sub: &str, groups: &[&str], ttl_secs: u64) -> String {
        self.key.sign(&claims(&TokenSpec::dev_user(sub, groups, ttl_secs), identity::now()).unwrap()).unwrap()
    }

    fn connect_ext(
        &self,
        key: usize,
        id: &str,
        method: &str,
        username: Option<&str>,
        token: &str,
    ) -> Admission {
        let client = Client { key: ClientKey(key), id, address: "127.0.0.1" };
        self.plugin.authenticate_ext(
            &client,
            method.as_bytes(),
            Some(token.as_bytes()),
            username.map(str::as_bytes),
        )
    }

    fn kicked(&self) -> Vec<(String, bool)> {
        self.broker.kicked.lock().unwrap().clone()
    }

    /// Ticks until `done` holds (at most 5 s: a token's `exp` has a resolution of a second).
    fn tick_until(&self, what: &str, done: impl Fn(&Fixture) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !done(self) {
            assert!(std::time::Instant::now() < deadline, "{what}: not within 5 s");
            self.plugin.tick();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    fn connect(&self, key: usize, id: &str, username: Option<&str>, password: Option<&str>) -> Admission {
        let client = Client { key: ClientKey(key), id, address: "127.0.0.1" };
        self.plugin.authenticate(&client, username.map(str::as_bytes), password.map(str::as_bytes))
    }

    fn may(&self, key: usize, access: i32, topic: &str) -> bool {
        self.plugin.check(ClientKey(key), access, topic.as_bytes())
    }
}

const TELEMETRY: &str = "celine/telemetry/meter/m1/readings";

#[test]
fn a_connection_is_decided_as_the_token_it_showed() {
    let f = fixture(&[]);
    let viewer = f.token("vera", &["viewers"]);
    assert_eq!(f.connect(1, "c1", Some("vera"), Some(&viewer)), Admission::Admitted { rename: None });
    assert!(f.may(1, access::READ, TELEMETRY));
    assert!(f.may(1, access::SUBSCRIBE, "$share/g/celine/telemetry/+/+/readings"));
    assert!(!f.may(1, access::WRITE, TELEMETRY));
    assert!(!f.may(1, access::SUBSCRIBE, "celine/telemetry/#"));
    assert!(f.may(1, access::UNSUBSCRIBE, "anything/#"), "leaving a subscription is always allowed");
    assert!(!f.may(1, 0x10, TELEMETRY), "an unknown access bit is denied");
    assert!(!f.may(2, access::READ, TELEMETRY), "a client that never authenticated has no rights");
    assert!(!f.may(1, access::READ, "celine/\u{0}bad"), "an invalid topic is denied");
    // Repeated checks come from the connection's cache and decide the same.
    for _ in 0..3 {
        assert!(f.may(1, access::READ, TELEMETRY));
    }
    assert!(f.plugin.stats().cache_hits.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

#[test]
fn refused_connects_leave_nothing_behind() {
    let f = fixture(&[]);
    let admin = f.token("adam", &["admins"]);
    assert!(matches!(f.connect(7, "c7", Some("adam"), Some(&admin)), Admission::Admitted { .. }));
    assert!(f.may(7, access::SUBSCRIBE, "#"));
    f.plugin.disconnect(ClientKey(7));
    // The same address, a new client with a bad token: refused, and no admin rights linger.
    assert_eq!(f.connect(7, "c8", Some("mallory"), Some("garbage")), Admission::Refused);
    assert!(!f.may(7, access::SUBSCRIBE, "#"));
    assert_eq!(f.connect(7, "c9", None, None), Admission::Refused, "no token at all");
    assert_eq!(f.connect(7, "c9", Some("not-a-jwt"), None), Admission::Refused);
}

#[test]
fn a_disconnected_client_keeps_its_identity_for_its_will_and_queued_messages() {
    let f = fixture(&[]);
    let viewer = f.token("vera", &["viewers"]);
    f.connect(3, "c3", Some("vera"), Some(&viewer));
    f.plugin.disconnect(ClientKey(3));
    // Mosquitto checks deliveries queued for a persistent session, and the will, after the
    // disconnect event: still decided as the same identity.
    assert!(f.may(3, access::READ, TELEMETRY));
    assert!(!f.may(3, access::WRITE, TELEMETRY));
}

#[test]
fn a_token_sent_as_the_username_is_renamed_and_readmitted_only_on_reload() {
    let f = fixture(&[]);
    let viewer = f.token("vera", &["viewers"]);
    assert_eq!(
        f.connect(5, "c5", Some(&viewer), None),
        Admission::Admitted { rename: Some("vera".into()) },
        "the broker is told to show the subject id, not the token"
    );
    assert!(f.may(5, access::READ, TELEMETRY));
    // Outside a reload, showing the new name without a token gets nothing.
    assert_eq!(f.connect(5, "c5", Some("vera"), None), Admission::Refused);
    f.connect(5, "c5", Some(&viewer), None);
    // Mosquitto's reload re-check: the stored username is now "vera", no password.
    f.plugin.reload();
    assert_eq!(f.connect(5, "c5", Some("vera"), None), Admission::Admitted { rename: None });
    assert!(f.may(5, access::READ, TELEMETRY));
    // The re-check window closes with the next check: a new connection must show a token.
    assert_eq!(f.connect(5, "c5", Some("vera"), None), Admission::Refused);
    // A disconnected client is not readmitted by name, even during a reload.
    f.connect(6, "c6", Some(&viewer), None);
    f.plugin.disconnect(ClientKey(6));
    f.plugin.reload();
    assert_eq!(f.connect(6, "c6", Some("vera"), None), Admission::Refused);
}

#[test]
fn counters_are_published_as_retained_sys_messages_on_tick() {
    let f = fixture(&[("sys_interval", "1")]);
    let viewer = f.token("vera", &["viewers"]);
    f.connect(9, "c9", Some("vera"), Some(&viewer));
    assert!(!f.may(9, access::SUBSCRIBE, "#"));
    f.plugin.tick();
    let published = f.broker.published.lock().unwrap().clone();
    let get = |t: &str| published.iter().find(|(k, _)| k == t).map(|(_, v)| v.clone());
    assert_eq!(get("$SYS/broker/mqtt-policy/checks/denied").as_deref(), Some("1"));
    assert_eq!(get("$SYS/broker/mqtt-policy/connections/accepted").as_deref(), Some("1"));
    assert_eq!(
        get("$SYS/broker/mqtt-policy/generation").as_deref(),
        Some(&*f.plugin.live().current().id.to_string())
    );
}

#[test]
fn a_fault_in_the_policy_module_denies_that_check_and_no_other() {
    let faulty = test_support::target_dir().join("policy-module/faulty.wasm");
    assert!(faulty.exists(), "{} is missing: run `cargo xtask build` first", faulty.display());
    let f = fixture(&[("module", &faulty.display().to_string())]);
    let viewer = f.token("vera", &["viewers"]);
    f.connect(4, "c4", Some("vera"), Some(&viewer));
    assert!(f.may(4, access::READ, TELEMETRY));
    assert!(!f.may(4, access::READ, "fault/panic"), "a trap denies");
    assert!(!f.may(4, access::READ, "fault/loop"), "running out of time denies");
    assert!(f.may(4, access::READ, TELEMETRY), "the next check is decided normally");
    assert_eq!(f.plugin.live().current().module.runtime().faults(), 2);
}

#[test]
fn an_expired_token_ends_its_connection_on_tick_without_its_will() {
    let f = fixture(&[("leeway", "0")]);
    let short = f.token_for("vera", &["viewers"], 2);
    let long = f.token("olga", &["viewers"]);
    f.connect(1, "short-lived", Some("vera"), Some(&short));
    f.connect(2, "long-lived", Some("olga"), Some(&long));
    assert!(f.may(1, access::READ, TELEMETRY));
    f.plugin.tick();
    assert!(f.kicked().is_empty(), "nothing is due yet");
    f.tick_until("the short-lived token's kick", |f| !f.kicked().is_empty());
    assert_eq!(f.kicked(), [("short-lived".to_string(), false)]);
    // Every check from its deadline on is denied; the broker's disconnect event follows.
    assert!(!f.may(1, access::READ, TELEMETRY));
    f.plugin.disconnect(ClientKey(1));
    assert!(f.may(2, access::READ, TELEMETRY));
    f.plugin.tick();
    assert_eq!(f.kicked().len(), 1, "each connection is ended once");
    assert_eq!(f.plugin.stats().expiry_disconnects.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn with_disconnect_on_expiry_off_an_expired_connection_stays_but_is_denied() {
    let f = fixture(&[("leeway", "0"), ("disconnect_on_expiry", "false")]);
    let short = f.token_for("vera", &["viewers"], 2);
    f.connect(1, "c1", Some("vera"), Some(&short));
    assert!(f.may(1, access::READ, TELEMETRY));
    f.tick_until("the token's expiry", |f| !f.may(1, access::READ, TELEMETRY));
    f.plugin.tick();
    assert!(f.kicked().is_empty());
}

#[test]
fn the_will_goes_out_at_expiry_when_configured() {
    let f = fixture(&[("leeway", "0"), ("will_on_expiry", "true")]);
    let short = f.token_for("vera", &["viewers"], 2);
    f.connect(1, "c1", Some("vera"), Some(&short));
    f.tick_until("the kick", |f| !f.kicked().is_empty());
    assert_eq!(f.kicked(), [("c1".to_string(), true)]);
}

#[test]
fn enhanced_authentication_with_method_jwt_admits_and_refreshes_the_identity() {
    let f = fixture(&[("leeway", "0")]);
    let first_exp = identity::now() + 2;
    let viewer = f.token_for("vera", &["viewers", "editors"], 2);
    assert_eq!(f.connect_ext(1, "c1", "SCRAM-SHA-256", None, &viewer), Admission::NotOurs);
    // No username: the broker is told to know the client by its subject id.
    assert_eq!(
        f.connect_ext(1, "c1", "JWT", None, &viewer),
        Admission::Admitted { rename: Some("vera".into()) }
    );
    let twin_events = "celine/digital-twin/events/site-1/update";
    assert!(f.may(1, access::READ, twin_events), "editors follow twin events");
    // A fresh token for the same subject, with fewer groups, before the first one expires:
    // the very next check is decided with it, and the first token's expiry ends nothing.
    let fresher = f.token("vera", &["viewers"]);
    assert_eq!(f.connect_ext(1, "c1", "jwt", None, &fresher), Admission::Admitted { rename: None });
    assert!(!f.may(1, access::READ, twin_events), "the editors' rights went with the group");
    assert!(f.may(1, access::READ, TELEMETRY));
    f.tick_until("the first token's expiry", |_| identity::now() > first_exp);
    f.plugin.tick();
    assert!(f.kicked().is_empty(), "the refreshed connection outlives its first token");
    assert!(f.may(1, access::READ, TELEMETRY));
    // Another subject's token, or a broken one: refused (the broker then ends the connection).
    let other = f.token("olga", &["viewers"]);
    assert_eq!(f.connect_ext(1, "c1", "jwt", None, &other), Admission::Refused);
    assert_eq!(f.connect_ext(1, "c1", "jwt", None, "not-a-token"), Admission::Refused);
    let stats = f.plugin.stats();
    assert_eq!(stats.reauth_accepted.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(stats.reauth_refused.load(std::sync::atomic::Ordering::Relaxed), 2);
    // Mosquitto's reload re-check asks through the basic-auth event with the username alone:
    // the connection keeps its identity.
    f.plugin.reload();
    assert_eq!(f.connect(1, "c1", Some("vera"), None), Admission::Admitted { rename: None });
    assert!(f.may(1, access::READ, TELEMETRY));
    // A first CONNECT without a token is refused and says why.
    let client = Client { key: ClientKey(2), id: "c2", address: "127.0.0.1" };
    assert_eq!(f.plugin.authenticate_ext(&client, b"jwt", None, None), Admission::Refused);
}
