//! A health checker's outbound HTTP (`wasi:http`), decided by the host before any connection:
//!
//! 1. **Name rule.** The request's `host:port` must be the checked service's own endpoint (the
//!    target) or match a `permissions.http_hosts` pattern (see `destination` for the wildcard and
//!    port rules).
//! 2. **Address rule.** The host resolves the name itself (bounded by [`MAX_DNS_WAIT`], at most
//!    [`MAX_ADDRESSES`] answers) and drops every address in a forbidden range (loopback,
//!    link-local, private, CGNAT, metadata, ...) unless the allow-list names that address
//!    literally. The target is exempt: a checker may always reach the instance it was asked to
//!    check, which is often on loopback.
//! 3. **Connection.** The request goes to the addresses that passed, never to a fresh lookup of
//!    the name (`connect`), so a name cannot rebind between the check and the connection.
//!
//! A refusal is `HttpRequestDenied` to the guest (what the SDK and checkers treat as "the host
//! refused this destination", so the call fails as `permission_denied` instead of passing for an
//! unhealthy service), a warning naming the host, the address and the reason, and an entry in
//! the call's refusal record that the call's error quotes. Redirects are not followed by the
//! host; a guest that follows one makes a new request, which is checked like the first.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

use super::connect::{self, Destination, Sent, Waits};
use super::destination::{DEFAULT_PORTS, ForbiddenRange, RequestHost, classify, pattern_allows};
use crate::manifest::HostPattern;

/// Distinct refused hosts remembered per call; a guest retrying in a loop must not grow the
/// host's record (or its log) without bound.
const MAX_REFUSED_HOSTS: usize = 8;

/// Longest refused authority remembered; the `http` crate accepts far longer ones.
const MAX_REFUSED_HOST_BYTES: usize = 256;

/// Longest a name lookup may take (less when the call's deadline is nearer). The system
/// resolver's own retries can take 30 s and more; a checker's call is usually a few seconds.
pub const MAX_DNS_WAIT: Duration = Duration::from_secs(5);

/// Resolved addresses considered per request. A hostile or broken zone can answer with hundreds;
/// a few are enough to fail over between address families and replicas.
pub const MAX_ADDRESSES: usize = 8;

/// Answers a checker's outbound HTTP requests in place of the network. The daemon never installs
/// one; the test kit (`evolve-plugin-testkit`) does, to fake the hosts a checker reaches. Only
/// requests the name rule admitted get here, so tests see the production allow-list; fake hosts
/// are not resolved, so the address rule does not apply to them.
pub trait HttpTransport: Send + Sync + std::fmt::Debug {
    /// The response, or the `wasi:http` error the guest sees (e.g. `ConnectionRefused`).
    fn respond(
        &self,
        method: &http::Method,
        uri: &http::Uri,
    ) -> Result<http::Response<bytes::Bytes>, wasmtime_wasi_http::Error>;
}

/// Outbound HTTP policy for one call: the manifest's hosts plus, for a check, the target's own
/// `host:port`. Refusals are recorded (bounded) so the call can report which host was refused.
#[derive(Debug, Clone, Default)]
pub struct HttpPolicy {
    plugin: Arc<str>,
    allowed: Arc<[HostPattern]>,
    target: Option<(String, u16)>,
    refused: Arc<Mutex<Refused>>,
    /// Upper bound for DNS / connect / first-byte / between-bytes waits: the call's deadline.
    max_wait: Option<Duration>,
    /// Answers admitted requests instead of the network (test kit only).
    transport: Option<Arc<dyn HttpTransport>>,
}

#[derive(Debug, Default)]
struct Refused {
    hosts: Vec<String>,
    count: u64,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Neither the target nor matched by `permissions.http_hosts`.
    NotListed,
    /// Every address the name resolved to is forbidden; this is the first of them.
    Address {
        ip: IpAddr,
        range: ForbiddenRange,
        port: u16,
    },
}

/// The address rule for one admitted request.
#[derive(Debug, Clone)]
struct AddressRule {
    /// The request is for the checked service's own endpoint.
    is_target: bool,
    allowed: Arc<[HostPattern]>,
    port: u16,
}

