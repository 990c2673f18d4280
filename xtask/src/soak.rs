//! `cargo xtask soak [--minutes M | --seconds S]`: the service under steady mixed load for a
//! while, with everything that changes in production changing at once (issue 15).
//!
//! Starts `mqtt-policy serve` (release; the debug build in `cargo xtask test`) on loopback,
//! trusting a key-set file this command rotates, with audit lines on, the default policy and
//! its test cases, and the admin API. Then, until the time is up:
//! - eight clients on keep-alive connections send go-auth calls: ACL checks with valid tokens
//!   of five kinds of subject (jwt backend: `Authorization: Bearer`), http-backend user calls
//!   followed by session-bound ACL checks, invalid and expired tokens, 60 KB unique topics,
//!   and malformed requests;
//! - every valid check is compared with the native engine (policy-core) evaluating the same
//!   request against the documents that may be live (two policies alternate, so an answer at
//!   a swap may be either one's);
//! - every 2 s a policy is swapped in through the admin API, every fifth time the module too;
//! - every 10 s (3 s in a short run) the signing key rotates: the next key is published, the
//!   clients move to it, the old key is withdrawn (tokens by an unknown key, among the invalid
//!   ones, make the service re-read the key set, at most once a second).
//!
//! It fails on any 5xx, any failed connection, any wrong decision, any refused swap of a good
//! candidate, or resident memory growing by more than the cache budget plus slack; and it
//! prints a table (requests by kind, decisions checked, swaps, rotations, RSS at start, peak
//! and end).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use policy_core::{Action, Policy, Query, Subject};
use serde_json::{Value, json};

use crate::bench_http::{Server, request, with_extra_rule};
use crate::bench_memory::{Conn, rss_mib};
use crate::{root, step, target_dir};

const ISSUER: &str = "https://keycloak.test/realms/celine";
const CLIENTS: usize = 8;
const SWAP_EVERY: Duration = Duration::from_secs(2);
const CACHE_MIB: u64 = 64;
/// Growth beyond the cache budget still accepted (allocator arenas, instance pools, buffers).
const SLACK_MIB: f64 = 48.0;
const ADMIN_TOKEN: &str = "soak-admin-token-0123456789abcdef";
/// The test keys (`host/tests/fixtures`): signing keys and their published halves.
const KEYS: [(&str, &str, &str); 2] =
    [("key-a", "rsa-a.pem", "jwks-a.json"), ("key-b", "rsa-b.pem", "jwks-b.json")];

/// `cargo xtask soak [--minutes M | --seconds S]` (default 10 minutes).
pub fn command(args: &[String]) -> anyhow::Result<()> {
    let length = match args {
        [] => Duration::from_secs(600),
        [flag, n] if flag == "--minutes" => {
            Duration::from_secs(60 * n.parse::<u64>().context("--minutes M")?)
        }
        [flag, n] if flag == "--seconds" => Duration::from_secs(n.parse().context("--seconds S")?),
        _ => bail!("usage: cargo xtask soak [--minutes M | --seconds S]"),
    };
    crate::build()?;
    step("release build: mqtt-policy");
    crate::cargo(&["build", "--release", "-p", "mqtt-policy", "--bin", "mqtt-policy"])?;
    run(&target_dir().join("release/mqtt-policy"), length)
}

/// What a client sends, and how often (out of 100).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// jwt backend: a valid token as `Bearer`, a topic from the pool.
    Bearer,
    /// http backend: a user call binding the subject's name, then an ACL check without token.
    Session,
    /// A token whose signature was tampered with, or one by a key nobody publishes.
    Forged,
    /// A correctly signed token, expired beyond the leeway.
    Expired,
    /// A valid token and a new 60 KB topic every time.
    Flood,
    /// No topic, or an `acc` that is not a bit mask.
    Malformed,
}

const MIX: [(Kind, u64); 6] = [
    (Kind::Bearer, 50),
    (Kind::Session, 15),
    (Kind::Forged, 10),
    (Kind::Expired, 10),
    (Kind::Flood, 5),
    (Kind::Malformed, 10),
];

