//! The plugin's background work, off the broker thread: refreshing signing keys, pulling
//! policy bundles and answering Prometheus scrapes.
//!
//! None of it keeps a thread in the broker. In a process with a second thread, every socket
//! call of Mosquitto's event loop costs more (the kernel's file table is shared then, and
//! counted on every use: about 5–8% of a busy broker's throughput, measured in
//! `BENCHMARKS.md`), so the work is found from the broker's tick ([`Background::poll`], at
//! most every [`POLL_EVERY`]: a due refresh or pull, a key id a token named that the set lacks,
//! a scrape waiting on the metrics listener) and done on a thread that ends when nothing is
//! left to do. The async parts (key and bundle fetches) run on a current-thread tokio runtime
//! that such a thread drives. Dropping it stops the work in progress and joins the thread, so
//! nothing of the plugin runs once Mosquitto unloads it.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use identity::Verifier;
use policy_engine::pull::Puller;
use policy_engine::{Generation, Live};

use crate::stats::Stats;

/// How often the tick looks for work, at most.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long shutting down may wait for the blocking work of a fetch in flight.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Scrapes served per look at the listener, at most.
const SCRAPES_PER_POLL: usize = 8;
/// A scrape's request: its size and how long reading it and writing the answer may take.
const SCRAPE_REQUEST_BYTES: usize = 8 << 10;
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Scrapes waiting for the worker, at most: more wait in the listener's backlog.
const SCRAPES_QUEUED: usize = 8;

enum Job {
    /// A look at the watched policy and module files (`stat` off the broker thread: a hung
    /// network mount must not hang the broker).
    Files,
    /// The periodic key refresh.
    Keys,
    /// The refresh a token by an unknown key id asked for.
    KeysWanted,
    Pull,
    Scrape(TcpStream),
    /// A generation the broker thread held last: freeing its instances is left to this thread.
    Retire(Arc<Generation>),
    /// The connected clients a swap's revocation pass looked at: which of them the swap's
    /// changes reach is decided here.
    Identities(Arc<Live>, u64, Vec<policy_engine::Identity>),
}

/// What a worker thread shares with the tick.
struct Queue {
    jobs: VecDeque<Job>,
    /// A worker thread is running: it takes every job queued before it ends.
    working: bool,
}

/// The two lines of background work, each with its own worker thread: scrapes (`/metrics`,
/// `/readyz`, which a readiness probe asks within a second or two) never wait behind a key
/// fetch or a bundle pull that can take many seconds.
#[derive(Clone, Copy)]
enum Lane {
    Work = 0,
    Scrapes = 1,
}

impl Lane {
    fn of(job: &Job) -> Lane {
        if matches!(job, Job::Scrape(_)) { Lane::Scrapes } else { Lane::Work }
    }

    fn thread_name(self) -> &'static str {
        match self {
            Lane::Work => "mqtt-policy-bg",
            Lane::Scrapes => "mqtt-policy-scrape",
        }
    }
}

struct Shared {
    queues: [Mutex<Queue>; 2],
    /// Taken (and shut down) when the plugin goes.
    runtime: Option<tokio::runtime::Runtime>,
    /// Ends the job in progress when the plugin goes.
    stop: tokio::sync::Notify,
    stopping: std::sync::atomic::AtomicBool,
    verifier: Mutex<Option<Arc<Verifier>>>,
    reloader: Mutex<Option<Arc<policy_engine::Reloader>>>,
    puller: tokio::sync::Mutex<Option<Puller>>,
    metrics: Mutex<Option<(Arc<Stats>, Arc<Live>)>>,
}

/// When the next periodic work is due (touched by the tick only).
struct Schedule {
    last_poll: Instant,
    /// When the watched files were last looked at.
    last_files: Instant,
    /// The next periodic key refresh; its period is the verifier's
    /// ([`Verifier::next_refresh_in`]: shorter while there is no key).
    next_keys: Option<Instant>,
    next_pull: Option<(Instant, Duration)>,
    listener: Option<TcpListener>,
}

pub struct Background {
    shared: Arc<Shared>,
    schedule: Mutex<Schedule>,
    /// Each lane's worker thread, the last one started.
    workers: [Mutex<Option<JoinHandle<()>>>; 2],
}

impl Background {
    pub fn start() -> anyhow::Result<Background> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Blocking work (a bundle's build, name lookups) gets a thread that ends with it.
            .max_blocking_threads(2)
            .thread_keep_alive(Duration::from_millis(10))
            .thread_name("mqtt-policy-bg")
            .build()
            .context("starting the plugin's background runtime")?;
        Ok(Background {
            shared: Arc::new(Shared {
                queues: [Lane::Work, Lane::Scrapes]
                    .map(|_| Mutex::new(Queue { jobs: VecDeque::new(), working: false })),
                runtime: Some(runtime),
                stop: tokio::sync::Notify::new(),
                stopping: std::sync::atomic::AtomicBool::new(false),
                verifier: Mutex::new(None),
                reloader: Mutex::new(None),
                puller: tokio::sync::Mutex::new(None),
                metrics: Mutex::new(None),
            }),
            schedule: Mutex::new(Schedule {
                last_poll: Instant::now(),
                last_files: Instant::now(),
                next_keys: None,
                next_pull: None,
                listener: None,
            }),
            workers: [Mutex::new(None), Mutex::new(None)],
        })
    }

