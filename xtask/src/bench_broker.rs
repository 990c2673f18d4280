//! `cargo xtask bench-broker`: messages delivered per second through Mosquitto with the
//! plugin, beside Mosquitto with no authentication and Mosquitto's own `acl_file`, in the
//! same run, QoS 0 and QoS 1, several publishers and subscribers; and the plugin's cost per
//! check inside the broker (median, p99, from its own histogram). With
//! `MQTT_POLICY_BENCH_BASELINE`, another build of the plugin runs in the same rounds, so that
//! a change to the plugin is measured against what it changes, side by side.
//!
//! The load generator is a minimal MQTT 3.1.1 client on blocking sockets, one thread per
//! connection, so that the broker (one thread) and not the generator is what is measured:
//! publishers write pre-encoded PUBLISH packets as fast as the socket takes them (QoS 1: in
//! windows of acknowledged packets), subscribers count deliveries (QoS 1: acknowledging
//! each). Every run is bounded in messages and time.
//!
//! The generator's readers ask the kernel to wake them only once a batch of bytes waits
//! ([`woken_in_batches`]). Otherwise the broker, on loopback, pays for waking a reader thread
//! on the other CPU with almost every delivery: on this kind of virtual machine such a
//! wakeup costs more than the broker's own work for the delivery, and whether readers sleep
//! depends on how fast the broker is, so a slightly slower broker woke them more often and
//! throughput flipped between two regimes from round to round. A broker's subscribers are
//! on other machines; their wakeups are not the broker's cost.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::{cargo, root, step, target_dir};

const PUBLISHERS: usize = 4;
const SUBSCRIBERS: usize = 4;
/// Messages published but not yet read by every subscriber, at most (all publishers).
const IN_FLIGHT: u64 = 2_000;
/// QoS 1 publishes a publisher may have unacknowledged.
const QOS1_WINDOW: usize = 256;
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// A subscriber is woken once this many bytes wait for it (about 180 deliveries), or
/// after [`READ_TICK`].
const SUBSCRIBER_BATCH: i32 = 16 << 10;
/// The same at QoS 1, where the broker sends a subscriber at most `max_inflight_messages`
/// (100) unacknowledged deliveries, about 8 KB: half of that, so the broker's window, not
/// the tick, sets the pace.
const QOS1_SUBSCRIBER_BATCH: i32 = 4 << 10;
/// A QoS 1 publisher's acknowledgement reader is woken once this many bytes wait (64
/// PUBACKs, a quarter of its window), or after [`READ_TICK`].
const PUBACK_BATCH: i32 = 256;
/// How long a reader waits for a batch before it takes what there is (the kernel rounds it
/// up to its timer tick: 4 ms at 250 Hz).
const READ_TICK: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    NoAuth,
    AclFile,
    Plugin,
    /// The plugin as another build (`MQTT_POLICY_BENCH_BASELINE`), with the same policy and
    /// clients: a change to the plugin measured against what it changes, in the same rounds.
    Baseline,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::NoAuth => "no authentication",
            Mode::AclFile => "Mosquitto acl_file",
            Mode::Plugin => "mqtt-policy plugin",
            Mode::Baseline => "plugin, baseline build",
        }
    }
}

/// What the publishers publish on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Topics {
    /// Each publisher on its own topic: the plugin's decision cache answers deliveries.
    Hot,
    /// A new topic for every message: no check is answered by a decision cache.
    EveryMessageNew,
    /// Fan-in: the publishers take turns over [`DEVICES`] device topics
    /// (`bench/telemetry/<type>/<device>/readings`, more than a connection's decision cache
    /// holds), the subscribers are on one wildcard filter over all of them.
    FanIn,
}

/// Distinct device topics of the fan-in scenario.
const DEVICES: usize = 12_000;

impl Topics {
    /// What the subscribers subscribe to.
    fn filter(self) -> &'static str {
        match self {
            Topics::Hot | Topics::EveryMessageNew => "bench/#",
            Topics::FanIn => "bench/telemetry/+/+/readings",
        }
    }

    /// The topic of publisher `publisher`'s message `n`.
    fn topic(self, publisher: usize, n: usize) -> String {
        match self {
            Topics::Hot => format!("bench/pump/p{publisher}"),
            Topics::EveryMessageNew => format!("bench/pump/p{publisher}/{n}"),
            Topics::FanIn => {
                let device = (n * PUBLISHERS + publisher) % DEVICES;
                format!("bench/telemetry/meter-type-{}/device-{device}/readings", device % 8)
            }
        }
    }
}

