//! Log lines (audit lines included) written off the request path.
//!
//! A request formats its line and appends it to a byte-bounded queue; one thread writes the
//! queue to standard error, many lines per `write`: it gathers lines for up to
//! [`FLUSH_EVERY`] (less when the queue fills past half its budget), so a busy service wakes it
//! a few times a second rather than once per line. When the queue holds its budget (standard
//! error is slow, a pipe nobody reads, a disk that stalls), new lines are dropped and counted
//! (`mqtt_policy_log_lines_dropped_total`, and one line saying how many once the writer
//! catches up): a request never waits for the log. Dropping the [`LogQueue`] flushes it.

use std::cell::RefCell;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest a line waits in the queue while the service is busy.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

struct State {
    pending: Vec<u8>,
    /// Lines dropped since the writer last said so.
    dropped: u64,
    closed: bool,
    /// The writer thread waits for a first line (the queue was empty).
    idle: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    budget: usize,
    /// Past this many queued bytes the writer thread is woken early.
    high_water: usize,
    dropped_total: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `lines` whole lines at once, or counts them dropped when they do not fit.
    fn append(&self, bytes: &[u8], lines: u64) {
        let mut st = self.lock();
        if st.pending.len() + bytes.len() > self.budget {
            st.dropped += lines;
            self.dropped_total.fetch_add(lines, Ordering::Relaxed);
        } else {
            let before = st.pending.len();
            st.pending.extend_from_slice(bytes);
            // Wake the writer for a first line, and once when the queue passes its high water.
            let wake = st.idle || (before < self.high_water && st.pending.len() >= self.high_water);
            drop(st);
            if wake {
                self.wake.notify_one();
            }
        }
    }
}

/// The queue and its writer thread; dropping it writes what is queued and stops the thread.
pub struct LogQueue {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Appends whole lines to the queue (`tracing_subscriber` writes one event per `write`).
#[derive(Clone)]
pub struct QueueWriter(Arc<Shared>);

impl LogQueue {
    /// A queue of at most `budget` bytes, written to `out` by its own thread.
    pub fn start(budget: usize, out: Box<dyn Write + Send>) -> std::io::Result<LogQueue> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State { pending: Vec::new(), dropped: 0, closed: false, idle: false }),
            wake: Condvar::new(),
            budget,
            high_water: budget / 2,
            dropped_total: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("log-writer".into()).spawn(move || drain(&s, out))?;
        Ok(LogQueue { shared, thread: Some(thread) })
    }

    pub fn writer(&self) -> QueueWriter {
        QueueWriter(Arc::clone(&self.shared))
    }
}

