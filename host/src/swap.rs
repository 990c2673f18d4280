//! Hot swap: a new policy document or policy module goes live without a restart, and a bad
//! one never replaces a good one.
//!
//! Every change (a file on disk changed, `SIGHUP`, an admin upload) becomes a *candidate*:
//! compile the module (or reuse the live one if unchanged), instantiate it, load the policy,
//! run the policy test cases *through the candidate*, and only then swap it in with one atomic
//! store. Candidates are built one at a time. Requests take the live [`Generation`] once and
//! finish on it; an old generation's instances go away with its last request. A rejected
//! candidate changes nothing, is logged, counted (`mqtt_policy_swaps_total{result="rejected"}`)
//! and shown by `GET /admin/status`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::runtime::{Action, Generation, LoadError, Request, Runtime, Subject, embedded_module};

/// Where a module or a policy document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    BuiltIn,
    File(PathBuf),
    Uploaded,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Source::BuiltIn => f.write_str("built-in"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Uploaded => f.write_str("uploaded"),
        }
    }
}

/// A proposed change.
pub enum Candidate {
    Module {
        bytes: Vec<u8>,
        source: Source,
    },
    Policy {
        text: String,
        source: Source,
    },
    /// Re-read the module and policy files (watched files, `SIGHUP`, `POST /admin/reload`).
    Reload,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    /// Seconds since the epoch.
    pub at: u64,
    /// What was proposed: `module (uploaded)`, `policy policies/celine.json`, `reload`.
    pub candidate: String,
    pub reason: String,
}

struct Inputs {
    module: Arc<[u8]>,
    module_source: Source,
    policy: Arc<str>,
    policy_source: Source,
}

struct Status {
    loaded_at: SystemTime,
    swaps: u64,
    last_rejected: Option<Rejection>,
}

