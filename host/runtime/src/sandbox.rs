//! The sandbox a call runs in: the WASI context built from the manifest's grants (deny by
//! default), guest stdout/stderr and the `logging` import routed to tracing under a per-call byte
//! budget, and health checkers' outbound HTTP:
//!
//! - `outbound`: the per-call policy (`wasi:http` hook): name rule, address rule, refusals;
//! - `destination`: pattern matching (whole-label wildcards; no port = 80 and 443 only) and the
//!   forbidden address ranges (loopback, link-local, private, CGNAT, metadata, ...);
//! - `connect`: sends an admitted request to the addresses that were checked, never re-resolving.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::bindings::logging::Level;
use super::output::ELEMENT_COST_BYTES;

mod connect;
pub(crate) mod destination;
mod outbound;

pub use outbound::{HttpPolicy, HttpTransport, MAX_ADDRESSES, MAX_DNS_WAIT, uri_host_port};

/// Largest `get-random-bytes` request served. WASI's default (64 MiB) lets a guest make the host
/// allocate that much per call; nothing legitimate needs more than a few KiB of entropy at once.
const MAX_RANDOM_BYTES: u64 = 64 << 10;

/// A partial stdout/stderr line is emitted once it reaches this size, so a guest that never
/// writes a newline cannot grow the host's line buffer past the log budget's granularity.
const MAX_LINE_BYTES: usize = 4 << 10;

/// Bytes of stderr kept to explain a trap (a Rust panic prints its message there just before
/// the `unreachable` trap).
const STDERR_TAIL_BYTES: usize = 1 << 10;

/// Which guest stream a write came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestStream {
    Stdout,
    Stderr,
}

impl GuestStream {
    fn name(self) -> &'static str {
        match self {
            GuestStream::Stdout => "stdout",
            GuestStream::Stderr => "stderr",
        }
    }
}

/// Everything one call logs, under one byte budget (`max_log_kb`).
#[derive(Debug)]
pub struct CallLog {
    plugin: Arc<str>,
    inner: Mutex<CallLogInner>,
}

#[derive(Debug, Default)]
struct CallLogInner {
    budget: u64,
    used: u64,
    dropped: u64,
    stdout_line: Vec<u8>,
    stderr_line: Vec<u8>,
    stderr_tail: VecDeque<u8>,
}

