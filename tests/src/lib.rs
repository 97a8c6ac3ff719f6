//! Harness for end-to-end tests: starts real `evolve` daemons on loopback ports, talks HTTP to
//! them over real sockets, and waits on their log events rather than sleeping.
//!
//! The daemon binary and the plugin components come from the build (`cargo xtask test` builds
//! both): `target/release/evolve` and `target/plugins/{bundled,testing}/<name>/`.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test with its reason

pub mod bench;
pub mod demo;
pub mod echo;
pub mod http;
pub mod redis;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for waiting on a daemon event. Generous because CI has 2 cores shared with the
/// test threads; normal waits end in milliseconds when the event arrives.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a daemon may take to listen and load its plugins: a cold AOT cache compiles each
/// one (a Python or JavaScript component alone takes 15-45 s on a busy 2-core machine while
/// other tests run).
pub const START_TIMEOUT: Duration = Duration::from_secs(300);

/// Held by the few tests that load the CPU for minutes (a nested `cargo test` building the
/// daemon's crates) or that must not be starved while they compile cold (a daemon start that
/// compiles Python and JavaScript components, seconds each): on 2 cores, one of them at a time
/// keeps everyone's waits inside [`EVENT_TIMEOUT`].
pub fn cpu_heavy() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    evolve_core::sync::lock(&LOCK)
}

/// Polls `check` (every 20 ms) until it answers, for a state the daemon reaches on its own
/// (a queued write landing, a periodic view refresh); panics naming `what` after
/// [`EVENT_TIMEOUT`].
pub fn wait_until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `evolve` binary under test (`EVOLVE_BIN` overrides).
pub fn evolve_bin() -> PathBuf {
    release_bin("evolve", "EVOLVE_BIN")
}

/// A binary of the workspace's release build, or the path in `override_var`.
pub fn release_bin(name: &str, override_var: &str) -> PathBuf {
    let path = std::env::var_os(override_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target/release").join(name));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo xtask test`, which builds it",
        path.display()
    );
    path
}

/// A built plugin directory: `set` is `bundled` or `testing`.
pub fn built_plugin(set: &str, name: &str) -> PathBuf {
    let dir = root().join("target/plugins").join(set).join(name);
    assert!(
        dir.join("plugin.toml").is_file(),
        "{} is missing: run `cargo xtask test`, which builds the plugins",
        dir.display()
    );
    dir
}

/// A scratch environment for one daemon: data dir, plugins dir, optional shared AOT cache.
pub struct Env {
    pub temp: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub plugins_dir: PathBuf,
    pub config_path: PathBuf,
    pub extra_config: String,
}

impl Env {
    /// A fresh environment whose AOT cache is shared with other tests (compiles once per run).
    pub fn new() -> Env {
        let cache = root().join("target/e2e-aot-cache");
        Env::with_cache(Some(cache))
    }

    /// `cache = None` gives the environment a private AOT cache under its data dir.
    pub fn with_cache(cache: Option<PathBuf>) -> Env {
        let temp = tempfile::tempdir().unwrap();
        let data_dir = temp.path().join("data");
        let plugins_dir = temp.path().join("plugins");
        std::fs::create_dir_all(&plugins_dir).unwrap();
        // The bundled and test plugins grant directories under the data dir (docs, logs, state):
        // the operator's allowed root for them. A shared cache shares its key too, or every
        // environment would refuse the others' artifacts.
        let mut extra_config = format!(
            "[runtime]\nallowed_dir_roots = [{:?}]\n",
            data_dir.display().to_string()
        );
        if let Some(dir) = cache {
            extra_config.push_str(&format!(
                "cache_dir = {:?}\naot_key_file = {:?}\n",
                dir.display().to_string(),
                dir.join("aot.key").display().to_string()
            ));
        }
        Env {
            config_path: temp.path().join("evolve.toml"),
            temp,
            data_dir,
            plugins_dir,
            extra_config,
        }
    }

    /// Copies a built plugin into this environment's plugins dir, letting `edit` change its
    /// manifest; returns the installed dir.
    pub fn install(&self, set: &str, name: &str, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
        let source = built_plugin(set, name);
        let target = self.plugins_dir.join(name);
        copy_dir(&source, &target);
        let manifest_path = target.join("plugin.toml");
        let mut manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
        edit(&mut manifest);
        std::fs::write(&manifest_path, toml::to_string(&manifest).unwrap()).unwrap();
        target
    }

