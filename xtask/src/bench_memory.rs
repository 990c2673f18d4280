//! `cargo xtask bench-memory`: the service's resident memory under floods that would grow an
//! unbounded cache without limit (issue 12).
//!
//! Starts the release `mqtt-policy serve --dev --cache-memory 64` with audit lines on (written
//! to a file), warms it up, then for `MQTT_POLICY_BENCH_SECONDS` (default 60) floods it from
//! four keep-alive connections at once:
//! - two send ACL calls with the token as `Bearer` (go-auth's jwt backend), each a new ~60 KB
//!   topic, one allowed and one denied;
//! - one sends the http backend's session-bound ACL calls (form body, no token), each a new
//!   ~60 KB topic;
//! - one sends ACL calls with a new, ~8 KB, JWT-shaped but unverifiable token each time.
//!
//! It samples `VmRSS` every second, prints progress every ten, and ends with a table: RSS
//! after warm-up, at the end of the first half, peak, and at the end, requests by status. It
//! fails when any answer is a 5xx, when a flood stops getting answers, or when the process grew
//! by more than the cache budget plus [`SLACK_MIB`] (what allocators keep).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench_http::Server;
use crate::{root, step, target_dir};

const BUDGET_MIB: u64 = 64;
/// Growth beyond the budget still accepted: allocator arenas, the instance pool, buffers.
const SLACK_MIB: u64 = 48;
const TOPIC_FILLER: usize = 60_000;

/// A keep-alive HTTP/1.1 connection, enough for this benchmark's requests.
pub(crate) struct Conn {
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Conn {
    pub(crate) fn open(addr: &str) -> anyhow::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok(Conn { reader: BufReader::new(s), addr: addr.to_string() })
    }

    /// Sends a POST and returns the status (the body is read and discarded).
    pub(crate) fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &[u8]) -> anyhow::Result<u16> {
        let mut head =
            format!("POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n", self.addr, body.len());
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let s = self.reader.get_mut();
        s.write_all(head.as_bytes())?;
        s.write_all(body)?;
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line)?;
        let status = status_line.split_whitespace().nth(1).context("no status line")?.parse()?;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the connection closed mid-response");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

pub(crate) fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmRSS")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Answers by status class: 2xx, 4xx, 5xx, and failed requests.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    client_error: AtomicU64,
    server_error: AtomicU64,
    failed: AtomicU64,
}

impl Tally {
    fn count(&self, status: anyhow::Result<u16>) {
        let slot = match status {
            Ok(200..=299) => &self.ok,
            Ok(400..=499) => &self.client_error,
            Ok(_) => &self.server_error,
            Err(_) => &self.failed,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        [&self.ok, &self.client_error, &self.server_error, &self.failed]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// Runs `request(n)` on a fresh keep-alive connection until `stop`, reconnecting after errors.
fn flood(
    addr: String,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    request: impl Fn(u64, &mut Conn) -> anyhow::Result<u16> + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut conn = None;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match Conn::open(&addr) {
                    Ok(c) => conn.insert(c),
                    Err(e) => {
                        tally.count(Err(e));
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                },
            };
            let status = request(n, c);
            if status.is_err() {
                conn = None;
            }
            tally.count(status);
        }
    })
}

fn seconds() -> anyhow::Result<u64> {
    match std::env::var("MQTT_POLICY_BENCH_SECONDS") {
        Ok(v) => v.parse().context("MQTT_POLICY_BENCH_SECONDS: a number of seconds"),
        Err(_) => Ok(60),
    }
}

