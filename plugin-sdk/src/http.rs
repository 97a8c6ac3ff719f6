//! Blocking outbound HTTP for health checkers, over `wasi:http/outgoing-handler`.
//!
//! The host lets a checker reach its target's own `host:port` and the hosts its manifest lists
//! under `permissions.http_hosts`; anything else fails with [`HttpError::Denied`], which is
//! deliberately distinct from a target that is merely down ([`HttpError::Connection`],
//! [`HttpError::Timeout`]): the first is a configuration problem, the others are health facts.
//!
//! Meta agents are not given `wasi:http`; a meta agent that calls into this module fails to
//! load, because its component then imports an interface its world does not offer.
//!
//! ```no_run
//! use std::time::Duration;
//! use evolve_plugin_sdk::http;
//!
//! match http::get("http://127.0.0.1:9000/health", Duration::from_secs(2)) {
//!     Ok(response) => println!("HTTP {} in {:?}", response.status, response.elapsed),
//!     Err(http::HttpError::Denied { authority }) => println!("not allowed to reach {authority}"),
//!     Err(e) => println!("down: {e}"),
//! }
//! ```
//!
//! The request is bounded twice: the host is asked to apply the timeout to connecting and to
//! each wait for bytes, and the SDK itself enforces it as one overall deadline by polling the
//! response together with a monotonic-clock timer.

use std::borrow::Cow;
use std::fmt;
use std::time::{Duration, Instant};

use wasi::clocks::monotonic_clock;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingResponse, Method, OutgoingRequest,
    RequestOptions, Scheme,
};
use wasi::io::poll;
use wasi::io::streams::StreamError;

use crate::PluginError;

/// How much of a response body [`Request::send`] keeps unless told otherwise: 64 KiB.
///
/// A health endpoint's body is small; the cap keeps a misbehaving target from exhausting the
/// plugin's memory limit.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;

/// The timeout of a [`Request`] that was not given one: 5 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Size of each read from the body stream.
const READ_CHUNK: u64 = 16 * 1024;

/// A response whose headers and (capped) body arrived within the timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// The HTTP status code.
    pub status: u16,
    /// Time from sending the request to the end of the (capped) body.
    pub elapsed: Duration,
    /// The body, at most the request's `max_body` bytes.
    pub body: Vec<u8>,
    /// Whether the body was longer than `max_body` and has been cut.
    pub truncated: bool,
}

impl HttpResponse {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text, with invalid UTF-8 replaced.
    pub fn text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.body)
    }
}

/// Why a request did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL or a header could not be turned into a request; nothing was sent.
    InvalidRequest(String),
    /// The host refused the destination (`ErrorCode::HttpRequestDenied`): it is neither the
    /// checker's target nor listed in the manifest's `http_hosts`.
    Denied {
        /// The `host[:port]` that was refused.
        authority: String,
    },
    /// No complete response within the timeout.
    Timeout {
        /// The timeout that expired.
        after: Duration,
    },
    /// The destination could not be reached: DNS failure, connection refused or reset, TLS
    /// failure, ...
    Connection {
        /// What went wrong, for humans.
        detail: String,
    },
    /// A connection was made but the exchange failed: malformed or incomplete response, ...
    Protocol {
        /// What went wrong, for humans.
        detail: String,
    },
}

