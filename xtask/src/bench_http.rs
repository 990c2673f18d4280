//! `cargo xtask bench-http`: HTTP throughput of `/mqtt/acl` under wrk, beside a floor.
//!
//! Builds the release binaries, starts `mqtt-policy serve --dev` and the trivial axum floor
//! (`host/examples/floor.rs`) on free loopback ports, checks each scenario answers as
//! expected (200 allow / 403 deny), then for each scenario runs wrk against the floor and
//! right after against the service, with the same wrk script (the machine is shared and
//! noisy: each ratio comes from a back-to-back pair, and wrk's own work per request weighs on
//! both alike), stops both servers by PID, and prints a Markdown table.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::{root, step, target_dir};

/// Seconds per wrk run.
const DURATION: u32 = 3;
/// Interleaved rounds per scenario (floor, audit on, audit off, each `DURATION` s): the table
/// reports each ratio's median round, and the spread of the audit-on ratio.
const ROUNDS: usize = 7;
const CONCURRENCY: [u32; 2] = [16, 64];

/// A server started by a benchmark, stopped (by PID) when dropped.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) addr: String,
    /// `mqtt-policy serve`'s operations listener (its line comes before the ready line).
    pub(crate) ops: Option<String>,
}

impl Server {
    pub(crate) fn start(cmd: &mut Command, ready_prefix: &str) -> anyhow::Result<Server> {
        let mut child = cmd.stdout(Stdio::piped()).stdin(Stdio::null()).spawn()?;
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut ops = None;
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(url) = l.strip_prefix(ready_prefix) {
                        break url.trim_start_matches("http://").to_string();
                    } else if let Some(url) = l.strip_prefix("mqtt-policy ops listening on ") {
                        ops = Some(url.trim_start_matches("http://").to_string());
                    }
                }
                _ => {
                    let _ = child.kill();
                    bail!("the server exited before listening");
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Server { child, addr, ops })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain HTTP/1.1 POST, for setup and sanity checks; returns (status, body).
fn http(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> anyhow::Result<(u16, String)> {
    request(addr, "POST", path, headers, body.as_bytes())
}

pub(crate) fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp.split_whitespace().nth(1).context("no status line")?.parse()?;
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

struct Scenario {
    name: String,
    headers: Vec<(&'static str, String)>,
    body: String,
    expect_status: u16,
    /// Number the meter in the topic afresh on every request (defeats the decision cache).
    distinct_topics: bool,
}

fn lua(s: &Scenario) -> String {
    let mut out = String::from("wrk.method = \"POST\"\n");
    for (k, v) in &s.headers {
        out.push_str(&format!("wrk.headers[\"{k}\"] = {v:?}\n"));
    }
    out.push_str(&format!("wrk.body = {:?}\n", s.body));
    if s.distinct_topics {
        // Each wrk thread counts in its own range, so no two requests share a topic.
        out.push_str(
            "local threads = 0\n\
             function setup(thread) thread:set(\"base\", threads * 100000000) threads = threads + 1 end\n\
             function init(args) n = base end\n\
             function request()\n  n = n + 1\n  \
               local body = string.gsub(wrk.body, \"meter%-001\", \"m\" .. n)\n  \
               return wrk.format(nil, nil, nil, body)\nend\n",
        );
    }
    out
}

/// Requests/sec and p99 latency (ms) from wrk's output.
fn parse_wrk(out: &str) -> anyhow::Result<(f64, f64, u64)> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .context("no Requests/sec in wrk's output")?
        .trim()
        .parse()?;
    let p99 =
        out.lines().find_map(|l| l.trim().strip_prefix("99%")).context("no 99% latency")?.trim().to_string();
    let ms = if let Some(v) = p99.strip_suffix("us") {
        v.parse::<f64>()? / 1000.0
    } else if let Some(v) = p99.strip_suffix("ms") {
        v.parse()?
    } else if let Some(v) = p99.strip_suffix('s') {
        v.parse::<f64>()? * 1000.0
    } else {
        bail!("unknown latency unit in {p99}")
    };
    let errors = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|l| l.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Ok((rps, ms, errors))
}

fn wrk(addr: &str, script: &Path, connections: u32) -> anyhow::Result<(f64, f64, u64)> {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &connections.to_string(), "-d", &format!("{DURATION}s"), "--latency", "-s"])
        .arg(script)
        .arg(format!("http://{addr}/mqtt/acl"))
        .output()
        .context("cannot run wrk (Debian: apt-get install wrk)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

fn ensure_wrk() -> anyhow::Result<()> {
    crate::apt::ensure(&["wrk"], &["/usr/bin/wrk"], "the HTTP benchmarks")
}

pub fn bench() -> anyhow::Result<()> {
    ensure_wrk()?;
    crate::build()?;
    step("release builds: mqtt-policy and the floor");
    crate::cargo(&["build", "--release", "-p", "mqtt-policy", "--bin", "mqtt-policy", "--example", "floor"])?;
    let bin = target_dir().join("release/mqtt-policy");
    let floor_bin = target_dir().join("release/examples/floor");
    let state = std::env::temp_dir().join(format!("mqtt-policy-bench-{}", std::process::id()));
    let work = state.join("wrk");
    std::fs::create_dir_all(&work)?;

    // Two services on the same state (dev key): one writing an audit line per decision to a
    // file, as in production, and one logging only warnings.
    let audit_log = state.join("audit.log");
    let service = |log: &str, stderr: Stdio| {
        Server::start(
            Command::new(&bin)
                .current_dir(root())
                .args([
                    "serve",
                    "--dev",
                    "--listen",
                    "127.0.0.1:0",
                    "--ops-listen",
                    "127.0.0.1:0",
                    "--state-dir",
                ])
                .arg(&state)
                .env("MQTT_POLICY_LOG", log)
                .stderr(stderr),
            "mqtt-policy listening on ",
        )
    };
    let audited = service("info", Stdio::from(std::fs::File::create(&audit_log)?))?;
    let server = service("warn", Stdio::null())?;
    let floor = Server::start(
        Command::new(&floor_bin).arg("127.0.0.1:0").stderr(Stdio::null()),
        "floor listening on ",
    )?;
    let token = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&bin)
            .args(["token", "--dev", "--ttl", "1h", "--state-dir"])
            .arg(&state)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("minting a token: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let viewer = token(&["--sub", "bench-viewer", "--groups", "viewers"])?;
    // http mode: the user call binds the username "bench-viewer" (the token's subject) to it.
    for s in [&server, &audited] {
        let (status, body) = http(
            &s.addr,
            "/mqtt/user",
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &format!("username=bench-viewer&clientid=bench&password={viewer}"),
        )?;
        if status != 200 {
            bail!("binding the bench session failed: {status} {body}");
        }
    }

    let allow_topic = "celine/telemetry/meter/meter-001/readings";
    let json_body = |acc: u32| format!(r#"{{"clientid":"bench","topic":"{allow_topic}","acc":{acc}}}"#);
    let form_body = |acc: u32| {
        format!(
            "acc={acc}&clientid=bench&topic=celine%2Ftelemetry%2Fmeter%2Fmeter-001%2Freadings&username=bench-viewer"
        )
    };
    let bearer = format!("Bearer {viewer}");
    let scenarios = [
        Scenario {
            name: "jwt mode (Bearer), allowed read".into(),
            headers: vec![("Content-Type", "application/json".into()), ("Authorization", bearer.clone())],
            body: json_body(1),
            expect_status: 200,
            distinct_topics: false,
        },
        Scenario {
            name: "jwt mode (Bearer), allowed read, a new topic each request (no decision cache)".into(),
            headers: vec![("Content-Type", "application/json".into()), ("Authorization", bearer.clone())],
            body: json_body(1),
            expect_status: 200,
            distinct_topics: true,
        },
        Scenario {
            name: "jwt mode (Bearer), denied publish".into(),
            headers: vec![("Content-Type", "application/json".into()), ("Authorization", bearer.clone())],
            body: json_body(2),
            expect_status: 403,
            distinct_topics: false,
        },
        Scenario {
            name: "http mode (session, form), allowed read".into(),
            headers: vec![("Content-Type", "application/x-www-form-urlencoded".into())],
            body: form_body(1),
            expect_status: 200,
            distinct_topics: false,
        },
        Scenario {
            name: "http mode (session, form), denied publish".into(),
            headers: vec![("Content-Type", "application/x-www-form-urlencoded".into())],
            body: form_body(2),
            expect_status: 403,
            distinct_topics: false,
        },
    ];
    let floor_scenario = Scenario {
        name: "floor: trivial axum handler, same body".into(),
        headers: vec![("Content-Type", "application/json".into()), ("Authorization", bearer.clone())],
        body: json_body(1),
        expect_status: 200,
        distinct_topics: false,
    };

    // Sanity: each scenario answers as expected before it is measured.
    let on_services = scenarios.iter().flat_map(|s| [(s, &server.addr), (s, &audited.addr)]);
    for (s, addr) in on_services.chain([(&floor_scenario, &floor.addr)]) {
        let headers: Vec<(&str, &str)> = s.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body) = http(addr, "/mqtt/acl", &headers, &s.body)?;
        if status != s.expect_status {
            bail!("{}: expected HTTP {}, got {status} {body}", s.name, s.expect_status);
        }
    }

    step(&format!("wrk: {ROUNDS} interleaved rounds of {DURATION}s runs, 2 threads, loopback"));
    let script = |i: usize, s: &Scenario| -> anyhow::Result<PathBuf> {
        let p = work.join(format!("s{i}.lua"));
        std::fs::write(&p, lua(s))?;
        Ok(p)
    };
    let mut rows = Vec::new();
    // MQTT_POLICY_BENCH_ONLY=<part of a scenario's name> narrows the run, for profiling.
    let only = std::env::var("MQTT_POLICY_BENCH_ONLY").unwrap_or_default();
    for c in CONCURRENCY {
        for (i, s) in scenarios.iter().enumerate().filter(|(_, s)| s.name.contains(&only)) {
            // (floor, audit on, audit off) per round, each (req/s, p99, socket errors).
            let mut rounds = Vec::new();
            for _ in 0..ROUNDS {
                // The floor gets the scenario's own requests, made the same way: the load
                // generator shares the machine, and a script that renumbers the topic on every
                // request costs it as much whichever server answers.
                let floor_run = wrk(&floor.addr, &script(i, s)?, c)?;
                let audited_run = wrk(&audited.addr, &script(i, s)?, c)?;
                let quiet_run = wrk(&server.addr, &script(i, s)?, c)?;
                println!(
                    "   {} c={c}: {:.0} req/s with audit lines, {:.0} without, floor {:.0} ({:.2}, {:.2})",
                    s.name,
                    audited_run.0,
                    quiet_run.0,
                    floor_run.0,
                    audited_run.0 / floor_run.0,
                    quiet_run.0 / floor_run.0
                );
                rounds.push((floor_run, audited_run, quiet_run));
            }
            let errors: u64 = rounds.iter().map(|(f, a, q)| f.2 + a.2 + q.2).sum();
            let ratios: Vec<f64> = rounds.iter().map(|(f, a, _)| a.0 / f.0).collect();
            // The median round by the audit-on ratio gives the row's figures.
            let mut order: Vec<usize> = (0..rounds.len()).collect();
            order.sort_by(|x, y| ratios[*x].total_cmp(&ratios[*y]));
            let ((floor_rps, floor_p99, _), (rps, p99, _), _) = rounds[order[order.len() / 2]];
            let mut quiet: Vec<f64> = rounds.iter().map(|(f, _, q)| q.0 / f.0).collect();
            quiet.sort_by(f64::total_cmp);
            let quiet_median = quiet[quiet.len() / 2];
            let (low, high) = (ratios[order[0]], ratios[order[order.len() - 1]]);
            rows.push(format!(
                "| {} | {c} | {rps:.0} | {p99:.2} ms | {floor_rps:.0} | {floor_p99:.2} ms | **{:.2}** ({low:.2}–{high:.2}) | {:.2} | {errors} |",
                s.name,
                rps / floor_rps,
                quiet_median,
            ));
        }
    }
    let dropped = metric(
        audited.ops.as_deref().context("no operations listener")?,
        "mqtt_policy_log_lines_dropped_total",
    )?;
    drop(audited);
    drop(server);
    drop(floor);
    let audit_lines = BufReader::new(std::fs::File::open(&audit_log)?)
        .lines()
        .filter(|l| l.as_ref().is_ok_and(|l| l.contains("audit")))
        .count();
    let _ = std::fs::remove_dir_all(&state);
    println!(
        "\n| scenario | connections | req/s (audit lines on) | p99 | floor req/s | floor p99 | **ratio** (median of {ROUNDS}: range) | ratio, audit off (median) | socket errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!("\naudit lines written: {audit_lines}; dropped (the log writer fell behind): {dropped}");
    Ok(())
}

/// The value of an unlabelled metric from a `/metrics` page at `addr` (0 when absent).
pub(crate) fn metric(addr: &str, name: &str) -> anyhow::Result<f64> {
    let (status, page) = request(addr, "GET", "/metrics", &[], b"")?;
    if status != 200 {
        bail!("GET /metrics: {status}");
    }
    Ok(page
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse())
        .transpose()?
        .unwrap_or(0.0))
}

/// Milliseconds: median, 90th percentile and maximum of `samples`.
fn spread(mut samples: Vec<f64>) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.9), *samples.last().unwrap())
}