    /// Runs `f` to completion on the calling thread (start-up only).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.shared.runtime().block_on(f)
    }

    /// Pulls bundles with `puller` every `every`, the first one now.
    pub fn pull_every(&self, puller: Puller, every: Duration) {
        *self.shared.puller.blocking_lock() = Some(puller);
        lock(&self.schedule).next_pull = Some((Instant::now(), every));
    }

    /// Looks at `reloader`'s watched files every [`policy_engine::reload::POLL_EVERY`].
    pub fn watch_files(&self, reloader: &Arc<policy_engine::Reloader>) {
        *lock(&self.shared.reloader) = Some(Arc::clone(reloader));
    }

    /// Periodic key refreshes, and a refresh when a CONNECT names an unknown key id.
    pub fn refresh_keys(&self, verifier: &Arc<Verifier>) {
        *lock(&self.shared.verifier) = Some(Arc::clone(verifier));
        lock(&self.schedule).next_keys = Some(Instant::now() + verifier.next_refresh_in());
    }

    /// Serves `GET /metrics` and `GET /readyz` on `addr`; returns the bound address. Binding
    /// happens now, so a taken address stops the start with a clear message.
    pub fn serve_metrics(
        &self,
        addr: SocketAddr,
        stats: Arc<Stats>,
        live: Arc<Live>,
    ) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)
            .with_context(|| format!("plugin_opt_metrics_listen: cannot listen on {addr}"))?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?;
        *lock(&self.shared.metrics) = Some((stats, live));
        lock(&self.schedule).listener = Some(listener);
        Ok(bound)
    }

    /// From the broker's tick: finds due work and hands it to a worker thread. Cheap when
    /// nothing is due (a clock read at most every [`POLL_EVERY`]).
    pub fn poll(&self) {
        let Ok(mut s) = self.schedule.try_lock() else { return };
        if s.last_poll.elapsed() < POLL_EVERY {
            return;
        }
        let now = Instant::now();
        s.last_poll = now;
        let mut jobs = Vec::new();
        let queued_scrapes = lock(&self.shared.queues[Lane::Scrapes as usize]).jobs.len();
        if let Some(listener) = &s.listener {
            while jobs.len() < SCRAPES_PER_POLL.min(SCRAPES_QUEUED.saturating_sub(queued_scrapes)) {
                match listener.accept() {
                    Ok((stream, _)) => jobs.push(Job::Scrape(stream)),
                    Err(_) => break,
                }
            }
        }
        if let Some(v) = lock(&self.shared.verifier).as_ref()
            && v.take_refresh_wanted()
        {
            jobs.push(Job::KeysWanted);
        }
        if now.duration_since(s.last_files) >= policy_engine::reload::POLL_EVERY
            && lock(&self.shared.reloader).is_some()
        {
            s.last_files = now;
            jobs.push(Job::Files);
        }
        if let Some(due) = &mut s.next_keys
            && *due <= now
            && let Some(verifier) = lock(&self.shared.verifier).as_ref()
        {
            *due = now + verifier.next_refresh_in();
            jobs.push(Job::Keys);
        }
        if let Some((due, every)) = &mut s.next_pull
            && *due <= now
        {
            *due = now + *every;
            jobs.push(Job::Pull);
        }
        if !jobs.is_empty() {
            self.hand_over(jobs);
        }
    }

    /// Frees a generation off the broker thread.
    pub fn retire(&self, generation: Arc<Generation>) {
        self.hand_over(vec![Job::Retire(generation)]);
    }

    /// Reports which of the connected clients (as the last swap's pass found them) the
    /// swap's changes reach, off the broker thread.
    pub fn report_identities(
        &self,
        live: Arc<Live>,
        generation: u64,
        identities: Vec<policy_engine::Identity>,
    ) {
        self.hand_over(vec![Job::Identities(live, generation, identities)]);
    }

    fn hand_over(&self, jobs: Vec<Job>) {
        let mut woken = [false; 2];
        for job in jobs {
            let lane = Lane::of(&job);
            let mut queue = lock(&self.shared.queues[lane as usize]);
            // One of each periodic kind waits at most: a slow pull does not pile up more.
            let again = !matches!(job, Job::Scrape(_) | Job::Retire(_) | Job::Identities(..))
                && queue.jobs.iter().any(|q| std::mem::discriminant(q) == std::mem::discriminant(&job));
            if !again {
                queue.jobs.push_back(job);
                woken[lane as usize] = true;
            }
        }
        for lane in [Lane::Work, Lane::Scrapes] {
            if woken[lane as usize] {
                self.wake(lane);
            }
        }
    }

    /// Starts `lane`'s worker unless one is running (it takes what is queued).
    fn wake(&self, lane: Lane) {
        let mut queue = lock(&self.shared.queues[lane as usize]);
        if queue.working || self.shared.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        queue.working = true;
        drop(queue);
        let mut worker = lock(&self.workers[lane as usize]);
        // The previous worker found its queue empty before it ended.
        if let Some(done) = worker.take() {
            let _ = done.join();
        }
        let shared = Arc::clone(&self.shared);
        match std::thread::Builder::new().name(lane.thread_name().into()).spawn(move || shared.work(lane)) {
            Ok(handle) => *worker = Some(handle),
            Err(e) => {
                lock(&self.shared.queues[lane as usize]).working = false;
                tracing::error!(
                    "cannot start a thread for the plugin's background work ({e}); trying again at the next tick"
                );
            }
        }
    }
}

