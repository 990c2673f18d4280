//! Running policy modules: wasmtime components behind the WIT world `policy-module`.
//!
//! - One [`Runtime`] per process: the wasmtime `Engine` (epoch interruption on, no WASI, no
//!   imports at all) and a ticker thread that advances the epoch every [`TICK`].
//! - A [`Module`] is a compiled component plus its `InstancePre`. Compiled code is cached in
//!   the state directory (`cache/*.cwasm`), keyed by the component's SHA-256 and the wasmtime
//!   version, so a restart does not compile again.
//! - A [`Generation`] is a module with one policy document loaded, and a pool of instances.
//!   A `Store` serves one call at a time, so each worker owns a store, an instance and the
//!   loaded `policy` resource; idle workers wait in the pool.
//! - Every call is bounded: in time and in memory. Time is counted in the calling thread's CPU
//!   time, not on the wall: a call first gets [`CALL_TICKS`] epoch ticks, then (checked at
//!   each further tick) [`CALL_CPU`] of CPU time of its own. A thread that is descheduled
//!   (a throttled container, a busy machine) loses no budget, while a guest that spins is
//!   stopped within about a tenth of a second. A trap or timeout denies that request with a
//!   reason, drops the instance (a trapped instance cannot be entered again), and is counted
//!   in `mqtt_policy_module_traps_total`.
//! - Instances are built when a generation is made, and afterwards by the runtime's builder
//!   thread, never on a thread that said it must not wait ([`must_not_wait`]: the broker's):
//!   there, an empty pool denies the request and asks for another instance.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, anyhow};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceAny};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};

pub use crate::hash_of;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy-module",
    additional_derives: [PartialEq, Eq],
});

pub use celine::mqtt_policy::types::{Action, Decision, Diagnostic, Request, Subject, SubjectType};

/// How often the epoch advances.
pub const TICK: Duration = Duration::from_millis(5);
/// A decision runs this many ticks (≈50 ms of wall time; a real one takes microseconds)
/// before its CPU time is looked at.
pub const CALL_TICKS: u64 = 10;
/// After that, a decision may use this much CPU time of its own.
pub const CALL_CPU: Duration = Duration::from_millis(50);
/// Loading a document: ticks before its CPU time is looked at (≈10 s), then the CPU time it
/// may use (10,000 rules take well under 1 s).
const LOAD_TICKS: u64 = 2_000;
const LOAD_CPU: Duration = Duration::from_secs(10);
/// Linear memory per instance.
pub const MEMORY_LIMIT: usize = 256 << 20;

/// The per-store state: the resource limits (the module imports nothing) and the time
/// budget of the call in progress.
pub struct HostState {
    limits: StoreLimits,
    budget: Budget,
}

/// A call's time budget: CPU time of the calling thread, counted from the call's first
/// epoch deadline.
#[derive(Clone, Copy)]
struct Budget {
    cpu: Duration,
    /// The thread's CPU time at the first deadline of this call.
    mark: Option<Duration>,
}

impl Budget {
    fn new(cpu: Duration) -> Budget {
        Budget { cpu, mark: None }
    }

    /// At an epoch deadline, with the thread's CPU time: go on for another `ticks`, or stop
    /// the call.
    fn at_deadline(&mut self, now: Duration, ticks: u64) -> UpdateDeadline {
        match self.mark {
            None => {
                self.mark = Some(now);
                UpdateDeadline::Continue(ticks)
            }
            Some(mark) if now.saturating_sub(mark) >= self.cpu => UpdateDeadline::Interrupt,
            Some(_) => UpdateDeadline::Continue(ticks),
        }
    }
}

/// The CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(u64::try_from(t.tv_sec).unwrap_or(0), u32::try_from(t.tv_nsec).unwrap_or(0))
}

fn set_budget(store: &mut Store<HostState>, ticks: u64, cpu: Duration) {
    store.set_epoch_deadline(ticks);
    store.data_mut().budget = Budget::new(cpu);
}

thread_local! {
    static MUST_NOT_WAIT: Cell<bool> = const { Cell::new(false) };
}