impl HttpError {
    /// Whether the host refused the destination.
    pub fn is_denied(&self) -> bool {
        matches!(self, HttpError::Denied { .. })
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidRequest(reason) => write!(f, "invalid request: {reason}"),
            HttpError::Denied { authority } => {
                write!(f, "the host denied HTTP access to `{authority}`")
            }
            HttpError::Timeout { after } => {
                write!(f, "no response within {} ms", after.as_millis())
            }
            HttpError::Connection { detail } => write!(f, "connection failed: {detail}"),
            HttpError::Protocol { detail } => write!(f, "HTTP exchange failed: {detail}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for PluginError {
    /// Maps onto the WIT error codes: a denied host is `denied`, a timeout `timeout`, an
    /// unreachable or misbehaving peer `unavailable`, a malformed request `invalid-input`.
    fn from(err: HttpError) -> Self {
        let message = err.to_string();
        match err {
            HttpError::InvalidRequest(_) => PluginError::invalid_input(message),
            HttpError::Denied { .. } => PluginError::denied(message),
            HttpError::Timeout { .. } => PluginError::timeout(message),
            HttpError::Connection { .. } | HttpError::Protocol { .. } => {
                PluginError::unavailable(message)
            }
        }
    }
}

/// `GET url`, giving up after `timeout`, keeping at most [`DEFAULT_MAX_BODY`] of the body.
pub fn get(url: &str, timeout: Duration) -> Result<HttpResponse, HttpError> {
    Request::get(url).timeout(timeout).send()
}

/// A request to build and [`send`](Request::send).
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    timeout: Duration,
    headers: Vec<(String, Vec<u8>)>,
    max_body: usize,
}

impl Request {
    /// A `GET` request.
    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url.into())
    }

    /// A `HEAD` request.
    pub fn head(url: impl Into<String>) -> Self {
        Self::new(Method::Head, url.into())
    }

    fn new(method: Method, url: String) -> Self {
        Request {
            method,
            url,
            timeout: DEFAULT_TIMEOUT,
            headers: Vec::new(),
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Sets the overall deadline: connecting, the response head and the body.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Adds a request header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets how many body bytes to keep; the rest is not read.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sends the request and waits for the response, at most the timeout.
    pub fn send(&self) -> Result<HttpResponse, HttpError> {
        let url = parse_url(&self.url)?;
        let request = self.outgoing_request(&url)?;

        let options = RequestOptions::new();
        let timeout_ns = nanos(self.timeout);
        // A host may refuse to honour a timeout; the overall deadline below still applies, so
        // a refusal is not an error.
        let _ = options.set_connect_timeout(Some(timeout_ns));
        let _ = options.set_first_byte_timeout(Some(timeout_ns));
        let _ = options.set_between_bytes_timeout(Some(timeout_ns));

        let start = Instant::now();
        let deadline = start + self.timeout;
        let future = outgoing_handler::handle(request, Some(options))
            .map_err(|code| self.map_error_code(code, url.authority))?;
        let response = self.await_response(&future, deadline, url.authority)?;
        let status = response.status();
        let (body, truncated) = self.read_body(&response, deadline, url.authority)?;
        let elapsed = start.elapsed();
        // The response must go before the future it came from: WASI resources may not outlive
        // their parent.
        drop(response);
        drop(future);
        Ok(HttpResponse {
            status,
            elapsed,
            body,
            truncated,
        })
    }

    fn outgoing_request(&self, url: &Url<'_>) -> Result<OutgoingRequest, HttpError> {
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        if !self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("user-agent"))
        {
            headers.push((
                "user-agent".to_owned(),
                concat!("evolve-plugin-sdk/", env!("CARGO_PKG_VERSION"))
                    .as_bytes()
                    .to_vec(),
            ));
        }
        headers.extend(self.headers.iter().cloned());
        let fields = Fields::from_list(&headers)
            .map_err(|e| HttpError::InvalidRequest(format!("bad header: {e:?}")))?;

        let request = OutgoingRequest::new(fields);
        let invalid = |what: &str| HttpError::InvalidRequest(format!("{what} in `{}`", self.url));
        request
            .set_method(&self.method)
            .map_err(|()| invalid("unsupported method"))?;
        request
            .set_scheme(Some(&url.scheme))
            .map_err(|()| invalid("unsupported scheme"))?;
        request
            .set_authority(Some(url.authority))
            .map_err(|()| invalid("invalid host"))?;
        request
            .set_path_with_query(Some(&url.path_with_query))
            .map_err(|()| invalid("invalid path"))?;
        Ok(request)
    }

    /// Waits for the response head, racing the future against the deadline.
    fn await_response(
        &self,
        future: &FutureIncomingResponse,
        deadline: Instant,
        authority: &str,
    ) -> Result<IncomingResponse, HttpError> {
        loop {
            match future.get() {
                Some(Ok(Ok(response))) => return Ok(response),
                Some(Ok(Err(code))) => return Err(self.map_error_code(code, authority)),
                // Only possible if the response was taken twice, which this loop never does.
                Some(Err(())) => {
                    return Err(HttpError::Protocol {
                        detail: "response already taken".to_owned(),
                    });
                }
                None => self.wait(&future.subscribe(), deadline)?,
            }
        }
    }

    /// Reads the body up to `max_body` bytes; returns it and whether it was cut.
    fn read_body(
        &self,
        response: &IncomingResponse,
        deadline: Instant,
        authority: &str,
    ) -> Result<(Vec<u8>, bool), HttpError> {
        let protocol = |detail: &str| HttpError::Protocol {
            detail: detail.to_owned(),
        };
        let body = response
            .consume()
            .map_err(|()| protocol("response body already consumed"))?;
        let stream = body
            .stream()
            .map_err(|()| protocol("response body stream already taken"))?;

        let mut buf = Vec::new();
        let mut truncated = false;
        loop {
            // Ask for one byte more than the cap, so a body of exactly `max_body` bytes is not
            // reported as truncated.
            let want = (self.max_body + 1).saturating_sub(buf.len());
            let len = READ_CHUNK.min(u64::try_from(want).unwrap_or(READ_CHUNK));
            match stream.read(len) {
                Ok(bytes) if bytes.is_empty() => self.wait(&stream.subscribe(), deadline)?,
                Ok(bytes) => {
                    buf.extend_from_slice(&bytes);
                    if buf.len() > self.max_body {
                        buf.truncate(self.max_body);
                        truncated = true;
                        break;
                    }
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => {
                    return Err(match wasi::http::types::http_error_code(&err) {
                        Some(code) => self.map_error_code(code, authority),
                        None => protocol(&err.to_debug_string()),
                    });
                }
            }
        }
        // The stream is a child of the body: drop it first.
        drop(stream);
        drop(body);
        Ok((buf, truncated))
    }

    /// Blocks until `pollable` is ready or the deadline passes.
    fn wait(&self, pollable: &poll::Pollable, deadline: Instant) -> Result<(), HttpError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HttpError::Timeout {
                after: self.timeout,
            });
        }
        let timer = monotonic_clock::subscribe_duration(nanos(remaining));
        poll::poll(&[pollable, &timer]);
        Ok(())
    }

    fn map_error_code(&self, code: ErrorCode, authority: &str) -> HttpError {
        map_error_code(code, authority, self.timeout)
    }
}

