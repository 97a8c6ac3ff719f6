//! The API's access check, one middleware in front of every route, in this order:
//!
//! 1. **Host**: more than one `Host` is refused (400). A request without a known token must
//!    name an allowed host (`server.allowed_hosts`; default localhost, 127.0.0.1, [::1] and
//!    the listen address), or it gets 421: a page on `evil.example` that rebinds its name to
//!    127.0.0.1 reaches the daemon under its own name. A request that carries a known token
//!    passes whatever its `Host` (a browser never attaches the token by itself).
//! 2. **CORS preflight**: answered (204) only for an allowed origin, refused (403) otherwise;
//!    no CORS header is ever sent to an origin that is not allowed.
//! 3. **Origin**: a mutating request (any method but GET, HEAD and OPTIONS) whose `Origin` is not
//!    the daemon's own or a configured one (`server.allowed_origins`), or that a browser marks
//!    `Sec-Fetch-Site: cross-site`, is refused (403): cross-site forms and simple requests
//!    cannot act.
//! 4. **Media type**: a mutating request to the daemon's own endpoints with a body must be
//!    `application/json` (415): the three content types a cross-site simple request may carry
//!    never are. Traffic through the proxy and routes is the backends' business and keeps its
//!    type.
//! 5. **Token and scope**: with tokens configured, every bearer credential presented must be
//!    known; a request needs a token whose scope covers the endpoint's ([`super::ENDPOINTS`]),
//!    except reads while `server.auth_reads` is off. 401 without a (known) token, 403 with too
//!    small a scope. With no tokens configured (a loopback daemon) every caller may do
//!    everything.
//! 6. **Audit**: every mutation and every refusal is appended to the audit log
//!    ([`super::audit`]) with who, what, when, from where and the result.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::audit::{AuditEntry, AuditResult};
use super::{ApiError, ApiState, Endpoint};
use crate::access::{Scope, TokenEntry};
use crate::config::ServerConfig;

/// The name of the token that authorised a request, for audit trails.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// How long a browser may cache a preflight answer, s.
const PREFLIGHT_MAX_AGE_S: &str = "600";

/// What the access check needs from the config, prepared once.
#[derive(Debug)]
pub struct Access {
    tokens: Vec<TokenEntry>,
    reads_need_token: bool,
    hosts: Vec<HostRule>,
    /// The daemon's own origins and the configured ones, lowercase.
    origins: Vec<String>,
    /// Only the configured origins get CORS answers (the daemon's own pages are same-origin).
    cors_origins: Vec<String>,
}

/// One allowed `Host`: a name or address, with a port when the rule names one.
#[derive(Debug, PartialEq)]
struct HostRule {
    name: String,
    port: Option<u16>,
}

impl Access {
    pub fn new(server: &ServerConfig) -> Access {
        let hosts: Vec<HostRule> = server
            .effective_allowed_hosts()
            .iter()
            .filter_map(|host| parse_host(host))
            .map(|(name, port)| HostRule { name, port })
            .collect();
        let listen_port = server.listen.port();
        let mut origins = Vec::new();
        for host in &hosts {
            let port = host.port.unwrap_or(listen_port);
            for scheme in ["http", "https"] {
                origins.push(format!("{scheme}://{}:{port}", host.name));
            }
            if port == 80 {
                origins.push(format!("http://{}", host.name));
            }
            if port == 443 {
                origins.push(format!("https://{}", host.name));
            }
        }
        let cors_origins: Vec<String> = server
            .allowed_origins
            .iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect();
        origins.extend(cors_origins.iter().cloned());
        Access {
            tokens: server.tokens.clone(),
            reads_need_token: server.reads_need_token(),
            hosts,
            origins,
            cors_origins,
        }
    }

    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    fn host_allowed(&self, host: &str) -> bool {
        match parse_host(host) {
            Some((name, port)) => self
                .hosts
                .iter()
                .any(|rule| rule.name == name && (rule.port.is_none() || rule.port == port)),
            None => false,
        }
    }

    fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.origins.contains(&origin)
    }

    fn cors_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        self.cors_origins.contains(&origin)
    }

    /// Steps 1-5 of the module docs: the caller's name when a known token was presented, or
    /// the answer to send instead of running the endpoint.
    fn check(
        &self,
        request: &Request,
        needed: Scope,
        traffic: bool,
    ) -> Result<Option<String>, Refusal> {
        let headers = request.headers();
        let method = request.method();
        let mutating = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);

        let presented = bearer_credentials(headers)
            .map_err(|message| Refusal::Error(ApiError::unauthorized(message)))?;
        // Every bearer credential presented must be known: a second header cannot vouch for a
        // first one, and a wrong token is never taken as anonymous.
        let mut caller: Option<&TokenEntry> = None;
        if self.has_tokens() {
            for token in &presented {
                match known_token(&self.tokens, token) {
                    Some(entry) => caller = caller.or(Some(entry)),
                    None => {
                        return Err(Refusal::Error(ApiError::unauthorized(
                            "the bearer token is not one this daemon knows",
                        )));
                    }
                }
            }
        }

        // 1. Host.
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err(Refusal::Error(ApiError::new(
                StatusCode::BAD_REQUEST,
                "duplicate_host",
                "the request has more than one Host header",
            )));
        }
        let host = host
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| request.uri().authority().map(|a| a.as_str().to_string()));
        if caller.is_none()
            && let Some(host) = &host
            && !self.host_allowed(host)
        {
            return Err(Refusal::Error(ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "host_not_allowed",
                format!(
                    "Host \"{}\" is not a name this daemon answers to; if it is one, add it to server.allowed_hosts",
                    host.escape_debug()
                ),
            )));
        }

        // 2. CORS preflight.
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        if *method == Method::OPTIONS
            && let Some(origin) = origin
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            if self.cors_allowed(origin) {
                return Err(Refusal::Preflight(Box::new(preflight(origin))));
            }
            return Err(Refusal::Error(origin_refused(origin)));
        }

        // 3. Origin of a mutation.
        if mutating {
            if let Some(origin) = origin
                && !self.origin_allowed(origin)
            {
                return Err(Refusal::Error(origin_refused(origin)));
            }
            if origin.is_none()
                && headers
                    .get("sec-fetch-site")
                    .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
            {
                return Err(Refusal::Error(origin_refused("(a cross-site request)")));
            }
        }

        // 4. Media type.
        if mutating && !traffic && !json_or_empty(headers) {
            return Err(Refusal::Error(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "a request body must be JSON: send it with Content-Type: application/json",
            )));
        }

        // 5. Token and scope.
        if !self.has_tokens() {
            return Ok(None);
        }
        match caller {
            Some(entry) if entry.allows(needed) => Ok(Some(entry.name.clone())),
            Some(entry) => Err(Refusal::Error(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "token \"{}\" has scope {}; this endpoint needs {needed}: give the token that scope in [[server.tokens]] (or server.tokens_file)",
                    entry.name,
                    entry.scope()
                ),
            ))),
            None if needed == Scope::Read && !self.reads_need_token => Ok(None),
            None => Err(Refusal::Error(ApiError::unauthorized(format!(
                "this endpoint needs `Authorization: Bearer <token>` with scope {needed}"
            )))),
        }
    }
}

/// What the check answers instead of the endpoint.
enum Refusal {
    /// A refusal: audited.
    Error(ApiError),
    /// A preflight answered for an allowed origin: not audited (it changes nothing). Boxed:
    /// a response is large and the refusal is returned on every request's path.
    Preflight(Box<Response>),
}

fn origin_refused(origin: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        format!(
            "requests from origin {} may not change this daemon; if that origin is yours, add it to server.allowed_origins",
            origin.escape_debug()
        ),
    )
}

fn preflight(origin: &str) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE_S),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    response
}

/// Whether a body, if there is one, is declared JSON. A request without a body may have no
/// type; one with a body must say `application/json` (parameters allowed).
fn json_or_empty(headers: &HeaderMap) -> bool {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap_or_default());
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    match declared {
        Some(declared) => declared
            .split(';')
            .next()
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json")),
        None => !has_body,
    }
}

/// A `Host` value split into its lowercase name (without a trailing dot) and port.
fn parse_host(host: &str) -> Option<(String, Option<u16>)> {
    let host = host.trim();
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(port) => Some(port.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (format!("[{inside}]"), port)
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name.to_string(), Some(port.parse().ok()?)),
            None => (host.to_string(), None),
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    Some((name, port))
}

/// Traffic through the API to a backend, not a change to the daemon itself.
fn is_traffic(endpoint: Option<&Endpoint>) -> bool {
    endpoint.is_some_and(|e| e.path.contains("/proxy/") || e.path.starts_with("/v1/route/"))
}