// ---- a minimal MQTT 3.1.1 client -------------------------------------------------------

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    remaining_length(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn connect_packet(id: &str, credentials: Option<(&str, &str)>) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(4);
    body.push(0x02 | if credentials.is_some() { 0xC0 } else { 0 });
    body.extend_from_slice(&60u16.to_be_bytes());
    string(id.as_bytes(), &mut body);
    if let Some((u, p)) = credentials {
        string(u.as_bytes(), &mut body);
        string(p.as_bytes(), &mut body);
    }
    packet(0x10, &body)
}

fn publish_packet(topic: &str, qos: u8, pid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pid.to_be_bytes());
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

/// Reads one packet: (first byte, body).
fn read_packet(r: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    r.read_exact(&mut first)?;
    let (mut len, mut shift) = (0usize, 0);
    loop {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        len |= ((b[0] & 0x7f) as usize) << shift;
        if b[0] & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((first[0], body))
}

fn connect(port: u16, id: &str, credentials: Option<(&str, &str)>) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("{id}: connecting"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(RUN_LIMIT))?;
    s.write_all(&connect_packet(id, credentials))?;
    let (first, body) = read_packet(&mut s)?;
    if first != 0x20 || body.get(1) != Some(&0) {
        bail!("{id}: CONNACK {first:#x} {body:?} (refused)");
    }
    Ok(s)
}

/// A reader of `stream` that the kernel wakes once `batch` bytes wait or [`READ_TICK`]
/// passed (`SO_RCVLOWAT` and a receive timeout), and that keeps waiting through those
/// ticks until [`RUN_LIMIT`].
fn woken_in_batches(stream: TcpStream, batch: i32) -> anyhow::Result<Batched> {
    use std::os::fd::AsRawFd;
    // No crate in the tree binds SO_RCVLOWAT, so this one call goes through libc.
    // SAFETY: a valid socket descriptor and an int option of the size given.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const batch).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_RCVLOWAT on a reader's socket");
    }
    stream.set_read_timeout(Some(READ_TICK))?;
    Ok(Batched { stream, deadline: Instant::now() + RUN_LIMIT })
}

struct Batched {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for Batched {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                        && Instant::now() < self.deadline => {}
                result => return result,
            }
        }
    }
}

struct Client {
    id: String,
    credentials: Option<(String, String)>,
}

