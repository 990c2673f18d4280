//! Injected identity-provider faults: the key-set endpoint slow (beyond go-auth's 5 s
//! timeout), answering 500, answering garbage, sending an enormous key set, or vanishing
//! mid-response. Through each, the service stays up, answers every go-auth call within 5 s
//! (a token by an unknown key is refused, tokens by known keys keep working), logs the fault
//! once rather than per request, and picks up a rotated-in key by itself once the provider
//! is healthy again.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// How the fake identity provider answers `GET /jwks`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Healthy,
    /// Answers after 12 s: go-auth gives up after 5, the service's own fetch after 10.
    Slow,
    Status500,
    Garbage,
    /// A key set of 256 MiB, streamed until the client stops reading.
    Enormous,
    /// Promises 5,000 bytes, sends 100, closes the connection.
    Vanish,
}

const MODES: [Mode; 6] =
    [Mode::Healthy, Mode::Slow, Mode::Status500, Mode::Garbage, Mode::Enormous, Mode::Vanish];

struct Idp {
    url: String,
    mode: Arc<AtomicU8>,
    keys: Arc<Mutex<String>>,
    /// Key-set requests answered or begun.
    requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    addr: std::net::SocketAddr,
}

impl Idp {
    fn start(keys: &str) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let idp = Idp {
            url: format!("http://{addr}/jwks"),
            mode: Arc::new(AtomicU8::new(Mode::Healthy as u8)),
            keys: Arc::new(Mutex::new(keys.to_string())),
            requests: Arc::default(),
            stop: Arc::default(),
            addr,
        };
        let (mode, keys, requests, stop) =
            (Arc::clone(&idp.mode), Arc::clone(&idp.keys), Arc::clone(&idp.requests), Arc::clone(&idp.stop));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let mode = MODES[usize::from(mode.load(Ordering::Relaxed))];
                let keys = keys.lock().unwrap().clone();
                requests.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let _ = answer(conn, mode, &keys);
                });
            }
        });
        idp
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn answer(mut conn: TcpStream, mode: Mode, keys: &str) -> std::io::Result<()> {
    // Read the request head (a GET has no body).
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let ok = |body_len: usize| {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n"
        )
    };
    match mode {
        Mode::Healthy => write!(conn, "{}{keys}", ok(keys.len())),
        Mode::Slow => {
            std::thread::sleep(Duration::from_secs(12));
            write!(conn, "{}{keys}", ok(keys.len()))
        }
        Mode::Status500 => {
            write!(
                conn,
                "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\nConnection: close\r\n\r\noops!"
            )
        }
        Mode::Garbage => {
            let body = "<html>Service Unavailable</html>";
            write!(conn, "{}{body}", ok(body.len()))
        }
        Mode::Enormous => {
            // A well-formed beginning of a key set that goes on and on, without a length.
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")?;
            conn.write_all(br#"{"keys":["#)?;
            let key: Value = serde_json::from_str::<Value>(keys).unwrap()["keys"][0].clone();
            let chunk = format!("{key},").repeat(64);
            let mut sent = 0;
            while sent < 256 << 20 {
                conn.write_all(chunk.as_bytes())?;
                sent += chunk.len();
            }
            Ok(())
        }
        Mode::Vanish => {
            write!(conn, "{}", ok(5000))?;
            conn.write_all(&keys.as_bytes()[..100.min(keys.len())])?;
            conn.flush()?;
            let _ = conn.shutdown(std::net::Shutdown::Both);
            // Keep the socket until the peer has seen the close.
            let _ = conn.read(&mut [0; 1]);
            Ok(())
        }
    }
}