/// The kinds of subject the clients speak for (Keycloak-shaped claims).
fn subject_claims(exp: u64) -> Vec<Value> {
    vec![
        json!({"iss": ISSUER, "sub": "u-viewer", "preferred_username": "vera", "groups": ["/viewers"], "scope": "openid", "exp": exp}),
        json!({"iss": ISSUER, "sub": "u-admin", "preferred_username": "adam", "groups": ["/admins"], "exp": exp}),
        json!({"iss": ISSUER, "sub": "s-1", "azp": "svc-digital-twin", "client_id": "svc-digital-twin",
               "preferred_username": "service-account-svc-digital-twin", "scope": "mqtt.write", "exp": exp}),
        json!({"iss": ISSUER, "sub": "s-2", "azp": "svc-pipelines", "client_id": "svc-pipelines",
               "preferred_username": "service-account-svc-pipelines", "scope": "mqtt.read", "exp": exp}),
        json!({"iss": ISSUER, "sub": "u-nobody", "preferred_username": "nina", "exp": exp}),
    ]
}

const TOPICS: [&str; 10] = [
    "celine/telemetry/meter/meter-001/readings",
    "celine/telemetry/inverter/inv-7/readings",
    "celine/digital-twin/events/site-3/changed",
    "celine/digital-twin/state/site-3",
    "celine/pipelines/status/ingest",
    "celine/system/alerts/critical",
    "celine/system/health/broker",
    "$SYS/broker/load",
    "celine/#",
    "celine/telemetry/+/+/readings",
];

/// A token and the subject the policy sees for it.
struct Identity {
    token: String,
    subject: Subject,
}

/// Tokens for every subject kind, signed by each key (several per pair, so that the caches
/// see more than one token per subject), plus expired ones.
struct Tokens {
    /// `[key][n]`
    valid: [Vec<Identity>; 2],
    expired: [Vec<String>; 2],
    /// Signed by a key no key set publishes (`kid` unknown): each one makes the service look
    /// at the key set again (at most once a second), so it follows the rotations closely.
    unknown_key: String,
}

fn sign(pem: &[u8], kid: &str, claims: &Value) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    Ok(jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem)?)?)
}

fn mint(fixtures: &Path, ttl: Duration) -> anyhow::Result<Tokens> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let exp = now + ttl.as_secs() + 600;
    let mut valid: [Vec<Identity>; 2] = Default::default();
    let mut expired: [Vec<String>; 2] = Default::default();
    for (k, (kid, pem_file, _)) in KEYS.iter().enumerate() {
        let pem = std::fs::read(fixtures.join(pem_file))?;
        for (i, claims) in subject_claims(exp).into_iter().enumerate() {
            for n in 0..4 {
                let mut c = claims.clone();
                c["jti"] = json!(format!("soak-{k}-{i}-{n}"));
                let subject = policy_core::subject_from_claims_json(&c.to_string())
                    .map_err(|e| anyhow::anyhow!("the soak's claims map to no subject: {e}"))?;
                valid[k].push(Identity { token: sign(&pem, kid, &c)?, subject });
            }
            let mut old = claims.clone();
            old["exp"] = json!(now - 600);
            expired[k].push(sign(&pem, kid, &old)?);
        }
    }
    let pem = std::fs::read(fixtures.join(KEYS[0].1))?;
    let unknown_key = sign(&pem, "key-retired", &subject_claims(exp)[0])?;
    Ok(Tokens { valid, expired, unknown_key })
}

/// The key sets this command publishes, by the keys they hold.
fn key_set(fixtures: &Path, keys: &[usize]) -> anyhow::Result<String> {
    let mut all = Vec::new();
    for &k in keys {
        let set: Value = serde_json::from_slice(&std::fs::read(fixtures.join(KEYS[k].2))?)?;
        all.extend(set["keys"].as_array().context("a fixture key set without keys")?.iter().cloned());
    }
    Ok(json!({ "keys": all }).to_string())
}

