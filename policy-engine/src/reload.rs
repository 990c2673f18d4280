//! Where reloads come from, besides uploads: the live module and policy files changing on
//! disk, and reload requests (`SIGHUP` in the server, Mosquitto's reload event in the plugin).
//!
//! A [`Reloader`] proposes `Candidate::Reload` to the [`Live`] generation on a thread of its
//! own that runs only while there is a reload to do: callers post a request and return at
//! once, which is what a broker's event loop needs, and a broker between reloads keeps no
//! thread of ours (any second thread makes its socket calls dearer). A burst of file events is
//! settled ([`SETTLE`]) and pending requests are coalesced into one reload. Files are watched
//! either by the operating system's notifications ([`Watch::Notify`], a watcher thread: the
//! server) or by the owner calling [`Reloader::poll_files`] from a loop it already runs
//! ([`Watch::Poll`]: the plugin's tick). Dropping the `Reloader` stops the watch and joins
//! its thread, so a plugin leaves nothing running when its library is unloaded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;

use crate::swap::{Candidate, Live};

/// How long a burst of file events must be quiet before a reload.
pub const SETTLE: Duration = Duration::from_millis(250);

/// How often [`Reloader::poll_files`] looks at the files, at most.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// How the live module and policy files are watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// Not at all: only requests reload.
    Off,
    /// By the operating system's file notifications (a watcher thread).
    Notify,
    /// By [`Reloader::poll_files`], called by the owner (no thread).
    Poll,
}

/// What the worker is asked to do.
#[derive(Default)]
struct Pending {
    /// A request, with why.
    requested: Option<&'static str>,
    /// The last file event, when one waits to settle.
    changed_at: Option<Instant>,
    /// A worker thread is running.
    working: bool,
    stop: bool,
}

struct Shared {
    live: Arc<Live>,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The last worker thread (joined by the next one's start, or on drop).
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// What a watched file looked like when polled last: a change of any of these is a change.
type Seen = Vec<Option<(SystemTime, u64, u64)>>;

struct Polled {
    files: Vec<PathBuf>,
    seen: Seen,
    at: Instant,
    /// A change was seen at the last look: it reloads once a look finds the files unchanged
    /// (a file being written is not taken half way).
    changed: bool,
}

pub struct Reloader {
    shared: Arc<Shared>,
    watcher: Option<notify::RecommendedWatcher>,
    polled: Option<Mutex<Polled>>,
}

impl Reloader {
    /// A reloader for `live`, watching its module and policy files (when they are files) as
    /// `watch` says.
    pub fn start(live: Arc<Live>, watch: Watch) -> anyhow::Result<Reloader> {
        let files = live.watched_files();
        let shared = Arc::new(Shared {
            live,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            worker: Mutex::new(None),
        });
        let mut reloader = Reloader { shared, watcher: None, polled: None };
        match watch {
            Watch::Off => {}
            Watch::Notify => reloader.watcher = notify_watch(&files, Arc::downgrade(&reloader.shared))?,
            Watch::Poll if files.is_empty() => {}
            Watch::Poll => {
                let seen = look(&files);
                reloader.polled =
                    Some(Mutex::new(Polled { files, seen, at: Instant::now(), changed: false }));
            }
        }
        Ok(reloader)
    }

    /// Asks for a reload of the module and policy files; `why` is logged. Returns at once.
    pub fn request(&self, why: &'static str) {
        self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).requested.get_or_insert(why);
        self.shared.work();
    }

    /// With [`Watch::Poll`]: looks at the watched files (at most every [`POLL_EVERY`]; `stat`,
    /// so call it off a thread that must not wait) and reloads when one changed and a later
    /// look finds it unchanged. Cheap when not due (a clock read).
    pub fn poll_files(&self) {
        let Some(polled) = &self.polled else { return };
        let Ok(mut p) = polled.try_lock() else { return };
        if p.at.elapsed() < POLL_EVERY {
            return;
        }
        p.at = Instant::now();
        let now = look(&p.files);
        if now != p.seen {
            p.seen = now;
            p.changed = true;
        } else if p.changed {
            p.changed = false;
            drop(p);
            self.shared.file_changed();
            self.shared.work();
        }
    }
}

impl Shared {
    /// Makes sure a worker serves what is pending.
    fn work(self: &Arc<Self>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if pending.stop {
                return;
            }
            if pending.working {
                self.wake.notify_one();
                return;
            }
            pending.working = true;
        }
        let shared = Arc::clone(self);
        let mut worker = self.worker.lock().unwrap_or_else(|p| p.into_inner());
        // The previous worker said it was done before it ended.
        if let Some(done) = worker.take() {
            let _ = done.join();
        }
        match std::thread::Builder::new().name("policy-reload".into()).spawn(move || shared.run()) {
            Ok(handle) => *worker = Some(handle),
            Err(e) => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).working = false;
                tracing::error!(error = %e, "cannot start a thread to reload the policy; the reload waits for the next request");
            }
        }
    }

    fn file_changed(&self) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).changed_at = Some(Instant::now());
    }

    /// The worker: serves pending reloads, then ends.
    fn run(&self) {
        // A worker that panics still lets the next request start another.
        struct Done<'a>(&'a Shared);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.pending.lock().unwrap_or_else(|p| p.into_inner()).working = false;
                }
            }
        }
        let _done = Done(self);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if pending.stop {
                break;
            }
            // A burst of file events settles first (editors write, rename, touch).
            if let Some(at) = pending.changed_at {
                let quiet = at.elapsed();
                if quiet < SETTLE {
                    pending =
                        self.wake.wait_timeout(pending, SETTLE - quiet).unwrap_or_else(|p| p.into_inner()).0;
                    continue;
                }
            }
            let why = match (pending.requested.take(), pending.changed_at.take()) {
                (Some(why), _) => why,
                (None, Some(_)) => "a watched file changed",
                (None, None) => break,
            };
            drop(pending);
            tracing::info!(trigger = why, "reloading the module and policy files");
            // The outcome is logged, counted and kept in the status by `propose` itself.
            let _ = self.live.propose(Candidate::Reload);
            pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        }
        // Under the lock: a request from now on starts a worker of its own.
        pending.working = false;
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        // No more file events, then the worker ends after the build it may be running.
        self.watcher = None;
        self.shared.pending.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        self.shared.wake.notify_all();
        let worker = self.shared.worker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = worker {
            let _ = w.join();
        }
    }
}

/// Each file's modification time, length and inode (`None`: missing).
fn look(files: &[PathBuf]) -> Seen {
    use std::os::unix::fs::MetadataExt;
    files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .ok()
                .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino()))
        })
        .collect()
}

fn notify_watch(
    files: &[PathBuf],
    shared: std::sync::Weak<Shared>,
) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
    use notify::Watcher;
    if files.is_empty() {
        return Ok(None);
    }
    let names: Vec<PathBuf> =
        files.iter().map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())).collect();
    let watched = names.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
            && ev.paths.iter().any(|p| watched.iter().any(|w| w == p))
            && let Some(shared) = shared.upgrade()
        {
            shared.file_changed();
            shared.work();
        }
    })
    .context("starting the file watcher")?;
    // Watch the directories: editors and `mv` replace files, which ends a watch on the file.
    for f in &names {
        let dir = f.parent().unwrap_or(Path::new("."));
        watcher
            .watch(dir, notify::RecursiveMode::NonRecursive)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    Ok(Some(watcher))
}
