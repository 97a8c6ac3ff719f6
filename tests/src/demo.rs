//! The demo as a user runs it: `evolve-demo up` (what `cargo xtask serve` runs) in a scratch
//! working directory, its stdout followed line by line, and the README's quick-start lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{EVENT_TIMEOUT, evolve_bin, root};

/// Start-up can compile every bundled plugin (the scratch data dir has a cold AOT cache).
pub const DEMO_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The README's markers around the quick-start block.
pub const QUICKSTART_BEGIN: &str = "<!-- quickstart:begin -->";
pub const QUICKSTART_END: &str = "<!-- quickstart:end -->";

/// The `evolve-demo` binary (`EVOLVE_DEMO_BIN` overrides).
pub fn demo_bin() -> PathBuf {
    crate::release_bin("evolve-demo", "EVOLVE_DEMO_BIN")
}

/// Output lines so far, and whether the output ended; with a condition variable to wait on.
type Lines = Arc<(Mutex<(Vec<String>, bool)>, Condvar)>;

/// A running `evolve-demo up`; stopped with SIGTERM on drop.
pub struct Demo {
    child: Option<Child>,
    lines: Lines,
    pub daemon_log: PathBuf,
}

impl Demo {
    /// `evolve-demo up` with the arguments `cargo xtask serve` passes (as absolute paths), in
    /// `cwd` (so `./data` is there); waits for its `ready` line.
    pub fn up(cwd: &Path) -> Demo {
        let daemon_log = cwd.join("daemon.log");
        let mut child = Command::new(demo_bin())
            .arg("up")
            .arg("--evolve")
            .arg(evolve_bin())
            .arg("--config")
            .arg(root().join("examples/demo/evolve.toml"))
            .arg("--plugins")
            .arg(root().join("target/plugins/bundled"))
            .arg("--daemon-log")
            .arg(&daemon_log)
            .current_dir(cwd)
            .env_remove("EVOLVE_CONFIG")
            .env_remove("EVOLVE_AUTH_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines: Lines = Arc::default();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    lines.0.lock().unwrap().0.push(line);
                    lines.1.notify_all();
                }
                lines.0.lock().unwrap().1 = true;
                lines.1.notify_all();
            });
        }
        let demo = Demo {
            child: Some(child),
            lines,
            daemon_log,
        };
        demo.wait_line("its ready line", DEMO_READY_TIMEOUT, |l| {
            l.starts_with("evolve-demo: ready at ")
        });
        demo
    }

    /// Waits for an output line matching `pred`; panics with the output (and the daemon's log)
    /// on timeout or when the demo's output ends first.
    pub fn wait_line(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lines.0.lock().unwrap();
        loop {
            if let Some(line) = guard.0.iter().find(|l| pred(l)) {
                return line.clone();
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                panic!(
                    "evolve-demo never printed {what}; output:\n{}\ndaemon log:\n{}",
                    guard.0.join("\n"),
                    std::fs::read_to_string(&self.daemon_log).unwrap_or_default()
                );
            }
            guard = self.lines.1.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Everything printed so far.
    pub fn output(&self) -> String {
        self.lines.0.lock().unwrap().0.join("\n")
    }

    /// SIGTERM (what Ctrl-C does), then waits; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        let mut child = self.child.take().unwrap();
        terminate(&mut child)
    }
}

/// SIGTERM, then wait; a watchdog sends SIGKILL after [`EVENT_TIMEOUT`].
fn terminate(child: &mut Child) -> bool {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(EVENT_TIMEOUT).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    });
    let status = child.wait();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    status.is_ok_and(|s| s.success())
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the demo stops its daemon, which must not outlive the test.
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

/// The shell lines of the README's quick-start block (between [`QUICKSTART_BEGIN`] and
/// [`QUICKSTART_END`]), without the fence and comment lines.
pub fn quickstart_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let begin = readme
        .find(QUICKSTART_BEGIN)
        .expect("README.md has no quick-start begin marker");
    let end = readme
        .find(QUICKSTART_END)
        .expect("README.md has no quick-start end marker");
    readme[begin + QUICKSTART_BEGIN.len()..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```") && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// Runs one shell line in `cwd` (with `./target/release/` pointing at this build); returns
/// (exit code, stdout, stderr).
pub fn sh(cwd: &Path, line: &str, envs: &[(&str, &str)]) -> (i32, String, String) {
    let release = format!("{}/", evolve_bin().parent().unwrap().display());
    let line = line.replace("./target/release/", &release);
    let mut command = Command::new("sh");
    command
        .args(["-c", &line])
        .current_dir(cwd)
        .env_remove("EVOLVE_API")
        .env_remove("EVOLVE_AUTH_TOKEN");
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
