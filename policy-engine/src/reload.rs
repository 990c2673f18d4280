//! Where reloads come from, besides uploads: the live module and policy files changing on
//! disk, and reload requests (`SIGHUP` in the server, Mosquitto's reload event in the plugin).
//!
//! A [`Reloader`] owns one background thread that proposes `Candidate::Reload` to the
//! [`Live`] generation: callers only post a request and return at once, which is what a
//! broker's event loop needs. A burst of file events is settled ([`SETTLE`]) and pending
//! requests are coalesced into one reload. Dropping the `Reloader` stops the file watch and
//! joins the thread, so a plugin leaves nothing running when its library is unloaded.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;

use crate::swap::{Candidate, Live};

/// How long a burst of file events must be quiet before a reload.
pub const SETTLE: Duration = Duration::from_millis(250);

enum Event {
    FileChanged,
    Requested(&'static str),
    Stop,
}

pub struct Reloader {
    tx: mpsc::Sender<Event>,
    worker: Option<JoinHandle<()>>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl Reloader {
    /// Starts the reload thread; with `watch_files`, a change of the live module or policy
    /// file (when they are files) reloads too.
    pub fn start(live: Arc<Live>, watch_files: bool) -> anyhow::Result<Reloader> {
        let (tx, rx) = mpsc::channel();
        let watcher = if watch_files { watch(&live.watched_files(), tx.clone())? } else { None };
        let worker = std::thread::Builder::new()
            .name("policy-reload".into())
            .spawn(move || run(&live, &rx))
            .context("starting the reload thread")?;
        Ok(Reloader { tx, worker: Some(worker), watcher })
    }

    /// Asks for a reload of the module and policy files; `why` is logged. Returns at once.
    pub fn request(&self, why: &'static str) {
        let _ = self.tx.send(Event::Requested(why));
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        // No more file events, then the thread ends after the build it may be running.
        self.watcher = None;
        let _ = self.tx.send(Event::Stop);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn run(live: &Live, rx: &mpsc::Receiver<Event>) {
    while let Ok(event) = rx.recv() {
        let why = match event {
            Event::Stop => return,
            Event::Requested(why) => why,
            Event::FileChanged => {
                // Let a burst of writes settle (editors write, rename, touch).
                loop {
                    match rx.recv_timeout(SETTLE) {
                        Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Ok(_) => continue,
                        Err(RecvTimeoutError::Timeout) => break,
                    }
                }
                "a watched file changed"
            }
        };
        // Requests that arrived meanwhile are served by this one reload.
        while let Ok(pending) = rx.try_recv() {
            if matches!(pending, Event::Stop) {
                return;
            }
        }
        tracing::info!(trigger = why, "reloading the module and policy files");
        // The outcome is logged, counted and kept in the status by `propose` itself.
        let _ = live.propose(Candidate::Reload);
    }
}

fn watch(files: &[PathBuf], tx: mpsc::Sender<Event>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
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
        {
            let _ = tx.send(Event::FileChanged);
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