/// Writes a file whole (a reader never sees half of it).
fn publish(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[derive(Default)]
struct Counts {
    by_kind: [AtomicU64; 6],
    checked: AtomicU64,
    /// Of those, how many the policies allow.
    allowed: AtomicU64,
    /// Checks made while the two policies answer differently (either answer is right).
    either: AtomicU64,
    wrong: AtomicU64,
    server_errors: AtomicU64,
    failed: AtomicU64,
    unexpected: AtomicU64,
}

/// The first few problems, for the report.
type Problems = Mutex<Vec<String>>;

fn note(problems: &Problems, what: String) {
    let mut p = problems.lock().unwrap();
    if p.len() < 10 {
        p.push(what);
    }
}

/// A small, fast, seeded random source (xorshift).
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn actions_of(acc: u32) -> Vec<Action> {
    [(4, Action::Subscribe), (2, Action::Publish), (1, Action::Read)]
        .into_iter()
        .filter(|(bit, _)| acc & bit != 0)
        .map(|(_, a)| a)
        .collect()
}

/// What the service must answer (every action of `acc` allowed), under each policy that may
/// be live.
fn expected(policies: &[Policy; 2], subject: &Subject, topic: &str, acc: u32) -> [bool; 2] {
    policies.each_ref().map(|p| {
        actions_of(acc).into_iter().all(|action| {
            p.check(&Query {
                subject,
                action,
                topic,
                clientid: "soak",
                username: "",
                message: policy_core::Message::UNKNOWN,
            })
            .allow
        })
    })
}

struct Shared {
    tokens: Tokens,
    policies: [Policy; 2],
    /// Which key the clients sign with now.
    key: AtomicUsize,
    counts: Counts,
    problems: Problems,
    stop: AtomicBool,
}

fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' { (b as char).to_string() } else { format!("%{b:02X}") }
        })
        .collect()
}

