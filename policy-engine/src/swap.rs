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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::cases::run_cases;
use crate::report::{Identity, SwapChanges};
use crate::runtime::{Generation, LoadError, Runtime, embedded_module};

/// Where a module or a policy document came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    BuiltIn,
    File(PathBuf),
    Uploaded,
    /// An upload (or a pulled bundle) kept in the state directory, restored at start.
    Restored(PathBuf),
    /// A bundle pulled from this URL.
    Bundle(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Source::BuiltIn => f.write_str("built-in"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Uploaded => f.write_str("uploaded"),
            Source::Restored(p) => write!(f, "restored from {}", p.display()),
            Source::Bundle(url) => write!(f, "bundle {url}"),
        }
    }
}

/// The file names of a kept upload in the directory given to [`Live::keep_uploads_in`].
pub const KEPT_POLICY: &str = "policy.json";
pub const KEPT_MODULE: &str = "module.wasm";

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
    /// A pulled bundle: module, policy and the bundle's own test cases (run besides the
    /// local ones).
    Bundle {
        contents: Box<crate::bundle::Contents>,
        source: Source,
    },
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
    /// The test cases of the bundle the live generation came from, if it did.
    bundle_tests: Option<Arc<str>>,
}

struct Status {
    loaded_at: SystemTime,
    /// Test cases the live generation passed before it went live (zero: untested).
    cases_passed: usize,
    swaps: u64,
    rejections: u64,
    last_rejected: Option<Rejection>,
    /// The last swap and what it changed (`report::swap_diff`).
    last_swap: Option<serde_json::Value>,
}

/// A candidate's inputs, read.
struct Prepared {
    label: String,
    module: Result<Arc<[u8]>, String>,
    module_source: Source,
    policy: Result<Arc<str>, String>,
    policy_source: Source,
    /// The live policy it is compared with.
    old_policy: Arc<str>,
    /// A bundle's own test cases.
    bundle_tests: Option<Arc<str>>,
}

/// The live generation and everything needed to build the next one.
pub struct Live {
    runtime: Arc<Runtime>,
    current: ArcSwap<Generation>,
    /// Swaps made: changed after `current` is, see [`Live::version`].
    swaps: AtomicU64,
    inputs: Mutex<Inputs>,
    /// Policy test cases every candidate must pass (files or directories of `*.json`).
    tests: Option<PathBuf>,
    status: Mutex<Status>,
    /// Candidates are built one at a time.
    serial: Mutex<()>,
    /// Where uploaded and pulled candidates are kept once live, to survive a restart.
    keep: std::sync::OnceLock<PathBuf>,
    /// Things an operator should know about how this started (shown in the status).
    notes: Mutex<Vec<String>>,
    /// The last swap's changes, until the front end has said which identities they reach.
    last_changes: Mutex<Option<Arc<SwapChanges>>>,
    /// The live identities, for a front end that can list them at any time (the service's
    /// sessions); the plugin hands its connected clients to [`Live::report_identities`].
    identities: std::sync::OnceLock<IdentitySource>,
}

/// Lists a front end's live identities as a generation (the swap's new one) sees them.
pub type IdentitySource = Box<dyn Fn(&Generation) -> Vec<Identity> + Send + Sync>;