/// Marks the calling thread as one that must never wait for an instance to be built (the
/// broker's event loop): calls from it find an idle instance or are denied, and the builder
/// thread makes another.
pub fn must_not_wait() {
    MUST_NOT_WAIT.with(|m| m.set(true));
}

pub struct Runtime {
    engine: Engine,
    cache_dir: Option<PathBuf>,
    /// Guest calls that trapped or ran out of time, since start.
    faults: AtomicU64,
    stop: Arc<AtomicBool>,
    ticker: Mutex<Option<JoinHandle<()>>>,
    /// Generations whose pool wants another instance, for the builder thread.
    builds: Mutex<Option<mpsc::Sender<Weak<Generation>>>>,
    builder: Mutex<Option<JoinHandle<()>>>,
}

impl Runtime {
    /// The engine, and the epoch ticker thread. The thread ends, and is joined, when the
    /// runtime is dropped: a plugin must leave no thread behind when its library is unloaded.
    ///
    /// `cache_dir` holds compiled modules; a directory that cannot be written (Mosquitto drops
    /// to its own user, whose home may be unreadable) only costs a compile per start.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Measured ~3x cheaper guest calls (toolchain-notes.md); we make no async calls.
        config.concurrency_support(false);
        let engine = Engine::new(&config).map_err(|e| anyhow!("creating the wasmtime engine: {e}"))?;
        let ticker = engine.weak();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed)
                    && let Some(engine) = ticker.upgrade()
                {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::park_timeout(TICK);
                }
            })
            .context("starting the epoch ticker")?;
        let (builds, wanted) = mpsc::channel::<Weak<Generation>>();
        let builder = std::thread::Builder::new()
            .name("wasm-builder".into())
            .spawn(move || {
                // Ends when the runtime drops the sender.
                for generation in wanted {
                    if let Some(g) = generation.upgrade() {
                        g.refill();
                    }
                }
            })
            .context("starting the instance builder")?;
        Ok(Arc::new(Runtime {
            engine,
            cache_dir,
            faults: AtomicU64::new(0),
            stop,
            ticker: Mutex::new(Some(handle)),
            builds: Mutex::new(Some(builds)),
            builder: Mutex::new(Some(builder)),
        }))
    }

    /// Asks the builder thread for another instance of `generation`.
    fn want_instance(&self, generation: Weak<Generation>) {
        if let Some(tx) = self.builds.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            let _ = tx.send(generation);
        }
    }

    /// Guest calls that trapped or ran out of time since the runtime started.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    fn new_store(&self) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new().memory_size(MEMORY_LIMIT).instances(4).build();
        let mut store = Store::new(&self.engine, HostState { limits, budget: Budget::new(CALL_CPU) });
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            let now = thread_cpu_time();
            // Loads and calls both check again every CALL_TICKS once their first deadline passed.
            Ok(ctx.data_mut().budget.at_deadline(now, CALL_TICKS))
        });
        store
    }

    /// Compiles (or loads from the cache) a component and checks it exports our world.
    pub fn module(self: &Arc<Self>, bytes: &[u8]) -> anyhow::Result<Arc<Module>> {
        let hash = hash_of(bytes);
        let component = self.compile(bytes, &hash)?;
        let linker: Linker<HostState> = Linker::new(&self.engine);
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow!("the module needs imports this host does not provide: {e}"))?;
        let pre = PolicyModulePre::new(pre)
            .map_err(|e| anyhow!("the module does not implement the policy-module world: {e}"))?;
        // Ask the module who it is: this also proves it instantiates and answers.
        let mut store = self.new_store();
        set_budget(&mut store, CALL_TICKS, CALL_CPU);
        let inst = pre.instantiate(&mut store).map_err(|e| anyhow!("instantiating the module: {e}"))?;
        let version = inst
            .celine_mqtt_policy_engine()
            .call_version(&mut store)
            .map_err(|e| anyhow!("the module's version() failed: {}", fault(e)))?;
        Ok(Arc::new(Module { runtime: Arc::clone(self), pre, hash, version }))
    }

    fn compile(&self, bytes: &[u8], hash: &str) -> anyhow::Result<Component> {
        let cached = self
            .cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hash}-mqtt-policy{}.cwasm", env!("CARGO_PKG_VERSION"))));
        // Read into memory rather than `deserialize_file`'s mmap: a cache file truncated under
        // a live mapping would crash the host (SIGBUS); a copy cannot.
        if let Some(path) = &cached
            && let Ok(file) = std::fs::read(path)
        {
            match checked_code(&file) {
                // SAFETY: the code was written by `Component::serialize` in this directory,
                // named by the hash of the source component and this host's version, and is
                // byte for byte what was written (its SHA-256 matches); wasmtime also checks
                // the engine's compatibility and refuses otherwise.
                // The one `unsafe` outside the broker plugin's FFI edge: wasmtime runs compiled
                // code it cannot check itself, so loading it is `unsafe` by its API.
                #[allow(unsafe_code)]
                Ok(code) => match unsafe { Component::deserialize(&self.engine, code) } {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "ignoring an unusable compiled-module cache entry")
                    }
                },
                Err(why) => {
                    tracing::warn!(path = %path.display(), "ignoring a damaged compiled-module cache entry: {why}")
                }
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| anyhow!("not a valid WebAssembly component: {e}"))?;
        if let Some(path) = &cached
            && let Err(e) = write_cache(path, &component)
        {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "could not cache the compiled module");
        }
        Ok(component)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.get_mut().ok().and_then(Option::take) {
            t.thread().unpark();
            let _ = t.join();
        }
        // Dropping the sender ends the builder's loop.
        drop(self.builds.get_mut().ok().and_then(Option::take));
        if let Some(b) = self.builder.get_mut().ok().and_then(Option::take) {
            // The builder may hold the last reference to a generation, which holds this
            // runtime: then this drop runs on the builder thread itself, which must not join.
            if b.thread().id() != std::thread::current().id() {
                let _ = b.join();
            }
        }
    }
}

