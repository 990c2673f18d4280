//! Running policy modules: wasmtime components behind the WIT world `policy-module`.
//!
//! - One [`Runtime`] per process: the wasmtime `Engine` (epoch interruption on, no WASI, no
//!   imports at all) and a ticker thread that advances the epoch every [`TICK`] while guest
//!   code may run (it ends after [`TICKER_IDLE`] without any, and the next call starts it).
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
//! - A generation of the built-in module (byte for byte the one in this binary: `policy-core`
//!   compiled to WebAssembly) also loads its document natively and decides checks with that
//!   same code natively, a subject prepared once per connection where the caller keeps one;
//!   the differential tests hold native and module decisions equal. Any other module is
//!   called for every check, its logic being unknown to the host.
//! - Instances are built when a generation is made, and afterwards on a builder thread that
//!   ends when the pool is full, never on a thread that said it must not wait ([`must_not_wait`]: the broker's):
//!   there, an empty pool denies the request and asks for another instance.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::anyhow;
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
use celine::mqtt_policy::types::{Limits, Rate};

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
    /// The epoch ticker's state, shared with it.
    ticker: Arc<Ticker>,
    /// Threads this runtime started (the ticker, instance builders), joined on drop; finished
    /// ones are let go when the next one starts.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The epoch ticker runs only while guest code may run: it starts with the first call or load
/// after an idle spell and ends after [`TICKER_IDLE`] without any. A process that decides
/// natively (the broker with the built-in module) then has no thread of ours between
/// connections; in a broker, any second thread makes every socket call of the event loop
/// dearer (the kernel shares the file table then, and counts references on every use).
struct Ticker {
    /// Guest calls and loads in progress.
    active: AtomicUsize,
    /// Guest calls and loads begun since the runtime started: a call shorter than a tick is
    /// seen here even when no tick finds it in progress.
    entered: AtomicU64,
    /// A ticker thread is running (or being started).
    running: AtomicBool,
}

/// How long the ticker goes on without a guest call before it ends.
pub const TICKER_IDLE: Duration = Duration::from_millis(250);