impl CallLog {
    pub fn new(plugin: Arc<str>, budget: u64) -> Arc<CallLog> {
        Arc::new(CallLog {
            plugin,
            inner: Mutex::new(CallLogInner {
                budget,
                ..CallLogInner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, CallLogInner> {
        // A poisoned lock only means another writer panicked mid-write; the counters are still
        // meaningful, so keep logging rather than propagate the panic into the host.
        evolve_core::sync::lock(&self.inner)
    }

    /// The `logging.log` import.
    pub fn record(&self, level: Level, message: &str, fields: &[(String, String)]) {
        // A fixed cost per record and per field besides the text, so a flood of empty records
        // spends the budget like any other.
        let size = message.len() as u64
            + ELEMENT_COST_BYTES
            + fields
                .iter()
                .map(|(k, v)| (k.len() + v.len()) as u64 + ELEMENT_COST_BYTES)
                .sum::<u64>();
        if !self.lock().charge(size) {
            return;
        }
        let fields = fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        let plugin = &*self.plugin;
        match level {
            Level::Trace => tracing::trace!(target: "evolve::plugin", plugin, fields, "{message}"),
            Level::Debug => tracing::debug!(target: "evolve::plugin", plugin, fields, "{message}"),
            Level::Info => tracing::info!(target: "evolve::plugin", plugin, fields, "{message}"),
            Level::Warn => tracing::warn!(target: "evolve::plugin", plugin, fields, "{message}"),
            Level::Error => tracing::error!(target: "evolve::plugin", plugin, fields, "{message}"),
        }
    }

    /// Guest stdout/stderr bytes: split into lines, each a tracing event.
    pub fn write(&self, stream: GuestStream, bytes: &[u8]) {
        let mut lines = Vec::new();
        {
            let mut inner = self.lock();
            if stream == GuestStream::Stderr {
                let tail = &mut inner.stderr_tail;
                tail.extend(bytes.iter().rev().take(STDERR_TAIL_BYTES).rev());
                while tail.len() > STDERR_TAIL_BYTES {
                    tail.pop_front();
                }
            }
            if !inner.charge(bytes.len() as u64) {
                return;
            }
            let buffer = match stream {
                GuestStream::Stdout => &mut inner.stdout_line,
                GuestStream::Stderr => &mut inner.stderr_line,
            };
            for &b in bytes {
                if b == b'\n' || buffer.len() >= MAX_LINE_BYTES {
                    lines.push(std::mem::take(buffer));
                    if b == b'\n' {
                        continue;
                    }
                }
                buffer.push(b);
            }
        }
        for line in lines {
            self.emit_line(stream, &line);
        }
    }

    fn emit_line(&self, stream: GuestStream, line: &[u8]) {
        let text = guest_line_text(line);
        tracing::info!(target: "evolve::plugin", plugin = &*self.plugin, stream = stream.name(), "{text}");
    }

    /// Emits unterminated lines and reports dropped bytes; returns the number dropped.
    pub fn finish(&self) -> u64 {
        let (stdout, stderr, dropped, budget) = {
            let mut inner = self.lock();
            (
                std::mem::take(&mut inner.stdout_line),
                std::mem::take(&mut inner.stderr_line),
                inner.dropped,
                inner.budget,
            )
        };
        if !stdout.is_empty() {
            self.emit_line(GuestStream::Stdout, &stdout);
        }
        if !stderr.is_empty() {
            self.emit_line(GuestStream::Stderr, &stderr);
        }
        if dropped > 0 {
            tracing::warn!(
                target: "evolve::plugin",
                plugin = &*self.plugin,
                dropped_bytes = dropped,
                "log output over the plugin's max_log_kb budget ({budget} bytes) was dropped"
            );
        }
        dropped
    }

    /// The last bytes the guest wrote to stderr, for explaining a trap.
    pub fn stderr_tail(&self) -> String {
        let inner = self.lock();
        let (a, b) = inner.stderr_tail.as_slices();
        let mut bytes = a.to_vec();
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).trim().to_string()
    }
}

/// One line a guest wrote to stdout/stderr, made safe for a log: a CRLF's CR is dropped and
/// every other control character (a mid-line CR, ESC, bidi overrides) is escaped, so a guest
/// cannot forge or hide a daemon log line.
fn guest_line_text(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    evolve_core::untrusted::escape_untrusted_owned(text.trim_end_matches('\r').to_string())
}

impl CallLogInner {
    /// Spends `size` bytes of the budget; false (and counted as dropped) when it is spent.
    fn charge(&mut self, size: u64) -> bool {
        if self.used.saturating_add(size) > self.budget {
            self.dropped = self.dropped.saturating_add(size);
            return false;
        }
        self.used += size;
        true
    }
}

/// Guest stdout or stderr, as handed to WASI.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    log: Arc<CallLog>,
    stream: GuestStream,
}

impl GuestOutput {
    pub fn new(log: Arc<CallLog>, stream: GuestStream) -> GuestOutput {
        GuestOutput { log, stream }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Writes never block: bytes over the budget are dropped (and counted), never an error, because
/// a failing stdout makes Rust's `println!` panic and would turn chatty logging into a trap.
#[async_trait::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.log.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE_BYTES * 16)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A directory grant resolved against the data dir at load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ResolvedDir {
    pub host: PathBuf,
    pub guest: String,
    pub write: bool,
    /// The directory as opened (and checked) at load. Every call preopens this handle, not the
    /// path, so a path swapped for a link afterwards (by whoever can write its parent) changes
    /// nothing a plugin can reach.
    #[serde(skip)]
    pub handle: Arc<std::fs::File>,
}

impl ResolvedDir {
    /// The path a call preopens: the handle opened at load, reached through `/proc/self/fd`
    /// where the kernel offers it; elsewhere the checked path.
    pub fn preopen_path(&self) -> PathBuf {
        #[cfg(target_os = "linux")]
        if proc_fd_available() {
            return fd_path(&self.handle);
        }
        self.host.clone()
    }
}

/// Where `/proc/self/fd` shows the open `file`.
#[cfg(target_os = "linux")]
fn fd_path(file: &std::fs::File) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Whether `/proc/self/fd` reaches this process's descriptors (not so in a sandbox without
/// `/proc`); looked up once.
#[cfg(target_os = "linux")]
fn proc_fd_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| std::path::Path::new("/proc/self/fd").is_dir())
}

/// Opens the directory at `path` without following a link in its last component, and says
/// where the opened directory really is (so the grant is checked on what was opened, not on a
/// path that may change between the check and the open).
pub fn open_grant_dir(path: &std::path::Path) -> std::io::Result<(std::fs::File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    #[cfg(target_os = "linux")]
    if proc_fd_available() {
        let real = std::fs::read_link(fd_path(&file))?;
        return Ok((file, real));
    }
    Ok((file, path.canonicalize()?))
}

/// What a plugin is granted, resolved at load so a call only copies it into a fresh context.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Grants {
    /// Environment variables passed through, with the values read at load.
    #[serde(skip)]
    pub env: Vec<(String, String)>,
    pub env_names: Vec<String>,
    pub dirs: Vec<ResolvedDir>,
    /// `permissions.http_hosts` as written (the parsed patterns live with the plugin).
    pub http_host_patterns: Vec<String>,
}

impl Grants {
    /// A WASI context with exactly these grants: no args, no sockets, no name lookup, stdin
    /// closed, stdout/stderr into the call log.
    pub fn wasi_ctx(&self, log: &Arc<CallLog>) -> std::io::Result<WasiCtx> {
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdout(GuestOutput::new(Arc::clone(log), GuestStream::Stdout))
            .stderr(GuestOutput::new(Arc::clone(log), GuestStream::Stderr))
            .max_random_size(MAX_RANDOM_BYTES)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if !self.env.is_empty() {
            builder.envs(&self.env);
        }
        for dir in &self.dirs {
            let perms = if dir.write {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(dir.preopen_path(), &dir.guest, perms)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", dir.host.display())))?;
        }
        Ok(builder.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_lines_have_their_control_characters_escaped() {
        let line = "ok\r2026-01-01 INFO forged \u{1b}[2K \u{202e}txt\r".as_bytes();
        let text = guest_line_text(line);
        assert!(
            !text.contains('\r'),
            "a mid-line CR must not reach the log: {text:?}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "ESC must not reach the log: {text:?}"
        );
        assert!(
            !text.contains('\u{202e}'),
            "a bidi override must not reach the log: {text:?}"
        );
        assert!(
            text.starts_with("ok") && text.contains("forged"),
            "the text itself is kept: {text:?}"
        );
        assert_eq!(
            guest_line_text(b"plain line\r"),
            "plain line",
            "a CRLF's CR is dropped, not escaped"
        );
    }

    #[test]
    fn log_budget_drops_and_counts_excess() {
        let log = CallLog::new("p".into(), 10);
        log.write(GuestStream::Stdout, b"12345\n");
        log.write(GuestStream::Stdout, b"abcdefgh\n");
        assert_eq!(log.finish(), 9);
    }

    #[test]
    fn stderr_tail_keeps_the_last_bytes() {
        let log = CallLog::new("p".into(), 1 << 20);
        log.write(GuestStream::Stderr, &vec![b'x'; STDERR_TAIL_BYTES * 2]);
        log.write(GuestStream::Stderr, b"panicked: boom\n");
        let tail = log.stderr_tail();
        assert!(tail.ends_with("panicked: boom"), "{tail}");
        assert!(tail.len() <= STDERR_TAIL_BYTES);
    }
}