/// Sorts a `wasi:http` error into denied / timeout / connection / protocol.
fn map_error_code(code: ErrorCode, authority: &str, timeout: Duration) -> HttpError {
    let connection = |detail: String| HttpError::Connection { detail };
    match code {
        ErrorCode::HttpRequestDenied => HttpError::Denied {
            authority: authority.to_owned(),
        },
        ErrorCode::DnsTimeout
        | ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout => HttpError::Timeout { after: timeout },
        ErrorCode::DnsError(payload) => connection(format!(
            "DNS lookup of `{authority}` failed{}",
            payload
                .rcode
                .map(|rcode| format!(" ({rcode})"))
                .unwrap_or_default()
        )),
        ErrorCode::DestinationNotFound => connection(format!("`{authority}` not found")),
        ErrorCode::DestinationUnavailable => connection(format!("`{authority}` unavailable")),
        ErrorCode::DestinationIpProhibited => {
            connection(format!("address of `{authority}` is prohibited"))
        }
        ErrorCode::DestinationIpUnroutable => {
            connection(format!("address of `{authority}` is unroutable"))
        }
        ErrorCode::ConnectionRefused => connection(format!("`{authority}` refused the connection")),
        ErrorCode::ConnectionTerminated => {
            connection(format!("`{authority}` closed the connection"))
        }
        ErrorCode::ConnectionLimitReached => connection("connection limit reached".to_owned()),
        code @ (ErrorCode::TlsProtocolError
        | ErrorCode::TlsCertificateError
        | ErrorCode::TlsAlertReceived(_)) => connection(format!("TLS: {code:?}")),
        code @ (ErrorCode::HttpRequestMethodInvalid
        | ErrorCode::HttpRequestUriInvalid
        | ErrorCode::HttpRequestUriTooLong) => HttpError::InvalidRequest(format!("{code:?}")),
        ErrorCode::InternalError(Some(detail)) => HttpError::Protocol { detail },
        code => HttpError::Protocol {
            detail: format!("{code:?}"),
        },
    }
}