fn drain(shared: &Shared, mut out: Box<dyn Write + Send>) {
    let mut batch = Vec::new();
    loop {
        let (dropped, closed) = {
            let mut st = shared.lock();
            while st.pending.is_empty() && st.dropped == 0 && !st.closed {
                st.idle = true;
                st = shared.wake.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            st.idle = false;
            // Gather more lines before writing, unless the queue is filling up.
            if !st.closed && st.pending.len() < shared.high_water {
                st = shared.wake.wait_timeout(st, FLUSH_EVERY).unwrap_or_else(|p| p.into_inner()).0;
            }
            std::mem::swap(&mut batch, &mut st.pending);
            (std::mem::take(&mut st.dropped), st.closed)
        };
        // Errors writing the log have nowhere to be reported: the lines are lost, as a full
        // queue's would be.
        let _ = out.write_all(&batch);
        if dropped > 0 {
            let _ = writeln!(
                out,
                "mqtt-policy: {dropped} log line(s) dropped: the log output could not keep up \
                 (mqtt_policy_log_lines_dropped_total counts them)"
            );
        }
        let _ = out.flush();
        batch.clear();
        // The spare buffer keeps its capacity (at most the budget): a busy service's queue
        // would otherwise grow it again, copy by copy, every time.
        batch.shrink_to(shared.budget);
        if closed {
            let rest = std::mem::take(&mut shared.lock().pending);
            let _ = out.write_all(&rest);
            let _ = out.flush();
            return;
        }
    }
}

/// How many bytes of lines a thread gathers before handing them to the queue at once.
const LOCAL_BATCH: usize = 16 << 10;

/// Lines a thread has gathered for one queue, not yet handed over.
struct Local {
    queue: Option<Arc<Shared>>,
    buf: Vec<u8>,
    lines: u64,
    /// The second (as the lines were stamped) of the first line gathered.
    since: u64,
}

impl Local {
    fn hand_over(&mut self) {
        if let Some(q) = &self.queue
            && !self.buf.is_empty()
        {
            q.append(&self.buf, self.lines);
        }
        self.buf.clear();
        self.lines = 0;
        // A long line must not leave every thread holding a large buffer.
        if self.buf.capacity() > 4 * LOCAL_BATCH {
            self.buf = Vec::new();
        }
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.hand_over();
    }
}

thread_local! {
    static LOCAL: RefCell<Local> =
        const { RefCell::new(Local { queue: None, buf: Vec::new(), lines: 0, since: 0 }) };
}

/// Hands the lines this thread has gathered ([`QueueWriter::push_gathered`]) to their queue.
/// The server's runtime calls it whenever a worker thread runs out of work, so that a quiet
/// service's lines never wait for the next request; a thread that ends hands its lines over too.
pub fn hand_over_gathered() {
    let _ = LOCAL.try_with(|l| {
        if let Ok(mut l) = l.try_borrow_mut()
            && !l.buf.is_empty()
        {
            l.hand_over();
        }
    });
}

impl QueueWriter {
    /// Lines dropped since start because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.0.dropped_total.load(Ordering::Relaxed)
    }

    /// Queues one whole line, or counts it dropped when the queue is full.
    pub fn push(&self, line: &[u8]) {
        self.0.append(line, 1);
    }

    /// Gathers one whole line in this thread, handing the thread's lines to the queue when
    /// they reach [`LOCAL_BATCH`] bytes or span more than a second (`second`: the one the
    /// line is stamped with), when the thread runs out of work ([`hand_over_gathered`]) or
    /// ends: one lock per batch instead of one per line. Lines of one thread stay in order.
    pub fn push_gathered(&self, line: &[u8], second: u64) {
        self.gather(second, |buf| buf.extend_from_slice(line));
    }

    /// [`push_gathered`](Self::push_gathered), the line written by `write` straight into the
    /// thread's gathered lines (no copy of it is made on the way).
    pub fn gather(&self, second: u64, write: impl FnOnce(&mut Vec<u8>)) {
        let mut write = Some(write);
        let gathered = LOCAL.try_with(|l| {
            let Ok(mut l) = l.try_borrow_mut() else { return false };
            if !l.queue.as_ref().is_some_and(|q| Arc::ptr_eq(q, &self.0)) {
                l.hand_over();
                l.queue = Some(Arc::clone(&self.0));
            }
            if l.buf.is_empty() {
                l.since = second;
            }
            if let Some(w) = write.take() {
                w(&mut l.buf);
            }
            l.lines += 1;
            if l.buf.len() >= LOCAL_BATCH || second != l.since {
                l.hand_over();
            }
            true
        });
        // No thread-local state (a thread being torn down): queue the line on its own.
        if gathered != Ok(true)
            && let Some(w) = write.take()
        {
            let mut line = Vec::new();
            w(&mut line);
            self.push(&line);
        }
    }
}

