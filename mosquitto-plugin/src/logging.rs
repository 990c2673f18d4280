//! The plugin logs through Mosquitto's own log (`log_dest`, `log_type`), like the broker's
//! own lines, prefixed `mqtt-policy:`.
//!
//! Mosquitto's log function may publish to `$SYS/broker/log/...`, which is only safe on the
//! broker thread. So a line logged on the broker thread goes out at once, and a line logged
//! elsewhere (a reload building a candidate, a key refresh) waits in a bounded queue that the
//! broker thread empties at its next event (a tick only at its timed work, every 10 ms; ACL
//! checks at most once a second). Levels map onto Mosquitto's: error, warning, information
//! (info) and debug; `plugin_opt_log_level` drops finer lines before they are formatted, so
//! debug audit lines cost nothing unless asked for.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::ThreadId;

use tracing::Level;

use crate::broker::Broker;
use crate::options::LogLevel;

/// Lines logged off the broker thread that may wait for it.
const QUEUE_LIMIT: usize = 10_000;

struct Sink {
    broker: Arc<dyn Broker>,
    thread: ThreadId,
}

static SINK: RwLock<Option<Sink>> = RwLock::new(None);
static QUEUE: Mutex<VecDeque<(Level, String)>> = Mutex::new(VecDeque::new());
static PENDING: AtomicBool = AtomicBool::new(false);
static DROPPED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set while a line is being handed to the broker. Mosquitto may publish it (`log_dest
    /// topic`), which asks the plugin to check deliveries, which may log: such a line waits in
    /// the queue instead of recursing into the broker's log (which would never end).
    static IN_BROKER_LOG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Hands one line to the broker, unless that is already under way on this thread.
fn to_broker(sink: &Sink, level: Level, line: String) -> Option<(Level, String)> {
    if IN_BROKER_LOG.with(|f| f.replace(true)) {
        return Some((level, line));
    }
    sink.broker.log(level, &line);
    IN_BROKER_LOG.with(|f| f.set(false));
    None
}

/// Sends log lines to `broker`, which is called on the current thread (the broker thread).
/// The subscriber is process-wide: the first call sets the level.
pub fn start(broker: Arc<dyn Broker>, level: LogLevel) {
    *SINK.write().unwrap_or_else(|p| p.into_inner()) =
        Some(Sink { broker, thread: std::thread::current().id() });
    let max = match level {
        LogLevel::Error => Level::ERROR,
        LogLevel::Warn => Level::WARN,
        LogLevel::Info => Level::INFO,
        LogLevel::Debug => Level::DEBUG,
    };
    let subscriber = tracing_subscriber::fmt()
        .without_time()
        .with_ansi(false)
        .with_target(false)
        .with_level(false)
        .with_max_level(max)
        .with_writer(MakeLine)
        .finish();
    // Already set by an earlier instance (one per listener): that one serves.
    let _ = tracing::subscriber::set_global_default(subscriber);
}

/// Stops sending to the broker (at cleanup: the broker may be going away). Later lines are
/// dropped.
pub fn stop() {
    flush();
    *SINK.write().unwrap_or_else(|p| p.into_inner()) = None;
}

/// Sends the lines other threads logged; call on the broker thread.
#[inline]
pub fn flush() {
    // A plain load first: this runs at nearly every event, and nearly always finds nothing.
    if PENDING.load(Ordering::Relaxed) && PENDING.swap(false, Ordering::Acquire) {
        send_pending();
    }
}

#[cold]
#[inline(never)]
fn send_pending() {
    let lines: Vec<(Level, String)> = QUEUE.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
    let sink = SINK.read().unwrap_or_else(|p| p.into_inner());
    let Some(sink) = sink.as_ref() else { return };
    let mut again = Vec::new();
    for (level, line) in lines {
        again.extend(to_broker(sink, level, line));
    }
    let dropped = DROPPED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let line = format!("mqtt-policy: {dropped} log lines were dropped (the broker thread was busy)");
        again.extend(to_broker(sink, Level::WARN, line));
    }
    for (level, line) in again {
        queue(level, line);
    }
}

fn queue(level: Level, line: String) {
    let mut queue = QUEUE.lock().unwrap_or_else(|p| p.into_inner());
    if queue.len() >= QUEUE_LIMIT {
        DROPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    queue.push_back((level, line));
    PENDING.store(true, Ordering::Release);
}

fn emit(level: Level, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    let line = format!("mqtt-policy: {}", text.trim_end());
    let guard = SINK.read().unwrap_or_else(|p| p.into_inner());
    let Some(sink) = guard.as_ref() else { return };
    let waiting = if std::thread::current().id() == sink.thread {
        to_broker(sink, level, line)
    } else {
        Some((level, line))
    };
    drop(guard);
    if let Some((level, line)) = waiting {
        queue(level, line);
    }
}

struct MakeLine;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeLine {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { level: Level::INFO, line: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter { level: *meta.level(), line: Vec::new() }
    }
}

/// Collects one formatted event; sends it when dropped.
struct LineWriter {
    level: Level,
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            emit(self.level, &self.line);
        }
    }
}
