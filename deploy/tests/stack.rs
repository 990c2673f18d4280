//! The container stack as users run it: `compose.yaml`'s broker (`mqtt-policy/mosquitto`) and
//! policy service (`mqtt-policy/serve`), started by podman-compose from the images `cargo
//! xtask image` built, with Keycloak outside the stack (its image is not available here; it
//! runs as the Keycloak tests run it). The CELINE guide's paho-mqtt and mqtt.js clients
//! (`deploy/clients`) connect with Keycloak tokens over both listeners, the TLS one trusting
//! the CA the broker made on its first start.
//!
//! Run by `cargo xtask stack` (and `cargo xtask test`), which builds the images and sets
//! `MQTT_POLICY_COMPOSE` (podman-compose), `CONTAINERS_CONF` and Keycloak's location.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use test_support::keycloak::Keycloak;
use test_support::{free_port, repository, wait_for};

const TOPIC: &str = "celine/digital-twin/events/pump/pump-001";
const FILTER: &str = "celine/digital-twin/events/#";
const PAYLOAD: &str = r#"{"state": "running"}"#;
const SERVICES: [&str; 2] = ["mosquitto", "policy-service"];

fn podman() -> Command {
    Command::new("podman")
}

fn output(command: &mut Command) -> Output {
    command.output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

/// The stack of one test run: its own compose project, taken down (with its volumes) when
/// dropped, after printing the containers' logs when the test failed.
struct Stack {
    project: String,
    env: Vec<(&'static str, String)>,
    mqtt_port: u16,
    mqtts_port: u16,
    service_port: u16,
}

impl Stack {
    fn up(keycloak: &Keycloak) -> Stack {
        let keycloak_port = keycloak.base.rsplit(':').next().unwrap().to_string();
        let (mqtt_port, mqtts_port, service_port) = (free_port(), free_port(), free_port());
        let stack = Stack {
            project: format!("mqtt-policy-stack-{}", std::process::id()),
            env: vec![
                // Plain MQTT and the policy service are published on 127.0.0.1 by default.
                ("MQTTS_ADDRESS", "127.0.0.1".into()),
                ("MQTT_PORT", mqtt_port.to_string()),
                ("MQTTS_PORT", mqtts_port.to_string()),
                ("POLICY_SERVICE_PORT", service_port.to_string()),
                ("KEYCLOAK_ISSUER", keycloak.issuer()),
                (
                    "KEYCLOAK_JWKS_URL",
                    format!("http://10.0.2.2:{keycloak_port}/realms/celine/protocol/openid-connect/certs"),
                ),
            ],
            mqtt_port,
            mqtts_port,
            service_port,
        };
        let up = output(stack.compose().args(["up", "-d", "--no-deps"]).args(SERVICES));
        assert!(up.status.success(), "compose up failed:\n{}\n{}", text(&up.stdout), text(&up.stderr));
        stack
    }

    fn compose(&self) -> Command {
        let program = std::env::var_os("MQTT_POLICY_COMPOSE")
            .expect("MQTT_POLICY_COMPOSE is not set: run this test with `cargo xtask stack`");
        let mut command = Command::new(program);
        command
            .arg("--project-name")
            .arg(&self.project)
            .arg("--file")
            .arg(repository().join("compose.yaml"))
            .arg("--file")
            .arg(repository().join("deploy/tests/compose.loopback.yaml"))
            // The policy service's profile: without it, `down` would leave the service running.
            .args(["--profile", "go-auth"])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(repository());
        command
    }

    /// The containers compose made for `service` (one, once it is up).
    fn containers(&self, service: &str) -> Vec<String> {
        let found = output(podman().args([
            "ps",
            "--all",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
            "--format",
            "{{.Names}}",
        ]));
        text(&found.stdout).lines().map(str::to_string).collect()
    }

    fn container(&self, service: &str) -> String {
        let names = self.containers(service);
        assert_eq!(names.len(), 1, "one container for {service}, found {names:?}");
        names[0].clone()
    }

    /// Waits until the image's own HEALTHCHECK passes (`podman healthcheck run`).
    fn wait_healthy(&self, service: &str) {
        let container = self.container(service);
        wait_for(&format!("{service}'s health check"), Duration::from_secs(120), || {
            output(podman().args(["healthcheck", "run", &container])).status.success()
        });
    }

    fn exec(&self, service: &str, args: &[&str]) -> Output {
        output(podman().arg("exec").arg(self.container(service)).args(args))
    }

    fn logs(&self, service: &str) -> String {
        let mut all = String::new();
        for container in self.containers(service) {
            let logs = output(podman().args(["logs", &container]));
            all.push_str(&format!("{}\n{}", text(&logs.stdout), text(&logs.stderr)));
        }
        all
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in SERVICES {
                eprintln!("--- {service} logs ---\n{}", self.logs(service));
            }
        }
        let _ = self.compose().args(["down", "--volumes", "--timeout", "5"]).output();
    }
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Paho,
    MqttJs,
}

/// A guide client's command, connecting to `port` (over TLS trusting `ca` when given).
fn client(client: Client, port: u16, ca: Option<&Path>, token: &str, args: &[&str]) -> Command {
    let clients = repository().join("deploy/clients");
    let mut command = match client {
        Client::Paho => {
            // Debian's Python, which has Debian's python3-paho-mqtt.
            let mut c = Command::new("/usr/bin/python3");
            // "localhost": the certificate's DNS name.
            c.arg(clients.join("paho_client.py")).arg(args[0]).arg("localhost").arg(port.to_string());
            c
        }
        Client::MqttJs => {
            let mut c = Command::new("node");
            // 127.0.0.1: the certificate's IP address.
            let scheme = if ca.is_some() { "mqtts" } else { "mqtt" };
            c.arg(clients.join("mqttjs_client.js")).arg(args[0]).arg(format!("{scheme}://127.0.0.1:{port}"));
            c
        }
    };
    command.args(&args[1..]).env("MQTT_TOKEN", token).env_remove("MQTT_CA_FILE");
    if let Some(ca) = ca {
        command.env("MQTT_CA_FILE", ca);
    }
    command.stdin(Stdio::null()).stderr(Stdio::inherit());
    command
}

/// A running subscriber: its output lines, as they come.
struct Subscriber {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: String,
}

impl Subscriber {
    fn start(mut command: Command, what: &str) -> Subscriber {
        let mut child = command.stdout(Stdio::piped()).spawn().expect("start a subscriber");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Subscriber { child, lines, what: what.to_string() }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{}: no output in 30 s", self.what))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client's one-shot run (a publish, or a connection that should be refused): whether it
/// succeeded, and its output. Stopped (by PID) if it has not ended within 30 s: paho retries a
/// connection the broker closed without answering for ever.
fn run_once(mut command: Command) -> (bool, String) {
    let mut child = command.stdout(Stdio::piped()).spawn().expect("start a client");
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut said = String::new();
        let _ = stdout.read_to_string(&mut said);
        said
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?}: no end within 30 s; it said: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap().trim().to_string())
}

fn delivers(
    stack: &Stack,
    ca: &Path,
    tokens: &Tokens,
    subscriber: (Client, bool),
    publisher: (Client, bool),
) {
    let port = |tls: bool| if tls { stack.mqtts_port } else { stack.mqtt_port };
    let ca_for = |tls: bool| tls.then_some(ca);
    let what = format!(
        "{subscriber:?} subscriber (TLS: {}) ← {publisher:?} publisher (TLS: {})",
        subscriber.1, publisher.1
    );
    let sub = Subscriber::start(
        client(subscriber.0, port(subscriber.1), ca_for(subscriber.1), &tokens.admin, &["subscribe", FILTER]),
        &what,
    );
    assert_eq!(sub.next_line(), "suback 1", "{what}: the admin's subscription");
    let (published, said) = run_once(client(
        publisher.0,
        port(publisher.1),
        ca_for(publisher.1),
        &tokens.service,
        &["publish", TOPIC, PAYLOAD],
    ));
    assert!(published && said == "published", "{what}: the service's publish: {said}");
    assert_eq!(sub.next_line(), format!("{TOPIC}: {PAYLOAD}"), "{what}: the delivery");
}

/// `token` with its claims edited to put the subject among the admins, its signature kept.
fn promoted_to_admin(token: &str) -> String {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["groups"] = json!(["admins"]);
    let edited = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{}.{edited}.{}", parts[0], parts[2])
}

struct Tokens {
    admin: String,
    service: String,
    viewer: String,
}

#[test]
#[ignore = "needs the images, podman and Keycloak: run by `cargo xtask stack`"]
fn the_compose_stack_serves_the_guides_clients_on_both_listeners() {
    let keycloak = Keycloak::start();
    let stack = Stack::up(&keycloak);
    for service in SERVICES {
        stack.wait_healthy(service);
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    let copied = output(
        podman()
            .arg("cp")
            .arg(format!("{}:/var/lib/mqtt-policy/certs/ca.crt", stack.container("mosquitto")))
            .arg(&ca),
    );
    assert!(copied.status.success(), "copying the generated CA out: {}", text(&copied.stderr));
    let tokens = Tokens {
        admin: keycloak.user_token("adam"),
        service: keycloak.service_token("svc-digital-twin", None),
        viewer: keycloak.user_token("alice"),
    };

    // The seed's flow: a service publishes digital-twin events, an admin's dashboard reads
    // them; each client on each listener.
    delivers(&stack, &ca, &tokens, (Client::MqttJs, true), (Client::Paho, false));
    delivers(&stack, &ca, &tokens, (Client::Paho, true), (Client::MqttJs, false));

    // A viewer may not read digital-twin events: SUBACK 0x80 on both listeners.
    for (c, port, tls) in [(Client::Paho, stack.mqtts_port, true), (Client::MqttJs, stack.mqtt_port, false)] {
        let sub = Subscriber::start(
            client(c, port, tls.then_some(ca.as_path()), &tokens.viewer, &["subscribe", FILTER]),
            &format!("viewer via {c:?}"),
        );
        assert_eq!(sub.next_line(), "suback 128", "{c:?}: a viewer's subscription to {FILTER}");
    }

    // The viewer's token, edited to put her among the admins, keeps Keycloak's signature,
    // which no longer fits: refused at CONNECT.
    let forged = promoted_to_admin(&tokens.viewer);
    for (c, port, tls) in [(Client::Paho, stack.mqtt_port, false), (Client::MqttJs, stack.mqtts_port, true)] {
        let (ok, said) =
            run_once(client(c, port, tls.then_some(ca.as_path()), &forged, &["publish", TOPIC, PAYLOAD]));
        assert!(!ok && said.starts_with("refused"), "{c:?}: a forged token: {said}");
        assert!(said.to_lowercase().contains("not authori"), "{c:?}: refused at CONNACK: {said}");
    }

    // TLS without the generated CA: the client refuses the broker's certificate.
    let mqtts = format!("mqtts://127.0.0.1:{}", stack.mqtts_port);
    let (ok, said) = run_once({
        let mut c = Command::new("node");
        c.arg(repository().join("deploy/clients/mqttjs_client.js"))
            .args(["publish", &mqtts, TOPIC, PAYLOAD])
            .env("MQTT_TOKEN", &tokens.admin)
            .env_remove("MQTT_CA_FILE");
        c
    });
    assert!(!ok && said.starts_with("refused") && said.contains("certificate"), "TLS without the CA: {said}");

    // The policy service (go-auth's http backend) decides with the same Keycloak's keys.
    let acl = |token: &str, acc: u32| -> Value {
        let response = reqwest::blocking::Client::new()
            .post(format!("http://127.0.0.1:{}/mqtt/acl", stack.service_port))
            .bearer_auth(token)
            .json(&json!({"clientid": "stack-test", "topic": TOPIC, "acc": acc}))
            .send()
            .expect("ask the policy service");
        response.json().expect("a JSON answer")
    };
    assert_eq!(acl(&tokens.admin, 1)["ok"], true, "the policy service: an admin reads digital-twin events");
    assert_eq!(acl(&tokens.service, 2)["ok"], true, "the policy service: the service publishes them");
    assert_eq!(acl(&tokens.viewer, 1)["ok"], false, "the policy service: a viewer does not read them");

    // The images: non-root, a read-only root file system (not even root may write to it),
    // no compiler.
    for (service, uid) in [("mosquitto", "1883"), ("policy-service", "8009")] {
        let id = stack.exec(service, &["id", "-u"]);
        assert_eq!(text(&id.stdout), uid, "{service} runs as uid {uid}");
        let container = stack.container(service);
        let read_only =
            output(podman().args(["inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", &container]));
        assert_eq!(text(&read_only.stdout), "true", "{service}: compose.yaml's read_only");
        let write = output(podman().args(["exec", "--user", "0", &container, "touch", "/etc/written"]));
        assert!(text(&write.stderr).contains("Read-only file system"), "{service}: {}", text(&write.stderr));
    }
    for image in ["mqtt-policy/mosquitto", "mqtt-policy/serve"] {
        let commands =
            output(podman().args(["run", "--rm", "--entrypoint", "bash", image, "-c", "compgen -c"]));
        let commands = text(&commands.stdout);
        for compiler in ["cc", "gcc", "c++", "clang", "rustc", "cargo", "go", "javac"] {
            assert!(!commands.lines().any(|c| c == compiler), "{image} holds a compiler: {compiler}");
        }
    }
    // Only the MQTT listeners and the policy service's go-auth port are published: metrics,
    // readiness, admin and playground stay inside, on the containers' loopback.
    for (service, expected) in [
        (
            "mosquitto",
            vec![
                format!("1883/tcp -> 127.0.0.1:{}", stack.mqtt_port),
                format!("8883/tcp -> 127.0.0.1:{}", stack.mqtts_port),
            ],
        ),
        ("policy-service", vec![format!("8009/tcp -> 127.0.0.1:{}", stack.service_port)]),
    ] {
        let ports = output(podman().args(["port", &stack.container(service)]));
        let mut published: Vec<String> = text(&ports.stdout).lines().map(str::to_string).collect();
        published.sort();
        assert_eq!(published, expected, "{service}'s published ports");
    }
    let broker_log = stack.logs("mosquitto");
    for expected in
        ["made TLS certificates for", "plugin options from the environment:", "mqtt-policy: ready:"]
    {
        assert!(broker_log.contains(expected), "the broker's log says {expected:?}:\n{broker_log}");
    }
    let service_log = stack.logs("policy-service");
    for token in [&tokens.admin, &tokens.service, &tokens.viewer] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!broker_log.contains(signature), "the broker's log holds a token");
        assert!(!service_log.contains(signature), "the policy service's log holds a token");
    }
}