/// While alive, guest code may run: the epoch ticker is running.
struct Ticking<'r>(&'r Runtime);

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.ticker.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runtime {
    /// The engine. Its threads (the epoch ticker, instance builders) start when needed, end
    /// when idle, and are joined when the runtime is dropped: a plugin must leave no thread
    /// behind when its library is unloaded.
    ///
    /// `cache_dir` holds compiled modules; a directory that cannot be written (Mosquitto drops
    /// to its own user, whose home may be unreadable) only costs a compile per start.
    pub fn new(cache_dir: Option<PathBuf>) -> anyhow::Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        // Measured ~3x cheaper guest calls (toolchain-notes.md); we make no async calls.
        config.concurrency_support(false);
        // Compiling on the calling thread: a compiler thread pool would stay in the process.
        config.parallel_compilation(false);
        let engine = Engine::new(&config).map_err(|e| anyhow!("creating the wasmtime engine: {e}"))?;
        Ok(Arc::new(Runtime {
            engine,
            cache_dir,
            faults: AtomicU64::new(0),
            stop: Arc::new(AtomicBool::new(false)),
            ticker: Arc::new(Ticker {
                active: AtomicUsize::new(0),
                entered: AtomicU64::new(0),
                running: AtomicBool::new(false),
            }),
            threads: Mutex::new(Vec::new()),
        }))
    }

    /// Marks guest code as about to run: starts the epoch ticker unless it runs.
    fn ticking(&self) -> Result<Ticking<'_>, Fault> {
        let t = &self.ticker;
        t.active.fetch_add(1, Ordering::SeqCst);
        t.entered.fetch_add(1, Ordering::Relaxed);
        let ticking = Ticking(self);
        if !t.running.load(Ordering::SeqCst)
            && t.running.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        {
            let (ticker, stop, engine) =
                (Arc::clone(&self.ticker), Arc::clone(&self.stop), self.engine.weak());
            let started = self.start_thread("wasm-epoch", move || tick_while_needed(&ticker, &stop, &engine));
            if let Err(e) = started {
                t.running.store(false, Ordering::SeqCst);
                // Without a ticker a guest could run unbounded: refuse to enter it.
                return Err(Fault(format!("cannot start the policy module's timer thread: {e}")));
            }
        }
        Ok(ticking)
    }

    /// Starts a thread of this runtime (joined on drop).
    fn start_thread(&self, name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        if self.stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("the runtime is shutting down"));
        }
        threads.retain(|t| !t.is_finished());
        threads.push(std::thread::Builder::new().name(name.into()).spawn(f)?);
        Ok(())
    }

    /// Builds instances for `generation` on a thread of its own, which ends when done.
    fn want_instance(&self, generation: Weak<Generation>) {
        let started = self.start_thread("wasm-builder", move || {
            if let Some(g) = generation.upgrade() {
                g.refill();
            }
        });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start a thread to build policy module instances");
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
        let _ticking = self.ticking()?;
        let mut store = self.new_store();
        set_budget(&mut store, CALL_TICKS, CALL_CPU);
        let inst = pre.instantiate(&mut store).map_err(|e| anyhow!("instantiating the module: {e}"))?;
        let version = inst
            .celine_mqtt_policy_engine()
            .call_version(&mut store)
            .map_err(|e| anyhow!("the module's version() failed: {}", fault(e)))?;
        // The embedded module, and built from this very policy-core (a stale or substituted
        // embedded file decides through calls, not natively).
        let built_in = embedded_module().is_some_and(|e| e == bytes)
            && version == format!("policy-core {}", policy_core::VERSION);
        Ok(Arc::new(Module { runtime: Arc::clone(self), pre, hash, version, built_in }))
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
        let threads = std::mem::take(self.threads.get_mut().unwrap_or_else(|p| p.into_inner()));
        for t in threads {
            // A builder may hold the last reference to a generation, which holds this runtime:
            // then this drop runs on that thread itself, which must not join itself.
            if t.thread().id() != std::thread::current().id() {
                t.thread().unpark();
                let _ = t.join();
            }
        }
    }
}