/// A cache entry is the SHA-256 of the compiled code, then the code. Compiled code is run as
/// it is, unchecked, so a damaged file (a flipped bit, a torn write, a full disk) must be
/// refused before wasmtime sees it, not executed. (The digest guards against damage, not
/// against someone who can write the state directory: keep it writable by the service only.)
fn write_cache(path: &Path, component: &Component) -> anyhow::Result<()> {
    let code = component.serialize().map_err(|e| anyhow!("{e}"))?;
    std::fs::create_dir_all(path.parent().unwrap())?;
    let mut file = Vec::with_capacity(32 + code.len());
    file.extend_from_slice(&Sha256::digest(&code));
    file.extend_from_slice(&code);
    crate::write_atomically(path, &file)?;
    Ok(())
}

/// The code of a cache entry whose digest matches it.
fn checked_code(file: &[u8]) -> Result<&[u8], &'static str> {
    if file.len() < 32 {
        return Err("shorter than its checksum");
    }
    let (digest, code) = file.split_at(32);
    if Sha256::digest(code)[..] != *digest {
        return Err("its checksum does not match (damaged or torn); compiling again");
    }
    Ok(code)
}

/// A compiled policy module, ready to instantiate.
pub struct Module {
    runtime: Arc<Runtime>,
    pre: PolicyModulePre<HostState>,
    /// SHA-256 of the component bytes.
    pub hash: String,
    /// What the module's `version()` says.
    pub version: String,
}

impl Module {
    /// The runtime this module runs on (its fault count, for operations).
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }
}

/// A policy document that did not load, with its diagnostics.
#[derive(Debug)]
pub struct LoadError(pub Vec<Diagnostic>);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let errors: Vec<String> = self
            .0
            .iter()
            .filter(|d| d.error)
            .map(|d| if d.path.is_empty() { d.message.clone() } else { format!("{}: {}", d.path, d.message) })
            .collect();
        write!(f, "the policy document does not load: {}", errors.join("; "))
    }
}