/// The middleware: see the module docs.
pub async fn guard(State(state): State<ApiState>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let reads = matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let endpoint = super::endpoint_of(method.as_str(), request.uri().path());
    let needed =
        endpoint
            .map(|e| e.scope)
            .unwrap_or(if reads { Scope::Read } else { Scope::Admin });
    let traffic = is_traffic(endpoint);
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.to_string());
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .map(str::to_string);
    let entry =
        |caller: Option<String>, status: StatusCode, result, reason: Option<&str>| AuditEntry {
            time: super::audit::now(),
            caller,
            remote: remote.clone(),
            method: method.to_string(),
            path: path.clone(),
            endpoint: endpoint.map(|e| e.path.to_string()),
            scope: needed.to_string(),
            status: status.as_u16(),
            result,
            reason: reason.map(str::to_string),
        };
    let caller = match state.access.check(&request, needed, traffic) {
        Ok(caller) => caller,
        Err(Refusal::Preflight(response)) => return *response,
        Err(Refusal::Error(error)) => {
            tracing::warn!(
                method = %method, path = %path, remote = remote.as_deref().unwrap_or("-"),
                code = error.code, "API request refused: {}", error.message
            );
            if let Some(audit) = &state.audit {
                audit.append_refusal(entry(
                    None,
                    error.status,
                    AuditResult::Refused,
                    Some(error.code),
                ));
            }
            return error.into_response();
        }
    };
    if let Some(name) = &caller {
        request.extensions_mut().insert(Caller(name.clone()));
    }
    let mut response = next.run(request).await;
    if let Some(origin) = origin.filter(|o| state.access.cors_allowed(o))
        && let Ok(value) = HeaderValue::from_str(&origin)
    {
        let headers = response.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if !reads && !traffic {
        let status = response.status();
        let result = if status.is_client_error() || status.is_server_error() {
            AuditResult::Failed
        } else {
            AuditResult::Ok
        };
        tracing::info!(
            caller = caller.as_deref().unwrap_or("anonymous"), method = %method, path = %path,
            status = status.as_u16(), "API mutation"
        );
        if let Some(audit) = &state.audit {
            audit.append(entry(caller, status, result, None));
        }
    }
    response
}

/// Every bearer credential among the `Authorization` headers (the scheme is case-insensitive,
/// RFC 9110 §11.1). Other schemes are not credentials for this daemon and are ignored here (the
/// proxy strips them all the same); a header that is not visible ASCII is refused, since what
/// it holds cannot be checked.
fn bearer_credentials(headers: &HeaderMap) -> Result<Vec<&str>, &'static str> {
    let mut presented = Vec::new();
    for value in headers.get_all(header::AUTHORIZATION) {
        let value = value
            .to_str()
            .map_err(|_| "the Authorization header is not visible ASCII")?;
        if let Some((scheme, credential)) = value.trim().split_once(' ')
            && scheme.eq_ignore_ascii_case("bearer")
        {
            presented.push(credential.trim());
        }
    }
    Ok(presented)
}

/// The configured token equal to `presented`. Both sides are hashed first, so the comparison
/// always covers 32 bytes whatever the lengths, and every token is compared, so neither a
/// matching prefix, a length nor a token's place in the list shows in the time taken.
fn known_token<'a>(tokens: &'a [TokenEntry], presented: &str) -> Option<&'a TokenEntry> {
    use sha2::{Digest, Sha256};
    let presented = Sha256::digest(presented.as_bytes());
    let mut found = None;
    for entry in tokens {
        let token = Sha256::digest(entry.token.as_bytes());
        if constant_time_eq(&token, &presented) && found.is_none() {
            found = Some(entry);
        }
    }
    found
}