/// The epoch ticker's loop: advances the epoch every [`TICK`] until the runtime stops, or
/// until no guest code has run for [`TICKER_IDLE`] (then a later call starts another).
fn tick_while_needed(t: &Ticker, stop: &AtomicBool, engine: &wasmtime::EngineWeak) {
    let idle_ticks = (TICKER_IDLE.as_millis() / TICK.as_millis()) as u32;
    let mut idle = 0;
    let mut entered = t.entered.load(Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        let Some(e) = engine.upgrade() else { break };
        e.increment_epoch();
        drop(e);
        std::thread::park_timeout(TICK);
        let entered_now = t.entered.load(Ordering::Relaxed);
        let quiet = t.active.load(Ordering::SeqCst) == 0 && entered_now == entered;
        entered = entered_now;
        idle = if quiet { idle + 1 } else { 0 };
        if idle >= idle_ticks {
            t.running.store(false, Ordering::SeqCst);
            // A call that came in meanwhile either saw `running` still set (then it is
            // counted in `active` now) or starts a ticker of its own.
            if t.active.load(Ordering::SeqCst) == 0
                || t.running.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_err()
            {
                return;
            }
            idle = 0;
        }
    }
    t.running.store(false, Ordering::SeqCst);
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
    /// The module is byte for byte the one built into this binary (`policy-wasm`, that is
    /// `policy-core`): its generations decide natively (see [`Generation::decides_natively`]).
    pub built_in: bool,
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
#[repr(C)]
pub struct Generation {
    pub id: u64,
    /// The document loaded natively, when the module is the built-in one. (With `id`, first:
    /// a check a prepared subject's residual answers reads only these.)
    native: Option<policy_core::Policy>,
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

/// A subject prepared for many decisions under one generation ([`Generation::prepare`]): a
/// broker connection keeps one per generation.
#[repr(C)]
pub struct Prepared {
    generation: u64,
    subject: policy_core::Prepared,
}

impl Prepared {
    /// About what it takes in memory, in bytes.
    pub fn bytes(&self) -> usize {
        self.subject.bytes() + core::mem::size_of::<u64>()
    }

    /// [`Generation::allowed_as_prepared`] of the generation whose id is `generation`, without
    /// reading that generation: only a generation that decides natively prepares a subject,
    /// and only for itself, so a subject prepared by the generation `generation` names is
    /// decided by its own policy's residual. A topic is the broker's bytes (one that is not
    /// UTF-8 is never allowed here). For a host that keeps the live generation's id at hand.
    #[inline]
    pub fn allowed_under(&self, generation: u64, action: Action, topic: &[u8]) -> Option<usize> {
        if self.generation != generation {
            return None;
        }
        self.subject.allowed_under_its_policy(core_action(action), topic)
    }
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
            native: None,
        };
        let mut worker = built.new_worker()?;
        let runtime = Arc::clone(&built.module.runtime);
        let ticking = runtime.ticking()?;
        let engine = worker.instance.celine_mqtt_policy_engine();
        set_budget(&mut worker.store, CALL_TICKS, CALL_CPU);
        built.rule_count = engine
            .policy()
            .call_rule_count(&mut worker.store, worker.policy)
            .map_err(|e| anyhow!(fault(e)))?;
        drop(ticking);
        let mut workers = vec![worker];
        for _ in 1..warm {
            workers.push(built.new_worker()?);
        }
        *built.idle.get_mut().unwrap() = workers;
        if built.module.built_in {
            // The module accepted the document, so the same code natively does too; should it
            // not, decisions stay with the module.
            built.native = policy_core::Policy::load(document)
                .inspect_err(|e| tracing::error!(generation = built.id, diagnostics = ?e, "the built-in module loaded a document policy-core refuses; every check calls the module"))
                .ok();
        }
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
        let _ticking = self.module.runtime.ticking()?;
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
        let ticking = match self.module.runtime.ticking() {
            Ok(t) => t,
            Err(fault) => {
                self.idle.lock().unwrap().push(worker);
                return Err(fault);
            }
        };
        set_budget(&mut worker.store, CALL_TICKS, CALL_CPU);
        let result = f(&mut worker.store, &worker.instance, worker.policy);
        drop(ticking);
        match result {
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

    /// Whether this generation decides checks natively: its module is the built-in one,
    /// which is `policy-core` compiled to WebAssembly, so the same code, run natively,
    /// decides exactly as a call into it would (`tests/differential.rs` holds the two to the
    /// same answers) in a fraction of the time. Any other module is called for every check.
    pub fn decides_natively(&self) -> bool {
        self.native.is_some()
    }

    /// How checks are decided, for start-up and swap lines.
    pub fn deciding(&self) -> &'static str {
        if self.decides_natively() {
            "natively (the built-in module's policy-core, subjects prepared once per connection)"
        } else {
            "by a call into the policy module for every check (not the built-in module)"
        }
    }

    /// Decides one request, or says why the module failed to (a fault: never cache it).
    pub fn try_check(&self, req: &Request) -> Result<Decision, Fault> {
        match &self.native {
            Some(policy) => {
                let subject = core_subject(&req.subject);
                let q = policy_core::Query {
                    subject: &subject,
                    action: core_action(req.action),
                    topic: &req.topic,
                    clientid: &req.clientid,
                    username: &req.username,
                    message: core_message(req),
                };
                Ok(policy.check(&q).into())
            }
            None => self.module_check(req),
        }
    }

    /// Decides one request through the module, even when the generation could decide it
    /// natively: for the differential tests and the benchmarks.
    pub fn module_check(&self, req: &Request) -> Result<Decision, Fault> {
        self.with_worker(|store, inst, policy| {
            inst.celine_mqtt_policy_engine().policy().call_check(store, policy, req)
        })
    }

    /// Prepares `subject` for many checks under this generation with this client id and
    /// username, when it decides natively.
    pub fn prepare(&self, subject: &Subject, clientid: &str, username: &str) -> Option<Prepared> {
        let policy = self.native.as_ref()?;
        Some(Prepared {
            generation: self.id,
            subject: policy.prepare(core_subject(subject), clientid, username),
        })
    }

    /// Whether a decision of this generation can depend on the request's `qos` and `retain`:
    /// natively, when the document has such conditions; a module that changes the logic may
    /// read them whatever the document says.
    pub fn reads_message(&self) -> bool {
        self.native.as_ref().is_none_or(policy_core::Policy::reads_message)
    }

    /// The rules with conditions on the message (`qos`, `retain`), for people:
    /// `'no-retained-telemetry' (deny: retained messages only)`. `None` for a module that
    /// changes the logic: it may read the message whatever the document says.
    pub fn message_rules(&self) -> Option<Vec<String>> {
        let policy = self.native.as_ref()?;
        let rules = policy.rules().iter().filter(|r| !r.conditions.is_none());
        Some(
            rules
                .map(|r| {
                    format!(
                        "{} ({}: {})",
                        policy_core::quote(&r.name),
                        r.effect.as_str(),
                        r.conditions.describe()
                    )
                })
                .collect(),
        )
    }

    /// The rule that allows `action` on `topic` by a prepared subject, for the client id and
    /// username it was prepared with, when the subject's residual decides it at once (no
    /// allocation, no formatted reason: [`Generation::allowed_by`] makes the decision when it
    /// is shown). `None`: decide it with [`Generation::try_check_prepared`].
    #[inline]
    pub fn allowed_as_prepared(&self, prepared: &Prepared, action: Action, topic: &str) -> Option<usize> {
        let policy = self.native.as_ref().filter(|_| prepared.generation == self.id)?;
        policy.allowed_as_prepared(&prepared.subject, core_action(action), topic)
    }

    /// The decision of a check [`Generation::allowed_as_prepared`] answered with `rule`, made
    /// only when it is shown. `None` when this generation does not decide natively (it then
    /// answers no check at once, so it has no such rule).
    pub fn allowed_by(&self, rule: usize, action: Action, topic: &str) -> Option<Decision> {
        let policy = self.native.as_ref()?;
        Some(policy.allowed_by(rule, core_action(action), topic).into())
    }

    /// [`Generation::try_check`] for the prepared subject of `req` (`prepared` must be made
    /// from `req.subject`; prepared under another generation, or `None`, it is not used).
    pub fn try_check_prepared(&self, prepared: Option<&Prepared>, req: &Request) -> Result<Decision, Fault> {
        match (&self.native, prepared) {
            (Some(policy), Some(p)) if p.generation == self.id => Ok(policy
                .check_prepared(
                    &p.subject,
                    core_action(req.action),
                    &req.topic,
                    &req.clientid,
                    &req.username,
                    core_message(req),
                )
                .into()),
            _ => self.try_check(req),
        }
    }

    /// Decides one request. A module fault is a denial that says so.
    pub fn check(&self, req: &Request) -> Decision {
        self.try_check(req).unwrap_or_else(|why| Decision { allow: false, rule: None, reason: why.0 })
    }

    /// Is the subject a superuser? A module fault is a denial that says so.
    pub fn superuser(&self, who: &Subject) -> Decision {
        self.try_superuser(who).unwrap_or_else(|why| Decision { allow: false, rule: None, reason: why.0 })
    }

    /// Is the subject a superuser, or why the module failed to say.
    pub fn try_superuser(&self, who: &Subject) -> Result<Decision, Fault> {
        match &self.native {
            Some(policy) => Ok(policy.superuser(&core_subject(who)).into()),
            None => self.with_worker(|store, inst, policy| {
                inst.celine_mqtt_policy_engine().policy().call_superuser(store, policy, who)
            }),
        }
    }

    /// [`Generation::superuser`] through the module, even when the generation decides
    /// natively: for the differential tests.
    pub fn module_superuser(&self, who: &Subject) -> Decision {
        self.with_worker(|store, inst, policy| {
            inst.celine_mqtt_policy_engine().policy().call_superuser(store, policy, who)
        })
        .unwrap_or_else(|why| Decision { allow: false, rule: None, reason: why.0 })
    }

    /// The subject's limits (the document's `limits` section; natively for the built-in
    /// module, else through the module). A fault: the caller fails closed.
    pub fn limits(&self, who: &Subject) -> Result<policy_core::Limits, Fault> {
        match &self.native {
            Some(policy) => Ok(policy.limits(&core_subject(who))),
            None => self.module_limits(who),
        }
    }

    /// [`Generation::limits`] through the module: for the differential tests.
    pub fn module_limits(&self, who: &Subject) -> Result<policy_core::Limits, Fault> {
        self.with_worker(|store, inst, policy| {
            inst.celine_mqtt_policy_engine().policy().call_limits(store, policy, who)
        })
        .and_then(core_limits)
    }

    /// Whether the document has `limits` entries (read natively; `true` when it does not
    /// load natively, a module with a format of its own, which may have limits).
    pub fn has_limits(&self) -> bool {
        match &self.native {
            Some(policy) => !policy.limit_entries().is_empty(),
            None => policy_core::Policy::load(&self.document).map_or(true, |p| !p.limit_entries().is_empty()),
        }
    }

    /// Maps verified claims to a subject (policy logic: natively for the built-in module,
    /// else through the module): [`SubjectError::Refused`] when they name none,
    /// [`SubjectError::Fault`] when the module could not say.
    pub fn subject_from_claims(&self, claims_json: &str) -> Result<Subject, SubjectError> {
        match &self.native {
            Some(_) => policy_core::subject_from_claims_json(claims_json)
                .map(Subject::from)
                .map_err(|e| SubjectError::Refused(String::from(e))),
            None => self.module_subject_from_claims(claims_json),
        }
    }

    /// [`Generation::subject_from_claims`] through the module: for the differential tests.
    pub fn module_subject_from_claims(&self, claims_json: &str) -> Result<Subject, SubjectError> {
        self.with_worker(|store, inst, _| {
            inst.celine_mqtt_policy_engine().call_subject_from_claims(store, claims_json)
        })
        .map_err(SubjectError::Fault)?
        .map_err(SubjectError::Refused)
    }

    /// The subject of a client known by its certificate name, as a subject of type `kind`
    /// (the document's `certificates` section): [`SubjectError::Refused`] when the name is no
    /// client of the policy, [`SubjectError::Fault`] when the module could not say (callers
    /// fail closed, and remember nothing).
    pub fn certificate_subject(&self, name: &str, kind: SubjectType) -> Result<Subject, SubjectError> {
        match &self.native {
            Some(policy) => policy
                .certificate_subject(name, core_type(kind))
                .map(Subject::from)
                .map_err(|e| SubjectError::Refused(String::from(e))),
            None => self.module_certificate_subject(name, kind),
        }
    }

    /// [`Generation::certificate_subject`] through the module: for the differential tests.
    pub fn module_certificate_subject(&self, name: &str, kind: SubjectType) -> Result<Subject, SubjectError> {
        self.with_worker(|store, inst, policy| {
            inst.celine_mqtt_policy_engine().policy().call_certificate_subject(store, policy, name, kind)
        })
        .map_err(SubjectError::Fault)?
        .map_err(SubjectError::Refused)
    }
}

/// A module's limits in `policy-core`'s form; a rate or burst of 0 (which no document can
/// state) is a fault, not a limit to enforce.
fn core_limits(l: Limits) -> Result<policy_core::Limits, Fault> {
    let rate = |r: Option<Rate>| match r {
        Some(Rate { per_second: 0, .. } | Rate { burst: 0, .. }) => {
            Err(Fault("the policy module returned a rate or burst of 0 in a subject's limits".into()))
        }
        r => Ok(r.map(|r| policy_core::Rate { per_second: r.per_second, burst: r.burst })),
    };
    Ok(policy_core::Limits {
        max_subscriptions: l.max_subscriptions,
        max_payload_bytes: l.max_payload_bytes,
        publish_messages: rate(l.publish_messages)?,
        publish_bytes: rate(l.publish_bytes)?,
        retain: l.retain,
    })
}

fn core_type(t: SubjectType) -> policy_core::SubjectType {
    match t {
        SubjectType::User => policy_core::SubjectType::User,
        SubjectType::Service => policy_core::SubjectType::Service,
        SubjectType::Device => policy_core::SubjectType::Device,
    }
}

fn core_subject(s: &Subject) -> policy_core::Subject {
    policy_core::Subject {
        id: s.id.clone(),
        kind: core_type(s.type_),
        groups: s.groups.clone(),
        scopes: s.scopes.clone(),
    }
}

fn core_message(req: &Request) -> policy_core::Message {
    policy_core::Message { qos: req.qos, retain: req.retain }
}

fn core_action(a: Action) -> policy_core::Action {
    match a {
        Action::Subscribe => policy_core::Action::Subscribe,
        Action::Read => policy_core::Action::Read,
        Action::Publish => policy_core::Action::Publish,
    }
}

impl From<policy_core::Decision> for Decision {
    fn from(d: policy_core::Decision) -> Decision {
        Decision { allow: d.allow, rule: d.rule, reason: d.reason }
    }
}

impl From<&Subject> for policy_core::Subject {
    fn from(s: &Subject) -> policy_core::Subject {
        core_subject(s)
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
            qos: None,
            retain: None,
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
                let refused = generation.module_check(&viewer_reads(topic)).unwrap_err();
                assert!(refused.0.contains("no policy module instance is ready"), "{refused}");
                // The builder thread fills the pool up again.
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while generation.idle.lock().unwrap().len() < generation.warm {
                    assert!(std::time::Instant::now() < deadline, "the pool was not refilled");
                    std::thread::sleep(Duration::from_millis(5));
                }
                assert!(generation.module_check(&viewer_reads(topic)).unwrap().allow);
            });
        });
        // Other threads still build what they need themselves.
        generation.idle.lock().unwrap().clear();
        assert!(generation.module_check(&viewer_reads(topic)).unwrap().allow);
    }

    /// The ticker thread running now, if any.
    fn ticker_thread(rt: &Runtime) -> Option<std::thread::ThreadId> {
        let threads = rt.threads.lock().unwrap();
        threads
            .iter()
            .find(|t| !t.is_finished() && t.thread().name() == Some("wasm-epoch"))
            .map(|t| t.thread().id())
    }

    /// Calls far shorter than a tick, a few ticks apart: no tick finds one in progress, yet
    /// the ticker must not end and start again between them (a thread started per spell, and
    /// a call that starts one gives it its own priority and cores).
    #[test]
    fn short_calls_a_few_ticks_apart_keep_one_ticker() {
        let rt = Runtime::new(None).unwrap();
        drop(rt.ticking().unwrap());
        let first = ticker_thread(&rt).expect("a call starts the ticker");
        // Twice as long as the ticker's idle time, in calls five ticks apart.
        let calls = 2 * TICKER_IDLE.as_millis() / (5 * TICK.as_millis());
        for n in 0..calls {
            std::thread::sleep(5 * TICK);
            drop(rt.ticking().unwrap());
            assert_eq!(ticker_thread(&rt), Some(first), "call {n}: the ticker ended between calls");
        }
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
