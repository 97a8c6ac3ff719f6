//! Connections to one instance, pooled by the instance itself: no process-wide map keyed by
//! authority, so a request never hashes a key or takes a shared lock to find its connection.
//!
//! | part | what |
//! |---|---|
//! | [`PoolConfig`] | limits, built from `[mesh]` (tower style: the config builds, the pool runs) |
//! | [`InstancePool`] | the running pool of one instance: idle HTTP/1.1 senders, one shared h2c connection |
//! | [`Lease`] | an HTTP/1.1 connection lent to one request, given back when its response body ended |
//! | `IdleList` | the idle HTTP/1.1 senders: LIFO, capped, expiring |
//!
//! HTTP/1.1 (`hyper::client::conn::http1`), per request:
//! 1. Take the most recently used idle sender (its connection is the warmest), dropping ones
//!    that expired or whose connection closed; none left → connect (TCP within
//!    `connect_timeout`, `TCP_NODELAY`), and spawn the connection's task.
//! 2. Wait until the sender is ready (its previous response fully read); a closed one is
//!    dropped and step 1 repeats.
//! 3. Send. A reused connection that turns out closed before the request was written gives the
//!    request back; it goes once more on a fresh connection (the peer closed an idle
//!    connection: nothing was sent, so this is no retry in the mesh's sense).
//! 4. The sender travels with the response body as a [`Lease`]; when the body has ended the
//!    proxy gives it back ([`InstancePool::check_in`]). A body dropped early drops the sender,
//!    and hyper closes that connection, since its state is unknown.
//!
//! h2c (`hyper::client::conn::http2`): one multiplexed connection per instance, shared by clones
//! of its sender, replaced when it closes; concurrent first requests wait for one connect.
//!
//! Idle connections beyond `max_idle` are closed at check-in; idle ones older than
//! `idle_timeout` are closed at checkout or by a reaper task that lives while the pool has idle
//! connections.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use evolve_core::sync::lock;

use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::MeshConfig;

/// Limits of one instance's pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Idle HTTP/1.1 connections kept; more are closed when their request ends.
    pub max_idle: usize,
    /// An idle connection unused this long is closed (the instance may have forgotten it).
    pub idle_timeout: Duration,
    /// Time for the TCP connect (and the h2c preface).
    pub connect_timeout: Duration,
}

impl PoolConfig {
    pub fn from_mesh(config: &MeshConfig) -> PoolConfig {
        PoolConfig {
            max_idle: config.pool_max_idle_per_host,
            idle_timeout: Duration::from_secs(config.pool_idle_timeout_s),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
        }
    }
}

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no connection to {address} within {timeout_ms} ms")]
    ConnectTimeout { address: String, timeout_ms: u64 },
    #[error("the HTTP handshake with {address} failed: {source}")]
    Handshake {
        address: String,
        #[source]
        source: hyper::Error,
    },
    /// The connection existed; the request failed on it (nothing or part of it was sent).
    #[error(transparent)]
    Request(#[from] hyper::Error),
}

impl SendError {
    /// No connection was made, so the instance received nothing.
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Request(_))
    }
}

/// Where an instance listens.
#[derive(Debug, Clone)]
struct Dial {
    /// Host without IPv6 brackets, for the resolver / socket address parser.
    host: String,
    port: u16,
    /// `host:port` as written in the endpoint, for error messages.
    address: String,
}

/// An HTTP/1.1 connection lent to one request; h2c leases hold nothing (the connection is
/// shared).
#[derive(Debug, Default)]
pub struct Lease(Option<http1::SendRequest<Body>>);

/// Counters of a pool, for metrics and tests.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections opened (TCP connected and handshaken).
    pub opened: AtomicU64,
    /// Requests that went on a connection taken from the idle list.
    pub reused: AtomicU64,
}

/// The running pool of one instance.
#[derive(Debug)]
pub struct InstancePool {
    config: PoolConfig,
    dial: Dial,
    h2c: bool,
    idle: Arc<Mutex<IdleList<http1::SendRequest<Body>>>>,
    /// Idle connections of the data-plane listener's fast path, which drives them itself (no
    /// hyper task): each is registered with the runtime that opened it, the listener's.
    raw_idle: Arc<Mutex<IdleList<TcpStream>>>,
    /// Held across a connect, so concurrent first requests share one h2c connection.
    shared: tokio::sync::Mutex<Option<http2::SendRequest<Body>>>,
    pub stats: PoolStats,
}