/// One request of `kind`; checks its answer.
fn one(sh: &Shared, rnd: &mut Random, conn: &mut Conn, kind: Kind, n: u64) -> anyhow::Result<()> {
    let key = sh.key.load(Ordering::Relaxed);
    let pool = &sh.tokens.valid[key];
    let id = &pool[rnd.below(pool.len() as u64) as usize];
    let acc = [1, 2, 4, 3, 5][rnd.below(5) as usize];
    let json_ct = ("Content-Type", "application/json");
    let form_ct = ("Content-Type", "application/x-www-form-urlencoded");
    let counts = &sh.counts;
    let check = |status: u16, topic: &str, what: &str| {
        if status >= 500 {
            counts.server_errors.fetch_add(1, Ordering::Relaxed);
            note(&sh.problems, format!("{what}: HTTP {status}"));
            return;
        }
        let [a, b] = expected(&sh.policies, &id.subject, topic, acc);
        let got = status == 200;
        counts.checked.fetch_add(1, Ordering::Relaxed);
        if a && b {
            counts.allowed.fetch_add(1, Ordering::Relaxed);
        }
        if a != b {
            counts.either.fetch_add(1, Ordering::Relaxed);
        } else if got != a || !(status == 200 || status == 403) {
            counts.wrong.fetch_add(1, Ordering::Relaxed);
            note(
                &sh.problems,
                format!(
                    "{what}: {} acc={acc} on {topic:.80}: HTTP {status}, expected {}",
                    id.subject.id,
                    if a { 200 } else { 403 }
                ),
            );
        }
    };
    let expect = |status: u16, want: u16, what: &str| {
        if status >= 500 {
            counts.server_errors.fetch_add(1, Ordering::Relaxed);
            note(&sh.problems, format!("{what}: HTTP {status}"));
        } else if status != want {
            counts.unexpected.fetch_add(1, Ordering::Relaxed);
            note(&sh.problems, format!("{what}: HTTP {status}, expected {want}"));
        }
    };
    match kind {
        Kind::Bearer => {
            let topic = TOPICS[rnd.below(TOPICS.len() as u64) as usize];
            let body = json!({"clientid": "soak", "topic": topic, "acc": acc}).to_string();
            let bearer = format!("Bearer {}", id.token);
            let status = conn.post("/mqtt/acl", &[json_ct, ("Authorization", &bearer)], body.as_bytes())?;
            check(status, topic, "bearer ACL");
        }
        Kind::Session => {
            let name = form_escape(&id.subject.id);
            let user = format!("username={name}&password={}&clientid=soak", id.token);
            let status = conn.post("/mqtt/user", &[form_ct], user.as_bytes())?;
            expect(status, 200, "user call");
            let topic = TOPICS[rnd.below(TOPICS.len() as u64) as usize];
            let acl = format!("username={name}&clientid=soak&topic={}&acc={acc}", form_escape(topic));
            let status = conn.post("/mqtt/acl", &[form_ct], acl.as_bytes())?;
            // A concurrent user call of the same identity by another client binds an
            // equivalent token: the subject, and so the decision, is the same.
            check(status, topic, "session ACL");
        }
        Kind::Forged => {
            let mut forged = id.token.clone();
            if n.is_multiple_of(2) {
                let last = forged.pop().unwrap_or('A');
                forged.push(if last == 'A' { 'B' } else { 'A' });
            } else {
                forged.clone_from(&sh.tokens.unknown_key);
            }
            let bearer = format!("Bearer {forged}");
            let body = r#"{"clientid":"soak","topic":"celine/telemetry/meter/meter-001/readings","acc":1}"#;
            let status = conn.post("/mqtt/acl", &[json_ct, ("Authorization", &bearer)], body.as_bytes())?;
            expect(status, 403, "forged token");
        }
        Kind::Expired => {
            let old = &sh.tokens.expired[key];
            let bearer = format!("Bearer {}", old[rnd.below(old.len() as u64) as usize]);
            let status = conn.post("/mqtt/user", &[json_ct, ("Authorization", &bearer)], b"null")?;
            expect(status, 403, "expired token");
        }
        Kind::Flood => {
            let topic = format!("celine/telemetry/meter/{n}-{}/readings", "x".repeat(60_000));
            let body = json!({"clientid": "soak", "topic": topic, "acc": acc}).to_string();
            let bearer = format!("Bearer {}", id.token);
            let status = conn.post("/mqtt/acl", &[json_ct, ("Authorization", &bearer)], body.as_bytes())?;
            check(status, &topic, "60 KB topic");
        }
        Kind::Malformed => {
            let body = if n.is_multiple_of(2) {
                r#"{"clientid":"soak","acc":1}"#
            } else {
                r#"{"topic":"a/b","acc":9}"#
            };
            let bearer = format!("Bearer {}", id.token);
            let status = conn.post("/mqtt/acl", &[json_ct, ("Authorization", &bearer)], body.as_bytes())?;
            expect(status, 400, "malformed request");
        }
    }
    Ok(())
}

fn client(sh: Arc<Shared>, addr: String, seed: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rnd = Random(seed | 1);
        let mut conn: Option<Conn> = None;
        let mut n = 0;
        while !sh.stop.load(Ordering::Relaxed) {
            n += 1;
            let mut pick = rnd.below(100);
            let (kind, i) = MIX
                .iter()
                .enumerate()
                .find_map(|(i, (k, share))| {
                    if pick < *share {
                        return Some((*k, i));
                    }
                    pick -= share;
                    None
                })
                .unwrap_or((Kind::Bearer, 0));
            sh.counts.by_kind[i].fetch_add(1, Ordering::Relaxed);
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::open(&addr) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        sh.counts.failed.fetch_add(1, Ordering::Relaxed);
                        note(&sh.problems, format!("connecting: {e:#}"));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            if let Err(e) = one(&sh, &mut rnd, c, kind, n) {
                sh.counts.failed.fetch_add(1, Ordering::Relaxed);
                note(&sh.problems, format!("{kind:?}: {e:#}"));
                conn = None;
            }
        }
    })
}