pub(crate) fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn read_module(source: &Source) -> Result<Vec<u8>, String> {
    match source {
        Source::File(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
        Source::BuiltIn => embedded_module().map(<[u8]>::to_vec).ok_or_else(|| {
            "this binary has no built-in policy module (build it with `cargo xtask build`)".into()
        }),
        Source::Restored(p) => std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
        Source::Uploaded | Source::Bundle(_) => Err("an uploaded or pulled module cannot be re-read".into()),
    }
}

fn read_policy(source: &Source) -> Result<String, String> {
    match source {
        Source::File(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
        Source::BuiltIn => Ok(crate::BUILT_IN_POLICY.to_string()),
        Source::Restored(p) => {
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
        }
        Source::Uploaded | Source::Bundle(_) => Err("an uploaded or pulled policy cannot be re-read".into()),
    }
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
        let (generation, passed) = build(&runtime, None, &module, &policy, tests.as_deref(), None)
            .map(|(g, p)| (g, p.count))
            .map_err(|reason| anyhow::anyhow!("module {module_source}, policy {policy_source}: {reason}"))?;
        if let (Some(t), 0) = (&tests, passed) {
            anyhow::bail!(
                "{} holds no policy test cases: name a file or a directory of *.json cases, or none at all \
                 (the policy then runs untested)",
                t.display()
            );
        }
        report_tested(&generation, passed);
        Ok(Arc::new(Live {
            runtime,
            current: ArcSwap::new(generation),
            swaps: AtomicU64::new(0),
            inputs: Mutex::new(Inputs {
                module: module.into(),
                module_source,
                policy: policy.into(),
                policy_source,
                bundle_tests: None,
            }),
            tests,
            status: Mutex::new(Status {
                loaded_at: SystemTime::now(),
                cases_passed: passed,
                swaps: 0,
                rejections: 0,
                last_rejected: None,
                last_swap: None,
            }),
            serial: Mutex::new(()),
            keep: std::sync::OnceLock::new(),
            notes: Mutex::new(Vec::new()),
            last_changes: Mutex::new(None),
            identities: std::sync::OnceLock::new(),
        }))
    }

    /// The live generation. Take it once per request and finish on it.
    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// A number that changes whenever the live generation does, after it does: a generation
    /// taken with [`Live::current`] after reading it is at least as new as the number says. A
    /// front end that keeps the live generation at hand (the broker's thread) takes it again
    /// only when this changed.
    #[inline]
    pub fn version(&self) -> u64 {
        self.swaps.load(Ordering::Acquire)
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

    /// The inputs a candidate would go live with: its label, module and policy (or why they
    /// cannot be read), and their sources.
    fn prepare(&self, candidate: Candidate) -> Prepared {
        let i = self.inputs.lock().unwrap();
        let mut p = Prepared {
            label: String::new(),
            module: Ok(Arc::clone(&i.module)),
            module_source: i.module_source.clone(),
            policy: Ok(Arc::clone(&i.policy)),
            policy_source: i.policy_source.clone(),
            old_policy: Arc::clone(&i.policy),
            bundle_tests: None,
        };
        p.label = match candidate {
            Candidate::Module { bytes, source } => {
                let label = format!("module ({source})");
                (p.module, p.module_source) = (Ok(bytes.into()), source);
                label
            }
            Candidate::Policy { text, source } => {
                let label = format!("policy ({source})");
                (p.policy, p.policy_source) = (Ok(text.into()), source);
                label
            }
            Candidate::Reload => {
                if matches!(i.module_source, Source::File(_)) {
                    p.module = read_module(&i.module_source).map(Arc::from);
                }
                if matches!(i.policy_source, Source::File(_)) {
                    p.policy = read_policy(&i.policy_source).map(Arc::from);
                }
                "reload".to_string()
            }
            Candidate::Bundle { contents, source } => {
                let contents = *contents;
                let label = format!("{source}");
                (p.module, p.module_source) = (Ok(contents.module.into()), source.clone());
                (p.policy, p.policy_source) = (Ok(contents.policy.into()), source);
                p.bundle_tests = contents.tests.map(Arc::from);
                label
            }
        };
        p
    }

    /// Nothing would change (a reload of unchanged files, a repeated upload).
    fn unchanged(&self, p: &Prepared) -> bool {
        let i = self.inputs.lock().unwrap();
        matches!((&p.module, &p.policy), (Ok(m), Ok(pol)) if **m == *i.module && **pol == *i.policy)
            && p.module_source == i.module_source
            && p.policy_source == i.policy_source
    }

    /// Builds the prepared candidate against the live generation: the generation, the test
    /// cases it passed, and what it would change.
    fn build_prepared(&self, p: &Prepared) -> Result<Built, String> {
        let (m, pol) = match (&p.module, &p.policy) {
            (Ok(m), Ok(pol)) => (m, pol),
            (Err(e), _) | (_, Err(e)) => return Err(e.clone()),
        };
        let current = self.current();
        let (generation, passed) =
            build(&self.runtime, Some(&current), m, pol, self.tests.as_deref(), p.bundle_tests.as_deref())?;
        let (diff, changes) =
            crate::report::swap_diff(&current, &p.old_policy, &generation, pol, &passed.local);
        let available = diff["available"] != false;
        let changes =
            Arc::new(SwapChanges { old: current, new: Arc::clone(&generation), changes, available });
        Ok(Built { generation, passed: passed.count, diff, changes })
    }

    /// Builds, tests and (if it passes) swaps in a candidate. Returns the new generation, or
    /// why the candidate was rejected (the live generation is then untouched).
    ///
    /// This blocks for as long as a build takes (a compile can take a second): call it from
    /// a background thread (`Reloader`) or a blocking task, never from an event loop.
    pub fn propose(&self, candidate: Candidate) -> Result<Arc<Generation>, Rejection> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let prepared = self.prepare(candidate);
        let label = prepared.label.clone();
        // Nothing changed: keep the live generation and its warm caches.
        if self.unchanged(&prepared) {
            tracing::info!(candidate = %label, "nothing changed; the live generation stays");
            return Ok(self.current());
        }
        match self.build_prepared(&prepared) {
            Ok(Built { generation, passed, diff, changes }) => {
                // Kept before the generation goes live: a front end may report on it at once.
                *self.last_changes.lock().unwrap() = Some(changes);
                let previous = self.current.swap(Arc::clone(&generation));
                self.swaps.fetch_add(1, Ordering::Release);
                let Prepared { module, module_source, policy, policy_source, bundle_tests, .. } = prepared;
                let (Ok(m), Ok(p)) = (module, policy) else { unreachable!("built from readable inputs") };
                {
                    let mut i = self.inputs.lock().unwrap();
                    *i = Inputs { module: m, module_source, policy: p, policy_source, bundle_tests };
                    self.persist(&i);
                    let mut s = self.status.lock().unwrap();
                    s.loaded_at = SystemTime::now();
                    s.swaps += 1;
                    s.cases_passed = passed;
                    s.last_swap = Some(serde_json::json!({
                        "at": secs(s.loaded_at),
                        "candidate": label,
                        "generation": generation.id,
                        "previous": previous.id,
                        "diff": diff,
                    }));
                }
                report_tested(&generation, passed);
                metrics::counter!("mqtt_policy_swaps_total", "result" => "applied").increment(1);
                metrics::gauge!("mqtt_policy_generation").set(generation.id as f64);
                tracing::info!(
                    candidate = %label, generation = generation.id, previous = previous.id,
                    module_hash = %&generation.module.hash[..16], policy_hash = %&generation.policy_hash[..16],
                    rules = generation.rule_count, took_ms = started.elapsed().as_millis() as u64,
                    checks_decided = generation.deciding(), "swapped in a new generation"
                );
                log_diff(&generation, &diff);
                if let Some(list) = self.identities.get() {
                    self.report_identities(generation.id, &list(&generation));
                }
                Ok(generation)
            }
            Err(reason) => {
                let rejection = Rejection { at: secs(SystemTime::now()), candidate: label, reason };
                {
                    let mut s = self.status.lock().unwrap();
                    s.rejections += 1;
                    s.last_rejected = Some(rejection.clone());
                }
                metrics::counter!("mqtt_policy_swaps_total", "result" => "rejected").increment(1);
                tracing::warn!(candidate = %rejection.candidate, reason = %rejection.reason, "rejected a candidate; the live policy is unchanged");
                Err(rejection)
            }
        }
    }

    /// Everything [`Live::propose`] does short of the swap: the candidate is compiled, loaded
    /// and tested, and what it would change is returned. Nothing is swapped, counted or
    /// remembered; a candidate that would be rejected is returned as the rejection.
    pub fn dry_run(&self, candidate: Candidate) -> Result<serde_json::Value, Rejection> {
        let _one_at_a_time = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let prepared = self.prepare(candidate);
        let live = self.current().id;
        if self.unchanged(&prepared) {
            return Ok(serde_json::json!({
                "dry_run": true, "candidate": prepared.label, "live_generation": live, "unchanged": true,
                "diff": {"changes": 0, "probed": 0, "counts": {}, "first": []},
            }));
        }
        match self.build_prepared(&prepared) {
            Ok(Built { passed, diff, changes, .. }) => {
                tracing::info!(candidate = %prepared.label, changes = %crate::report::counts_line(&diff), "dry run: the candidate would go live");
                let identities =
                    self.identities.get().map(|list| crate::report::affected(&changes, &list(&changes.new)));
                Ok(serde_json::json!({
                    "dry_run": true, "candidate": prepared.label, "live_generation": live, "unchanged": false,
                    "cases_passed": passed, "tested": passed > 0, "diff": diff, "identities": identities,
                }))
            }
            Err(reason) => {
                tracing::info!(candidate = %prepared.label, reason = %reason, "dry run: the candidate would be rejected");
                Err(Rejection { at: secs(SystemTime::now()), candidate: prepared.label, reason })
            }
        }
    }

    /// Lets every swap (and dry run) report which of the front end's live identities its
    /// changes reach. Call once, after `start`.
    pub fn list_identities_with(&self, source: IdentitySource) {
        let _ = self.identities.set(source);
    }

    /// Reports which of `identities` (live when the swap to `generation` happened) its
    /// changes reach:
    /// into the last swap's status (`last_swap.identities`), a log line and the metric
    /// `mqtt_policy_last_swap_identities{direction}`. Once per swap: a later call finds
    /// nothing to report. Decides up to [`crate::report::CHANGES_PER_IDENTITY`] requests
    /// twice per identity: call it off any event loop.
    pub fn report_identities(&self, generation: u64, identities: &[Identity]) {
        let changes = {
            let mut last = self.last_changes.lock().unwrap();
            // Only the changes of the swap to `generation` (a later swap's are not these
            // identities' to report).
            match last.take() {
                Some(c) if c.new.id == generation => c,
                other => {
                    *last = other;
                    return;
                }
            }
        };
        // One report per identity, even if it was listed twice.
        let mut identities = identities.to_vec();
        identities.sort_by(|a, b| a.label.cmp(&b.label));
        identities.dedup_by(|a, b| a.label == b.label);
        let identities = &identities[..];
        let report = crate::report::affected(&changes, identities);
        let (gained, lost) = (report["gained"].as_u64().unwrap_or(0), report["lost"].as_u64().unwrap_or(0));
        metrics::gauge!("mqtt_policy_last_swap_identities", "direction" => "gained").set(gained as f64);
        metrics::gauge!("mqtt_policy_last_swap_identities", "direction" => "lost").set(lost as f64);
        let by_change: Vec<String> = report["by_change"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{} -> {}: {} gained, {} lost",
                    c["old"].as_str().unwrap_or("?"),
                    c["new"].as_str().unwrap_or("?"),
                    c["gained"],
                    c["lost"]
                )
            })
            .collect();
        tracing::info!(
            generation = changes.new.id,
            identities = identities.len(),
            affected = report["affected"].as_u64().unwrap_or(0),
            gained,
            lost,
            by_change = %by_change.join("; "),
            took_ms = report["took_ms"].as_u64().unwrap_or(0),
            "which live identities the new generation's changes reach"
        );
        let mut s = self.status.lock().unwrap();
        if let Some(last) = s.last_swap.as_mut().filter(|l| l["generation"] == changes.new.id) {
            last["identities"] = report;
        }
    }

    /// Keeps uploaded and pulled candidates in `dir` once they are live (`policy.json`,
    /// `module.wasm`), so that a restart restores them; a later swap from a file or the
    /// built-in default removes what it replaces. Call once, after `start`.
    pub fn keep_uploads_in(&self, dir: PathBuf) {
        let _ = self.keep.set(dir);
    }

    /// Where a kept upload of the policy ([`KEPT_POLICY`]) or the module ([`KEPT_MODULE`])
    /// is, if there is one.
    pub fn kept(dir: &Path, name: &str) -> Option<PathBuf> {
        let p = dir.join(name);
        p.is_file().then_some(p)
    }

    /// Something to show in the status's `notes` (how the live inputs were chosen at start).
    pub fn note(&self, text: impl Into<String>) {
        self.notes.lock().unwrap().push(text.into());
    }

    fn persist(&self, i: &Inputs) {
        let Some(dir) = self.keep.get() else { return };
        let mut result = std::fs::create_dir_all(dir);
        for (name, source, bytes) in [
            (KEPT_POLICY, &i.policy_source, i.policy.as_bytes()),
            (KEPT_MODULE, &i.module_source, &i.module[..]),
        ] {
            let path = dir.join(name);
            result = result.and_then(|()| match source {
                Source::Restored(p) if *p == path => Ok(()), // restored from there: already kept
                Source::Uploaded | Source::Bundle(_) | Source::Restored(_) => {
                    crate::write_atomically(&path, bytes)
                }
                Source::File(_) | Source::BuiltIn => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(()),
                },
            });
        }
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot keep the live upload in the state directory: a restart will not restore it");
        }
    }

    /// The live generation's policy, module and test cases (the local ones and, if it came
    /// from a bundle, the bundle's) as a bundle.
    pub fn bundle(&self) -> Result<crate::bundle::Bundle, crate::bundle::BundleError> {
        let (policy, module, bundle_tests) = {
            let i = self.inputs.lock().unwrap();
            (Arc::clone(&i.policy), Arc::clone(&i.module), i.bundle_tests.clone())
        };
        let mut cases = Vec::new();
        if let Some(t) = &self.tests {
            let local = crate::bundle::gather_cases(t)?;
            cases.extend(local["cases"].as_array().cloned().unwrap_or_default());
        }
        if let Some(t) = bundle_tests {
            let theirs: serde_json::Value =
                serde_json::from_str(&t).map_err(|e| crate::bundle::BundleError::Malformed(e.to_string()))?;
            cases.extend(theirs["cases"].as_array().cloned().unwrap_or_default());
        }
        let tests = (!cases.is_empty()).then(|| serde_json::json!({ "cases": cases }));
        Ok(crate::bundle::Bundle::new(&policy, &module, tests))
    }

    /// When the live generation went live, in seconds since the epoch (what a bundle of it
    /// is signed as issued at).
    pub fn live_since(&self) -> u64 {
        secs(self.status.lock().unwrap().loaded_at)
    }

    /// Swaps applied and candidates rejected since start.
    pub fn swap_counts(&self) -> (u64, u64) {
        let s = self.status.lock().unwrap();
        (s.swaps, s.rejections)
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
            "tested": s.cases_passed > 0,
            "cases_passed": s.cases_passed,
            "loaded_at": secs(s.loaded_at),
            "swaps": s.swaps,
            "rejections": s.rejections,
            "last_rejected": s.last_rejected,
            "last_swap": s.last_swap,
            "notes": *self.notes.lock().unwrap(),
        })
    }
}