/// The live generation and everything needed to build the next one.
pub struct Live {
    runtime: Arc<Runtime>,
    current: ArcSwap<Generation>,
    inputs: Mutex<Inputs>,
    /// Policy test cases every candidate must pass (files or directories of `*.json`).
    tests: Option<PathBuf>,
    status: Mutex<Status>,
    serial: tokio::sync::Mutex<()>,
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn read_module(source: &Source) -> Result<Vec<u8>, String> {
    match source {
        Source::File(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
        Source::BuiltIn => embedded_module().map(<[u8]>::to_vec).ok_or_else(|| {
            "this binary has no built-in policy module (build it with `cargo xtask build`)".into()
        }),
        Source::Uploaded => Err("an uploaded module cannot be re-read".into()),
    }
}

fn read_policy(source: &Source) -> Result<String, String> {
    match source {
        Source::File(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
        Source::BuiltIn => Ok(crate::policy_file::EMBEDDED_POLICY.to_string()),
        Source::Uploaded => Err("an uploaded policy cannot be re-read".into()),
    }
}

/// The `*.json` test-case files under `path` (a file, or a directory), sorted.
fn case_files(path: &Path) -> Result<Vec<PathBuf>, String> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot read the test cases in {}: {e}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}

/// Runs the test cases through `generation` (the module decides, not native code).
fn run_tests(generation: &Generation, path: &Path) -> Result<usize, String> {
    let mut failures = Vec::new();
    let mut total = 0;
    for file in case_files(path)? {
        let text =
            std::fs::read_to_string(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        let cases = policy_core::parse_cases(&text).map_err(|ds| {
            let first = ds.first().map(|d| format!("{}: {}", d.path, d.message)).unwrap_or_default();
            format!("{} is not a valid test-case file: {first}", file.display())
        })?;
        for case in &cases {
            total += 1;
            let r = &case.request;
            let subject = Subject::from(r.subject.clone());
            let d = match r.ask.action() {
                None => generation.superuser(&subject),
                Some(a) => generation.check(&Request {
                    subject,
                    topic: r.topic.clone(),
                    action: Action::from(a),
                    clientid: r.clientid.clone(),
                    username: r.username.clone(),
                }),
            };
            let d = policy_core::Decision { allow: d.allow, rule: d.rule, reason: d.reason };
            if let Some(why) = policy_core::judge(case, d).failure {
                failures.push(format!("{}: {why}", case.name));
            }
        }
    }
    if failures.is_empty() {
        return Ok(total);
    }
    let n = failures.len();
    failures.truncate(5);
    Err(format!("{n} of {total} policy test cases fail: {}", failures.join("; ")))
}

fn describe_load_error(e: &anyhow::Error) -> String {
    match e.downcast_ref::<LoadError>() {
        Some(LoadError(diags)) => {
            let errors: Vec<String> =
                diags
                    .iter()
                    .filter(|d| d.error)
                    .take(5)
                    .map(|d| {
                        if d.path.is_empty() {
                            d.message.clone()
                        } else {
                            format!("{}: {}", d.path, d.message)
                        }
                    })
                    .collect();
            format!("the policy does not load: {}", errors.join("; "))
        }
        None => format!("{e:#}"),
    }
}

impl Live {
    /// Builds the first generation through the same pipeline as any candidate (so the test
    /// cases must pass at start-up too).
    pub fn start(
        runtime: Arc<Runtime>,
        module_source: Source,
        policy_source: Source,
        tests: Option<PathBuf>,
    ) -> anyhow::Result<Arc<Live>> {
        let module = read_module(&module_source).map_err(anyhow::Error::msg)?;
        let policy = read_policy(&policy_source).map_err(anyhow::Error::msg)?;
        let generation = build(&runtime, None, &module, &policy, tests.as_deref())
            .map_err(|reason| anyhow::anyhow!("module {module_source}, policy {policy_source}: {reason}"))?;
        Ok(Arc::new(Live {
            runtime,
            current: ArcSwap::new(generation),
            inputs: Mutex::new(Inputs {
                module: module.into(),
                module_source,
                policy: policy.into(),
                policy_source,
            }),
            tests,
            status: Mutex::new(Status { loaded_at: SystemTime::now(), swaps: 0, last_rejected: None }),
            serial: tokio::sync::Mutex::new(()),
        }))
    }

    /// The live generation. Take it once per request and finish on it.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// The files to watch for changes.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let i = self.inputs.lock().unwrap();
        [&i.module_source, &i.policy_source]
            .into_iter()
            .filter_map(|s| match s {
                Source::File(p) => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// Builds, tests and (if it passes) swaps in a candidate. Returns the new generation, or
    /// why the candidate was rejected (the live generation is then untouched).
    pub async fn propose(self: &Arc<Self>, candidate: Candidate) -> Result<Arc<Generation>, Rejection> {
        let _one_at_a_time = self.serial.lock().await;
        let started = Instant::now();
        let (label, module, module_source, policy, policy_source) = {
            let i = self.inputs.lock().unwrap();
            let (mut m, mut ms, mut p, mut ps) = (
                Ok(Arc::clone(&i.module)),
                i.module_source.clone(),
                Ok(Arc::clone(&i.policy)),
                i.policy_source.clone(),
            );
            let label = match candidate {
                Candidate::Module { bytes, source } => {
                    let label = format!("module ({source})");
                    (m, ms) = (Ok(bytes.into()), source);
                    label
                }
                Candidate::Policy { text, source } => {
                    let label = format!("policy ({source})");
                    (p, ps) = (Ok(text.into()), source);
                    label
                }
                Candidate::Reload => {
                    if matches!(i.module_source, Source::File(_)) {
                        m = read_module(&i.module_source).map(Arc::from);
                    }
                    if matches!(i.policy_source, Source::File(_)) {
                        p = read_policy(&i.policy_source).map(Arc::from);
                    }
                    "reload".to_string()
                }
            };
            (label, m, ms, p, ps)
        };
        // Nothing changed (a reload of unchanged files, a repeated upload): keep the live
        // generation and its warm caches.
        if let (Ok(m), Ok(p)) = (&module, &policy) {
            let i = self.inputs.lock().unwrap();
            if **m == *i.module
                && **p == *i.policy
                && module_source == i.module_source
                && policy_source == i.policy_source
            {
                tracing::info!(candidate = %label, "nothing changed; the live generation stays");
                return Ok(self.current());
            }
        }
        let live = Arc::clone(self);
        let built = match (module, policy) {
            (Ok(m), Ok(p)) => {
                let current = self.current();
                let tests = self.tests.clone();
                let (m2, p2) = (Arc::clone(&m), Arc::clone(&p));
                tokio::task::spawn_blocking(move || {
                    build(&live.runtime, Some(&current), &m2, &p2, tests.as_deref())
                })
                .await
                .unwrap_or_else(|e| Err(format!("the candidate build panicked: {e}")))
                .map(|g| (g, m, p))
            }
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        match built {
            Ok((generation, m, p)) => {
                let previous = self.current.swap(Arc::clone(&generation));
                {
                    let mut i = self.inputs.lock().unwrap();
                    *i = Inputs { module: m, module_source, policy: p, policy_source };
                    let mut s = self.status.lock().unwrap();
                    s.loaded_at = SystemTime::now();
                    s.swaps += 1;
                }
                metrics::counter!("mqtt_policy_swaps_total", "result" => "applied").increment(1);
                metrics::gauge!("mqtt_policy_generation").set(generation.id as f64);
                tracing::info!(
                    candidate = %label, generation = generation.id, previous = previous.id,
                    module_hash = %&generation.module.hash[..16], policy_hash = %&generation.policy_hash[..16],
                    rules = generation.rule_count, took_ms = started.elapsed().as_millis() as u64,
                    "swapped in a new generation"
                );
                Ok(generation)
            }
            Err(reason) => {
                let rejection = Rejection { at: secs(SystemTime::now()), candidate: label, reason };
                self.status.lock().unwrap().last_rejected = Some(rejection.clone());
                metrics::counter!("mqtt_policy_swaps_total", "result" => "rejected").increment(1);
                tracing::warn!(candidate = %rejection.candidate, reason = %rejection.reason, "rejected a candidate; the live policy is unchanged");
                Err(rejection)
            }
        }
    }

    /// What is live, for `GET /admin/status` and `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let g = self.current();
        let i = self.inputs.lock().unwrap();
        let s = self.status.lock().unwrap();
        serde_json::json!({
            "generation": g.id,
            "module": {"source": i.module_source.to_string(), "hash": g.module.hash, "version": g.module.version},
            "policy": {"source": i.policy_source.to_string(), "hash": g.policy_hash, "rules": g.rule_count},
            "tests": self.tests.as_ref().map(|t| t.display().to_string()),
            "loaded_at": secs(s.loaded_at),
            "swaps": s.swaps,
            "last_rejected": s.last_rejected,
        })
    }
}

/// Builds a candidate generation: the module (reusing `current`'s when the bytes are the
/// same), the policy loaded into it, and the test cases run through it.
fn build(
    runtime: &Arc<Runtime>,
    current: Option<&Arc<Generation>>,
    module: &[u8],
    policy: &str,
    tests: Option<&Path>,
) -> Result<Arc<Generation>, String> {
    let hash = crate::runtime::hash_of(module);
    let module = match current {
        Some(g) if g.module.hash == hash => Arc::clone(&g.module),
        _ => runtime.module(module).map_err(|e| format!("{e:#}"))?,
    };
    let generation = Generation::new(module, policy).map_err(|e| describe_load_error(&e))?;
    if let Some(t) = tests {
        run_tests(&generation, t)?;
    }
    Ok(generation)
}

/// Reloads on `SIGHUP` until the process ends.
pub fn spawn_sighup(live: &Arc<Live>) {
    #[cfg(unix)]
    {
        let live = Arc::clone(live);
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                tracing::warn!(
                    "cannot listen for SIGHUP; reload with POST /admin/reload or by editing the files"
                );
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the module and policy files");
                let _ = live.propose(Candidate::Reload).await;
            }
        });
    }
}

/// Watches the module and policy files; a change (settled for [`SETTLE`]) proposes a reload.
pub fn spawn_watcher(live: &Arc<Live>) -> anyhow::Result<Option<notify::RecommendedWatcher>> {
    use notify::Watcher;
    let files = live.watched_files();
    if files.is_empty() {
        return Ok(None);
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let names: Vec<PathBuf> =
        files.iter().map(|f| std::path::absolute(f).unwrap_or_else(|_| f.clone())).collect();
    let watched = names.clone();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev
            && !ev.kind.is_access()
            && ev.paths.iter().any(|p| watched.iter().any(|w| w == p))
        {
            let _ = tx.send(());
        }
    })?;
    // Watch the directories: editors and `mv` replace files, which ends a watch on the file.
    for f in &names {
        let dir = f.parent().unwrap_or(Path::new("."));
        watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    }
    let live = Arc::clone(live);
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let a burst of writes settle, then reload once.
            tokio::time::sleep(SETTLE).await;
            while rx.try_recv().is_ok() {}
            tracing::info!("a watched file changed: reloading");
            let _ = live.propose(Candidate::Reload).await;
        }
    });
    Ok(Some(watcher))
}

/// How long a burst of file events must be quiet before a reload.
pub const SETTLE: Duration = Duration::from_millis(250);
