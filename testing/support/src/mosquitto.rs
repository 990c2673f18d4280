//! Mosquitto (Debian's package) with the project's plugin, on a free loopback port.
//!
//! Started as root, Mosquitto drops to the `mosquitto` user before it loads plugins, whose
//! home (`/root`) it cannot read: so the plugin and every file it is given live in a
//! world-readable directory of the test's own ([`Setup`]), as an operator would install
//! them, unless the test asks for `user root`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a broker may take to start (the plugin compiles the policy module: ~1 s).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `mosquitto` executable (`MQTT_POLICY_MOSQUITTO` names another, such as a 2.1 built
/// by hand), or a failure saying how to install it.
pub fn executable() -> PathBuf {
    if let Some(other) = std::env::var_os("MQTT_POLICY_MOSQUITTO") {
        let other = PathBuf::from(other);
        assert!(other.exists(), "MQTT_POLICY_MOSQUITTO names {}, which does not exist", other.display());
        return other;
    }
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "mosquitto is not installed: `cargo xtask e2e` installs it (apt-get install mosquitto mosquitto-clients)"
    )
}

/// The broker's version as (major, minor), from its `-h` banner ("mosquitto version 2.0.11").
pub fn version() -> (u32, u32) {
    let out = Command::new(executable()).arg("-h").output().expect("running mosquitto -h");
    let text = String::from_utf8_lossy(&out.stdout);
    let parse = || {
        let v = text.lines().next()?.strip_prefix("mosquitto version ")?;
        let mut parts = v.trim().split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??))
    };
    parse().unwrap_or_else(|| panic!("no version in mosquitto -h's first line: {text:?}"))
}

/// The plugin as built by `cargo build -p mosquitto-plugin` (`MQTT_POLICY_PLUGIN` names
/// another), copied into a world-readable directory.
///
/// The copy is named after the build's size and modification time and shared by every test
/// process that wants the same build (a temporary directory per process would outlive it: a
/// static is never dropped, and each copy is a few hundred MB). It is written under a
/// temporary name and renamed, so concurrent test processes never load a half-written file;
/// copies of other builds not touched for an hour are removed.
pub fn plugin() -> PathBuf {
    static COPY: OnceLock<PathBuf> = OnceLock::new();
    COPY.get_or_init(|| {
        let built = std::env::var_os("MQTT_POLICY_PLUGIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| crate::target_dir().join("debug/libmqtt_policy_mosquitto.so"));
        let meta = std::fs::metadata(&built).unwrap_or_else(|e| {
            panic!(
                "{} is missing ({e}): build it with `cargo build -p mosquitto-plugin` (cargo xtask e2e does)",
                built.display()
            )
        });
        let dir = std::env::temp_dir().join("mqtt-policy-test-plugins");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let modified = meta.modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let name = format!("libmqtt_policy_mosquitto-{}-{}.so", meta.len(), modified.as_nanos());
        let copy = dir.join(&name);
        if !copy.exists() {
            let partial = dir.join(format!(".{name}.{}", std::process::id()));
            std::fs::copy(&built, &partial).unwrap();
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::rename(&partial, &copy).unwrap();
        }
        // Touched, so that other processes' clean-up sees it in use.
        let now = std::time::SystemTime::now();
        let _ = std::fs::File::options().append(true).open(&copy).and_then(|f| f.set_modified(now));
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| now.duration_since(m).unwrap_or_default() > Duration::from_secs(3600));
            if entry.file_name() != *name && stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        copy
    })
    .clone()
}

fn readable_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("mqtt-policy-test-").tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// What a broker is started with: `plugin_opt_*` lines, other configuration lines, and a
/// directory for the files they name.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub options: Vec<(String, String)>,
    pub config: Vec<String>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup::new()
    }
}

impl Setup {
    pub fn new() -> Setup {
        Setup { dir: readable_dir(), options: Vec::new(), config: Vec::new() }
    }

    /// Writes a file the broker's user can read; returns its path.
    pub fn file(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.dir.path().join(name);
        write_readable(&p, contents.as_ref());
        p
    }

    pub fn option(mut self, name: &str, value: impl AsRef<str>) -> Setup {
        self.options.push((name.to_string(), value.as_ref().to_string()));
        self
    }

    pub fn config(mut self, line: &str) -> Setup {
        self.config.push(line.to_string());
        self
    }
}