/// Builds a candidate generation: the module (reusing `current`'s when the bytes are the
/// same), the policy loaded into it, the test cases run and the invariants decided through
/// it. Returns it and how many test cases it passed (zero: untested).
fn build(
    runtime: &Arc<Runtime>,
    current: Option<&Arc<Generation>>,
    module: &[u8],
    policy: &str,
    tests: Option<&Path>,
    bundle_tests: Option<&str>,
) -> Result<(Arc<Generation>, Passed), String> {
    let hash = crate::hash_of(module);
    let module = match current {
        Some(g) if g.module.hash == hash => Arc::clone(&g.module),
        _ => runtime.module(module).map_err(|e| format!("{e:#}"))?,
    };
    let generation = Generation::new(module, policy).map_err(|e| describe_load_error(&e))?;
    let local = match tests {
        Some(t) => run_cases(&generation, t)?,
        None => Vec::new(),
    };
    let bundle = match bundle_tests {
        Some(text) => crate::cases::run_cases_text(&generation, "the bundle's test cases", text)?.len(),
        None => 0,
    };
    let held = crate::invariants::check(&generation, policy)?;
    if held.invariants > 0 && held.proven {
        tracing::info!(
            invariants = held.invariants,
            requests = held.probed,
            "the candidate's {} invariants hold for every request",
            held.invariants
        );
    } else if held.invariants > 0 {
        tracing::warn!(
            invariants = held.invariants,
            requests = held.probed,
            "the candidate's {} invariants hold on their witness requests, which proves nothing for \
             this module: it is not the built-in one, and may decide other requests otherwise",
            held.invariants
        );
    }
    Ok((generation, Passed { count: local.len() + bundle, local }))
}

