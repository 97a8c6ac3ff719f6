//! The data-plane listener (`[mesh] listen`): a socket of its own on which every request, at any
//! path, is forwarded to one service (`listen_service`), as a plain reverse proxy would. It
//! carries no API routes and no API auth, so clients that cannot prefix paths (load generators,
//! legacy callers) use the mesh directly. `TCP_NODELAY` on both sides.
//!
//! It is the mesh's hot path, so it has a fast path of its own: an HTTP/1.1 exchange driven in
//! the connection's task with the codec of [`super::h1`] over the instances' fast-path
//! connections ([`super::pool::InstancePool::take_raw`]), with no hyper dispatcher, channel,
//! spawned connection task, header map or boxed body per request. The mesh's decisions are the
//! same as every other route's ([`super::service::choose`], the concurrency limit, breakers,
//! outlier detection, the retry rules of [`super::proxy::retry_after`], deadlines, the
//! `x-evolve-*` headers, the caller-deadline floor, the header policy of [`super::proxy`]). A
//! request the fast path does not take ([`crate::h1::Unsupported`]: chunked request bodies,
//! `Expect`, upgrades, HTTP/1.0, malformed heads, and the ones the mesh refuses with 400: more
//! than one `Host`, a hidden dot-segment) or a service with an h2c instance hands the
//! connection, with the bytes already read, to hyper's server and [`super::Mesh::proxy_to`],
//! which serve the rest of it (the client's address goes along as `ConnectInfo`, for
//! `X-Forwarded-For`).
//!
//! One exchange, in steps:
//! 1. read the request head (bounded by [`crate::h1::MAX_HEAD_BYTES`]);
//! 2. read the body into memory when it may be retried and is small enough, else leave it to
//!    stream;
//! 3. per attempt: choose an instance, take a slot of the service's limit, send the request on
//!    an idle connection of the instance (a reused one that turns out closed before any
//!    response byte is replaced by a fresh one, if the request can be sent again) and read the
//!    response head until the deadline; record the outcome;
//! 4. retry a failed attempt when allowed, keeping its response in memory meanwhile;
//! 5. forward the response head with the `x-evolve-*` fields and its body in the framing it
//!    came with; give the connection back when the body ended cleanly.
//!
//! [`start`] runs it on a thread of its own with a current-thread tokio runtime: the
//! connections it accepts, the upstream connections it opens and their timers are all polled
//! there, with no work-stealing and no cross-thread wake-ups; the API stays on the daemon's
//! multi-thread runtime. Fast-path connections are only used by the runtime that opened them;
//! hyper's pooled senders may be checked out from either.
//!
//! | module | holds |
//! |---|---|
//! | this file | [`start`] (the listener's thread and runtime) and [`serve`] (the accept loop) |
//! | `fast_path` | one client connection on the fast path: the exchange of steps 1-5 |
//! | `io` | socket helpers of the fast path: writing, reading into a buffer, copying a body in each framing |
//! | `handoff` | a connection handed to hyper's server, with the bytes the fast path already read |

mod fast_path;
mod handoff;
mod io;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::Mesh;

use self::fast_path::Connection;

/// Starts [`serve`] on a thread named `evolve-mesh-listen` with its own current-thread
/// runtime. After `stop` turns true no connection is accepted; those open keep being served for
/// `grace` (the daemon's shutdown grace, as the API's are), then the runtime is dropped, which
/// closes them, and the thread ends.
pub fn start(
    listener: std::net::TcpListener,
    mesh: Mesh,
    service: String,
    stop: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("evolve-mesh-listen".into())
        .spawn(move || {
            runtime.block_on(async move {
                // Registered with this runtime's reactor, so accepts are polled here.
                let listener = match TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::error!(%error, "mesh listener: cannot use its socket");
                        return;
                    }
                };
                serve(listener, mesh, service, stop).await;
                tokio::time::sleep(grace).await;
            });
            // Dropping the runtime cancels the connections still open.
            drop(runtime);
        })
}

/// Accepts connections until `stop` turns true; each connection is served on its own task.
pub async fn serve(
    listener: TcpListener,
    mesh: Mesh,
    service: String,
    mut stop: watch::Receiver<bool>,
) {
    let service: Arc<str> = service.into();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: the next accept may succeed.
            Err(error) => {
                tracing::warn!(%error, "mesh listener: accept failed");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(Connection::new(stream).serve(mesh.clone(), Arc::clone(&service)));
    }
}