impl InstancePool {
    /// `host` and `port` of the endpoint (`host` may be a bracketed IPv6 literal).
    pub fn new(config: PoolConfig, host: &str, port: u16, h2c: bool) -> InstancePool {
        InstancePool {
            config,
            dial: Dial {
                host: host.trim_start_matches('[').trim_end_matches(']').into(),
                port,
                address: format!("{host}:{port}"),
            },
            h2c,
            idle: Arc::new(Mutex::new(IdleList::default())),
            raw_idle: Arc::new(Mutex::new(IdleList::default())),
            shared: tokio::sync::Mutex::new(None),
            stats: PoolStats::default(),
        }
    }

    /// Sends `request` (origin-form URI and `Host` for HTTP/1.1, absolute URI for h2c) and
    /// returns the response headers with the lease to give back once the body has ended.
    pub async fn send(
        &self,
        request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        if self.h2c {
            return self.send_h2c(request).await.map(|r| (r, Lease(None)));
        }
        self.send_http1(request).await
    }

    /// Gives a lease back after its response body ended.
    pub fn check_in(&self, lease: Lease) {
        let Some(sender) = lease.0 else { return };
        park(&self.idle, sender, &self.config, Instant::now());
    }

    /// The most recently idle fast-path connection, if one is open and young enough at `now`.
    pub fn take_raw(&self, now: Instant) -> Option<TcpStream> {
        let taken = lock(&self.raw_idle).pop(now, self.config.idle_timeout);
        if taken.is_some() {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
        }
        taken
    }

    /// Gives a fast-path connection back after its response ended, idle since `idle_since`.
    pub fn check_in_raw(&self, stream: TcpStream, idle_since: Instant) {
        park(&self.raw_idle, stream, &self.config, idle_since);
    }

    /// Opens a connection for the fast path (TCP within `connect_timeout`, `TCP_NODELAY`).
    pub async fn connect_raw(&self) -> Result<TcpStream, SendError> {
        let io = self.connect().await?;
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        Ok(io.into_inner())
    }

    /// Idle HTTP/1.1 connections now.
    pub fn idle_count(&self) -> usize {
        lock(&self.idle).len()
    }

    async fn send_http1(
        &self,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        loop {
            // Step 1.
            let taken = lock(&self.idle).pop(Instant::now(), self.config.idle_timeout);
            let (mut sender, reused) = match taken {
                Some(sender) => (sender, true),
                None => (self.connect_http1().await?, false),
            };
            // Step 2.
            if let Err(error) = sender.ready().await {
                if reused {
                    continue;
                }
                return Err(SendError::Request(error));
            }
            if reused {
                self.stats.reused.fetch_add(1, Ordering::Relaxed);
            }
            // Step 3.
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Lease(Some(sender)))),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Request(failed.into_error())),
                },
            }
        }
    }

    async fn send_h2c(&self, mut request: Request<Body>) -> Result<Response<Incoming>, SendError> {
        let mut fresh_tried = false;
        loop {
            let (mut sender, reused) = {
                let mut shared = self.shared.lock().await;
                match shared.as_ref().filter(|s| !s.is_closed()) {
                    Some(sender) => (sender.clone(), true),
                    None => {
                        let sender = self.connect_h2c().await?;
                        *shared = Some(sender.clone());
                        (sender, false)
                    }
                }
            };
            if reused {
                self.stats.reused.fetch_add(1, Ordering::Relaxed);
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if reused && !fresh_tried => {
                        fresh_tried = true;
                        let mut shared = self.shared.lock().await;
                        if shared.as_ref().is_some_and(|s| s.is_closed()) {
                            *shared = None;
                        }
                        request = unsent;
                    }
                    _ => return Err(SendError::Request(failed.into_error())),
                },
            }
        }
    }

    async fn connect(&self) -> Result<TokioIo<TcpStream>, SendError> {
        let address = || self.dial.address.clone();
        let connect = TcpStream::connect((self.dial.host.as_str(), self.dial.port));
        let stream = tokio::time::timeout(self.config.connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout {
                address: address(),
                timeout_ms: self.config.connect_timeout.as_millis() as u64,
            })?
            .map_err(|source| SendError::Connect {
                address: address(),
                source,
            })?;
        // Small requests and responses must not wait for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        Ok(TokioIo::new(stream))
    }

    async fn connect_http1(&self) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.connect().await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| SendError::Handshake {
                address: self.dial.address.clone(),
                source,
            })?;
        self.drive(connection);
        Ok(sender)
    }

    async fn connect_h2c(&self) -> Result<http2::SendRequest<Body>, SendError> {
        let started = Instant::now();
        let io = self.connect().await?;
        let remaining = self
            .config
            .connect_timeout
            .saturating_sub(started.elapsed());
        let handshake = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io);
        let (sender, connection) = tokio::time::timeout(remaining, handshake)
            .await
            .map_err(|_| SendError::ConnectTimeout {
                address: self.dial.address.clone(),
                timeout_ms: self.config.connect_timeout.as_millis() as u64,
            })?
            .map_err(|source| SendError::Handshake {
                address: self.dial.address.clone(),
                source,
            })?;
        self.drive(connection);
        Ok(sender)
    }

    /// Counts a connection hyper opened and spawns its task. Its errors reach the request that
    /// was on it; one that ends while idle is noticed through its sender.
    fn drive<F: std::future::Future + Send + 'static>(&self, connection: F) {
        self.stats.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