impl Write for QueueWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogQueue {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that blocks until told to go on, recording what it was given.
    #[derive(Clone)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cv) = &*self.open;
            let mut g = open.lock().unwrap();
            while !*g {
                g = cv.wait(g).unwrap();
            }
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_blocking_writers() {
        let gate = Gate { open: Arc::new((Mutex::new(false), Condvar::new())), written: Default::default() };
        let queue = LogQueue::start(100, Box::new(gate.clone())).unwrap();
        let mut w = queue.writer();
        // The writer thread may take up to a queueful (10 lines of 10 bytes) and block on the
        // closed gate; the queue then holds 10 more: of 40 lines, at least 20 are dropped.
        for i in 0..40 {
            w.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        assert!(w.dropped() >= 20, "dropped {}", w.dropped());
        let dropped = w.dropped();
        {
            let (open, cv) = &*gate.open;
            *open.lock().unwrap() = true;
            cv.notify_all();
        }
        drop(queue);
        let text = String::from_utf8(gate.written.lock().unwrap().clone()).unwrap();
        let kept = text.lines().filter(|l| l.starts_with("line ")).count() as u64;
        assert_eq!(kept + dropped, 40, "{text}");
        assert!(text.contains(&format!("{dropped} log line(s) dropped")), "{text}");
        // Whole lines, in order.
        let numbers: Vec<u32> =
            text.lines().filter_map(|l| l.strip_prefix("line ")).map(|n| n.parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
    }

    #[test]
    fn gathered_lines_reach_the_queue_in_batches_on_hand_over_and_when_full() {
        let gate = Gate { open: Arc::new((Mutex::new(true), Condvar::new())), written: Default::default() };
        let queue = LogQueue::start(1 << 20, Box::new(gate.clone())).unwrap();
        let w = queue.writer();
        // Bytes queued or written; a batch the writer thread holds between the two is neither
        // for a moment, so an expected count is waited for (5 s at most) rather than read once.
        let count = || queue.shared.lock().pending.len() + gate.written.lock().unwrap().len();
        let queued = |expected: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while count() != expected && std::time::Instant::now() < deadline {
                std::thread::yield_now();
            }
            count()
        };
        // Gathered in this thread: nothing reaches the queue yet.
        w.push_gathered(b"first\n", 7);
        w.push_gathered(b"second\n", 7);
        assert_eq!(queued(0), 0);
        // Handed over when the thread runs out of work.
        hand_over_gathered();
        assert_eq!(queued(13), 13);
        // Handed over when a line is stamped with a later second, the line included.
        w.push_gathered(b"third\n", 7);
        w.push_gathered(b"fourth\n", 8);
        assert_eq!(queued(26), 26);
        // Handed over at LOCAL_BATCH bytes.
        let line = [b'x'; 99].iter().chain(b"\n").copied().collect::<Vec<u8>>();
        for _ in 0..LOCAL_BATCH / line.len() {
            w.push_gathered(&line, 8);
        }
        assert_eq!(queued(26), 26);
        w.push_gathered(&line, 8);
        let all = 26 + (LOCAL_BATCH / line.len() + 1) * line.len();
        assert_eq!(queued(all), all);
        // A thread that ends hands its lines over.
        let w2 = w.clone();
        std::thread::spawn(move || w2.push_gathered(b"from another thread\n", 8)).join().unwrap();
        drop(queue);
        let text = String::from_utf8(gate.written.lock().unwrap().clone()).unwrap();
        assert!(text.starts_with("first\nsecond\nthird\nfourth\nxxx"), "{}", &text[..40]);
        assert!(text.contains("from another thread\n"));
    }

    #[test]
    fn gathered_lines_that_do_not_fit_are_counted_dropped() {
        let gate = Gate { open: Arc::new((Mutex::new(false), Condvar::new())), written: Default::default() };
        let queue = LogQueue::start(10, Box::new(gate.clone())).unwrap();
        let w = queue.writer();
        for _ in 0..3 {
            w.push_gathered(b"12345\n", 1);
        }
        hand_over_gathered();
        assert_eq!(w.dropped(), 3, "18 bytes do not fit a 10-byte queue");
        let (open, cv) = &*gate.open;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }

    #[test]
    fn dropping_the_queue_writes_everything_queued() {
        let gate = Gate { open: Arc::new((Mutex::new(true), Condvar::new())), written: Default::default() };
        let queue = LogQueue::start(1 << 20, Box::new(gate.clone())).unwrap();
        let mut w = queue.writer();
        for i in 0..1000 {
            writeln!(w, "line {i}").unwrap();
        }
        drop(queue);
        assert_eq!(gate.written.lock().unwrap().iter().filter(|b| **b == b'\n').count(), 1000);
    }
}