impl std::error::Error for LoadError {}

/// A module call that did not answer: the guest trapped or ran out of time, no instance could
/// be built for it, or none was ready on a thread that must not wait ([`must_not_wait`]). The
/// request it was for is denied, saying this, and nothing about it may be remembered: the
/// next call runs on another instance and may well answer. `Display` is that reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault(pub String);

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fault {}

impl From<Fault> for String {
    fn from(f: Fault) -> String {
        f.0
    }
}

/// Why claims or a certificate name came to no subject through a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectError {
    /// The module answered that they name no subject, with its reason (claims without an id,
    /// a name outside the policy's `certificates` section). The same input gets the same
    /// answer from this generation: a caller may remember it.
    Refused(String),
    /// The module could not answer: deny, and remember nothing.
    Fault(Fault),
}

impl std::fmt::Display for SubjectError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            SubjectError::Refused(why) => f.write_str(why),
            SubjectError::Fault(fault) => fault.fmt(f),
        }
    }
}

impl std::error::Error for SubjectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SubjectError::Refused(_) => None,
            SubjectError::Fault(fault) => Some(fault),
        }
    }
}

struct Worker {
    store: Store<HostState>,
    instance: PolicyModule,
    policy: ResourceAny,
}

static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// A module with a policy document loaded: what answers requests.
pub struct Generation {
    pub id: u64,
    pub module: Arc<Module>,
    pub policy_hash: String,
    pub rule_count: u32,
    document: Arc<str>,
    idle: Mutex<Vec<Worker>>,
    max_idle: usize,
    /// The pool size the builder thread keeps up: one instance per core.
    warm: usize,
    /// A build is asked for or running (one at a time per generation).
    building: AtomicBool,
    me: Weak<Generation>,
}

/// What a guest call ended in, when it did not return.
fn fault(e: wasmtime::Error) -> String {
    match e.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "the policy module ran out of time".to_string(),
        Some(trap) => format!("the policy module trapped: {trap}"),
        None => format!("the policy module failed: {e}"),
    }
}

impl Generation {
    /// Instantiates the module and loads the document into it. A document the module refuses
    /// is a [`LoadError`] with its diagnostics.
    pub fn new(module: Arc<Module>, document: &str) -> anyhow::Result<Arc<Generation>> {
        // One warm instance per core, built now (at start-up or while a candidate is built)
        // rather than by the first concurrent requests: loading a large document into a new
        // instance takes milliseconds.
        let warm = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let mut built = Generation {
            id: GENERATIONS.fetch_add(1, Ordering::Relaxed),
            module,
            policy_hash: hash_of(document.as_bytes()),
            rule_count: 0,
            document: Arc::from(document),
            idle: Mutex::new(Vec::new()),
            max_idle: warm * 4,
            warm,
            building: AtomicBool::new(false),
            me: Weak::new(),
        };
        let mut worker = built.new_worker()?;
        let engine = worker.instance.celine_mqtt_policy_engine();
        set_budget(&mut worker.store, CALL_TICKS, CALL_CPU);
        built.rule_count = engine
            .policy()
            .call_rule_count(&mut worker.store, worker.policy)
            .map_err(|e| anyhow!(fault(e)))?;
        let mut workers = vec![worker];
        for _ in 1..warm {
            workers.push(built.new_worker()?);
        }
        *built.idle.get_mut().unwrap() = workers;
        Ok(Arc::new_cyclic(|me| {
            built.me = me.clone();
            built
        }))
    }

    /// Builds instances until the pool holds `warm` (the builder thread's work).
    fn refill(&self) {
        while self.idle.lock().unwrap().len() < self.warm {
            match self.new_worker() {
                Ok(w) => self.idle.lock().unwrap().push(w),
                Err(e) => {
                    tracing::error!(generation = self.id, error = %format!("{e:#}"), "building a policy module instance failed");
                    break;
                }
            }
        }
        self.building.store(false, Ordering::Release);
    }