/// Keeps an idle connection in `list` (see [`IdleList::push`]), idle since `now`, and makes
/// sure a reaper runs.
fn park<C: Reusable + Send + 'static>(
    list: &Arc<Mutex<IdleList<C>>>,
    conn: C,
    config: &PoolConfig,
    now: Instant,
) {
    // A closed one would hold a slot (and its descriptor) that an open one could use.
    if config.max_idle == 0 || !conn.is_open() {
        return;
    }
    let mut idle = lock(list);
    if idle.reaper_running {
        idle.push(conn, now, config.max_idle);
        return;
    }
    // Without a runtime there is no reaper to close it later: do not keep it.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    idle.push(conn, now, config.max_idle);
    idle.reaper_running = true;
    drop(idle);
    runtime.spawn(reap(Arc::downgrade(list), config.idle_timeout));
}

/// Closes expired idle connections until the pool has none or is gone.
async fn reap<C: Reusable>(idle: Weak<Mutex<IdleList<C>>>, timeout: Duration) {
    let mut running = ReaperRunning(Some(idle.clone()));
    loop {
        let next = {
            let Some(idle) = idle.upgrade() else { return };
            let mut idle = lock(&idle);
            let next = idle.reap(Instant::now(), timeout);
            if next.is_none() {
                idle.reaper_running = false;
                running.0 = None;
            }
            next
        };
        match next {
            Some(at) => tokio::time::sleep_until(at).await,
            None => return,
        }
    }
}

/// Clears the pool's `reaper_running` when a reaper is dropped before it finished (its runtime
/// ended: the pool is shared by the API's runtime and the data-plane listener's), so the next
/// check-in starts one on a runtime that is alive.
struct ReaperRunning<C: Reusable>(Option<Weak<Mutex<IdleList<C>>>>);

impl<C: Reusable> Drop for ReaperRunning<C> {
    fn drop(&mut self) {
        if let Some(idle) = self.0.take().and_then(|idle| idle.upgrade()) {
            lock(&idle).reaper_running = false;
        }
    }
}

/// What the idle list needs to know of a connection.
trait Reusable {
    /// The connection has not closed.
    fn is_open(&self) -> bool;
}

impl Reusable for TcpStream {
    fn is_open(&self) -> bool {
        // Readable while idle means the instance closed it (or sent what nobody asked for):
        // either way it cannot carry a request. This asks the reactor, not the kernel: no
        // syscall. A read that filled its buffer leaves the stream marked readable, so such a
        // connection is closed early at worst; a close the reactor has not seen yet is met by
        // the fast path as a reused connection that ended before its response.
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        self.poll_read_ready(&mut context).is_pending()
    }
}

impl<B> Reusable for http1::SendRequest<B> {
    fn is_open(&self) -> bool {
        !self.is_closed()
    }
}

/// Idle connections, oldest first, each with the time it went idle.
#[derive(Debug)]
struct IdleList<C> {
    entries: VecDeque<(C, Instant)>,
    reaper_running: bool,
}

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        IdleList {
            entries: VecDeque::new(),
            reaper_running: false,
        }
    }
}

impl<C: Reusable> IdleList<C> {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Keeps `conn` unless `max` are kept already (then it is dropped, closing it).
    fn push(&mut self, conn: C, now: Instant, max: usize) {
        if self.entries.len() < max {
            self.entries.push_back((conn, now));
        }
    }