/// What the broker image's entry point does with its environment before Mosquitto starts:
/// a Kubernetes service link is not taken for an option, a misspelt option stops the broker
/// with the plugin's suggestion, a bad TLS name stops it with the name, certificates made for
/// other names than TLS_NAMES are pointed out, and a list of bundle keys becomes one plugin
/// option per key.
#[test]
#[ignore = "needs the images and podman: run by `cargo xtask stack`"]
fn the_broker_image_reads_its_environment_strictly() {
    let run = |env: &[(&str, &str)], mounts: &[String]| -> (bool, String) {
        let mut command = podman();
        command.args(["run", "--rm", "--network", "none"]);
        for (k, v) in env {
            command.arg("--env").arg(format!("{k}={v}"));
        }
        for m in mounts {
            command.arg("--volume").arg(m);
        }
        command.arg("mqtt-policy/mosquitto");
        let out = output(&mut command);
        (out.status.success(), format!("{}\n{}", text(&out.stdout), text(&out.stderr)))
    };

    let (started, said) = run(
        &[
            ("MQTT_POLICY_SERVICE_HOST", "10.0.0.1"),
            ("MQTT_POLICY_PORT", "tcp://10.0.0.1:8009"),
            ("MQTT_POLICY_ISSUERR", "https://idp.example/realms/celine"),
        ],
        &[],
    );
    assert!(!started, "{said}");
    assert!(
        said.contains("MQTT_POLICY_PORT looks like a Kubernetes service link, not an option: ignored"),
        "{said}"
    );
    assert!(said.contains("MQTT_POLICY_SERVICE_HOST looks like a Kubernetes service link"), "{said}");
    assert!(said.contains("unknown option plugin_opt_issuerr; did you mean plugin_opt_issuer?"), "{said}");

    let (started, said) = run(&[("TLS_NAMES", "localhost,1.2.3")], &[]);
    assert!(!started, "{said}");
    assert!(said.contains("TLS_NAMES: '1.2.3' is neither a host name nor an IP address"), "{said}");

    // Certificates made for some names, then TLS_NAMES changed: the broker says the old ones
    // are still served. (Neither run has a key source: the plugin stops each after that.)
    let volume = format!("mqtt-policy-stack-certs-{}", std::process::id());
    let certs = format!("{volume}:/var/lib/mqtt-policy/certs");
    let (_, said) = run(&[("TLS_NAMES", "mqtt.example.org")], std::slice::from_ref(&certs));
    assert!(said.contains("made TLS certificates for DNS:mqtt.example.org"), "{said}");
    let (_, said) = run(&[("TLS_NAMES", "broker.example.org")], std::slice::from_ref(&certs));
    let _ = output(podman().args(["volume", "rm", &volume]));
    assert!(!said.contains("made TLS certificates"), "{said}");
    assert!(
        said.contains("WARNING: the certificates in /var/lib/mqtt-policy/certs were made for DNS:mqtt.example.org, not for TLS_NAMES (DNS:broker.example.org)"),
        "{said}"
    );

    let keys = repository().join("testing/support/keys");
    let present = std::fs::read_dir(&keys)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.ends_with(".pub.pem"))
        .expect("a test bundle public key");
    let (started, said) = run(
        &[
            ("MQTT_POLICY_ISSUER", "https://idp.example/realms/celine"),
            ("MQTT_POLICY_POLICY_URL", "https://bundles.example/bundle"),
            ("MQTT_POLICY_BUNDLE_PUBLIC_KEYS", &format!("/keys/{present}, /keys/absent.pub.pem")),
        ],
        &[format!("{}:/keys:ro", keys.display())],
    );
    assert!(!started, "{said}");
    assert!(
        said.contains("/keys/absent.pub.pem") && !said.contains(", /keys/absent.pub.pem"),
        "the second key became an option of its own: {said}"
    );
}

/// compose.yaml stays readable by Debian bookworm's podman-compose (1.0), which leaves a
/// nested default (`${A:-${B}}`) unexpanded: the broker would then be handed the text itself
/// as its issuer.
#[test]
fn compose_yaml_has_no_nested_interpolation() {
    let compose = std::fs::read_to_string(repository().join("compose.yaml")).unwrap();
    for (n, line) in compose.lines().enumerate() {
        let code = line.split('#').next().unwrap_or_default();
        if let Some(start) = code.find("${") {
            let inner = &code[start + 2..];
            let end = inner.find('}').unwrap_or(inner.len());
            assert!(!inner[..end].contains("${"), "compose.yaml:{}: nested interpolation: {line}", n + 1);
        }
    }
}