/// A candidate built: the generation, the test cases it passed, what it changes (the
/// report's summary, and the changes with both generations).
struct Built {
    generation: Arc<Generation>,
    passed: usize,
    diff: serde_json::Value,
    changes: Arc<SwapChanges>,
}

/// The test cases a candidate passed: how many, and the requests of the local ones (the
/// swap report decides those again; a bundle's own cases are not among them).
struct Passed {
    count: usize,
    local: Vec<policy_core::EvalRequest>,
}

/// What a swap changed, in the log: counts per action and the first witnesses.
fn log_diff(generation: &Generation, diff: &serde_json::Value) {
    let first: Vec<String> = diff["first"]
        .as_array()
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let r = &c["request"];
                    format!(
                        "{} {} by {} {} ({} -> {})",
                        r["action"].as_str().unwrap_or("?"),
                        r["topic"].as_str().unwrap_or(""),
                        r["subject"]["type"].as_str().unwrap_or("?"),
                        r["subject"]["id"].as_str().unwrap_or("?"),
                        if c["old"]["allow"] == true { "allow" } else { "deny" },
                        if c["new"]["allow"] == true { "allow" } else { "deny" },
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let (mut gained, mut lost) = (0, 0);
    for c in diff["counts"].as_object().into_iter().flat_map(|m| m.values()) {
        gained += c["gained"].as_u64().unwrap_or(0);
        lost += c["lost"].as_u64().unwrap_or(0);
    }
    metrics::gauge!("mqtt_policy_last_swap_changes", "direction" => "gained").set(gained as f64);
    metrics::gauge!("mqtt_policy_last_swap_changes", "direction" => "lost").set(lost as f64);
    tracing::info!(
        generation = generation.id,
        changes = diff["changes"].as_u64().unwrap_or(0),
        probed = diff["probed"].as_u64().unwrap_or(0),
        counts = %crate::report::counts_line(diff),
        first = %first.join("; "),
        "what the new generation changes (witnessed decisions; GET /admin/status has them)"
    );
    let limits: Vec<&str> =
        diff["limits"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect();
    if !limits.is_empty() {
        tracing::info!(generation = generation.id, "limits changed: {}", limits.join("; "));
    }
}

/// Says so, in the log and a metric, when a generation goes live that no test case checked.
fn report_tested(generation: &Generation, passed: usize) {
    metrics::gauge!("mqtt_policy_untested").set(if passed == 0 { 1.0 } else { 0.0 });
    if passed == 0 {
        tracing::warn!(
            generation = generation.id,
            "generation {} is untested: no policy test cases checked it before it went live",
            generation.id
        );
    }
}