    /// Asks the builder thread to fill the pool up again, unless it already is.
    fn want_instances(&self) {
        if !self.building.swap(true, Ordering::AcqRel) {
            self.module.runtime.want_instance(self.me.clone());
        }
    }

    fn new_worker(&self) -> anyhow::Result<Worker> {
        let mut store = self.module.runtime.new_store();
        set_budget(&mut store, LOAD_TICKS, LOAD_CPU);
        let instance = self
            .module
            .pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("instantiating the policy module: {e}"))?;
        let loaded = instance
            .celine_mqtt_policy_engine()
            .policy()
            .call_load(&mut store, &self.document)
            .map_err(|e| anyhow!("loading the policy into the module: {}", fault(e)))?;
        let policy = loaded.map_err(LoadError)?;
        Ok(Worker { store, instance, policy })
    }

    /// Runs `f` on an idle worker (or a new one). A fault drops the worker and becomes `Err`.
    fn with_worker<T>(
        &self,
        f: impl FnOnce(&mut Store<HostState>, &PolicyModule, ResourceAny) -> wasmtime::Result<T>,
    ) -> Result<T, Fault> {
        let worker = self.idle.lock().unwrap().pop();
        let mut worker = match worker {
            Some(w) => w,
            None if MUST_NOT_WAIT.with(Cell::get) => {
                self.want_instances();
                return Err(Fault("no policy module instance is ready (another is being built)".into()));
            }
            None => self.new_worker().map_err(|e| Fault(format!("{e:#}")))?,
        };
        set_budget(&mut worker.store, CALL_TICKS, CALL_CPU);
        match f(&mut worker.store, &worker.instance, worker.policy) {
            Ok(v) => {
                let mut idle = self.idle.lock().unwrap();
                if idle.len() < self.max_idle {
                    idle.push(worker);
                }
                Ok(v)
            }
            Err(e) => {
                self.module.runtime.faults.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("mqtt_policy_module_traps_total").increment(1);
                let why = fault(e);
                tracing::error!(generation = self.id, module = %self.module.hash, error = %why, "policy module fault; instance replaced");
                self.want_instances();
                Err(Fault(why))
            }
        }
    }

    /// Decides one request, or says why the module failed to (a fault: never cache it).
    pub fn try_check(&self, req: &Request) -> Result<Decision, Fault> {
        self.with_worker(|store, inst, policy| {
            inst.celine_mqtt_policy_engine().policy().call_check(store, policy, req)
        })
    }

    /// Decides one request. A module fault is a denial that says so.
    pub fn check(&self, req: &Request) -> Decision {
        self.try_check(req).unwrap_or_else(|why| Decision { allow: false, rule: None, reason: why.0 })
    }

    pub fn superuser(&self, who: &Subject) -> Decision {
        self.with_worker(|store, inst, policy| {
            inst.celine_mqtt_policy_engine().policy().call_superuser(store, policy, who)
        })
        .unwrap_or_else(|why| Decision { allow: false, rule: None, reason: why.0 })
    }

    /// Maps verified claims to a subject, through the module (it owns that logic):
    /// [`SubjectError::Refused`] when they name none, [`SubjectError::Fault`] when the module
    /// could not say.
    pub fn subject_from_claims(&self, claims_json: &str) -> Result<Subject, SubjectError> {
        self.with_worker(|store, inst, _| {
            inst.celine_mqtt_policy_engine().call_subject_from_claims(store, claims_json)
        })
        .map_err(SubjectError::Fault)?
        .map_err(SubjectError::Refused)
    }

    /// The subject of a client known by its certificate name, as a subject of type `kind`,
    /// through the module (the document's `certificates` section): [`SubjectError::Refused`]
    /// when the name is no client of the policy, [`SubjectError::Fault`] when the module could
    /// not say (callers fail closed, and remember nothing).
    pub fn certificate_subject(&self, name: &str, kind: SubjectType) -> Result<Subject, SubjectError> {
        self.with_worker(|store, inst, policy| {
            inst.celine_mqtt_policy_engine().policy().call_certificate_subject(store, policy, name, kind)
        })
        .map_err(SubjectError::Fault)?
        .map_err(SubjectError::Refused)
    }
}