/// A duration in nanoseconds, the unit of `wasi:clocks`, saturating.
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The parts of an absolute `http`/`https` URL that `wasi:http` wants separately.
#[derive(Debug)]
struct Url<'a> {
    scheme: Scheme,
    authority: &'a str,
    path_with_query: String,
}

/// Splits `url` into scheme, authority and path-with-query; the fragment is dropped (it is
/// never sent).
fn parse_url(url: &str) -> Result<Url<'_>, HttpError> {
    let invalid = |reason: &str| HttpError::InvalidRequest(format!("{reason}: `{url}`"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("not an absolute URL"))?;
    let scheme = if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else {
        return Err(invalid("scheme must be http or https"));
    };
    let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(invalid("missing host"));
    }
    if authority.contains('@') {
        return Err(invalid("credentials in URLs are not supported"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("whitespace in URL"));
    }
    let path_with_query = match path.chars().next() {
        None => "/".to_owned(),
        Some('?') => format!("/{path}"),
        Some(_) => path.to_owned(),
    };
    Ok(Url {
        scheme,
        authority,
        path_with_query,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorCode as WitErrorCode;

    fn parts(url: &str) -> (String, String, String) {
        let url = parse_url(url).expect("valid URL");
        let scheme = match url.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Other(_) => "other",
        };
        (
            scheme.to_owned(),
            url.authority.to_owned(),
            url.path_with_query,
        )
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            parts("http://127.0.0.1:9000/health?x=1#frag"),
            ("http".into(), "127.0.0.1:9000".into(), "/health?x=1".into())
        );
        assert_eq!(
            parts("HTTPS://example.com"),
            ("https".into(), "example.com".into(), "/".into())
        );
        assert_eq!(
            parts("http://example.com?q"),
            ("http".into(), "example.com".into(), "/?q".into())
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "example.com/health",
            "ftp://example.com/",
            "http:///path",
            "http://user:pw@example.com/",
            "http://example.com/a b",
        ] {
            let err = parse_url(url).expect_err(url);
            assert!(matches!(err, HttpError::InvalidRequest(_)), "{url}: {err}");
        }
    }

    #[test]
    fn denial_is_distinct_from_connection_failures() {
        let timeout = Duration::from_millis(100);
        let denied = map_error_code(ErrorCode::HttpRequestDenied, "evil.example:80", timeout);
        assert_eq!(
            denied,
            HttpError::Denied {
                authority: "evil.example:80".into()
            }
        );
        assert!(denied.is_denied());
        assert_eq!(PluginError::from(denied).code, WitErrorCode::Denied);

        let refused = map_error_code(ErrorCode::ConnectionRefused, "a:1", timeout);
        assert!(matches!(refused, HttpError::Connection { .. }));
        assert_eq!(PluginError::from(refused).code, WitErrorCode::Unavailable);

        let slow = map_error_code(ErrorCode::ConnectionTimeout, "a:1", timeout);
        assert_eq!(slow, HttpError::Timeout { after: timeout });
        assert_eq!(PluginError::from(slow).code, WitErrorCode::Timeout);
    }
}