impl Shared {
    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("the runtime lives until the plugin goes")
    }

    /// Completes when the plugin goes (at once if it has).
    async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            notified.await;
        }
    }

    /// A lane's worker thread: takes its jobs until none is left, then ends.
    fn work(&self, lane: Lane) {
        let queue = &self.queues[lane as usize];
        // A worker whose job panics still lets the next poll start another.
        struct Done<'a>(&'a Mutex<Queue>);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    lock(self.0).working = false;
                }
            }
        }
        let _done = Done(queue);
        loop {
            let job = {
                let mut queue = lock(queue);
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        // Under the lock: a job queued from now on starts a worker of its own.
                        queue.working = false;
                        return;
                    }
                }
            };
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            match job {
                Job::Scrape(stream) => self.scrape(stream),
                Job::Retire(generation) => drop(generation),
                Job::Identities(live, generation, identities) => {
                    live.report_identities(generation, &identities)
                }
                Job::Files => {
                    let reloader = lock(&self.reloader).clone();
                    if let Some(r) = reloader {
                        r.poll_files();
                    }
                }
                job => self.runtime().block_on(async {
                    tokio::select! {
                        () = self.run(job) => {}
                        () = self.stopped() => {}
                    }
                }),
            }
        }
    }

    async fn run(&self, job: Job) {
        let verifier = lock(&self.verifier).clone();
        match (job, verifier) {
            (Job::Keys, Some(v)) => v.refresh_scheduled().await,
            (Job::KeysWanted, Some(v)) => v.refresh_wanted_now().await,
            (Job::Pull, _) => {
                if let Some(p) = self.puller.lock().await.as_mut() {
                    p.pull().await;
                }
            }
            _ => {}
        }
    }

    /// `GET /readyz`: 200 once there are signing keys to verify tokens with (the policy is
    /// live and passed its test cases before the listener opened), else 503 saying why:
    /// until then every token CONNECT is refused.
    fn readiness(&self, live: &Live) -> (&'static str, String) {
        let generation = live.current().id;
        match lock(&self.verifier).as_ref().map(|v| v.readiness()) {
            Some(Ok(keys)) => {
                ("200 OK", format!("ready: policy generation {generation}, signing keys {keys}\n"))
            }
            Some(Err(e)) => ("503 Service Unavailable", format!("not ready: {e}\n")),
            None => ("503 Service Unavailable", "not ready: starting\n".to_string()),
        }
    }

    /// Answers one scrape: `GET /metrics` or `GET /readyz`, else 404; the connection is closed
    /// after.
    fn scrape(&self, mut stream: TcpStream) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(SCRAPE_TIMEOUT));
        let _ = stream.set_write_timeout(Some(SCRAPE_TIMEOUT));
        let mut request = Vec::with_capacity(1024);
        let mut buf = [0u8; 1024];
        // A whole scrape gets SCRAPE_TIMEOUT, however slowly its client sends.
        let deadline = Instant::now() + SCRAPE_TIMEOUT;
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < SCRAPE_REQUEST_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let _ = stream.set_read_timeout(Some(left));
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let first_line = request.split(|b| *b == b'\n').next().unwrap_or_default();
        let asks = |path: &[u8]| {
            first_line
                .strip_prefix(b"GET ".as_slice())
                .and_then(|rest| rest.strip_prefix(path))
                .is_some_and(|after| after.first().is_some_and(|b| *b == b' ' || *b == b'?'))
        };
        let (status, body) = match lock(&self.metrics).as_ref() {
            Some((stats, live)) if asks(b"/metrics") => ("200 OK", stats.render_prometheus(live)),
            Some((_, live)) if asks(b"/readyz") => self.readiness(live),
            _ => ("404 Not Found", "not found: the plugin serves GET /metrics and GET /readyz\n".to_string()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body.as_bytes()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Background {
    fn drop(&mut self) {
        self.shared.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.shared.stop.notify_waiters();
        for worker in &self.workers {
            if let Some(w) = lock(worker).take() {
                let _ = w.join();
            }
        }
        // Blocking work in flight (a bundle's build) gets a bounded time.
        if let Some(runtime) = Arc::get_mut(&mut self.shared).and_then(|s| s.runtime.take()) {
            runtime.shutdown_timeout(SHUTDOWN_WAIT);
        }
    }
}
