//! The plugin's safe core, called the way `entry.rs` calls it, with a stand-in broker: what
//! a connection is allowed after CONNECT, after a disconnect, when its address is reused, and
//! across Mosquitto's reload re-check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use identity::devkey::{DevKey, TokenSpec, claims};
use mqtt_policy_mosquitto::{
    AclMessage, Admission, Broker, ClientKey, Options, PlainClient, Plugin, Removal, access,
};

#[derive(Default)]
struct StandIn {
    published: Mutex<Vec<(String, String)>>,
    /// Clients kicked: (client id, with its will).
    kicked: Mutex<Vec<(String, bool)>>,
    /// Whether it removes single subscriptions (Mosquitto 2.1), which it did remove (client
    /// id, filter), and a filter it fails to remove.
    removes: bool,
    removed: Mutex<Vec<(String, String)>>,
    fails_to_remove: Option<&'static str>,
}

impl Broker for StandIn {
    fn log(&self, _: tracing::Level, _: &str) {}
    fn kick(&self, client_id: &str, with_will: bool) -> bool {
        self.kicked.lock().unwrap().push((client_id.to_string(), with_will));
        true
    }
    fn removes_subscriptions(&self) -> bool {
        self.removes
    }
    fn remove_subscription(&self, client_id: &str, filter: &str) -> Removal {
        if !self.removes {
            return Removal::Failed(mqtt_policy_mosquitto::sys::MOSQ_ERR_NOT_SUPPORTED);
        }
        if self.fails_to_remove == Some(filter) {
            return Removal::Failed(mqtt_policy_mosquitto::sys::MOSQ_ERR_INVAL);
        }
        self.removed.lock().unwrap().push((client_id.to_string(), filter.to_string()));
        Removal::Removed
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
    /// The client each address holds now, as the broker would describe it.
    clients: std::cell::RefCell<HashMap<usize, PlainClient>>,
    _state: tempfile::TempDir,
}

fn fixture(extra: &[(&str, &str)]) -> Fixture {
    fixture_on(StandIn::default(), extra).unwrap()
}

/// The plugin started with `extra` options on `broker`, or why it did not start.
fn fixture_on(broker: StandIn, extra: &[(&str, &str)]) -> anyhow::Result<Fixture> {
    let state = tempfile::tempdir().unwrap();
    let policy = test_support::package_dir().join("tests/e2e/policy.json");
    let mut pairs = vec![
        ("dev".to_string(), "true".to_string()),
        ("state_dir".to_string(), state.path().display().to_string()),
        ("watch".to_string(), "false".to_string()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    if !extra.iter().any(|(k, _)| *k == "policy") {
        pairs.push(("policy".to_string(), policy.display().to_string()));
    }
    let broker = Arc::new(broker);
    let plugin = Plugin::start(Options::parse(&pairs).unwrap(), broker.clone())?;
    let key = DevKey::load_or_create(state.path()).unwrap();
    Ok(Fixture { plugin, key, broker, clients: Default::default(), _state: state })
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

    /// An MQTT 5 CONNECT with enhanced authentication, or (on a connected client with the
    /// same id) a re-authentication.
    fn connect_ext(
        &self,
        key: usize,
        id: &str,
        method: &str,
        username: Option<&str>,
        token: &str,
    ) -> Admission {
        self.auth_ext(key, id, method, username, Some(token))
    }

    fn auth_ext(
        &self,
        key: usize,
        id: &str,
        method: &str,
        username: Option<&str>,
        token: Option<&str>,
    ) -> Admission {
        let client = self.client_for(key, id, username, 5);
        let admitted = self.plugin.authenticate_ext(
            &client,
            method.as_bytes(),
            token.map(str::as_bytes),
            username.map(str::as_bytes),
        );
        // The broker keeps what the plugin renamed the client to.
        if client.renamed.get().is_some() {
            self.clients.borrow_mut().insert(key, client);
        }
        admitted
    }

    /// The client at `key`: the one there if it has this id (a re-authentication, a reload
    /// re-check), else a new one.
    fn client_for(&self, key: usize, id: &str, username: Option<&str>, protocol: i32) -> PlainClient {
        let mut clients = self.clients.borrow_mut();
        let c = clients.entry(key).or_insert_with(|| PlainClient::new(key, id, username));
        if c.id != id {
            *c = PlainClient::new(key, id, username);
        }
        c.protocol = protocol;
        c.clone()
    }

    /// A new client at `key` (the address of a freed one) that this plugin never sees
    /// connect: a certificate listener's, or another plugin's.
    fn arrives_unseen(&self, client: PlainClient) {
        self.clients.borrow_mut().insert(client.key.0, client);
    }

    fn disconnect(&self, key: usize) {
        self.plugin.disconnect(ClientKey(key));
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

    /// Writes `text` to the policy file, has the plugin reload it, and ticks until the swap
    /// and its revocation pass are done.
    fn swap_to(&self, policy: &std::path::Path, text: &str) {
        std::fs::write(policy, text).unwrap();
        let before = self.plugin.live().current().id;
        self.plugin.reload();
        self.tick_until("the swap", |f| f.plugin.live().current().id != before);
        self.tick_until("its pass", |f| !f.plugin.revocation_pending());
    }

    /// A CONNECT with a username and password: a new client at `key`.
    fn connect(&self, key: usize, id: &str, username: Option<&str>, password: Option<&str>) -> Admission {
        let client = PlainClient::new(key, id, username);
        let admitted =
            self.plugin.authenticate(&client, username.map(str::as_bytes), password.map(str::as_bytes));
        // The broker keeps what the plugin renamed the client to.
        self.clients.borrow_mut().insert(key, client);
        admitted
    }

    /// Mosquitto's reload re-check of the client at `key`, with what the broker stored.
    fn recheck(&self, key: usize, password: Option<&str>) -> Admission {
        let client = self.clients.borrow()[&key].clone();
        let username = client.username.clone();
        let username = client.renamed.get().cloned().or(username);
        self.plugin.authenticate(&client, username.as_deref().map(str::as_bytes), password.map(str::as_bytes))
    }

    fn may(&self, key: usize, access: i32, topic: &str) -> bool {
        let client =
            self.clients.borrow().get(&key).cloned().unwrap_or_else(|| PlainClient::new(key, "", None));
        self.plugin.check(&client, access, topic.as_bytes(), AclMessage::default())
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
    // Repeated subscriptions come from the connection's cache and decide the same; reads of
    // topics the subject's residual decides need no cache at all.
    let cached = f.plugin.stats().decisions.cache().0;
    for _ in 0..3 {
        assert!(f.may(1, access::SUBSCRIBE, "$share/g/celine/telemetry/+/+/readings"));
        assert!(f.may(1, access::READ, TELEMETRY));
    }
    assert_eq!(f.plugin.stats().decisions.cache().0, cached + 3);
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

/// Where the token is: a password that is a JWT, else a username that is one (the HTTP
/// service's rule). A JWT username is never shown by the broker, whichever token decides.
#[test]
fn a_password_that_is_no_jwt_is_never_a_token_and_a_jwt_username_is_never_shown() {
    let f = fixture(&[]);
    let viewer = f.token("vera", &["viewers"]);
    let other = f.token("olga", &["viewers"]);
    assert_eq!(
        f.connect(1, "c1", Some(&viewer), Some("secret")),
        Admission::Admitted { rename: Some("vera".into()) },
        "the username's token, beside a password that is no JWT"
    );
    assert!(f.may(1, access::READ, TELEMETRY));
    // Mosquitto's reload re-check with what it stored (the new name, the same password):
    // readmitted on the identity the client proved.
    f.plugin.reload();
    assert_eq!(f.recheck(1, Some("secret")), Admission::Admitted { rename: None });
    f.plugin.tick();
    assert_eq!(f.connect(2, "c2", Some("vera"), Some("secret")), Admission::Refused, "no token at all");
    assert!(!f.may(2, access::READ, TELEMETRY));
    assert_eq!(
        f.connect(3, "c3", Some(&other), Some(&viewer)),
        Admission::Admitted { rename: Some("vera".into()) },
        "the password's token decides; the other token, the username, is not shown"
    );
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
    assert_eq!(f.recheck(5, None), Admission::Refused);
    f.connect(5, "c5", Some(&viewer), None);
    // Mosquitto's reload re-check: the stored username is now "vera", no password.
    f.plugin.reload();
    assert_eq!(f.recheck(5, None), Admission::Admitted { rename: None });
    // A check in the middle of the re-check (a log line published to $SYS) does not end it.
    assert!(f.may(5, access::READ, TELEMETRY));
    f.connect(6, "c6", Some(&viewer), None);
    f.plugin.reload();
    assert!(f.may(5, access::READ, TELEMETRY));
    assert_eq!(f.recheck(6, None), Admission::Admitted { rename: None });
    // The re-check window closes with the next tick, timed work or not: a new connection
    // must show a token.
    f.plugin.tick_untimed();
    assert_eq!(f.recheck(5, None), Admission::Refused);
}

#[test]
fn a_reload_readmits_offline_persistent_sessions_on_the_identity_they_proved() {
    let f = fixture(&[("leeway", "0")]);
    let viewer = f.token("vera", &["viewers"]);
    let short_exp = identity::now() + 2;
    let short = f.token_for("olga", &["viewers"], 2);
    for (key, id, token) in [(1, "persistent-vera", &viewer), (2, "persistent-olga", &short)] {
        let mut c = PlainClient::new(key, id, None);
        c.clean = false;
        f.arrives_unseen(c.clone());
        assert!(matches!(
            f.plugin.authenticate(&c, Some(token.as_bytes()), None),
            Admission::Admitted { .. }
        ));
        f.arrives_unseen(c);
        f.disconnect(key);
    }
    f.plugin.tick();
    f.plugin.reload();
    assert_eq!(f.recheck(1, None), Admission::Admitted { rename: None }, "offline, still valid");
    assert!(f.may(1, access::READ, TELEMETRY), "its queued deliveries are still decided as vera");
    f.tick_until("the short token's expiry", |_| identity::now() > short_exp);
    f.plugin.reload();
    assert_eq!(f.recheck(2, None), Admission::Refused, "an expired token is not readmitted");
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
    assert_eq!(f.recheck(1, None), Admission::Admitted { rename: None });
    assert!(f.may(1, access::READ, TELEMETRY));
    // A first CONNECT without a token is refused and says why.
    assert_eq!(f.auth_ext(2, "c2", "jwt", None, None), Admission::Refused);
}

/// A freed client's address reused by a client this plugin never saw connect (a certificate
/// listener's, another plugin's): it never gets the identity kept for that address.
#[test]
fn a_client_that_was_never_admitted_never_inherits_an_identity() {
    let f = fixture(&[]);
    let admin = f.token("adam", &["admins"]);
    // A clean session: gone at the next tick (any tick, timed work or not), as Mosquitto
    // frees its client after it.
    f.plugin.tick();
    assert!(matches!(f.connect(1, "admin-1", Some("adam"), Some(&admin)), Admission::Admitted { .. }));
    assert!(f.may(1, access::SUBSCRIBE, "#"));
    f.disconnect(1);
    f.plugin.tick_untimed();
    f.arrives_unseen(PlainClient::new(1, "admin-1", Some("adam")));
    for (a, t) in [(access::SUBSCRIBE, "#"), (access::READ, TELEMETRY), (access::WRITE, TELEMETRY)] {
        assert!(!f.may(1, a, t), "{a} {t}: the newcomer took the admin's client id and name, nothing more");
    }
    // A persistent session stays for its queued deliveries, bound to what the broker says
    // about the client that proved it.
    let mut persistent = PlainClient::new(2, "admin-2", Some("adam"));
    persistent.clean = false;
    f.arrives_unseen(persistent.clone());
    assert!(matches!(
        f.plugin.authenticate(&persistent, Some(b"adam"), Some(admin.as_bytes())),
        Admission::Admitted { .. }
    ));
    f.disconnect(2);
    f.plugin.tick();
    assert!(f.may(2, access::READ, TELEMETRY), "queued deliveries of the offline session");
    // Its session expires (no event) and a certificate client arrives at the address with the
    // same client id and a certificate named like the admin.
    let mut impostor = PlainClient::with_certificate(2, "admin-2", "adam");
    impostor.clean = false;
    f.arrives_unseen(impostor);
    for (a, t) in [
        (access::SUBSCRIBE, "#"),
        (access::READ, TELEMETRY),
        (access::WRITE, TELEMETRY),
        (access::SUBSCRIBE, "$SYS/#"),
    ] {
        assert!(!f.may(2, a, t), "{a} {t}");
    }
    // The same without a certificate (another plugin let it in): a subscription or a publish
    // shows it is not the offline session.
    let mut persistent = PlainClient::new(3, "admin-3", Some("adam"));
    persistent.clean = false;
    f.arrives_unseen(persistent.clone());
    f.plugin.authenticate(&persistent, Some(b"adam"), Some(admin.as_bytes()));
    f.disconnect(3);
    f.plugin.tick();
    f.arrives_unseen(persistent);
    assert!(!f.may(3, access::WRITE, TELEMETRY), "a publish by an offline session is no will");
    assert!(!f.may(3, access::SUBSCRIBE, "#"));
    assert!(!f.may(3, access::READ, TELEMETRY), "and once found out, nothing is left");
    assert!(f.plugin.stats().unknown_clients.load(std::sync::atomic::Ordering::Relaxed) >= 3);
}

/// A rule for every subject is still no rule for a client nobody proved: an unadmitted
/// client is denied every check, on the fast path too, before and after the swap that adds
/// such a rule.
#[test]
fn a_rule_for_every_subject_grants_nothing_to_a_client_never_admitted() {
    let (_dir, policy, original) = editable_e2e_policy();
    let f = fixture(&[("policy", policy.to_str().unwrap())]);
    let mut everyone: serde_json::Value = serde_json::from_str(&original).unwrap();
    let rules = everyone["celine"]["mqtt"]["acl"]["rules"].as_array_mut().unwrap();
    rules
        .insert(0, serde_json::json!({ "id": "everyone", "topics": "*", "actions": "*", "effect": "allow" }));
    let viewer = f.token("vera", &["viewers"]);
    assert!(matches!(f.connect(1, "viewer-1", Some("vera"), Some(&viewer)), Admission::Admitted { .. }));
    f.arrives_unseen(PlainClient::new(2, "stranger", Some("vera")));
    let asks = [(access::READ, "open/room"), (access::WRITE, "open/room"), (access::SUBSCRIBE, "#")];
    for (a, t) in asks {
        assert!(!f.may(2, a, t), "{a} {t} before the swap");
    }
    f.swap_to(&policy, &serde_json::to_string(&everyone).unwrap());
    // (A viewer's role grants no publish, whatever the rules say.)
    for (a, t) in [(access::READ, "open/room"), (access::SUBSCRIBE, "open/#")] {
        assert!(f.may(1, a, t), "{a} {t}: the rule is live, for an admitted viewer");
    }
    for _ in 0..2 {
        for (a, t) in asks {
            assert!(!f.may(2, a, t), "{a} {t} after the swap");
        }
    }
}

#[test]
fn a_will_is_the_publish_right_after_the_disconnect_and_nothing_later() {
    let f = fixture(&[]);
    // A service whose rules let it publish twin events (not a superuser).
    let spec = TokenSpec {
        client_id: Some("svc-digital-twin".into()),
        scopes: vec!["mqtt.write".into()],
        ..TokenSpec::dev_user("x", &[], 600)
    };
    let twin = f.key.sign(&claims(&spec, identity::now()).unwrap()).unwrap();
    let will = "celine/digital-twin/events/twin-1/status";
    let mut persistent = PlainClient::new(1, "twin-1", Some("svc-digital-twin"));
    persistent.clean = false;
    f.arrives_unseen(persistent.clone());
    f.plugin.authenticate(&persistent, Some(b"svc-digital-twin"), Some(twin.as_bytes()));
    assert!(f.may(1, access::WRITE, will), "connected, it publishes");
    f.disconnect(1);
    assert!(f.may(1, access::WRITE, will), "its will, checked right after the disconnect");
    assert!(!f.may(1, access::WRITE, will), "a second publish is no will");
    f.disconnect(1);
    f.plugin.tick_untimed();
    assert!(!f.may(1, access::WRITE, will), "nor one after another event");
    // A client this plugin never knew, met first at its will: decided for that check, then gone.
    let off = fixture(&[("certificate_subject_type", "device")]);
    off.arrives_unseen(PlainClient::with_certificate(2, "m2", "meter-2"));
    off.disconnect(2);
    assert!(off.may(2, access::WRITE, "celine/telemetry/meter/meter-2/readings"), "the will of meter-2");
    off.plugin.tick_untimed();
    let mut later = PlainClient::new(2, "m2", Some("meter-2"));
    later.certificate = None;
    off.arrives_unseen(later);
    assert!(
        !off.may(2, access::WRITE, "celine/telemetry/meter/meter-2/readings"),
        "the next client at its address is not meter-2"
    );
}

#[test]
fn certificate_clients_are_their_certificates_subject_only_when_configured() {
    let off = fixture(&[]);
    off.arrives_unseen(PlainClient::with_certificate(1, "meter-1", "meter-1"));
    assert!(!off.may(1, access::WRITE, "celine/telemetry/meter/meter-1/readings"), "off by default");

    let f = fixture(&[("certificate_subject_type", "device")]);
    f.arrives_unseen(PlainClient::with_certificate(1, "m1", "meter-1"));
    assert!(f.may(1, access::WRITE, "celine/telemetry/meter/meter-1/readings"), "its own readings");
    assert!(!f.may(1, access::WRITE, "celine/telemetry/meter/meter-2/readings"), "not another meter's");
    assert!(f.may(1, access::SUBSCRIBE, "celine/commands/meter-1/#"));
    for (a, t) in [(access::SUBSCRIBE, "celine/#"), (access::SUBSCRIBE, "$SYS/#"), (access::READ, TELEMETRY)]
    {
        assert!(!f.may(1, a, t), "{a} {t}");
    }
    // A name outside the policy's certificates section is no client of the policy, and a
    // username that is not the certificate's name is not taken from it.
    f.arrives_unseen(PlainClient::with_certificate(2, "adam", "adam"));
    assert!(!f.may(2, access::SUBSCRIBE, "#"));
    let mut other = PlainClient::with_certificate(3, "m3", "meter-3");
    other.username = Some("meter-1".into());
    f.arrives_unseen(other);
    assert!(!f.may(3, access::WRITE, "celine/telemetry/meter/meter-1/readings"));
    // The subject form of the name is another listener setting's, not taken with this one.
    let mut by_subject = PlainClient::with_certificate(4, "g1", "gateway-1");
    by_subject.username = Some("CN=gateway-1".into());
    f.arrives_unseen(by_subject.clone());
    assert!(!f.may(4, access::WRITE, "celine/telemetry/meter/CN=gateway-1/readings"));
    let subjects = fixture(&[("certificate_subject_type", "device"), ("certificate_name", "subject")]);
    subjects.arrives_unseen(by_subject);
    assert!(subjects.may(4, access::WRITE, "celine/telemetry/meter/CN=gateway-1/readings"));
    assert!(!subjects.may(4, access::WRITE, "celine/telemetry/meter/gateway-1/readings"));
    // A token's username that is a certificate name never stands for the token's subject:
    // `${username}` stays empty for it.
    let user = f.token("meter-9", &["viewers"]);
    f.connect(5, "c5", Some("meter-9"), Some(&user));
    assert!(!f.may(5, access::READ, "celine/names/meter-9/inbox"));
    let user = f.token("nora", &["viewers"]);
    f.connect(6, "c6", Some("nora"), Some(&user));
    assert!(f.may(6, access::READ, "celine/names/nora/inbox"), "an ordinary proven username does");
}

#[test]
fn a_client_flooding_denied_topics_costs_a_log_line_a_second() {
    let f = fixture(&[]);
    let viewer = f.token("vera", &["viewers"]);
    f.connect(1, "c1", Some("vera"), Some(&viewer));
    for _ in 0..100 {
        assert!(!f.may(1, access::WRITE, TELEMETRY));
    }
    let suppressed = f.plugin.stats().log_lines_suppressed.load(std::sync::atomic::Ordering::Relaxed);
    assert!(suppressed >= 89, "{suppressed} of 100 denial lines suppressed");
}

#[test]
fn a_client_the_broker_cannot_rename_is_refused() {
    let f = fixture(&[]);
    let viewer = f.token("vera", &["viewers"]);
    let mut stubborn = PlainClient::new(1, "c1", Some(&viewer));
    stubborn.renames = false;
    assert_eq!(f.plugin.authenticate(&stubborn, Some(viewer.as_bytes()), None), Admission::Refused);
    assert!(!f.may(1, access::READ, TELEMETRY));
}

/// Mosquitto 2.1 reports every CONNECT: one this plugin did not just admit clears the address.
#[test]
fn on_mosquitto_2_1_a_connect_that_is_not_ours_clears_the_address() {
    let f = fixture(&[]);
    let admin = f.token("adam", &["admins"]);
    let mut persistent = PlainClient::new(1, "admin-1", Some("adam"));
    persistent.clean = false;
    persistent.protocol = 5;
    f.arrives_unseen(persistent.clone());
    f.plugin.authenticate(&persistent, Some(b"adam"), Some(admin.as_bytes()));
    f.plugin.connected(&persistent);
    assert!(f.may(1, access::SUBSCRIBE, "#"), "its own connect event confirms it");
    f.plugin.offline(ClientKey(1));
    f.plugin.tick();
    assert!(f.may(1, access::READ, TELEMETRY), "offline: its session stays");
    // The session expires; another client connects at the address, identical to the broker.
    f.plugin.connected(&persistent);
    assert!(!f.may(1, access::READ, TELEMETRY));
}

#[test]
fn checks_allowed_at_once_reach_the_decision_counters_with_the_ticks_timed_work() {
    let f = fixture(&[]);
    let viewer = f.token("vera", &["viewers"]);
    assert_eq!(f.connect(1, "c1", Some("vera"), Some(&viewer)), Admission::Admitted { rename: None });
    let reads_allowed = || {
        let text = f.plugin.stats().render_prometheus(f.plugin.live());
        let line = r#"mqtt_policy_decisions_total{action="read",decision="allow"} "#;
        text.lines().find_map(|l| l.strip_prefix(line)).map_or(0, |n| n.parse::<u64>().expect("a count"))
    };
    f.plugin.tick();
    let before = reads_allowed();
    for n in 0..5 {
        assert!(f.may(1, access::READ, &format!("celine/telemetry/meter/m{n}/readings")));
    }
    f.tick_until("the reads counted", |_| reads_allowed() >= before + 5);
    // Past the next timed work too (ticks 20 ms apart): counted once.
    f.tick_until("two more ticks", {
        let ticks = std::cell::Cell::new(0);
        move |_| {
            ticks.set(ticks.get() + 1);
            ticks.get() > 2
        }
    });
    assert_eq!(reads_allowed(), before + 5, "every allowed read is counted once");
}

#[test]
fn a_connected_client_whose_name_changes_behind_the_plugin_loses_the_identity() {
    // The broker's own changes come with events; another plugin may rename a client without
    // one. The next check, even one the connection's residual would allow, finds it out.
    for change in ["client id", "username"] {
        let f = fixture(&[]);
        let viewer = f.token("vera", &["viewers"]);
        assert_eq!(f.connect(1, "c1", Some("vera"), Some(&viewer)), Admission::Admitted { rename: None });
        assert!(f.may(1, access::READ, TELEMETRY));
        let mut changed = f.clients.borrow()[&1].clone();
        match change {
            "client id" => changed.id = "c2".into(),
            _ => changed.username = Some("mallory".into()),
        }
        f.arrives_unseen(changed);
        assert!(!f.may(1, access::READ, TELEMETRY), "{change} changed: a read");
        assert!(
            !f.may(1, access::SUBSCRIBE, "celine/telemetry/+/+/readings"),
            "{change} changed: a subscribe"
        );
    }
}

#[test]
fn limits_bind_whoever_they_select_superusers_included() {
    let f = fixture(&[]);
    // "tess" is selected by the test policy's "throttled" limits (2 subscriptions, 64-byte
    // payloads, 1 publish a second with a burst of 3, no retained publishes); as an admin she
    // is a superuser, which lifts no limit.
    let tess = f.token("tess", &["admins"]);
    // Tess connects with a persistent session (clean start off).
    let persistent = |key: usize| {
        let mut c = PlainClient::new(key, "t1", Some("tess"));
        c.clean = false;
        f.arrives_unseen(c.clone());
        f.plugin.authenticate(&c, Some(b"tess"), Some(tess.as_bytes()))
    };
    assert!(matches!(persistent(1), Admission::Admitted { .. }));
    let adam = f.token("adam", &["admins"]);
    assert!(matches!(f.connect(2, "a1", Some("adam"), Some(&adam)), Admission::Admitted { .. }));
    let publish = |key: usize, size: usize, retain: bool| {
        let client = f.clients.borrow()[&key].clone();
        let message = AclMessage { qos: 1, retain, payload_len: size as u32 };
        f.plugin.check(&client, access::WRITE, b"celine/digital-twin/state/pump/p1", message)
    };
    assert!(!publish(1, 10, true), "retain: false refuses a retained publish");
    assert!(!publish(1, 65, false), "over max_payload_bytes");
    assert!(publish(2, 65, true), "adam has no limits");
    // Refusals took nothing: the burst of 3 passes, then no more than the rate refills.
    let started = std::time::Instant::now();
    let passed: Vec<bool> = (0..10).map(|_| publish(1, 1, false)).collect();
    let seconds = started.elapsed().as_secs();
    assert_eq!(passed[..3], [true; 3]);
    let n = passed.iter().filter(|p| **p).count();
    assert!(n as u64 <= 3 + seconds + 1, "{passed:?} in {seconds} s");
    // Deliveries are not limited.
    assert!(f.may(1, access::READ, TELEMETRY));
    let metrics = f.plugin.stats().render_prometheus(f.plugin.live());
    for line in [
        "mqtt_policy_limit_refusals_total{limit=\"retain\"} 1".to_string(),
        "mqtt_policy_limit_refusals_total{limit=\"max_payload_bytes\"} 1".to_string(),
        format!("mqtt_policy_limit_refusals_total{{limit=\"publish_messages\"}} {}", 10 - n),
        "mqtt_policy_limit_refusals_total{limit=\"max_subscriptions\"} 0".to_string(),
    ] {
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }
    // Subscriptions are counted per filter; leaving one frees its place.
    for filter in ["a/#", "b/#", "a/#"] {
        assert!(f.may(1, access::SUBSCRIBE, filter), "{filter}");
    }
    assert!(!f.may(1, access::SUBSCRIBE, "c/#"), "over max_subscriptions 2");
    assert!(f.may(1, access::UNSUBSCRIBE, "b/#"));
    assert!(f.may(1, access::SUBSCRIBE, "c/#"));

    // Mosquitto's reload re-check keeps what the connection used.
    f.plugin.reload();
    assert!(matches!(f.recheck(1, Some(&tess)), Admission::Admitted { .. }));
    f.plugin.tick();
    assert!(!f.may(1, access::SUBSCRIBE, "d/#"), "still holding 2 after a reload");

    // The same client again, resuming its session: Mosquitto hands it the session's two
    // subscriptions, which still count, and it earns no fresh burst.
    f.disconnect(1);
    assert!(matches!(persistent(3), Admission::Admitted { .. }));
    assert!(!f.may(3, access::SUBSCRIBE, "d/#"), "the resumed session's subscriptions count");
    let again: usize = (0..10).filter(|_| publish(3, 1, false)).count();
    let seconds = started.elapsed().as_secs();
    assert!(again as u64 <= seconds + 1, "{again} publishes passed {seconds} s after the first burst");
    // A clean start: the broker dropped the session's subscriptions, so they no longer count.
    f.disconnect(3);
    assert!(matches!(f.connect(4, "t1", Some("tess"), Some(&tess)), Admission::Admitted { .. }));
    assert!(f.may(4, access::SUBSCRIBE, "d/#"));
}

#[test]
fn limits_the_module_cannot_give_refuse_publishes_and_subscriptions_only() {
    let faulty = test_support::target_dir().join("policy-module/faulty.wasm");
    assert!(faulty.exists(), "{} is missing: run `cargo xtask build` first", faulty.display());
    let f = fixture(&[("module", &faulty.display().to_string())]);
    // The faulty module traps when asked the limits of a subject with this id.
    let token = f.token("fault-limits", &["admins"]);
    assert!(matches!(f.connect(5, "c5", Some("fault-limits"), Some(&token)), Admission::Admitted { .. }));
    assert!(f.may(5, access::READ, TELEMETRY), "deliveries are not limited");
    assert!(!f.may(5, access::SUBSCRIBE, "a/#"));
    let client = f.clients.borrow()[&5].clone();
    assert!(!f.plugin.check(&client, access::WRITE, b"a/b", AclMessage::default()));
    assert!(f.plugin.live().current().module.runtime().faults() >= 1, "the trap is counted");
}

/// The end-to-end policy in a file of its own, to change: its directory, the file, the text.
fn editable_e2e_policy() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.json");
    let original =
        std::fs::read_to_string(test_support::package_dir().join("tests/e2e/policy.json")).unwrap();
    std::fs::write(&policy, &original).unwrap();
    (dir, policy, original)
}

#[test]
fn a_swap_that_revokes_a_held_subscription_names_the_client_and_disconnects_it_on_request() {
    let (_dir, policy, original) = editable_e2e_policy();
    let f = fixture(&[("policy", policy.to_str().unwrap()), ("on_revoke", "disconnect")]);
    let vera = f.token("vera", &["viewers"]);
    let olga = f.token("olga", &["viewers"]);
    assert!(matches!(f.connect(1, "v1", Some("vera"), Some(&vera)), Admission::Admitted { .. }));
    assert!(matches!(f.connect(2, "o1", Some("olga"), Some(&olga)), Admission::Admitted { .. }));
    assert!(f.may(1, access::SUBSCRIBE, "celine/telemetry/+/+/readings"));
    assert!(f.may(2, access::SUBSCRIBE, "celine/telemetry/meter/+/readings"));
    // Viewers keep meter readings only: vera's filter is no longer granted, olga's is.
    let narrowed =
        original.replace("\"celine/telemetry/+/+/readings\"", "\"celine/telemetry/meter/+/readings\"");
    assert_ne!(narrowed, original);
    std::fs::write(&policy, narrowed).unwrap();
    let before = f.plugin.live().current().id;
    f.plugin.reload();
    f.tick_until("the swap", |f| f.plugin.live().current().id != before);
    f.tick_until("vera's disconnect", |f| !f.kicked().is_empty());
    assert_eq!(f.kicked(), [("v1".to_string(), false)], "vera only, without her will");
    let metrics = f.plugin.stats().render_prometheus(f.plugin.live());
    for line in [
        "mqtt_policy_revoked_subscriptions_total 1",
        "mqtt_policy_revoked_clients_total{action=\"disconnected\"} 1",
        "mqtt_policy_revoked_clients_total{action=\"kept\"} 0",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // Olga re-authenticates (her subscriptions are looked at again): nothing is lost, and the
    // revocation already reported is not reported again.
    let fresh = f.token("olga", &["viewers"]);
    assert!(matches!(f.connect_ext(2, "o1", "jwt", None, &fresh), Admission::Admitted { .. }));
    f.tick_until("the re-authentication's pass", |f| !f.plugin.revocation_pending());
    assert_eq!(f.kicked().len(), 1);
    let metrics = f.plugin.stats().render_prometheus(f.plugin.live());
    assert!(metrics.contains("mqtt_policy_revoked_subscriptions_total 1"), "{metrics}");
}

/// Between its timed work a tick goes no further than a look at what waits, unless a pass
/// does: the pass a re-authentication asks for is carried out by such ticks alone.
#[test]
fn a_pass_a_reauthentication_asks_for_goes_on_at_ticks_without_timed_work() {
    let f = fixture(&[("on_revoke", "disconnect")]);
    let editor = f.token("vera", &["viewers", "editors"]);
    assert!(matches!(f.connect_ext(1, "c1", "JWT", None, &editor), Admission::Admitted { .. }));
    assert!(f.may(1, access::SUBSCRIBE, "celine/digital-twin/events/#"));
    f.plugin.tick();
    assert!(!f.plugin.revocation_pending(), "nothing to decide again yet");
    // The same subject without the editors' group: the subscription is no longer granted.
    let viewer = f.token("vera", &["viewers"]);
    assert!(matches!(f.connect_ext(1, "c1", "jwt", None, &viewer), Admission::Admitted { .. }));
    assert!(f.plugin.revocation_pending());
    for _ in 0..1000 {
        if !f.kicked().is_empty() {
            break;
        }
        f.plugin.tick_untimed();
    }
    assert_eq!(f.kicked(), [("c1".to_string(), false)], "the pass ran, and found the lost filter");
    f.plugin.tick_untimed();
    assert!(!f.plugin.revocation_pending(), "and then ended");
}

#[test]
fn unsubscribe_removes_just_the_revoked_subscription_where_the_broker_can() {
    let (_dir, policy, original) = editable_e2e_policy();
    let options = [("policy", policy.to_str().unwrap()), ("on_revoke", "unsubscribe")];
    // Mosquitto 2.0 cannot remove one subscription: the option is refused, not weakened.
    let refused = fixture_on(StandIn::default(), &options).err().expect("refused on a 2.0 broker");
    assert!(format!("{refused:#}").contains("needs Mosquitto 2.1"), "{refused:#}");

    let f = fixture_on(
        StandIn { removes: true, fails_to_remove: Some("celine/users/olga/#"), ..StandIn::default() },
        &options,
    )
    .unwrap();
    let vera = f.token("vera", &["viewers"]);
    let olga = f.token("olga", &["viewers"]);
    assert!(matches!(f.connect(1, "v1", Some("vera"), Some(&vera)), Admission::Admitted { .. }));
    assert!(matches!(f.connect(2, "o1", Some("olga"), Some(&olga)), Admission::Admitted { .. }));
    for (key, filter) in [
        (1, "celine/telemetry/+/+/readings"),
        (1, "celine/users/vera/#"),
        (2, "celine/telemetry/meter/+/readings"),
        (2, "celine/users/olga/#"),
    ] {
        assert!(f.may(key, access::SUBSCRIBE, filter), "{filter}");
    }
    let swap = |text: &str| f.swap_to(&policy, text);
    // Viewers keep meter readings only: vera's telemetry filter goes, and nothing else of hers.
    let narrowed =
        original.replace("\"celine/telemetry/+/+/readings\"", "\"celine/telemetry/meter/+/readings\"");
    let metrics_show = |lines: &[&str]| {
        let metrics = f.plugin.stats().render_prometheus(f.plugin.live());
        for line in lines {
            assert!(metrics.lines().any(|l| l == *line), "missing {line:?} in\n{metrics}");
        }
    };
    swap(&narrowed);
    let removed = || f.broker.removed.lock().unwrap().clone();
    let telemetry = ("v1".to_string(), "celine/telemetry/+/+/readings".to_string());
    assert_eq!(removed(), std::slice::from_ref(&telemetry));
    assert!(f.kicked().is_empty(), "vera stays connected");
    metrics_show(&[
        "mqtt_policy_revoked_subscriptions_total 1",
        "mqtt_policy_revoked_clients_total{action=\"unsubscribed\"} 1",
        "mqtt_policy_revoked_clients_total{action=\"disconnected\"} 0",
    ]);
    // The removed subscription is forgotten: a swap granting it and one taking it again find
    // nothing of vera's to remove, and her SUBSCRIBE again is refused.
    swap(&original);
    swap(&narrowed);
    assert_eq!(removed().len(), 1);
    assert!(!f.may(1, access::SUBSCRIBE, "celine/telemetry/+/+/readings"));
    // A subscription the broker fails to remove: the client is disconnected instead.
    let users = narrowed.replace("\"celine/users/${subject.id}/#\"", "\"celine/users/${subject.id}/inbox\"");
    assert_ne!(users, narrowed);
    swap(&users);
    f.tick_until("olga's disconnect", |f| !f.kicked().is_empty());
    assert_eq!(f.kicked(), [("o1".to_string(), false)]);
    assert_eq!(removed(), [telemetry, ("v1".to_string(), "celine/users/vera/#".to_string())]);
    metrics_show(&[
        "mqtt_policy_revoked_subscriptions_total 3",
        "mqtt_policy_revoked_clients_total{action=\"unsubscribed\"} 2",
        "mqtt_policy_revoked_clients_total{action=\"disconnected\"} 1",
    ]);
}

#[test]
fn with_keep_a_revoked_subscription_is_reported_once_and_the_client_stays() {
    let (_dir, policy, original) = editable_e2e_policy();
    let f = fixture(&[("policy", policy.to_str().unwrap())]);
    let vera = f.token("vera", &["viewers"]);
    assert!(matches!(f.connect(1, "v1", Some("vera"), Some(&vera)), Admission::Admitted { .. }));
    assert!(f.may(1, access::SUBSCRIBE, "celine/telemetry/+/+/readings"));
    assert!(f.may(1, access::SUBSCRIBE, "celine/users/vera/#"));
    assert!(f.may(1, access::SUBSCRIBE, "celine/users/vera/gone"));
    assert!(f.may(1, access::UNSUBSCRIBE, "celine/users/vera/gone"));
    let narrowed =
        original.replace("\"celine/telemetry/+/+/readings\"", "\"celine/telemetry/meter/+/readings\"");
    let swap = |text: &str| f.swap_to(&policy, text);
    let revoked = || {
        let metrics = f.plugin.stats().render_prometheus(f.plugin.live());
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("mqtt_policy_revoked_subscriptions_total ")?.parse::<u64>().ok())
    };
    swap(&narrowed);
    assert_eq!(revoked(), Some(1), "the telemetry filter only (the left one is not held)");
    assert!(f.kicked().is_empty(), "keep disconnects nobody");
    assert!(!f.may(1, access::READ, "celine/telemetry/inverter/i1/readings"), "its deliveries are denied");
    // Another swap that changes nothing for vera: the revocation is not reported again.
    swap(&narrowed.replace("\"celine/pipelines/status/+\"", "\"celine/pipelines/status/#\""));
    assert_eq!(revoked(), Some(1));
    // Granted again, then taken again: reported again.
    swap(&original);
    swap(&narrowed);
    assert_eq!(revoked(), Some(2));
}