/// Compares equal-length byte strings without an early exit.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::http::{HeaderMap, HeaderValue, header};

    use super::*;

    fn tokens() -> Vec<TokenEntry> {
        vec![
            TokenEntry {
                name: "ci".into(),
                token: "ci-token-0123456789abcdef".into(),
                scopes: vec![Scope::Read],
            },
            TokenEntry {
                name: "ops".into(),
                token: "ops-token-0123456789abcdef".into(),
                scopes: vec![Scope::Admin],
            },
        ]
    }

    #[test]
    fn token_comparison_needs_every_byte() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"secret", b"secret-token-123"));
    }

    #[test]
    fn a_presented_token_is_matched_by_value_whatever_its_length_or_place() {
        let tokens = tokens();
        let name = |t| known_token(&tokens, t).map(|e| e.name.as_str());
        assert_eq!(name("ops-token-0123456789abcdef"), Some("ops"));
        assert_eq!(name("ci-token-0123456789abcdef"), Some("ci"));
        assert_eq!(name("ops-token-0123456789abcde"), None);
        assert_eq!(name(""), None);
    }

    #[test]
    fn every_bearer_header_is_a_credential_whatever_the_scheme_case() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic dXNlcjpw"),
        );
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  one "),
        );
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("BEARER two"),
        );
        assert_eq!(bearer_credentials(&headers), Ok(vec!["one", "two"]));
        let mut opaque = HeaderMap::new();
        opaque.append(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").expect("obs-text is a valid header value"),
        );
        assert!(bearer_credentials(&opaque).is_err());
    }

    #[test]
    fn hosts_match_by_name_and_the_port_only_when_the_rule_names_one() {
        let server = ServerConfig {
            allowed_hosts: vec![
                "Evolve.internal".into(),
                "10.0.0.5:7070".into(),
                "[::1]".into(),
            ],
            ..ServerConfig::default()
        };
        let access = Access::new(&server);
        assert!(access.host_allowed("evolve.internal:7070"));
        assert!(access.host_allowed("EVOLVE.INTERNAL."));
        assert!(access.host_allowed("10.0.0.5:7070"));
        assert!(!access.host_allowed("10.0.0.5:7071"));
        assert!(access.host_allowed("[::1]:7070"));
        assert!(!access.host_allowed("evil.example"));
        assert!(!access.host_allowed("evolve.internal.evil.example"));
        assert!(!access.host_allowed("[::1"));
        let defaults = Access::new(&ServerConfig::default());
        assert!(defaults.host_allowed("localhost:7070"));
        assert!(defaults.host_allowed("127.0.0.1:7070"));
        assert!(!defaults.host_allowed("evil.example:7070"));
    }

    #[test]
    fn the_daemons_own_origins_may_mutate_and_only_configured_ones_get_cors() {
        let server = ServerConfig {
            allowed_origins: vec!["https://console.example.com".into()],
            ..ServerConfig::default()
        };
        let access = Access::new(&server);
        assert!(access.origin_allowed("http://127.0.0.1:7070"));
        assert!(access.origin_allowed("http://localhost:7070"));
        assert!(access.origin_allowed("https://console.example.com"));
        assert!(!access.origin_allowed("http://127.0.0.1:7071"));
        assert!(!access.origin_allowed("https://evil.example"));
        assert!(!access.origin_allowed("null"));
        assert!(access.cors_allowed("https://console.example.com"));
        assert!(!access.cors_allowed("http://127.0.0.1:7070"));
    }

    #[test]
    fn a_body_must_be_declared_json() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (k, v) in pairs {
                map.insert(*k, HeaderValue::from_static(v));
            }
            map
        };
        assert!(json_or_empty(&headers(&[])));
        assert!(json_or_empty(&headers(&[("content-length", "0")])));
        assert!(json_or_empty(&headers(&[
            ("content-type", "application/json; charset=utf-8"),
            ("content-length", "2")
        ])));
        assert!(!json_or_empty(&headers(&[("content-length", "2")])));
        assert!(!json_or_empty(&headers(&[("content-type", "text/plain")])));
        assert!(!json_or_empty(&headers(&[(
            "content-type",
            "application/x-www-form-urlencoded"
        )])));
        assert!(!json_or_empty(&headers(&[(
            "transfer-encoding",
            "chunked"
        )])));
    }

    #[test]
    fn every_mutating_endpoint_needs_more_than_read_and_only_the_audit_log_read_needs_admin() {
        for endpoint in super::super::ENDPOINTS {
            if endpoint.method == "GET" {
                let expected = if endpoint.path == "/v1/audit" {
                    Scope::Admin
                } else {
                    Scope::Read
                };
                assert_eq!(
                    endpoint.scope, expected,
                    "{} {}",
                    endpoint.method, endpoint.path
                );
            } else {
                assert!(
                    endpoint.scope > Scope::Read,
                    "{} {}",
                    endpoint.method,
                    endpoint.path
                );
            }
        }
        let run = super::super::endpoint_of("POST", "/v1/agents/log-analyzer/run").unwrap();
        assert_eq!(
            (run.path, run.scope),
            ("/v1/agents/{name}/run", Scope::Operate)
        );
        let proxy = super::super::endpoint_of("GET", "/v1/services/s/proxy/a/b").unwrap();
        assert!(is_traffic(Some(proxy)));
        let restore = super::super::endpoint_of("POST", "/v1/registry/restore").unwrap();
        assert_eq!(restore.scope, Scope::Admin);
        assert!(super::super::endpoint_of("POST", "/v1/nothing").is_none());
    }
}
