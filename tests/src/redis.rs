//! A private `redis-server` per test: a free loopback port, no persistence, a temp dir. Killed
//! (SIGKILL) on drop; `kill9` and `restart` make Redis faults on purpose.
//! [`RedisServer::start_secured`] adds a TLS port (a CA and server certificate made here) and an
//! ACL user, and requires a password of the default user, as a production Redis would.
//! [`write_secret`] and [`write_cluster_key`] make the `0600` files a cluster's config names.
//!
//! Needs Debian's `redis-server` on PATH (`cargo xtask test` installs it).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::EVENT_TIMEOUT;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    secured: Option<Secured>,
}

/// A server with TLS and ACLs: its TLS port and its ACL user (the default user's password is
/// [`ADMIN_PASSWORD`]).
struct Secured {
    tls_port: u16,
    user: String,
    password: String,
}

/// The default user's password of a secured server (the harness's own commands use it).
const ADMIN_PASSWORD: &str = "harness-admin";

/// Writes `bytes` to `path`, readable by its owner only (as a key or password file must be).
pub fn write_secret(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes a fresh 32-byte cluster key to `path`.
pub fn write_cluster_key(path: &Path) {
    let mut key = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut key))
        .unwrap();
    write_secret(path, &key);
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
            secured: None,
        };
        server.spawn();
        server
    }

    /// Starts a server that also listens with TLS (on [`RedisServer::tls_port`], its certificate
    /// for 127.0.0.1 and localhost issued by [`RedisServer::ca_file`]'s CA), knows the ACL user
    /// `user` (password `password`, keys and channels `evolve:*` only) and requires a password
    /// of the default user. The plain port stays for the harness's own commands.
    pub fn start_secured(user: &str, password: &str) -> RedisServer {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            secured: Some(Secured {
                tls_port: free_port(),
                user: user.to_string(),
                password: password.to_string(),
            }),
        };
        server.write_certificates();
        server.spawn();
        server
    }

    /// A CA, and a certificate it issued for 127.0.0.1 and localhost, in the server's dir.
    fn write_certificates(&self) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "evolve test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        std::fs::write(self.ca_file(), ca_cert.pem()).unwrap();
        std::fs::write(self.dir().join("server.pem"), server.pem()).unwrap();
        write_secret(
            &self.dir().join("server.key"),
            server_key.serialize_pem().as_bytes(),
        );
    }

    /// The cluster key shared by the nodes of this server's cluster (written on first use).
    pub fn cluster_key_file(&self) -> PathBuf {
        let path = self.dir().join("cluster.key");
        if !path.exists() {
            write_cluster_key(&path);
        }
        path
    }

    /// The CA that issued a secured server's certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.dir().join("ca.pem")
    }

    /// A secured server's TLS port.
    pub fn tls_port(&self) -> u16 {
        self.secured.as_ref().expect("a secured server").tls_port
    }

    /// `rediss://` to a secured server, without credentials.
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.tls_port())
    }

    /// A port for a server that is not running yet (for "Redis absent at start").
    pub fn reserve() -> RedisServer {
        RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            secured: None,
        }
    }

    fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Starts (again) on the same port, empty: no persistence, as after a crash of a cache.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir());
        if let Some(secured) = &self.secured {
            let dir = self.dir();
            command
                .args(["--tls-port", &secured.tls_port.to_string()])
                .arg("--tls-cert-file")
                .arg(dir.join("server.pem"))
                .arg("--tls-key-file")
                .arg(dir.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(dir.join("ca.pem"))
                .args(["--tls-auth-clients", "no"])
                .args(["--requirepass", ADMIN_PASSWORD])
                .args(["--user", &secured.user, "on"])
                .arg(format!(">{}", secured.password))
                .args(["~evolve:*", "&evolve:*", "+@all"]);
        }
        let child = command
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
        let encode = |args: &[&str]| {
            let mut request = format!("*{}\r\n", args.len());
            for arg in args {
                request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
            request
        };
        let mut request = String::new();
        if self.secured.is_some() {
            request.push_str(&encode(&["AUTH", ADMIN_PASSWORD]));
        }
        request.push_str(&encode(args));
        stream.write_all(request.as_bytes()).ok()?;
        let mut reader = BufReader::new(stream);
        let mut out = Vec::new();
        if self.secured.is_some() {
            read_reply(&mut reader, &mut out)?;
            if out != ["OK"] {
                return None;
            }
            out.clear();
        }
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