    /// The most recently idle open connection that is younger than `timeout`; the expired and
    /// closed ones met on the way are dropped.
    fn pop(&mut self, now: Instant, timeout: Duration) -> Option<C> {
        while let Some((conn, since)) = self.entries.pop_back() {
            if now.saturating_duration_since(since) < timeout && conn.is_open() {
                return Some(conn);
            }
            if now.saturating_duration_since(since) >= timeout {
                // Everything older expired too.
                self.entries.clear();
                return None;
            }
        }
        None
    }

    /// Drops expired and closed connections; returns when the oldest left expires.
    fn reap(&mut self, now: Instant, timeout: Duration) -> Option<Instant> {
        self.entries.retain(|(conn, since)| {
            now.saturating_duration_since(*since) < timeout && conn.is_open()
        });
        self.entries.front().map(|(_, since)| *since + timeout)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicBool;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// A connection whose closing the test controls.
    struct Fake {
        id: u32,
        open: Arc<AtomicBool>,
    }

    impl Reusable for Fake {
        fn is_open(&self) -> bool {
            self.open.load(Ordering::SeqCst)
        }
    }

    fn fake(id: u32) -> (Fake, Arc<AtomicBool>) {
        let open = Arc::new(AtomicBool::new(true));
        (
            Fake {
                id,
                open: Arc::clone(&open),
            },
            open,
        )
    }

    const TIMEOUT: Duration = Duration::from_secs(90);

    #[tokio::test(start_paused = true)]
    async fn the_idle_list_lends_the_warmest_and_caps_what_it_keeps() {
        let mut list = IdleList::default();
        for id in 1..=3 {
            list.push(fake(id).0, Instant::now(), 2);
        }
        assert_eq!(list.len(), 2, "the third beyond max_idle = 2 is closed");
        let taken = list.pop(Instant::now(), TIMEOUT).expect("an idle one");
        assert_eq!(taken.id, 2, "last in, first out");
        let mut none = IdleList::default();
        none.push(fake(9).0, Instant::now(), 0);
        assert_eq!(none.len(), 0, "max_idle = 0 keeps nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_and_expired_idle_connections_are_never_lent() {
        let mut list = IdleList::default();
        let (first, _) = fake(1);
        let (second, second_open) = fake(2);
        list.push(first, Instant::now(), 8);
        list.push(second, Instant::now(), 8);
        second_open.store(false, Ordering::SeqCst);
        assert_eq!(list.pop(Instant::now(), TIMEOUT).map(|c| c.id), Some(1));
        list.push(fake(3).0, Instant::now(), 8);
        tokio::time::advance(TIMEOUT).await;
        assert!(list.pop(Instant::now(), TIMEOUT).is_none(), "expired");
        assert_eq!(list.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reaper_closes_what_expired_and_says_when_to_look_again() {
        let mut list = IdleList::default();
        list.push(fake(1).0, Instant::now(), 8);
        let start = Instant::now();
        tokio::time::advance(Duration::from_secs(30)).await;
        list.push(fake(2).0, Instant::now(), 8);
        assert_eq!(list.reap(Instant::now(), TIMEOUT), Some(start + TIMEOUT));
        tokio::time::advance(Duration::from_secs(60)).await;
        let next = list.reap(Instant::now(), TIMEOUT);
        assert_eq!(list.len(), 1, "the first expired, the second has 30 s left");
        assert_eq!(next, Some(start + Duration::from_secs(30) + TIMEOUT));
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(list.reap(Instant::now(), TIMEOUT), None);
        assert_eq!(list.len(), 0);
    }

    /// A loopback HTTP/1.1 server that names the connection (`x-conn`, counted from 1) each
    /// response came on; with `close` set it answers `Connection: close`.
    async fn server(close: Arc<AtomicBool>) -> (std::net::SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let conn = count.fetch_add(1, Ordering::SeqCst) + 1;
                let close = Arc::clone(&close);
                let service = service_fn(move |_request: Request<Incoming>| {
                    let close = close.load(Ordering::SeqCst);
                    async move {
                        let mut response = Response::builder().header("x-conn", conn);
                        if close {
                            response = response.header("connection", "close");
                        }
                        Ok::<_, Infallible>(
                            response
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .expect("response"),
                        )
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (addr, accepted)
    }

    fn config(max_idle: usize) -> PoolConfig {
        PoolConfig {
            max_idle,
            idle_timeout: TIMEOUT,
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn get(addr: std::net::SocketAddr) -> Request<Body> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, addr.to_string())
            .body(Body::empty())
            .expect("request")
    }

    /// Sends one request, reads the body to its end and gives the lease back, as the proxy
    /// does; returns the connection the server named.
    async fn round_trip(pool: &InstancePool, addr: std::net::SocketAddr) -> String {
        let (response, lease) = pool.send(get(addr)).await.expect("answered");
        let conn = response.headers()["x-conn"]
            .to_str()
            .expect("text")
            .to_string();
        response.into_body().collect().await.expect("body");
        pool.check_in(lease);
        conn
    }

    #[tokio::test]
    async fn a_connection_is_reused_for_the_next_request() {
        let (addr, accepted) = server(Arc::default()).await;
        let pool = InstancePool::new(config(8), "127.0.0.1", addr.port(), false);
        assert_eq!(round_trip(&pool, addr).await, "1");
        assert_eq!(pool.idle_count(), 1);
        assert_eq!(round_trip(&pool, addr).await, "1");
        assert_eq!(round_trip(&pool, addr).await, "1");
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats.opened.load(Ordering::SeqCst), 1);
        assert_eq!(pool.stats.reused.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed() {
        let (addr, accepted) = server(Arc::default()).await;
        let pool = InstancePool::new(config(1), "127.0.0.1", addr.port(), false);
        // Two requests at once need two connections.
        let (first, first_lease) = pool.send(get(addr)).await.expect("first");
        let (second, second_lease) = pool.send(get(addr)).await.expect("second");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        first.into_body().collect().await.expect("body");
        second.into_body().collect().await.expect("body");
        pool.check_in(first_lease);
        pool.check_in(second_lease);
        assert_eq!(pool.idle_count(), 1, "max_idle = 1");
        round_trip(&pool, addr).await;
        assert_eq!(pool.stats.opened.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_not_reused() {
        let close = Arc::new(AtomicBool::new(true));
        let (addr, accepted) = server(Arc::clone(&close)).await;
        let pool = InstancePool::new(config(8), "127.0.0.1", addr.port(), false);
        assert_eq!(round_trip(&pool, addr).await, "1");
        close.store(false, Ordering::SeqCst);
        assert_eq!(
            round_trip(&pool, addr).await,
            "2",
            "the first connection ended with `Connection: close`"
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(round_trip(&pool, addr).await, "2");
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_does_not_return_its_connection() {
        let (addr, accepted) = server(Arc::default()).await;
        let pool = InstancePool::new(config(8), "127.0.0.1", addr.port(), false);
        let (response, lease) = pool.send(get(addr)).await.expect("answered");
        drop(response);
        drop(lease);
        assert_eq!(pool.idle_count(), 0);
        assert_eq!(round_trip(&pool, addr).await, "2");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connect_errors_and_timeouts_are_connect_errors() {
        // A port nobody listens on: refused at once.
        let unused = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = unused.local_addr().expect("addr").port();
        drop(unused);
        let pool = InstancePool::new(config(8), "127.0.0.1", port, false);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let refused = pool.send(get(addr)).await.expect_err("refused");
        assert!(refused.is_connect(), "{refused}");
        assert!(matches!(refused, SendError::Connect { .. }), "{refused}");

        // A listener whose accept queue is full (backlog 0, one queued connection already)
        // drops further SYNs, so a connect neither succeeds nor fails: it times out.
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.1:0".parse().expect("addr"))
            .expect("bind");
        let full = socket.listen(0).expect("listen");
        let addr = full.local_addr().expect("addr");
        let _queued = TcpStream::connect(addr)
            .await
            .expect("the one queued connection");
        let pool = InstancePool::new(
            PoolConfig {
                connect_timeout: Duration::from_millis(100),
                ..config(8)
            },
            "127.0.0.1",
            addr.port(),
            false,
        );
        // The outer bound only keeps a kernel that accepts anyway from hanging the test.
        let timed_out = tokio::time::timeout(Duration::from_secs(30), pool.send(get(addr)))
            .await
            .expect("the pool's own connect timeout ends the wait")
            .expect_err("no connection");
        assert!(
            matches!(
                timed_out,
                SendError::ConnectTimeout {
                    timeout_ms: 100,
                    ..
                }
            ),
            "{timed_out}"
        );
        assert!(timed_out.is_connect());
    }
}
