//! A connection the fast path does not take, handed to hyper's HTTP/1.1 server with the bytes
//! already read from it, to be served through [`crate::Mesh::proxy_to`] from there on.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::Response;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::Mesh;

/// Serves a connection with hyper's HTTP/1.1 server from here on; `read` holds what was read
/// from it and not used yet.
pub(super) async fn serve_with_hyper(
    stream: TcpStream,
    read: Vec<u8>,
    mesh: Mesh,
    service: Arc<str>,
) {
    // What the API's server records of its clients, so the data path appends the same
    // address to `X-Forwarded-For` on every route.
    let peer = stream.peer_addr().ok().map(ConnectInfo);
    let handler = service_fn(move |mut request: http::Request<Incoming>| {
        let (mesh, service) = (mesh.clone(), Arc::clone(&service));
        if let Some(peer) = peer {
            request.extensions_mut().insert(peer);
        }
        async move { Ok::<_, Infallible>(forward(&mesh, &service, request).await) }
    });
    let io = Rewind {
        read,
        at: 0,
        inner: stream,
    };
    // A client that goes away mid-request is its own business, not an error of ours.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), handler)
        .await;
}

async fn forward(mesh: &Mesh, service: &str, request: http::Request<Incoming>) -> Response<Body> {
    let path_and_query = request
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    match mesh
        .proxy_to(service, path_and_query, request.map(Body::new), false)
        .await
    {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

/// A client connection handed to hyper after the fast path read from it: the bytes read are
/// read again first.
struct Rewind {
    read: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let take = (this.read.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.read[this.at..this.at + take]);
            this.at += take;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