impl AddressRule {
    /// `Err(range)` when `ip` is in a forbidden range the allow-list does not name literally.
    fn check(&self, ip: IpAddr) -> Result<(), ForbiddenRange> {
        if self.is_target {
            return Ok(());
        }
        let Some(range) = classify(ip) else {
            return Ok(());
        };
        let listed = [ip, ip.to_canonical()].into_iter().any(|ip| {
            self.allowed
                .iter()
                .any(|pattern| pattern_allows(pattern, &RequestHost::Ip(ip), self.port))
        });
        if listed { Ok(()) } else { Err(range) }
    }
}

impl HttpPolicy {
    pub fn new(
        plugin: Arc<str>,
        allowed: Arc<[HostPattern]>,
        target: Option<(String, u16)>,
        max_wait: Duration,
    ) -> HttpPolicy {
        HttpPolicy {
            plugin,
            allowed,
            target,
            refused: Arc::default(),
            max_wait: Some(max_wait),
            transport: None,
        }
    }

    /// Sends admitted requests to `transport` instead of the network.
    pub fn with_transport(mut self, transport: Option<Arc<dyn HttpTransport>>) -> HttpPolicy {
        self.transport = transport;
        self
    }

    /// The first few distinct refusals of this call (`host:port`, and why when it was the
    /// address), and how many refusals in all.
    pub fn refused(&self) -> (Vec<String>, u64) {
        let refused = evolve_core::sync::lock(&self.refused);
        (refused.hosts.clone(), refused.count)
    }

    fn record_refusal(&self, authority: &str, why: Refusal) {
        let mut refused = evolve_core::sync::lock(&self.refused);
        refused.count += 1;
        let mut host = authority.to_string();
        if host.len() > MAX_REFUSED_HOST_BYTES {
            let mut cut = MAX_REFUSED_HOST_BYTES;
            while !host.is_char_boundary(cut) {
                cut -= 1;
            }
            host.truncate(cut);
            host.push('…');
        }
        let entry = match why {
            Refusal::NotListed => host.clone(),
            Refusal::Address { ip, range, port } => {
                format!("{host} ({})", address_refusal(ip, range, port))
            }
        };
        if refused.hosts.len() < MAX_REFUSED_HOSTS && !refused.hosts.contains(&entry) {
            let plugin = &*self.plugin;
            match why {
                Refusal::NotListed => tracing::warn!(
                    target: "evolve::plugin", plugin, refused = %host,
                    "outbound HTTP refused: host not in the plugin's allow-list (permissions.http_hosts)"
                ),
                Refusal::Address { ip, range, port } => tracing::warn!(
                    target: "evolve::plugin", plugin, refused = %host, address = %ip, reason = range.describe(),
                    "outbound HTTP refused: {}", address_refusal(ip, range, port)
                ),
            }
            refused.hosts.push(entry);
        }
    }

    fn is_target(&self, host: &RequestHost, port: u16) -> bool {
        self.target
            .as_ref()
            .is_some_and(|(h, p)| *p == port && RequestHost::parse(h) == *host)
    }

    /// The name rule: the target, or a listed pattern.
    fn admits_name(&self, host: &RequestHost, port: u16) -> bool {
        self.is_target(host, port)
            || self
                .allowed
                .iter()
                .any(|pattern| pattern_allows(pattern, host, port))
    }

    fn cap(&self, wait: Option<Duration>) -> Option<Duration> {
        match (wait, self.max_wait) {
            (Some(wait), Some(max)) => Some(wait.min(max)),
            (wait, max) => wait.or(max),
        }
    }

    /// Resolves `host` (bounded), drops forbidden addresses and records the refusal when none is
    /// left.
    async fn checked_addresses(
        &self,
        host: &RequestHost,
        rule: &AddressRule,
        authority: &str,
        wait: Duration,
    ) -> Result<Vec<SocketAddr>, wasmtime_wasi_http::Error> {
        let resolved = resolve(host, rule.port, wait.min(MAX_DNS_WAIT)).await?;
        let mut first_refused = None;
        let admitted: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|address| match rule.check(address.ip()) {
                Ok(()) => true,
                Err(range) => {
                    first_refused.get_or_insert((address.ip(), range));
                    false
                }
            })
            .collect();
        match first_refused {
            Some((ip, range)) if admitted.is_empty() => {
                let port = rule.port;
                self.record_refusal(authority, Refusal::Address { ip, range, port });
                Err(wasmtime_wasi_http::Error::HttpRequestDenied)
            }
            Some((ip, range)) => {
                tracing::debug!(
                    target: "evolve::plugin", plugin = &*self.plugin, host = authority, address = %ip,
                    "skipping a resolved address that is {range}; connecting to the others"
                );
                Ok(admitted)
            }
            None => Ok(admitted),
        }
    }
}