fn key_set(files: &[&str]) -> String {
    let keys: Vec<Value> = files
        .iter()
        .flat_map(|f| {
            let set: Value = serde_json::from_slice(&std::fs::read(fixtures().join(f)).unwrap()).unwrap();
            set["keys"].as_array().unwrap().clone()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A token no earlier request has shown (so its verification is not cached).
fn fresh_token(key_file: &str, kid: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut claims = viewer_claims();
    claims["jti"] = json!(format!("fault-test-{}", N.fetch_add(1, Ordering::Relaxed)));
    sign(key_file, kid, &claims)
}

/// A user call with `token`: its reply and how long it took.
fn timed_user_call(s: &Server, token: &str) -> (Reply, Duration) {
    let started = Instant::now();
    let r = bearer_call(s, "/mqtt/user", token, "null");
    (r, started.elapsed())
}

/// Peak resident memory of a process, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb / 1024
}

/// go-auth's own timeout for a backend call.
const GO_AUTH_TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn identity_provider_faults_cost_no_answer_and_heal_by_themselves() {
    let idp = Idp::start(&key_set(&["jwks-a.json"]));
    let log = tempfile::NamedTempFile::new().unwrap();
    let s = Server::start_logged(
        &["--jwks-url", &idp.url, "--issuer", ISSUER, "--jwks-min-refresh", "1"],
        log.path(),
    );
    assert!(timed_user_call(&s, &fresh_token("rsa-a.pem", "key-a")).0.allowed(), "healthy start");

    for fault in [Mode::Slow, Mode::Status500, Mode::Garbage, Mode::Enormous, Mode::Vanish] {
        idp.set(fault);
        let asked_before = idp.requests.load(Ordering::Relaxed);
        // A rotated-in key the service has not seen: it must ask the provider, and cannot get
        // an answer in time. Asked repeatedly, as clients retrying would, until the provider
        // has been asked in this mode (a slow answer of the previous one may still be awaited).
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attempt = 0;
        while attempt < 6 || idp.requests.load(Ordering::Relaxed) == asked_before {
            assert!(Instant::now() < deadline, "{fault:?}: the provider was never asked");
            attempt += 1;
            let (r, took) = timed_user_call(&s, &fresh_token("rsa-b.pem", "key-b"));
            assert_eq!(r.status, 403, "{fault:?}, attempt {attempt}: {}", r.body);
            assert!(took < GO_AUTH_TIMEOUT, "{fault:?}, attempt {attempt}: answered after {took:?}");
            let reason = r.json()["error"].as_str().unwrap().to_string();
            assert!(
                reason.contains("unknown signing key") || reason.contains("could not be fetched"),
                "{fault:?}: {reason}"
            );
            // Known keys keep working meanwhile, without waiting for the provider.
            let (r, took) = timed_user_call(&s, &fresh_token("rsa-a.pem", "key-a"));
            assert!(r.allowed(), "{fault:?}, attempt {attempt}: {}", r.body);
            assert!(took < Duration::from_secs(1), "{fault:?}: a known key waited {took:?}");
            std::thread::sleep(Duration::from_millis(300));
        }
        assert_eq!(send(client().get(s.url("/healthz"))).status, 200, "{fault:?}: still up");
    }
    // An enormous key set is refused while it arrives, not held in memory whole.
    let peak = peak_rss_mib(s.child.id());
    assert!(peak < 160, "peak RSS {peak} MiB after a 256 MiB key set");

    // The provider heals and publishes key B: the service trusts it without a restart.
    *idp.keys.lock().unwrap() = key_set(&["jwks-a.json", "jwks-b.json"]);
    idp.set(Mode::Healthy);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (r, took) = timed_user_call(&s, &fresh_token("rsa-b.pem", "key-b"));
        assert!(took < GO_AUTH_TIMEOUT, "answered after {took:?}");
        if r.allowed() {
            break;
        }
        assert!(Instant::now() < deadline, "key B was never picked up: {}", r.body);
        std::thread::sleep(Duration::from_millis(200));
    }
    let ready = send(client().get(s.ops("/readyz")));
    assert_eq!(ready.status, 200, "{}", ready.body);

    // Each fault was logged once, not once per request or per refresh attempt; and the
    // recovery once.
    // (Log lines reach the file within a fraction of a second: wait for the recovery's.)
    let read_log = || std::fs::read_to_string(log.path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !read_log().contains("key set refresh works again") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = read_log();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("key set refresh failed")).collect();
    assert_eq!(failures.len(), 5, "one line per fault:\n{}", failures.join("\n"));
    assert_eq!(log.lines().filter(|l| l.contains("key set refresh works again")).count(), 1, "{log}");
    assert!(!log.contains("eyJ"), "no token in the log");
}