/// One run: subscribers first, then all publishers at once; deliveries counted until all
/// arrived or the time limit. Returns (deliveries, seconds from the first publish to the
/// last delivery).
fn run(
    port: u16,
    qos: u8,
    per_publisher: usize,
    topics: Topics,
    pubs: &[Client],
    subs: &[Client],
) -> anyhow::Result<(u64, f64)> {
    let expected = (per_publisher * pubs.len()) as u64;
    // Closed loop: publishers stay at most IN_FLIGHT messages ahead of the slowest reader, so
    // no queue grows without bound and the broker's pace, not its memory, is measured.
    let published = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(subs.len() + pubs.len() + 1));
    let start = Arc::new(Barrier::new(pubs.len() + 1));
    let mut sub_threads = Vec::new();
    for c in subs {
        let mut s = connect(port, &c.id, c.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())))?;
        let mut body = Vec::new();
        body.extend_from_slice(&1u16.to_be_bytes());
        string(topics.filter().as_bytes(), &mut body);
        body.push(qos);
        s.write_all(&packet(0x82, &body))?;
        let (first, ack) = read_packet(&mut s)?;
        if first != 0x90 || ack.get(2).is_none_or(|c| *c >= 0x80) {
            bail!("{}: SUBACK {ack:?} (refused)", c.id);
        }
        let (ready, delivered) = (Arc::clone(&ready), Arc::clone(&delivered));
        sub_threads.push(std::thread::spawn(move || -> anyhow::Result<(u64, Instant)> {
            ready.wait();
            let mut w = BufWriter::with_capacity(1 << 14, s.try_clone()?);
            let batch = if qos == 1 { QOS1_SUBSCRIBER_BATCH } else { SUBSCRIBER_BATCH };
            let mut r = BufReader::with_capacity(1 << 16, woken_in_batches(s, batch)?);
            let (mut n, mut last) = (0u64, Instant::now());
            while n < expected {
                // Acknowledgements go out in batches, before the reader would wait.
                if r.buffer().is_empty() {
                    w.flush()?;
                }
                let (first, body) = match read_packet(&mut r) {
                    Ok(p) => p,
                    Err(_) => break,
                };
                if first & 0xF0 == 0x30 {
                    n += 1;
                    delivered.fetch_add(1, Ordering::Relaxed);
                    last = Instant::now();
                    if (first >> 1) & 3 == 1 {
                        let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                        w.write_all(&packet(0x40, &body[2 + tl..4 + tl]))?;
                    }
                }
            }
            w.flush()?;
            Ok((n, last))
        }));
    }
    let mut pub_threads = Vec::new();
    for (i, c) in pubs.iter().enumerate() {
        let s = connect(port, &c.id, c.credentials.as_ref().map(|(u, p)| (u.as_str(), p.as_str())))?;
        let (ready, start) = (Arc::clone(&ready), Arc::clone(&start));
        let (published, delivered) = (Arc::clone(&published), Arc::clone(&delivered));
        let readers = subs.len() as u64;
        pub_threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let hot = topics.topic(i, 0);
            let payload = [b'x'; 64];
            ready.wait();
            start.wait();
            // QoS 1: a reader counts PUBACKs; the writer keeps at most QOS1_WINDOW unacknowledged.
            let acked = Arc::new(AtomicUsize::new(0));
            let reader = if qos == 1 {
                let mut r = BufReader::new(woken_in_batches(s.try_clone()?, PUBACK_BATCH)?);
                let acked = Arc::clone(&acked);
                Some(std::thread::spawn(move || {
                    while acked.load(Ordering::Relaxed) < per_publisher && read_packet(&mut r).is_ok() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }))
            } else {
                None
            };
            let mut w = BufWriter::with_capacity(1 << 16, s);
            for n in 0..per_publisher {
                let topic = if topics == Topics::Hot { hot.clone() } else { topics.topic(i, n) };
                if published.load(Ordering::Relaxed) * readers
                    >= delivered.load(Ordering::Relaxed) + IN_FLIGHT * readers
                {
                    w.flush()?;
                    while published.load(Ordering::Relaxed) * readers
                        >= delivered.load(Ordering::Relaxed) + IN_FLIGHT * readers
                    {
                        std::thread::yield_now();
                    }
                }
                w.write_all(&publish_packet(&topic, qos, (n % 60_000 + 1) as u16, &payload))?;
                published.fetch_add(1, Ordering::Relaxed);
                if qos == 1 && n + 1 - acked.load(Ordering::Relaxed) >= QOS1_WINDOW {
                    w.flush()?;
                    while n + 1 - acked.load(Ordering::Relaxed) >= QOS1_WINDOW {
                        std::thread::yield_now();
                    }
                }
            }
            w.flush()?;
            if let Some(r) = reader {
                r.join().map_err(|_| anyhow::anyhow!("a PUBACK reader panicked"))?;
            }
            Ok(())
        }));
    }
    ready.wait();
    let began = Instant::now();
    start.wait();
    for t in pub_threads {
        t.join().map_err(|_| anyhow::anyhow!("a publisher panicked"))??;
    }
    let mut delivered = 0;
    let mut last = began;
    for t in sub_threads {
        let (n, l) = t.join().map_err(|_| anyhow::anyhow!("a subscriber panicked"))??;
        delivered += n;
        last = last.max(l);
    }
    Ok((delivered, last.duration_since(began).as_secs_f64()))
}

// ---- brokers ------------------------------------------------------------------------------

