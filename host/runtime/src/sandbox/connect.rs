//! Sends an admitted request to addresses the policy already checked. This is
//! `wasmtime_wasi_http::default_send_request` with one change: it never resolves the host
//! itself. It is given socket addresses, so the name cannot resolve (or rebind) to another
//! address between the check and the connection. TLS is the same as wasmtime-wasi-http's
//! (rustls, webpki roots); the certificate is verified against the name the guest asked for.
//!
//! Redirects are not followed: hyper's connection-level client returns a 3xx to the guest like
//! any response, and a guest that follows it makes a new request, checked anew.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, WasiBody};

/// What wasmtime-wasi-http uses when the guest sets no timeout; ours are capped by the call's
/// deadline before they get here, so this is only the fallback of the fallback.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The response, and the future that drives the rest of the connection (the body) to its end.
pub type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// How long each phase may wait (the guest's request options, capped by the host).
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    pub between_bytes: Option<Duration>,
}

/// Where a checked request goes.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The addresses that passed the check, in the resolver's order; tried one after another.
    pub addresses: Vec<SocketAddr>,
    /// `Some` for `https`: the name (or IP) the server's certificate must be valid for.
    pub tls_name: Option<ServerName<'static>>,
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T> Stream for T where T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}

/// One client configuration for the process: building the webpki root store per request would
/// parse ~150 certificates each time.
static TLS_CONFIG: LazyLock<Result<Arc<rustls::ClientConfig>, String>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|builder| Arc::new(builder.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| format!("TLS client configuration: {e}"))
});

/// Connects to the first of `addresses` that accepts within `wait` (all attempts together).
async fn connect_checked(addresses: &[SocketAddr], wait: Duration) -> Result<TcpStream, Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last_error = None;
    for address in addresses {
        match tokio::time::timeout_at(deadline, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last_error = Some(error),
            Err(_elapsed) => return Err(Error::ConnectionTimeout),
        }
    }
    Err(last_error.map_or(Error::DestinationUnavailable, Error::Connect))
}

/// Sends `request` to `destination`; the `Host` header is already set by wasmtime-wasi-http.
pub async fn send(
    mut request: http::Request<WasiBody>,
    destination: Destination,
    waits: Waits,
) -> Result<Sent, Error> {
    let connect_wait = waits.connect.unwrap_or(DEFAULT_TIMEOUT);
    let first_byte_wait = waits.first_byte.unwrap_or(DEFAULT_TIMEOUT);
    // Tokio panics on a zero interval; 1 ns is as good as zero.
    let between_bytes_wait = waits
        .between_bytes
        .unwrap_or(DEFAULT_TIMEOUT)
        .max(Duration::from_nanos(1));

    let tcp = connect_checked(&destination.addresses, connect_wait).await?;
    let stream: Box<dyn Stream> = match destination.tls_name {
        Some(name) => {
            let config = TLS_CONFIG
                .as_ref()
                .map_err(|e| Error::InternalError(Some(e.clone())))?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
            let tls = tokio::time::timeout(connect_wait, connector.connect(name, tcp))
                .await
                .map_err(|_elapsed| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?;
            Box::new(tls)
        }
        None => Box::new(tcp),
    };
    let (mut sender, connection) = tokio::time::timeout(
        connect_wait,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_elapsed| Error::ConnectionTimeout)??;

    // Only a proxy gets the scheme and authority in the request line; the `Host` header carries
    // the authority.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| Error::HttpRequestUriInvalid)?;

    let exchange = async move {
        let response = tokio::time::timeout(first_byte_wait, sender.send_request(request))
            .await
            .map_err(|_elapsed| Error::ConnectionReadTimeout)?
            .map_err(Error::from)?;
        let mut between_bytes = tokio::time::interval(between_bytes_wait);
        between_bytes.reset();
        Ok::<_, Error>(response.map(|incoming| TimedBody {
            incoming,
            between_bytes,
        }))
    };
    let mut exchange = pin!(exchange);
    let mut connection = Some(connection);
    // hyper's connection future does the I/O; drive it until the response head arrives.
    let response = poll_fn(|cx| match exchange.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(result),
        Poll::Pending => {
            let Some(io) = connection.as_mut() else {
                return Poll::Pending;
            };
            let finished = ready!(Pin::new(io).poll(cx));
            connection = None;
            match finished {
                Ok(()) => exchange.as_mut().poll(cx),
                Err(error) => Poll::Ready(Err(Error::from(error))),
            }
        }
    })
    .await?;
    let rest = async move {
        let Some(connection) = connection.take() else {
            return Ok(());
        };
        connection.await.map_err(|error| {
            if error.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(error)
            }
        })
    };
    Ok((
        response.map(BodyExt::boxed_unsync),
        Box::new(rest) as Box<dyn Future<Output = _> + Send>,
    ))
}

/// A response body that fails when no bytes arrive for `between_bytes`.
struct TimedBody {
    incoming: Incoming,
    between_bytes: tokio::time::Interval,
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(if error.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(error)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.between_bytes.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.between_bytes.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}