/// What to tell the operator about a refused address, with the pattern that would allow it.
fn address_refusal(ip: IpAddr, range: ForbiddenRange, port: u16) -> String {
    let default_port = DEFAULT_PORTS.contains(&port);
    let literal = match ip {
        IpAddr::V4(v4) if default_port => v4.to_string(),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) if default_port => format!("[{v6}]"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    format!(
        "{ip} is {range}; list \"{literal}\" in the manifest's [permissions] http_hosts to allow it"
    )
}

/// The addresses `host` resolves to on `port` (an IP literal is itself), at most
/// [`MAX_ADDRESSES`], within `wait`.
async fn resolve(
    host: &RequestHost,
    port: u16,
    wait: Duration,
) -> Result<Vec<SocketAddr>, wasmtime_wasi_http::Error> {
    let name = match host {
        RequestHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, port)]),
        RequestHost::Name(name) => name,
    };
    let addresses =
        match tokio::time::timeout(wait, tokio::net::lookup_host((name.as_str(), port))).await {
            Err(_elapsed) => return Err(wasmtime_wasi_http::Error::DnsTimeout),
            Ok(Err(error)) => {
                return Err(wasmtime_wasi_http::Error::DnsError {
                    rcode: Some(error.to_string()),
                    info_code: None,
                });
            }
            Ok(Ok(addresses)) => addresses.take(MAX_ADDRESSES).collect::<Vec<_>>(),
        };
    if addresses.is_empty() {
        return Err(wasmtime_wasi_http::Error::DnsError {
            rcode: Some("no addresses".to_string()),
            info_code: None,
        });
    }
    Ok(addresses)
}

/// `host` and effective port of a URI (80 / 443 by scheme when absent).
pub fn uri_host_port(uri: &http::Uri) -> Option<(String, u16)> {
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    Some((host.to_ascii_lowercase(), port))
}

type SendResult = wasmtime_wasi_http::Result<Sent>;

