//! A private `redis-server` per test: a free loopback port, no persistence, a temp dir. Killed
//! (SIGKILL) on drop; `kill9` and `restart` make Redis faults on purpose.
//!
//! Needs Debian's `redis-server` on PATH (`cargo xtask test` installs it).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::EVENT_TIMEOUT;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// A port that was free a moment ago (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        };
        server.spawn();
        server
    }

    /// A port for a server that is not running yet (for "Redis absent at start").
    pub fn reserve() -> RedisServer {
        RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Starts (again) on the same port, empty: no persistence, as after a crash of a cache.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}); install Debian's redis-server (cargo xtask test does)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            if self.try_command(&["PING"]).is_some_and(|r| r == ["PONG"]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server never answered PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Kills and starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends one command; returns its reply flattened: simple strings and integers as their
    /// text, bulk strings as their content (`(nil)` for none), errors as `-ERR ...`, arrays as
    /// their elements in order.
    pub fn command(&self, args: &[&str]) -> Vec<String> {
        self.try_command(args).expect("redis-server answers")
    }

    fn try_command(&self, args: &[&str]) -> Option<Vec<String>> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut out = Vec::new();
        read_reply(&mut reader, &mut out)?;
        Some(out)
    }
}

fn read_reply(reader: &mut impl BufRead, out: &mut Vec<String>) -> Option<()> {
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at_checked(1)?;
    match kind {
        "+" | ":" => out.push(rest.to_string()),
        "-" => out.push(line.to_string()),
        "$" => {
            let Ok(len) = rest.parse::<usize>() else {
                out.push("(nil)".into());
                return Some(());
            };
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body).ok()?;
            body.truncate(len);
            out.push(String::from_utf8_lossy(&body).into_owned());
        }
        "*" => {
            let n = rest.parse::<i64>().ok()?;
            for _ in 0..n.max(0) {
                read_reply(reader, out)?;
            }
        }
        _ => return None,
    }
    Some(())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