struct Broker {
    child: Child,
    port: u16,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The plugin builds a run loads: this checkout's, and the baseline's if one is named.
struct Plugins {
    built: PathBuf,
    baseline: Option<PathBuf>,
}

impl Plugins {
    fn baseline(&self) -> anyhow::Result<&PathBuf> {
        self.baseline.as_ref().context("no baseline build (MQTT_POLICY_BENCH_BASELINE)")
    }
}

fn start_broker(
    dir: &Path,
    mode: Mode,
    plugins: &Plugins,
    state: &Path,
    metrics_port: u16,
) -> anyhow::Result<Broker> {
    let port = free_port()?;
    // Same queues for every mode: nothing dropped, so every run can count all deliveries.
    let mut conf = format!(
        "listener {port} 127.0.0.1\npersistence false\nmax_queued_messages 0\nmax_inflight_messages 100\n\
         log_dest none\nuser root\n"
    );
    match mode {
        Mode::NoAuth => conf.push_str("allow_anonymous true\n"),
        Mode::AclFile => {
            let acl = dir.join("acl");
            std::fs::write(&acl, "# anonymous clients\ntopic readwrite bench/#\n")?;
            conf.push_str(&format!("allow_anonymous true\nacl_file {}\n", acl.display()));
        }
        Mode::Plugin | Mode::Baseline => {
            let plugin = if mode == Mode::Plugin { &plugins.built } else { plugins.baseline()? };
            let policy = root().join("mosquitto-plugin/tests/e2e/policy.json");
            let bench_policy = dir.join("policy.json");
            // The e2e policy, with the twin-event rules on the bench's topics.
            std::fs::write(
                &bench_policy,
                std::fs::read_to_string(&policy)?.replace("celine/digital-twin/events/#", "bench/#"),
            )?;
            conf.push_str(&format!(
                "allow_anonymous false\nplugin {}\nplugin_opt_policy {}\nplugin_opt_dev true\nplugin_opt_state_dir {}\n\
                 plugin_opt_metrics_listen 127.0.0.1:{metrics_port}\nplugin_opt_sys_interval 0\n",
                plugin.display(),
                bench_policy.display(),
                state.display()
            ));
        }
    }
    let conf_path = dir.join(format!("{mode:?}.conf"));
    std::fs::write(&conf_path, conf)?;
    // The broker on CPU 0 (the plugin's threads with it), the load generator on the others:
    // the broker, not the scheduler's mood, is what is measured.
    let child = Command::new("taskset")
        .args(["-c", "0", "mosquitto", "-c"])
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting mosquitto")?;
    let mut broker = Broker { child, port };
    let started = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("mosquitto ({}) did not start listening", mode.label());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A broker at rest is what is measured: the plugin's start-up work (the policy module's
    // epoch ticker, which ends a quarter of a second after the module last ran) happens
    // once in a broker's life, and while it lasts the broker is a process of two threads,
    // whose every socket call costs more (the file table is shared). Runs of a second would
    // carry it into the plugin's ratio. Mosquitto loads its plugins before it opens its
    // listeners, so that work has begun by now.
    loop {
        let running = threads(broker.child.id())?;
        if running <= 1 {
            break;
        }
        if let Some(status) = broker.child.try_wait()? {
            bail!("mosquitto ({}) exited ({status}) before its first run", mode.label());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "mosquitto ({}) still runs {running} threads a minute after it started: the plugin's \
                 start-up work has not ended (a benchmark measures a broker at rest)",
                mode.label()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(broker)
}

/// The threads process `pid` runs now.
fn threads(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/task")).context("listing the broker's threads")?.count())
}

fn token(bin: &Path, state: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(["token", "--dev", "--ttl", "2h", "--state-dir"])
        .arg(state)
        .args(args)
        .output()
        .context("minting a dev token")?;
    if !out.status.success() {
        bail!("mqtt-policy token: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

/// The plugin's check latency quantile `q` (ns), from its Prometheus histogram.
fn check_quantile(metrics: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("mqtt_policy_check_duration_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, count) = l.split_once("\"} ")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    let want = (total * q).ceil();
    buckets.iter().find(|(_, c)| *c >= want).map(|(le, _)| le * 1e9)
}

fn scrape(port: u16) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

pub fn bench() -> anyhow::Result<()> {
    let plugins = Plugins {
        built: target_dir().join("release/libmqtt_policy_mosquitto.so"),
        baseline: baseline_plugin()?,
    };
    let modes = modes(plugins.baseline.is_some())?;
    if plugins.baseline.is_some() && !modes.contains(&Mode::Baseline) {
        println!("   MQTT_POLICY_BENCH_MODES leaves the baseline build out: no table against it");
    }
    crate::apt::ensure_mosquitto()?;
    crate::build()?;
    step("release builds: the plugin and mqtt-policy (for dev tokens)");
    cargo(&["build", "--release", "-p", "mosquitto-plugin", "-p", "mqtt-policy"])?;
    let bin = target_dir().join("release/mqtt-policy");
    let dir = tempdir()?;
    let state = dir.join("state");
    let svc: Vec<Client> = (0..PUBLISHERS)
        .map(|i| -> anyhow::Result<Client> {
            let t = token(&bin, &state, &["--client-id", "svc-digital-twin", "--scopes", "mqtt.write"])?;
            Ok(Client { id: format!("pub-{i}"), credentials: Some(("svc-digital-twin".into(), t)) })
        })
        .collect::<anyhow::Result<_>>()?;
    let editors: Vec<Client> = (0..SUBSCRIBERS)
        .map(|i| -> anyhow::Result<Client> {
            let t = token(&bin, &state, &["--sub", &format!("editor-{i}"), "--groups", "editors"])?;
            Ok(Client { id: format!("sub-{i}"), credentials: Some((format!("editor-{i}"), t)) })
        })
        .collect::<anyhow::Result<_>>()?;
    let anonymous = |prefix: &str, n: usize| -> Vec<Client> {
        (0..n).map(|i| Client { id: format!("{prefix}-{i}"), credentials: None }).collect()
    };
    let (anon_pubs, anon_subs) = (anonymous("pub", PUBLISHERS), anonymous("sub", SUBSCRIBERS));
    // Messages per publisher: runs of about a second each, QoS 1's a little shorter (see
    // `rounds`).
    let scenarios: [(u8, usize, Topics, &str); 4] = [
        (0, 12_500, Topics::Hot, "QoS 0"),
        (1, 8_000, Topics::Hot, "QoS 1"),
        (0, 12_500, Topics::EveryMessageNew, "QoS 0, a new topic per message"),
        (0, 12_500, Topics::FanIn, "QoS 0, fan-in: 12,000 device topics, one wildcard subscription"),
    ];
    pin_generator()?;
    let rounds = rounds();
    println!(
        "\n{PUBLISHERS} publishers, {SUBSCRIBERS} subscribers (each receives every message), 64-byte payloads; \
         {rounds} rounds, modes interleaved; deliveries/s per run"
    );
    let mut table = Vec::new();
    // `MQTT_POLICY_BENCH_ONLY=<part of a scenario's name>` runs only those (for profiling).
    let only = std::env::var("MQTT_POLICY_BENCH_ONLY").ok();
    for (qos, per_pub, topics, name) in scenarios {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let expected = (per_pub * PUBLISHERS * SUBSCRIBERS) as u64;
        step(&format!("{name}: {expected} deliveries per run"));
        let mut rates: Vec<(Mode, Vec<(f64, f64)>)> = modes.iter().map(|m| (*m, vec![])).collect();
        let mut latency = (None, None);
        for round in 0..rounds {
            for at in run_order(round, rates.len()) {
                let (mode, got) = &mut rates[at];
                let mode = *mode;
                let metrics_port = free_port()?;
                let broker = start_broker(&dir, mode, &plugins, &state, metrics_port)?;
                let (pubs, subs) = if matches!(mode, Mode::Plugin | Mode::Baseline) {
                    (&svc[..], &editors[..])
                } else {
                    (&anon_pubs[..], &anon_subs[..])
                };
                let cpu_before = cpu_seconds(broker.child.id())?;
                let (delivered, secs) = run(broker.port, qos, per_pub, topics, pubs, subs)?;
                let cpu = cpu_seconds(broker.child.id())? - cpu_before;
                if delivered < expected {
                    bail!("{}: only {delivered} of {expected} deliveries within {RUN_LIMIT:?}", mode.label());
                }
                let rate = delivered as f64 / secs;
                let cpu_us = cpu * 1e6 / delivered as f64;
                let mut line = format!(
                    "   round {}: {:<22} {:>9.0} deliveries/s ({secs:.2} s), broker CPU {cpu_us:.2} µs per delivery",
                    round + 1,
                    mode.label(),
                    rate
                );
                if mode == Mode::Plugin {
                    let m = scrape(metrics_port)?;
                    let checks: f64 = m
                        .lines()
                        .filter(|l| l.starts_with("mqtt_policy_decisions_total{"))
                        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .sum();
                    line.push_str(&format!(", {:.2} checks per delivery", checks / delivered as f64));
                    if round + 1 == rounds {
                        latency = (check_quantile(&m, 0.5), check_quantile(&m, 0.99));
                    }
                }
                println!("{line}");
                got.push((rate, cpu_us));
                drop(broker);
            }
        }
        table.push((name, rates, latency));
    }
    println!(
        "\nMedians over the rounds. Throughput in deliveries/s; a ratio is the median of the rounds' own \
         ratios (each round runs the modes back to back), with their range and the half-width of a 90% \
         bootstrap interval of that median; cost in broker CPU time per delivery (its thread and the \
         plugin's, on CPU 0).\n"
    );
    println!(
        "| scenario | no auth | acl_file | plugin | acl_file / no auth | **plugin / no auth** (rounds' range; ± median) | CPU µs/delivery: no auth, acl_file, plugin | plugin check p50 | p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut baseline_lines = Vec::new();
    for (name, rates, (p50, p99)) in &table {
        let runs = |m: Mode| rates.iter().find(|(x, _)| *x == m).map(|(_, v)| v.as_slice());
        let rate = |m| runs(m).map(|v| median(v.iter().map(|r| r.0).collect()));
        let cpu = |m| {
            runs(m)
                .map(|v| format!("{:.2}", median(v.iter().map(|r| r.1).collect())))
                .unwrap_or_else(|| "-".into())
        };
        let shown = |v: Option<f64>| v.map(|r| format!("{r:.0}/s")).unwrap_or_else(|| "-".into());
        let ratio = |m: Mode, against: Mode, bold: bool| match (runs(m), runs(against)) {
            (Some(a), Some(b)) => {
                let per_round: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.0 / b.0).collect();
                let (lo, hi) =
                    per_round.iter().fold((f64::MAX, f64::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
                let m = median(per_round.clone());
                let stars = if bold { "**" } else { "" };
                format!("{stars}{m:.2}{stars} ({lo:.2}–{hi:.2}; ±{:.2})", bootstrap_half_width(&per_round))
            }
            _ => "-".into(),
        };
        let ns = |v: &Option<f64>| v.map(|n| format!("≤ {n:.0} ns")).unwrap_or_else(|| "-".into());
        println!(
            "| {name} | {} | {} | {} | {} | {} | {}, {}, {} | {} | {} |",
            shown(rate(Mode::NoAuth)),
            shown(rate(Mode::AclFile)),
            shown(rate(Mode::Plugin)),
            ratio(Mode::AclFile, Mode::NoAuth, false),
            ratio(Mode::Plugin, Mode::NoAuth, true),
            cpu(Mode::NoAuth),
            cpu(Mode::AclFile),
            cpu(Mode::Plugin),
            ns(p50),
            ns(p99)
        );
        if runs(Mode::Baseline).is_some() {
            baseline_lines.push(format!(
                "| {name} | {} | {} | {}, {} |",
                ratio(Mode::Plugin, Mode::Baseline, true),
                ratio(Mode::Baseline, Mode::NoAuth, false),
                cpu(Mode::Plugin),
                cpu(Mode::Baseline)
            ));
        }
    }
    if !baseline_lines.is_empty() {
        println!(
            "\nThis build against the baseline build ({}), in the same rounds:\n",
            plugins.baseline()?.display()
        );
        println!(
            "| scenario | **plugin / baseline build** (rounds' range; ± median) | baseline build / no auth | CPU µs/delivery: plugin, baseline build |"
        );
        println!("|---|---|---|---|");
        for line in baseline_lines {
            println!("{line}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Half the width of the 90% bootstrap interval of the median of `xs` (2,000 resamples with a
/// fixed seed): how far the median could be expected to move in another run of as many
/// rounds on the same machine.
fn bootstrap_half_width(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return f64::NAN;
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut medians: Vec<f64> = (0..2_000)
        .map(|_| median((0..xs.len()).map(|_| xs[(next() % xs.len() as u64) as usize]).collect()))
        .collect();
    medians.sort_by(f64::total_cmp);
    (medians[1_899] - medians[100]) / 2.0
}

/// CPU time (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat =
        std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading the broker's CPU time")?;
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let fields: Vec<&str> = stat[stat.rfind(')').context("/proc stat")? + 2..].split(' ').collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// Keeps this process (the load generator: its threads inherit it) off CPU 0, the broker's.
fn pin_generator() -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus < 2 {
        bail!("bench-broker needs 2 CPUs or more: one for the broker, the rest for the load");
    }
    let rest = if cpus == 2 { "1".to_string() } else { format!("1-{}", cpus - 1) };
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &rest, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("cannot run taskset (util-linux)")?;
    if !status.success() {
        bail!("taskset failed ({status})");
    }
    println!("   broker pinned to CPU 0, load generator to CPU {rest}");
    Ok(())
}

/// Rounds of every mode (`MQTT_POLICY_BENCH_ROUNDS` overrides, e.g. 1 for a profile).
///
/// On a shared machine a run's speed is set as much by its neighbours as by the broker. A
/// short run is noisier than a long one, but many short rounds give a median ratio at least
/// as narrow as a few long ones (BENCHMARKS.md, *Rounds*, has the figures). 48 is a whole
/// number of [`run_order`]'s cycles for two, three and four modes.
fn rounds() -> usize {
    std::env::var("MQTT_POLICY_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(48)
}

/// The order a round runs `n` modes in: rounds go in pairs, the second of a pair the first
/// backwards, and each pair starts one mode further on. A mode that always ran in the same
/// place of a round, or always right after another, would carry what that place costs (a
/// neighbour's load that comes and goes with the rounds' rhythm, the previous broker's last
/// work) into its ratio; over `2n` rounds every mode runs in every place twice, and before
/// every other mode in half the rounds (not right after every other: with four modes, a mode
/// never directly follows the one two places from it).
fn run_order(round: usize, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).map(|i| (i + round / 2) % n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// The modes to run: all (the baseline build only when one is named), or those named in
/// `MQTT_POLICY_BENCH_MODES` (`noauth,acl,plugin,baseline`), e.g. to profile one of them.
fn modes(baseline: bool) -> anyhow::Result<Vec<Mode>> {
    let Some(list) = std::env::var_os("MQTT_POLICY_BENCH_MODES") else {
        let mut all = vec![Mode::NoAuth, Mode::AclFile, Mode::Plugin];
        all.extend(baseline.then_some(Mode::Baseline));
        return Ok(all);
    };
    let list = list.to_str().context("MQTT_POLICY_BENCH_MODES is not UTF-8")?;
    let mut modes = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let mode = match name {
            "noauth" => Mode::NoAuth,
            "acl" => Mode::AclFile,
            "plugin" => Mode::Plugin,
            "baseline" if baseline => Mode::Baseline,
            "baseline" => {
                bail!("MQTT_POLICY_BENCH_MODES names baseline, but MQTT_POLICY_BENCH_BASELINE names no build")
            }
            other => bail!("MQTT_POLICY_BENCH_MODES: no mode {other:?} (noauth, acl, plugin, baseline)"),
        };
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        bail!("MQTT_POLICY_BENCH_MODES names no mode (noauth, acl, plugin, baseline)");
    }
    Ok(modes)
}

/// `MQTT_POLICY_BENCH_BASELINE=<a libmqtt_policy_mosquitto.so>`: another build of the plugin to
/// run beside this one (copy the release build aside before a change, then measure the change
/// against it in the same run).
fn baseline_plugin() -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = std::env::var_os("MQTT_POLICY_BENCH_BASELINE").map(PathBuf::from) else {
        return Ok(None);
    };
    let path = std::fs::canonicalize(&path)
        .with_context(|| format!("MQTT_POLICY_BENCH_BASELINE={}: no such plugin build", path.display()))?;
    if !path.is_file() {
        bail!("MQTT_POLICY_BENCH_BASELINE={}: not a file (a libmqtt_policy_mosquitto.so)", path.display());
    }
    if path
        == std::fs::canonicalize(target_dir().join("release/libmqtt_policy_mosquitto.so")).unwrap_or_default()
    {
        bail!(
            "MQTT_POLICY_BENCH_BASELINE names the build this run makes ({}): copy it aside first, then change the plugin",
            path.display()
        );
    }
    Ok(Some(path))
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mqtt-policy-bench-broker-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::run_order;

    #[test]
    fn every_mode_runs_in_every_place_and_before_every_other_alike() {
        for n in 1..=4 {
            let orders: Vec<Vec<usize>> = (0..2 * n).map(|round| run_order(round, n)).collect();
            for mode in 0..n {
                for place in 0..n {
                    let times = orders.iter().filter(|o| o[place] == mode).count();
                    assert_eq!(times, 2, "{n} modes: mode {mode} in place {place} {times} times");
                }
                for other in (0..n).filter(|o| *o != mode) {
                    let first = orders
                        .iter()
                        .filter(|o| o.iter().position(|m| *m == mode) < o.iter().position(|m| *m == other))
                        .count();
                    assert_eq!(
                        first, n,
                        "{n} modes: mode {mode} ran first against {other} in {first} rounds"
                    );
                }
            }
        }
    }
}