/// `cargo xtask bench-swap`: how long a swap takes, and what repeated swaps cost throughput.
pub fn bench_swap() -> anyhow::Result<()> {
    ensure_wrk()?;
    crate::build()?;
    step("release build: mqtt-policy");
    crate::cargo(&["build", "--release", "-p", "mqtt-policy", "--bin", "mqtt-policy"])?;
    let bin = target_dir().join("release/mqtt-policy");
    let state = std::env::temp_dir().join(format!("mqtt-policy-bench-swap-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let admin_token = "bench-admin-token-0123456789";
    let server = Server::start(
        Command::new(&bin)
            .current_dir(root())
            .args(["serve", "--dev", "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .env("MQTT_POLICY_ADMIN_TOKEN", admin_token)
            .env("MQTT_POLICY_LOG", "warn")
            .stderr(Stdio::null()),
        "mqtt-policy listening on ",
    )?;
    let ops = server.ops.clone().context("the service named no operations listener")?;
    let bearer = format!("Bearer {admin_token}");
    let put = |path: &str, body: &[u8]| -> anyhow::Result<f64> {
        let started = std::time::Instant::now();
        let (status, answer) = request(&ops, "PUT", path, &[("Authorization", &bearer)], body)?;
        if status != 200 {
            bail!("PUT {path}: {status} {answer}");
        }
        Ok(started.elapsed().as_secs_f64() * 1000.0)
    };
    let base = std::fs::read_to_string(root().join("policies/celine.json"))?;
    let policies = [with_extra_rule(&base).into_bytes(), base.into_bytes()];
    let modules_dir = crate::module_path().with_file_name("");
    let module_a = std::fs::read(modules_dir.join("scope-convention.wasm"))?;
    let module_b = std::fs::read(modules_dir.join("policy.wasm"))?;

    step("swap latency: PUT received to new generation live (includes the 38 test cases)");
    let policy_ms: Vec<f64> =
        (0..20).map(|i| put("/admin/policy", &policies[i % 2])).collect::<anyhow::Result<_>>()?;
    // The first module upload compiles; after that the compiled-code cache answers.
    let cold_module = put("/admin/module", &module_a)?;
    let module_ms: Vec<f64> = (0..20)
        .map(|i| put("/admin/module", if i % 2 == 0 { &module_b } else { &module_a }))
        .collect::<anyhow::Result<_>>()?;
    let (p50, p90, pmax) = spread(policy_ms);
    let (m50, m90, mmax) = spread(module_ms);

    step("throughput: steady, during a policy swap every 100 ms, steady again (wrk, 64 connections)");
    let token = {
        let out = Command::new(&bin)
            .args(["token", "--dev", "--sub", "bench", "--groups", "viewers", "--state-dir"])
            .arg(&state)
            .output()?;
        String::from_utf8(out.stdout)?.trim().to_string()
    };
    let scenario = Scenario {
        name: "jwt mode (Bearer), allowed read".into(),
        headers: vec![
            ("Content-Type", "application/json".into()),
            ("Authorization", format!("Bearer {token}")),
        ],
        body: r#"{"clientid":"bench","topic":"celine/telemetry/meter/meter-001/readings","acc":1}"#.into(),
        expect_status: 200,
        distinct_topics: false,
    };
    let script = state.join("acl.lua");
    std::fs::write(&script, lua(&scenario))?;
    let (steady, steady_p99, _) = wrk(&server.addr, &script, 64)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (addr, bearer, stop, policies) =
            (ops.clone(), bearer.clone(), std::sync::Arc::clone(&stop), policies.clone());
        std::thread::spawn(move || -> anyhow::Result<u32> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, body) = request(
                    &addr,
                    "PUT",
                    "/admin/policy",
                    &[("Authorization", &bearer)],
                    &policies[n as usize % 2],
                )?;
                if status != 200 {
                    bail!("a swap under load failed: {status} {body}");
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(n)
        })
    };
    let (swapping, swapping_p99, errors) = wrk(&server.addr, &script, 64)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().map_err(|_| anyhow::anyhow!("the swapper panicked"))??;
    // Steady again: the swapping run is compared with the mean of the runs around it.
    let (steady_after, steady_after_p99, _) = wrk(&server.addr, &script, 64)?;
    drop(server);
    let _ = std::fs::remove_dir_all(&state);

    println!("\n| swap | median | p90 | max |");
    println!("|---|---|---|---|");
    println!("| policy (20 alternating uploads) | {p50:.1} ms | {p90:.1} ms | {pmax:.1} ms |");
    println!("| module, first upload (compiles) | {cold_module:.1} ms | | |");
    println!(
        "| module (20 alternating uploads, compiled-code cache) | {m50:.1} ms | {m90:.1} ms | {mmax:.1} ms |"
    );
    println!("\n| /mqtt/acl throughput | req/s | p99 | socket errors |");
    println!("|---|---|---|---|");
    println!("| steady, before | {steady:.0} | {steady_p99:.2} ms | 0 |");
    println!(
        "| during {swaps} policy swaps (one per 100 ms) | {swapping:.0} | {swapping_p99:.2} ms | {errors} |"
    );
    println!("| steady, after | {steady_after:.0} | {steady_after_p99:.2} ms | 0 |");
    println!(
        "| ratio: during / mean of steady | **{:.2}** | | |",
        swapping / ((steady + steady_after) / 2.0)
    );
    Ok(())
}

/// The default policy with one more rule (viewers may read service health) first: a second
/// valid document, without a JSON dependency in xtask.
pub(crate) fn with_extra_rule(base: &str) -> String {
    let rule = r#"{"id": "health-viewers", "subjects": {"groups": ["viewers"]}, "topics": ["celine/system/health/+"], "actions": ["subscribe", "read"]}"#;
    let start = base.find("\"rules\": [").expect("the default policy's rules list") + "\"rules\": [".len();
    format!("{}\n{rule},{}", &base[..start], &base[start..])
}