impl From<policy_core::Subject> for Subject {
    fn from(s: policy_core::Subject) -> Subject {
        Subject { id: s.id, type_: s.kind.into(), groups: s.groups, scopes: s.scopes }
    }
}

impl From<policy_core::SubjectType> for SubjectType {
    fn from(t: policy_core::SubjectType) -> SubjectType {
        match t {
            policy_core::SubjectType::User => SubjectType::User,
            policy_core::SubjectType::Service => SubjectType::Service,
            policy_core::SubjectType::Device => SubjectType::Device,
        }
    }
}

impl From<policy_core::Action> for Action {
    fn from(a: policy_core::Action) -> Action {
        match a {
            policy_core::Action::Subscribe => Action::Subscribe,
            policy_core::Action::Read => Action::Read,
            policy_core::Action::Publish => Action::Publish,
        }
    }
}

impl SubjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectType::User => "user",
            SubjectType::Service => "service",
            SubjectType::Device => "device",
        }
    }

    pub fn parse(s: &str) -> Option<SubjectType> {
        [SubjectType::User, SubjectType::Service, SubjectType::Device].into_iter().find(|t| t.as_str() == s)
    }
}

impl Subject {
    pub fn kind_str(&self) -> &'static str {
        self.type_.as_str()
    }
}

/// The module embedded in this binary by `cargo xtask build`, if any.
pub fn embedded_module() -> Option<&'static [u8]> {
    #[cfg(embedded_module)]
    {
        Some(include_bytes!(concat!(env!("OUT_DIR"), "/policy.wasm")))
    }
    #[cfg(not(embedded_module))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = include_str!("../../policies/celine.json");

    fn viewer_reads(topic: &str) -> Request {
        Request {
            subject: Subject {
                id: "u1".into(),
                type_: SubjectType::User,
                groups: vec!["viewers".into()],
                scopes: vec![],
            },
            topic: topic.into(),
            action: Action::Read,
            clientid: "c".into(),
            username: String::new(),
        }
    }

    #[test]
    fn a_thread_that_must_not_wait_is_denied_rather_than_made_to_build_an_instance() {
        let bytes = embedded_module()
            .expect("this test needs the built-in policy module: run `cargo xtask build` first");
        let generation = Generation::new(Runtime::new(None).unwrap().module(bytes).unwrap(), POLICY).unwrap();
        let topic = "celine/telemetry/meter/m1/readings";
        std::thread::scope(|s| {
            s.spawn(|| {
                must_not_wait();
                generation.idle.lock().unwrap().clear();
                let refused = generation.try_check(&viewer_reads(topic)).unwrap_err();
                assert!(refused.0.contains("no policy module instance is ready"), "{refused}");
                // The builder thread fills the pool up again.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while generation.idle.lock().unwrap().len() < generation.warm {
                    assert!(std::time::Instant::now() < deadline, "the pool was not refilled");
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(generation.try_check(&viewer_reads(topic)).unwrap().allow);
            });
        });
        // Other threads still build what they need themselves.
        generation.idle.lock().unwrap().clear();
        assert!(generation.try_check(&viewer_reads(topic)).unwrap().allow);
    }

    #[test]
    fn the_budget_counts_cpu_time_from_the_first_deadline() {
        let ms = Duration::from_millis;
        let mut b = Budget::new(ms(50));
        let first = b.at_deadline(ms(1_000), 10);
        assert!(matches!(first, UpdateDeadline::Continue(10)), "the first deadline marks");
        assert!(matches!(b.at_deadline(ms(1_049), 10), UpdateDeadline::Continue(10)));
        assert!(matches!(b.at_deadline(ms(1_050), 10), UpdateDeadline::Interrupt));
        let (before, after) = (thread_cpu_time(), {
            std::hint::black_box((0..1_000_000u64).sum::<u64>());
            thread_cpu_time()
        });
        assert!(after > before, "the thread's CPU clock advances");
    }
}