/// Writes the configuration (a listener on `port`, `extra` lines, the plugin and its
/// options, the setup's lines) and starts Mosquitto on it, its log on a pipe.
fn spawn(setup: &Setup, port: u16, extra: &str) -> Child {
    let mut conf = format!(
        "per_listener_settings false\nlistener {port} 127.0.0.1\nlog_dest stderr\n{extra}plugin {}\n",
        plugin().display()
    );
    for (k, v) in &setup.options {
        conf.push_str(&format!("plugin_opt_{k} {v}\n"));
    }
    for line in &setup.config {
        conf.push_str(line);
        conf.push('\n');
    }
    let conf_path = setup.file("mosquitto.conf", &conf);
    Command::new(executable())
        .arg("-c")
        .arg(&conf_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mosquitto")
}

/// Replaces a file the way an editor or `mv` does (write aside, rename), readable by all.
pub fn write_readable(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

/// A running Mosquitto; killed (by PID) when dropped.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub setup: Setup,
    log: Arc<Log>,
}

impl Broker {
    /// Starts Mosquitto with the plugin and `setup`, and waits until it listens.
    pub fn start(setup: Setup) -> Broker {
        let mut setup = setup;
        for _attempt in 0..3 {
            match Broker::try_start(setup) {
                Ok(b) => return b,
                // The free port was taken meanwhile: another.
                Err(s) => setup = s,
            }
        }
        panic!("Mosquitto could not find a free port in three attempts");
    }

    fn try_start(setup: Setup) -> Result<Broker, Setup> {
        let port = crate::free_port();
        let mut child = spawn(&setup, port, "allow_anonymous false\npersistence false\nlog_type all\n");
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lines.lock().unwrap().push(line);
                sink.grew.notify_all();
            }
        });
        let mut broker = Broker { child, port, setup, log };
        let started = Instant::now();
        loop {
            if broker.log_contains(" running") {
                return Ok(broker);
            }
            if let Ok(Some(status)) = broker.child.try_wait() {
                let log = broker.log();
                if log.contains("Address already in use") {
                    return Err(broker.into_setup());
                }
                panic!("mosquitto exited ({status}) before it was ready:\n{log}");
            }
            assert!(started.elapsed() < START_TIMEOUT, "mosquitto did not start:\n{}", broker.log());
            broker.wait_for_more(Duration::from_millis(100));
        }
    }

    fn into_setup(mut self) -> Setup {
        let _ = self.child.kill();
        let _ = self.child.wait();
        Setup {
            dir: std::mem::replace(&mut self.setup.dir, readable_dir()),
            options: std::mem::take(&mut self.setup.options),
            config: std::mem::take(&mut self.setup.config),
        }
    }

    /// Starts a broker expected to refuse its configuration; returns its exit status and log.
    pub fn start_failing(setup: Setup) -> (ExitStatus, String) {
        let mut child = spawn(&setup, crate::free_port(), "");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut log = String::new();
                let _ = std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log);
                return (status, log);
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mosquitto started although its configuration is wrong");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// How many lines have been logged (a mark for [`Broker::wait_for_log_after`]).
    pub fn log_mark(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    fn log_contains(&self, needle: &str) -> bool {
        self.log.lines.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    fn wait_for_more(&self, at_most: Duration) {
        let lines = self.log.lines.lock().unwrap();
        let n = lines.len();
        let _ = self.log.grew.wait_timeout_while(lines, at_most, |l| l.len() == n);
    }

    /// Waits for a line containing `needle` logged after line `mark`; returns that line.
    pub fn wait_for_log_after(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.log.lines.lock().unwrap().iter().skip(mark).find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                started.elapsed() < timeout,
                "no log line with {needle:?} within {timeout:?}; the log:\n{}",
                self.log()
            );
            self.wait_for_more(Duration::from_millis(100));
        }
    }

    /// Waits for the plugin's decision record (`audit: {...}`) of `action` on `topic` with
    /// `decision` (`allow` or `deny`) logged after line `mark`; returns the record.
    pub fn wait_for_record_after(
        &self,
        mark: usize,
        action: &str,
        topic: &str,
        decision: &str,
        timeout: Duration,
    ) -> serde_json::Value {
        let needle = format!(
            "\"topic\":{},\"action\":\"{action}\",\"decision\":\"{decision}\"",
            serde_json::Value::from(topic)
        );
        let line = self.wait_for_log_after(mark, &needle, timeout);
        let json =
            line.split_once("audit: ").map(|(_, j)| j).unwrap_or_else(|| panic!("not a record: {line}"));
        serde_json::from_str(json).unwrap_or_else(|e| panic!("a record that is no JSON ({e}): {line}"))
    }

    /// Signals our own child by its PID.
    fn signal(&self, signal: rustix::process::Signal) {
        let pid = i32::try_from(self.child.id()).ok().and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }

    /// Sends `SIGHUP` (Mosquitto reloads its configuration and tells the plugin).
    pub fn hang_up(&self) {
        self.signal(rustix::process::Signal::HUP);
    }

    /// Stops the broker the way a service manager does (`SIGTERM`) and returns how it ended.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "mosquitto did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