/// Runs the soak against `bin` for `length`.
pub fn run(bin: &Path, length: Duration) -> anyhow::Result<()> {
    let fixtures = root().join("host/tests/fixtures");
    let state = std::env::temp_dir().join(format!("mqtt-policy-soak-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let result = soak(bin, length, &fixtures, &state);
    let _ = std::fs::remove_dir_all(&state);
    result
}

fn soak(bin: &Path, length: Duration, fixtures: &Path, state: &Path) -> anyhow::Result<()> {
    let rotate_every =
        if length < Duration::from_secs(120) { Duration::from_secs(3) } else { Duration::from_secs(10) };
    step(&format!(
        "soak for {} s: {CLIENTS} clients, a policy swap every {} s, a key rotation every {} s",
        length.as_secs(),
        SWAP_EVERY.as_secs(),
        rotate_every.as_secs()
    ));
    let jwks: PathBuf = state.join("jwks.json");
    publish(&jwks, &key_set(fixtures, &[0])?)?;
    let base = std::fs::read_to_string(root().join("policies/celine.json"))?;
    let documents = [base.clone(), with_extra_rule(&base)];
    let policies = documents.each_ref().map(|d| Policy::load(d).map_err(|e| anyhow::anyhow!("{e:?}")));
    let [p0, p1] = policies;
    let shared = Arc::new(Shared {
        tokens: mint(fixtures, length)?,
        policies: [p0?, p1?],
        key: AtomicUsize::new(0),
        counts: Counts::default(),
        problems: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let server = Server::start(
        Command::new(bin)
            .current_dir(root())
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
                "--jwks-min-refresh",
                "1",
            ])
            .args(["--issuer", ISSUER, "--cache-memory", &CACHE_MIB.to_string(), "--jwks-file"])
            .arg(&jwks)
            .arg("--state-dir")
            .arg(state)
            .env("MQTT_POLICY_ADMIN_TOKEN", ADMIN_TOKEN)
            // Audit lines on, as in production; written to nowhere, so that a long run fills
            // no disk.
            .env("MQTT_POLICY_LOG", "info")
            .stderr(Stdio::null()),
        "mqtt-policy listening on ",
    )?;
    let ops = server.ops.clone().context("the service named no operations listener")?;
    let pid = server.child.id();

    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| client(Arc::clone(&shared), server.addr.clone(), 0x9E37_79B9 * (i as u64 + 1)))
        .collect();

    // Swaps: the two documents alternate; every fifth swap uploads the module again too.
    let module = std::fs::read(crate::module_path())?;
    let swaps = {
        let (sh, ops) = (Arc::clone(&shared), ops.clone());
        let documents = documents.clone();
        std::thread::spawn(move || -> (u64, u64) {
            let bearer = format!("Bearer {ADMIN_TOKEN}");
            let (mut ok, mut refused) = (0, 0);
            let mut i = 0usize;
            while !sh.stop.load(Ordering::Relaxed) {
                i += 1;
                let (path, body) = if i.is_multiple_of(5) {
                    ("/admin/module", module.as_slice())
                } else {
                    ("/admin/policy", documents[i % 2].as_bytes())
                };
                match request(&ops, "PUT", path, &[("Authorization", &bearer)], body) {
                    Ok((200, _)) => ok += 1,
                    Ok((status, answer)) => {
                        refused += 1;
                        note(&sh.problems, format!("PUT {path}: {status} {answer:.200}"));
                    }
                    Err(e) => {
                        refused += 1;
                        note(&sh.problems, format!("PUT {path}: {e:#}"));
                    }
                }
                std::thread::sleep(SWAP_EVERY);
            }
            (ok, refused)
        })
    };

    // Rotation: publish {current, next}; move the clients to next; withdraw current.
    let rotations = {
        let (sh, fixtures, jwks) = (Arc::clone(&shared), fixtures.to_path_buf(), jwks.clone());
        std::thread::spawn(move || -> anyhow::Result<u64> {
            let mut n = 0;
            let wait = |d: Duration| {
                let until = Instant::now() + d;
                while Instant::now() < until && !sh.stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                !sh.stop.load(Ordering::Relaxed)
            };
            while wait(rotate_every / 2) {
                let current = sh.key.load(Ordering::Relaxed);
                let next = 1 - current;
                publish(&jwks, &key_set(&fixtures, &[current, next])?)?;
                if !wait(rotate_every / 2) {
                    break;
                }
                sh.key.store(next, Ordering::Relaxed);
                // Requests already signed with the old key finish within this second.
                if !wait(Duration::from_secs(1)) {
                    break;
                }
                publish(&jwks, &key_set(&fixtures, &[next])?)?;
                n += 1;
            }
            Ok(n)
        })
    };

    // Warm up, then sample memory every second until the time is up.
    let started = Instant::now();
    let warm = Duration::from_secs(5).min(length / 4);
    std::thread::sleep(warm);
    let rss_start = rss_mib(pid)?;
    let mut rss_peak = rss_start;
    let mut last_report = Instant::now();
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_secs(1));
        let rss = rss_mib(pid)?;
        rss_peak = rss_peak.max(rss);
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            let c = &shared.counts;
            println!(
                "   {:>4} s: {} requests, {} decisions checked, {} wrong, {} 5xx; RSS {rss:.0} MiB",
                started.elapsed().as_secs(),
                c.by_kind.iter().map(|k| k.load(Ordering::Relaxed)).sum::<u64>(),
                c.checked.load(Ordering::Relaxed),
                c.wrong.load(Ordering::Relaxed),
                c.server_errors.load(Ordering::Relaxed),
            );
        }
    }
    let rss_end = rss_mib(pid)?;
    shared.stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (swaps_ok, swaps_refused) = swaps.join().map_err(|_| anyhow::anyhow!("the swapper panicked"))?;
    let rotations = rotations.join().map_err(|_| anyhow::anyhow!("the key rotation panicked"))??;
    let alive = crate::bench_http::metric(&ops, "mqtt_policy_log_lines_dropped_total").is_ok();
    drop(server);

    let c = &shared.counts;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let total: u64 = c.by_kind.iter().map(load).sum();
    println!("\n| soak, {} s | |\n|---|---|", length.as_secs());
    println!("| requests | {total} ({:.0}/s) |", total as f64 / length.as_secs_f64());
    for (i, (kind, _)) in MIX.iter().enumerate() {
        println!("| {kind:?} | {} |", load(&c.by_kind[i]));
    }
    println!(
        "| decisions checked against policy-core | {} ({} allowed; {} where the two policies differ, either answer accepted) |",
        load(&c.checked),
        load(&c.allowed),
        load(&c.either)
    );
    println!("| wrong decisions | {} |", load(&c.wrong));
    println!("| other unexpected answers | {} |", load(&c.unexpected));
    println!("| 5xx answers | {} |", load(&c.server_errors));
    println!("| failed requests (connection) | {} |", load(&c.failed));
    println!("| swaps (policy, every fifth the module) | {swaps_ok} ok, {swaps_refused} refused |");
    println!("| key rotations | {rotations} |");
    println!("| RSS after warm-up / peak / end | {rss_start:.0} / {rss_peak:.0} / {rss_end:.0} MiB |");

    let problems = shared.problems.lock().unwrap().clone();
    let mut failures = Vec::new();
    if !alive {
        failures.push("the service did not answer at the end".to_string());
    }
    for (what, n) in [
        ("wrong decisions", load(&c.wrong)),
        ("unexpected answers", load(&c.unexpected)),
        ("5xx answers", load(&c.server_errors)),
        ("failed requests", load(&c.failed)),
        ("refused swaps of good candidates", swaps_refused),
    ] {
        if n > 0 {
            failures.push(format!("{n} {what}"));
        }
    }
    if rotations == 0 || swaps_ok == 0 {
        failures.push("no key rotation or no swap happened".into());
    }
    if rss_end > rss_start + CACHE_MIB as f64 + SLACK_MIB {
        failures.push(format!(
            "resident memory grew from {rss_start:.0} to {rss_end:.0} MiB (budget {CACHE_MIB} + {SLACK_MIB} MiB)"
        ));
    }
    if !failures.is_empty() {
        bail!("the soak failed: {}\nfirst problems:\n  {}", failures.join(", "), problems.join("\n  "));
    }
    Ok(())
}