    /// Rewrites an installed plugin's manifest in place (truncate and write, as editors do).
    pub fn edit_manifest(&self, name: &str, edit: impl FnOnce(&mut toml::Table)) {
        let path = self.plugins_dir.join(name).join("plugin.toml");
        let mut manifest: toml::Table =
            toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut manifest);
        std::fs::write(&path, toml::to_string(&manifest).unwrap()).unwrap();
    }

    /// Replaces a file atomically (write a temp file beside it, rename over), as careful tools do.
    pub fn write_atomic(&self, path: &Path, bytes: &[u8]) {
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// Writes a raw plugin dir (manifest text and wasm bytes), for malformed-input tests.
    pub fn install_raw(
        &self,
        dir_name: &str,
        manifest: &str,
        wasm: Option<(&str, &[u8])>,
    ) -> PathBuf {
        let dir = self.plugins_dir.join(dir_name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
        if let Some((file, bytes)) = wasm {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
        dir
    }

    /// Starts a daemon on a free loopback port and waits until its API listens and every
    /// plugin dir has had its first load.
    pub fn start(&self) -> Daemon {
        self.start_with(&[], &[])
    }

    pub fn start_with(&self, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let daemon = self.spawn(args, envs);
        daemon.wait_listening();
        daemon.wait_plugins_loaded();
        daemon
    }

    /// Starts a daemon and waits only until its API listens: its plugins may still be loading.
    pub fn start_listening(&self) -> Daemon {
        let daemon = self.spawn(&[], &[]);
        daemon.wait_listening();
        daemon
    }

    /// Spawns without waiting (for tests of start-up failures).
    pub fn spawn(&self, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        std::fs::write(&self.config_path, &self.extra_config).unwrap();
        let mut command = Command::new(evolve_bin());
        command
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--plugins-dir")
            .arg(&self.plugins_dir)
            .args(args)
            .env("EVOLVE_LOG_FORMAT", "json")
            .env("EVOLVE_LOG", "info")
            .env_remove("EVOLVE_AUTH_TOKEN")
            .env_remove("EVOLVE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        for (k, v) in envs {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let log = Arc::new(Log::default());
        let stderr = child.stderr.take().unwrap();
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.push(line);
                }
                log.close();
            });
        }
        Daemon {
            child: Some(child),
            log,
            addr: Mutex::new(None),
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The daemon's stderr, line by line, with a condition variable to wait on.
#[derive(Default)]
pub struct Log {
    lines: Mutex<(Vec<String>, bool)>,
    changed: Condvar,
}

impl Log {
    fn push(&self, line: String) {
        evolve_core::sync::lock(&self.lines).0.push(line);
        self.changed.notify_all();
    }

    fn close(&self) {
        // A test that panicked while holding the lock poisoned it; the flag still matters.
        evolve_core::sync::lock(&self.lines).1 = true;
        self.changed.notify_all();
    }

    /// Waits for a JSON log line matching `pred`; panics with the log so far after
    /// [`EVENT_TIMEOUT`] or when the daemon exits first.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_nth(what, 1, pred)
    }

    /// Like [`Log::wait_for`], for the `n`th matching line (1-based).
    pub fn wait_for_nth(&self, what: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_for_nth_within(what, n, EVENT_TIMEOUT, pred)
    }

    /// Like [`Log::wait_for_nth`], giving up after `timeout`.
    pub fn wait_for_nth_within(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        let mut matched = 0;
        let mut guard = self.lines.lock().unwrap();
        loop {
            while seen < guard.0.len() {
                if let Ok(value) = serde_json::from_str::<Value>(&guard.0[seen])
                    && pred(&value)
                {
                    matched += 1;
                    if matched == n {
                        return value;
                    }
                }
                seen += 1;
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                panic!(
                    "daemon never logged {what} ({}); log:\n{}",
                    if guard.1 { "it exited" } else { "timed out" },
                    guard.0.join("\n")
                );
            }
            guard = self.changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Waits for an event of the bus (`kind`, e.g. `plugin.reloaded`, about `subject`) whose
    /// data satisfies `pred`; returns the data.
    pub fn wait_event(&self, kind: &str, subject: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let line = self.wait_for(&format!("event {kind} of {subject}"), |v| {
            v["event"] == kind
                && v["subject"] == subject
                && v["data"]
                    .as_str()
                    .and_then(|d| serde_json::from_str::<Value>(d).ok())
                    .is_some_and(|d| pred(&d))
        });
        serde_json::from_str(line["data"].as_str().unwrap()).unwrap()
    }

    /// All lines so far.
    pub fn text(&self) -> String {
        self.lines.lock().unwrap().0.join("\n")
    }
}

/// A running daemon; killed on drop.
pub struct Daemon {
    child: Option<Child>,
    pub log: Arc<Log>,
    addr: Mutex<Option<String>>,
}

impl Daemon {
    /// Waits for the end of the first load of every plugin dir (the API serves before it).
    pub fn wait_plugins_loaded(&self) -> Value {
        self.log.wait_for_nth_within(
            "the end of the plugins' first load",
            1,
            START_TIMEOUT,
            |v| v["message"] == "plugins loaded",
        )
    }

    /// Waits until the API listens, and learns its address.
    pub fn wait_listening(&self) {
        let line = self
            .log
            .wait_for_nth_within("its listen address", 1, START_TIMEOUT, |v| {
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("evolve API listening"))
            });
        let addr = line["addr"].as_str().unwrap().to_string();
        // A daemon listening on every address is reached on loopback, under a name it answers to.
        let addr = match addr.strip_prefix("0.0.0.0:") {
            Some(port) => format!("127.0.0.1:{port}"),
            None => addr,
        };
        *self.addr.lock().unwrap() = Some(addr);
    }

    /// See [`Log::wait_event`].
    pub fn wait_event(&self, kind: &str, subject: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.log.wait_event(kind, subject, pred)
    }

    /// The value of the first `/metrics` line starting with `series` (a name, or a name with
    /// its labels), if there is one.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics").text();
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> String {
        self.addr.lock().unwrap().clone().expect("daemon not ready")
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::request(&self.addr(), "GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: &Value) -> http::Response {
        let text = body.to_string();
        http::request(
            &self.addr(),
            "POST",
            path,
            &[("content-type", "application/json")],
            Some(text.as_bytes()),
        )
    }

    /// The `/v1/plugins` entry named `name`.
    pub fn plugin(&self, name: &str) -> Value {
        let list = self.get("/v1/plugins").json();
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no plugin {name} in {list:#}"))
    }

    /// Waits until `plugin` has at least one call in flight (an observed state, not a sleep);
    /// panics after [`EVENT_TIMEOUT`].
    pub fn wait_in_flight(&self, plugin: &str) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while self.plugin(plugin)["calls"]["in_flight"] == 0 {
            assert!(
                Instant::now() < deadline,
                "no call of {plugin} ever started"
            );
            std::thread::yield_now();
        }
    }

    /// Sends SIGTERM and waits for exit; returns whether it exited successfully.
    pub fn terminate(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        child.wait().unwrap().success()
    }

    /// Kills the process with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill9(mut self) {
        let mut child = self.child.take().unwrap();
        // `Child::kill` sends SIGKILL on Unix.
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the process to exit by itself (start-up failures); returns its status code.
    pub fn wait_exit(mut self) -> (Option<i32>, String) {
        let mut child = self.child.take().unwrap();
        let status = child.wait().unwrap();
        // The reader thread sees EOF after exit; wait for it so the log is complete.
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut guard = self.log.lines.lock().unwrap();
        while !guard.1 && Instant::now() < deadline {
            guard = self
                .log
                .changed
                .wait_timeout(guard, Duration::from_secs(1))
                .unwrap()
                .0;
        }
        let text = guard.0.join("\n");
        (status.code(), text)
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `evolve plugin new NAME --kind KIND [--lang LANG] --dir DIR`, which must succeed.
pub fn plugin_new(name: &str, kind: &str, lang: Option<&str>, dir: &Path) {
    let dir = dir.display().to_string();
    let mut args = vec!["plugin", "new", name, "--kind", kind, "--dir", &dir];
    if let Some(lang) = lang {
        args.extend(["--lang", lang]);
    }
    let (code, stdout, stderr) = cli(&args, &[]);
    assert_eq!(code, 0, "plugin new {name}: {stdout}\n{stderr}");
}

/// Runs the `evolve` CLI with `args`; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let mut command = Command::new(evolve_bin());
    command
        .args(args)
        .env_remove("EVOLVE_AUTH_TOKEN")
        .env_remove("EVOLVE_TOKEN")
        .env_remove("EVOLVE_TOKEN_FILE");
    for (k, v) in envs {
        command.env(k, v);
    }
    let output = command.output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The findings of a security-audit run's output, as (severity, rule, subject).
pub fn audit_findings(output: &Value) -> Vec<(String, String, String)> {
    let text = |finding: &Value, key: &str| finding[key].as_str().unwrap_or_default().to_string();
    output["findings"]
        .as_array()
        .map(|findings| {
            findings
                .iter()
                .map(|f| (text(f, "severity"), text(f, "rule"), text(f, "subject")))
                .collect()
        })
        .unwrap_or_default()
}