fn denied() -> Box<dyn Future<Output = SendResult> + Send> {
    Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
}

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        let _ = fut;
        let uri = request.uri();
        let authority = uri
            .authority()
            .map_or_else(|| "(no host)".to_string(), |a| a.to_string());
        let Some((host, port)) = uri_host_port(uri) else {
            self.record_refusal(&authority, Refusal::NotListed);
            return denied();
        };
        let host = RequestHost::parse(&host);
        if !self.admits_name(&host, port) {
            self.record_refusal(&authority, Refusal::NotListed);
            return denied();
        }
        if let Some(transport) = &self.transport {
            let answer = transport.respond(request.method(), request.uri());
            return Box::new(async move {
                use http_body_util::BodyExt;
                let response = answer?;
                Ok((
                    response.map(|body| {
                        http_body_util::Full::new(body)
                            .map_err(|never| match never {})
                            .boxed_unsync()
                    }),
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ))
            });
        }
        let tls_name = if uri.scheme_str() == Some("https") {
            let name = match &host {
                RequestHost::Ip(ip) => Ok(ServerName::from(*ip)),
                RequestHost::Name(name) => ServerName::try_from(name.clone()),
            };
            match name {
                Ok(name) => Some(name),
                Err(error) => {
                    return Box::new(async move {
                        Err(wasmtime_wasi_http::Error::InvalidDnsNameError(error))
                    });
                }
            }
        } else {
            None
        };
        let options = options.unwrap_or_default();
        let waits = Waits {
            connect: self.cap(options.connect_timeout),
            first_byte: self.cap(options.first_byte_timeout),
            between_bytes: self.cap(options.between_bytes_timeout),
        };
        let rule = AddressRule {
            is_target: self.is_target(&host, port),
            allowed: Arc::clone(&self.allowed),
            port,
        };
        let policy = self.clone();
        Box::new(async move {
            let lookup_wait = waits.connect.unwrap_or(MAX_DNS_WAIT);
            let addresses = policy
                .checked_addresses(&host, &rule, &authority, lookup_wait)
                .await?;
            connect::send(
                request,
                Destination {
                    addresses,
                    tls_name,
                },
                waits,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn patterns(texts: &[&str]) -> Arc<[HostPattern]> {
        texts
            .iter()
            .map(|t| HostPattern::parse(t).expect("valid pattern"))
            .collect::<Vec<_>>()
            .into()
    }

    fn policy(allowed: &[&str], target: Option<(&str, u16)>) -> HttpPolicy {
        HttpPolicy::new(
            "p".into(),
            patterns(allowed),
            target.map(|(h, p)| (h.to_string(), p)),
            Duration::from_secs(5),
        )
    }

    fn get(uri: &str) -> http::Request<WasiBody> {
        let body = http_body_util::Empty::<bytes::Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        http::Request::builder()
            .uri(uri)
            .body(body)
            .expect("valid request")
    }

    async fn send(policy: &mut HttpPolicy, uri: &str) -> SendResult {
        let sent = policy.send_request(get(uri), None, Box::new(async { Ok(()) }));
        Pin::from(sent).await
    }

    /// A loopback listener that has accepted nothing yet; `accepted()` says whether a
    /// connection reached it (a completed connect is in the accept queue when `connect`
    /// returns, so no waiting is needed).
    struct Untouched(std::net::TcpListener);

    impl Untouched {
        fn bind() -> Untouched {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            Untouched(listener)
        }
        fn port(&self) -> u16 {
            self.0.local_addr().expect("addr").port()
        }
        fn accepted(&self) -> bool {
            self.0.accept().is_ok()
        }
    }

    /// Serves one `200 OK` on loopback; returns its port.
    async fn serve_once() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        });
        port
    }

    fn status(result: SendResult) -> u16 {
        match result {
            Ok((response, _io)) => response.status().as_u16(),
            Err(error) => panic!("request failed: {error}"),
        }
    }

    fn is_denied(result: &SendResult) -> bool {
        matches!(result, Err(wasmtime_wasi_http::Error::HttpRequestDenied))
    }

    #[tokio::test]
    async fn an_allowed_name_resolving_to_loopback_is_refused_before_connecting() {
        let listener = Untouched::bind();
        let port = listener.port();
        let mut policy = policy(&[&format!("localhost:{port}")], None);
        let result = send(&mut policy, &format!("http://localhost:{port}/")).await;
        assert!(is_denied(&result), "{:?}", result.err());
        assert!(!listener.accepted(), "the loopback listener was contacted");
        let (refused, count) = policy.refused();
        assert_eq!(count, 1);
        let entry = &refused[0];
        assert!(entry.starts_with(&format!("localhost:{port} (")), "{entry}");
        assert!(entry.contains("is loopback"), "{entry}");
        assert!(entry.contains("http_hosts"), "{entry}");
    }

    #[tokio::test]
    async fn a_pattern_without_a_port_does_not_admit_another_port() {
        let listener = Untouched::bind();
        let port = listener.port();
        let mut policy = policy(&["localhost", "127.0.0.1"], None);
        let result = send(&mut policy, &format!("http://localhost:{port}/")).await;
        assert!(is_denied(&result), "{:?}", result.err());
        let result = send(&mut policy, &format!("http://127.0.0.1:{port}/")).await;
        assert!(is_denied(&result), "{:?}", result.err());
        assert!(!listener.accepted());
        assert_eq!(
            policy.refused().0,
            [format!("localhost:{port}"), format!("127.0.0.1:{port}")]
        );
    }

    #[tokio::test]
    async fn a_wildcard_never_admits_an_address() {
        let listener = Untouched::bind();
        let port = listener.port();
        let mut policy = policy(&[&format!("*.1:{port}"), &format!("*.0.0.1:{port}")], None);
        for uri in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://127.1:{port}/"),
        ] {
            let result = send(&mut policy, &uri).await;
            assert!(is_denied(&result), "{uri}: {:?}", result.err());
        }
        assert!(!listener.accepted());
    }

    #[tokio::test]
    async fn the_checked_target_on_loopback_is_reached() {
        let port = serve_once().await;
        let mut policy = policy(&[], Some(("127.0.0.1", port)));
        let result = send(&mut policy, &format!("http://127.0.0.1:{port}/health")).await;
        assert_eq!(status(result), 200);
        assert_eq!(policy.refused().1, 0);
    }

    #[tokio::test]
    async fn a_loopback_address_listed_literally_is_reached_through_an_allowed_name() {
        let port = serve_once().await;
        let mut policy = policy(
            &[&format!("localhost:{port}"), &format!("127.0.0.1:{port}")],
            None,
        );
        // `localhost` may also resolve to ::1, which is not listed and is skipped.
        let result = send(&mut policy, &format!("http://localhost:{port}/")).await;
        assert_eq!(status(result), 200);
    }

    #[tokio::test]
    async fn the_connection_goes_to_the_checked_address_not_a_new_lookup() {
        let port = serve_once().await;
        let destination = Destination {
            addresses: vec![SocketAddr::from(([127, 0, 0, 1], port))],
            tls_name: None,
        };
        let waits = Waits {
            connect: Some(Duration::from_secs(5)),
            first_byte: Some(Duration::from_secs(5)),
            between_bytes: Some(Duration::from_secs(5)),
        };
        // `.invalid` never resolves (RFC 6761): reaching the server proves no lookup happened.
        let sent = connect::send(get("http://never-resolved.invalid/"), destination, waits).await;
        let (response, _io) = sent.expect("sent to the checked address");
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(&body[..], b"ok");
    }

    #[test]
    fn the_refusal_names_the_address_and_the_literal_that_would_allow_it() {
        let ip: IpAddr = "169.254.169.254".parse().expect("valid");
        let text = address_refusal(ip, ForbiddenRange::CloudMetadata, 80);
        assert_eq!(
            text,
            "169.254.169.254 is a cloud metadata address; list \"169.254.169.254\" in the manifest's [permissions] http_hosts to allow it"
        );
        let ip: IpAddr = "::1".parse().expect("valid");
        let text = address_refusal(ip, ForbiddenRange::Loopback, 9000);
        assert!(text.contains("list \"[::1]:9000\""), "{text}");
    }

    #[test]
    fn the_target_is_exempt_and_literals_are_admitted_for_their_port_only() {
        let rule = |is_target, allowed: &[&str], port| AddressRule {
            is_target,
            allowed: patterns(allowed),
            port,
        };
        let loopback: IpAddr = "127.0.0.1".parse().expect("valid");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("valid");
        assert_eq!(
            rule(false, &[], 80).check(loopback),
            Err(ForbiddenRange::Loopback)
        );
        assert_eq!(rule(true, &[], 9000).check(loopback), Ok(()));
        assert_eq!(
            rule(false, &["127.0.0.1:9000"], 9000).check(loopback),
            Ok(())
        );
        assert_eq!(rule(false, &["127.0.0.1:9000"], 9000).check(mapped), Ok(()));
        assert_eq!(
            rule(false, &["127.0.0.1:9000"], 9001).check(loopback),
            Err(ForbiddenRange::Loopback)
        );
        assert_eq!(
            rule(false, &["*.0.0.1"], 80).check(loopback),
            Err(ForbiddenRange::Loopback)
        );
        assert_eq!(
            rule(false, &[], 443).check("93.184.216.34".parse().expect("valid")),
            Ok(())
        );
    }

    #[test]
    fn refusals_are_recorded_bounded() {
        let policy = policy(&[], None);
        for i in 0..1_000 {
            policy.record_refusal(&format!("h{i}.example:80"), Refusal::NotListed);
        }
        policy.record_refusal(&"x".repeat(10_000), Refusal::NotListed);
        let (hosts, count) = policy.refused();
        assert_eq!(hosts.len(), MAX_REFUSED_HOSTS);
        assert_eq!(count, 1_001);
        assert!(
            hosts
                .iter()
                .all(|h| h.len() <= MAX_REFUSED_HOST_BYTES + '…'.len_utf8())
        );
    }
}