pub fn bench() -> anyhow::Result<()> {
    let seconds = seconds()?;
    crate::build()?;
    step("release build: mqtt-policy");
    crate::cargo(&["build", "--release", "-p", "mqtt-policy", "--bin", "mqtt-policy"])?;
    let bin = target_dir().join("release/mqtt-policy");
    let state = std::env::temp_dir().join(format!("mqtt-policy-bench-memory-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let audit_log = state.join("audit.log");
    let server = Server::start(
        Command::new(&bin)
            .current_dir(root())
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
            .args(["--cache-memory", &BUDGET_MIB.to_string(), "--state-dir"])
            .arg(&state)
            .env("MQTT_POLICY_LOG", "info")
            .stderr(std::fs::File::create(&audit_log)?),
        "mqtt-policy listening on ",
    )?;
    let pid = server.child.id();
    let out = Command::new(&bin)
        .args([
            "token",
            "--dev",
            "--ttl",
            "2h",
            "--sub",
            "flood-viewer",
            "--groups",
            "viewers",
            "--state-dir",
        ])
        .arg(&state)
        .output()?;
    if !out.status.success() {
        bail!("minting a token: {}", String::from_utf8_lossy(&out.stderr));
    }
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    let addr = server.addr.clone();
    let mut setup = Conn::open(&addr)?;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let bound = setup.post(
        "/mqtt/user",
        &form,
        format!("username=flood-viewer&clientid=flood&password={token}").as_bytes(),
    )?;
    if bound != 200 {
        bail!("the session's user call was answered {bound}");
    }

    let bearer = format!("Bearer {token}");
    let json_acl = move |topic: String, c: &mut Conn| {
        let body = format!(r#"{{"clientid":"flood","topic":"{topic}","acc":1}}"#);
        c.post(
            "/mqtt/acl",
            &[("Content-Type", "application/json"), ("Authorization", &bearer)],
            body.as_bytes(),
        )
    };
    step("warm-up: 2,000 ACL calls on a few topics");
    for i in 0..2_000 {
        let status = json_acl(format!("celine/telemetry/meter/warm-{}/readings", i % 20), &mut setup)?;
        if status != 200 {
            bail!("a warm-up call was answered {status}");
        }
    }
    drop(setup);
    let start = rss_mib(pid)?;

    step(&format!("flood: {seconds} s from 4 connections (set MQTT_POLICY_BENCH_SECONDS to change)"));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let filler = Arc::new("x".repeat(TOPIC_FILLER));
    let mut floods = Vec::new();
    for t in 0..2u64 {
        let (filler, json_acl) = (Arc::clone(&filler), json_acl.clone());
        floods.push(flood(addr.clone(), Arc::clone(&stop), Arc::clone(&tally), move |n, c| {
            // One allowed, one denied (a denial's reason quotes the topic: the heavier entry).
            match t {
                0 => json_acl(format!("celine/telemetry/meter/{n}-{filler}/readings"), c),
                _ => json_acl(format!("celine/secret/{n}-{filler}"), c),
            }
        }));
    }
    {
        let filler = Arc::clone(&filler);
        floods.push(flood(addr.clone(), Arc::clone(&stop), Arc::clone(&tally), move |n, c| {
            let body = format!(
                "acc=1&clientid=flood&username=flood-viewer&topic=celine%2Ftelemetry%2Fmeter%2Fs-{n}-{filler}%2Freadings"
            );
            c.post("/mqtt/acl", &form, body.as_bytes())
        }));
    }
    floods.push(flood(addr.clone(), Arc::clone(&stop), Arc::clone(&tally), move |n, c| {
        // JWT-shaped, unique, and signed by nobody: refused, and never worth keeping.
        let forged = format!("eyJhbGciOiJSUzI1NiIsImtpZCI6ImZsb29kIn0.{}{n:020}.c2ln", "e".repeat(8_000));
        let body = r#"{"clientid":"flood","topic":"celine/telemetry/m/readings","acc":1}"#;
        let bearer = format!("Bearer {forged}");
        c.post(
            "/mqtt/acl",
            &[("Content-Type", "application/json"), ("Authorization", &bearer)],
            body.as_bytes(),
        )
    }));

    let began = Instant::now();
    let mut samples = Vec::new();
    let mut last_total = 0;
    while began.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_secs(1));
        let rss = rss_mib(pid).context("the service is gone")?;
        samples.push(rss);
        let total = tally.total();
        if samples.len() % 10 == 0 {
            println!(
                "   {:>3} s: {total} requests ({:.0}/s), RSS {rss:.1} MiB",
                samples.len(),
                (total - last_total) as f64 / 10.0
            );
            if total == last_total {
                bail!("no request was answered in the last 10 s");
            }
            last_total = total;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in floods {
        let _ = f.join();
    }
    let end = rss_mib(pid)?;
    let half = samples.get(samples.len() / 2).copied().unwrap_or(end);
    let peak = samples.iter().copied().fold(end, f64::max);
    let ops = server.ops.clone().context("the service named no operations listener")?;
    let dropped = crate::bench_http::metric(&ops, "mqtt_policy_log_lines_dropped_total")?;
    drop(server);
    let audit_lines = BufReader::new(std::fs::File::open(&audit_log)?).lines().count();
    let _ = std::fs::remove_dir_all(&state);

    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "\n| RSS after warm-up | at half time | peak | at the end | growth (peak − warm) | requests | 2xx | 4xx | 5xx | failed | log lines written | dropped |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {start:.1} MiB | {half:.1} MiB | {peak:.1} MiB | {end:.1} MiB | {:.1} MiB | {} | {} | {} | {} | {} | {audit_lines} | {dropped} |",
        peak - start,
        tally.total(),
        get(&tally.ok),
        get(&tally.client_error),
        get(&tally.server_error),
        get(&tally.failed),
    );
    if get(&tally.server_error) > 0 {
        bail!("{} answers were 5xx", get(&tally.server_error));
    }
    if peak - start > (BUDGET_MIB + SLACK_MIB) as f64 {
        bail!(
            "the service grew by {:.1} MiB, beyond its {BUDGET_MIB} MiB budget + {SLACK_MIB} MiB",
            peak - start
        );
    }
    println!("within the {BUDGET_MIB} MiB cache budget + {SLACK_MIB} MiB");
    Ok(())
}
