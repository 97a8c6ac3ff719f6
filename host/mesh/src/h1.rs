//! The HTTP/1.1 message codec of the data-plane listener's fast path ([`super::listener`]):
//! request and response heads parsed with `httparse` straight from the connection's buffer
//! and re-rendered for the other side, and the body framing of RFC 9112 §6. Nothing here does
//! I/O or allocates per message: the listener keeps one [`RequestHead`] and its buffers per
//! connection and reuses them.
//!
//! The fast path takes the common shape of a request only (HTTP/1.1, origin-form target, no
//! body or a `Content-Length` one, no `Transfer-Encoding`, `Upgrade` or `Expect`); anything
//! else is [`Unsupported`] and the listener hands the connection to hyper's server, which
//! serves the rest of it (and answers malformed requests with its 400 or 431). That includes
//! the requests the mesh refuses with 400 (more than one `Host`; a path that hides a
//! dot-segment, see [`crate::proxy::remove_dot_segments`]): the general data path refuses
//! them, so there is one refusal, not two to keep alike. Responses from instances are taken
//! in every framing, since by then the request has been sent.
//!
//! Headers follow the policy of [`crate::proxy`]: the target's dot-segments are removed,
//! `X-Forwarded-For` gets the client's address appended, `X-Forwarded-Host` and
//! `X-Forwarded-Proto` are the mesh's, and a response with both `Transfer-Encoding` and
//! `Content-Length` loses `Content-Length` (and its connection is not reused).

use std::mem::MaybeUninit;

use http::Method;

/// Bytes of one request or response head the fast path reads before it gives up (the request
/// goes to hyper, which answers 431; a response is a protocol error). Larger than any head
/// a sane peer sends, small enough that a connection's buffer stays bounded.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields of one head; more is [`Unsupported`] (request) or a protocol error (response).
pub const MAX_HEADERS: usize = 128;
/// Hex digits of a chunk size: 16 fill a `u64`; more would overflow.
const MAX_CHUNK_SIZE_DIGITS: u32 = 16;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); never forwarded.
/// `transfer-encoding` is not here: the fast path never forwards a request that has it, and
/// passes a chunked response through unchanged with it.
const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"upgrade",
];
/// `Connection` tokens a message may carry; more named headers than this is [`Unsupported`].
const MAX_CONNECTION_TOKENS: usize = 8;

/// The request is not the fast path's shape: hyper serves the connection from here on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`, passed through as is, ending with its last chunk.
    Chunked,
    /// A response without a length: its body ends when the instance closes.
    UntilClose,
}

/// A request head, re-rendered for an instance except for the parts that depend on which
/// (the target's prefix, `Host`, the remaining deadline).
#[derive(Debug, Default)]
pub struct RequestHead {
    pub method: Method,
    /// Origin-form target as sent (`/path?query`).
    pub target: Vec<u8>,
    /// The header lines an instance gets (`name: value\r\n` each): hop-by-hop headers, the
    /// ones `Connection` names, `Host`, the caller's deadline and its `x-forwarded-*` left out,
    /// the mesh's `x-forwarded-host`, `-proto` and `-for` added.
    pub forwarded: Vec<u8>,
    /// The client's `X-Forwarded-For` values, joined with `, ` (a buffer reused per request).
    pub forwarded_for: Vec<u8>,
    /// `Content-Length`, 0 without one.
    pub body_length: u64,
    /// The client asked to close after this exchange.
    pub close: bool,
    /// `x-evolve-deadline-ms` as sent: the caller's remaining budget.
    pub caller_budget_ms: Option<u64>,
}

/// Parses a request head at the start of `buf` into `head` (reused: cleared first), from the
/// client at `client_ip` (its address as text, appended to `X-Forwarded-For`; empty when
/// unknown). `Ok(None)`: the head is incomplete, read more. `Ok(Some(len))`: the head is the
/// first `len` bytes.
pub fn parse_request(
    buf: &[u8],
    head: &mut RequestHead,
    client_ip: &[u8],
) -> Result<Option<usize>, Unsupported> {
    // Left uninitialised: zeroing 128 fields per request cost more than parsing a small head.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let len = match request.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        _ => return Err(Unsupported),
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Err(Unsupported);
    };
    if !target.starts_with('/') || method == "CONNECT" {
        return Err(Unsupported);
    }
    head.method = Method::from_bytes(method.as_bytes()).map_err(|_| Unsupported)?;
    head.target.clear();
    match super::proxy::remove_dot_segments(target) {
        Ok(None) => head.target.extend_from_slice(target.as_bytes()),
        Ok(Some(normal)) => head.target.extend_from_slice(normal.as_bytes()),
        Err(_) => return Err(Unsupported),
    }
    head.forwarded.clear();
    head.forwarded_for.clear();
    head.body_length = 0;
    head.close = false;
    head.caller_budget_ms = None;

    let headers = &*request.headers;
    let named = connection_tokens(headers, &mut head.close)?;
    let mut host: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    for field in headers {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Err(Unsupported);
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = parse_length(field.value).ok_or(Unsupported)?;
            // Repeated lengths must agree (RFC 9112 §6.3 item 5); hyper answers 400 otherwise.
            if length.is_some_and(|seen| seen != value) {
                return Err(Unsupported);
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"host") {
            // More than one is a 400 (RFC 9112 §3.2), which the general data path answers.
            if host.is_some() {
                return Err(Unsupported);
            }
            host = Some(field.value);
            continue;
        } else if name.eq_ignore_ascii_case(super::proxy::HEADER_DEADLINE.as_bytes()) {
            head.caller_budget_ms = super::proxy::parse_deadline_ms(field.value);
            continue;
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let value = trim(field.value);
            if !value.is_empty() {
                if !head.forwarded_for.is_empty() {
                    head.forwarded_for.extend_from_slice(b", ");
                }
                head.forwarded_for.extend_from_slice(value);
            }
            continue;
        } else if name.eq_ignore_ascii_case(b"x-forwarded-host")
            || name.eq_ignore_ascii_case(b"x-forwarded-proto")
        {
            continue;
        }
        if is_hop_by_hop(name) || named.contains(name) {
            continue;
        }
        push_field(&mut head.forwarded, name, field.value);
    }
    if let Some(host) = host {
        push_field(&mut head.forwarded, b"x-forwarded-host", host);
    }
    push_field(
        &mut head.forwarded,
        b"x-forwarded-proto",
        super::proxy::FORWARDED_PROTO_VALUE.as_bytes(),
    );
    if !client_ip.is_empty() {
        if !head.forwarded_for.is_empty() {
            head.forwarded_for.extend_from_slice(b", ");
        }
        head.forwarded_for.extend_from_slice(client_ip);
    }
    if !head.forwarded_for.is_empty() {
        push_field(&mut head.forwarded, b"x-forwarded-for", &head.forwarded_for);
    }
    head.body_length = length.unwrap_or(0);
    Ok(Some(len))
}

/// Renders `head` for an instance into `out` (cleared first): the request line with the
/// instance's path prefix, its `Host`, the remaining deadline, the forwarded fields.
pub fn render_request(
    out: &mut Vec<u8>,
    head: &RequestHead,
    prefix: &[u8],
    host: Option<&[u8]>,
    deadline_ms: u64,
) {
    out.clear();
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(prefix);
    out.extend_from_slice(&head.target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        push_field(out, b"host", host);
    }
    out.extend_from_slice(super::proxy::HEADER_DEADLINE.as_bytes());
    out.extend_from_slice(b": ");
    push_decimal(out, deadline_ms);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&head.forwarded);
    out.extend_from_slice(b"\r\n");
}

/// A response head from an instance, re-rendered for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head at the start of the buffer it was parsed from.
    pub len: usize,
    pub framing: Framing,
    /// The instance keeps the connection open after this response.
    pub reusable: bool,
}

/// Why an instance's response cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("its response head is malformed ({0})")]
    Malformed(String),
    #[error("its response head is over {MAX_HEAD_BYTES} bytes or {MAX_HEADERS} fields")]
    TooLarge,
    #[error("it switched protocols (101) on a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("its Content-Length is not a number")]
    BadLength,
    #[error("its chunked body is malformed")]
    BadChunk,
}

/// Parses a response head at the start of `buf` and renders the client's copy into `out`
/// (cleared first) without the final empty line, so the caller can add its own fields.
/// `Ok(None)`: incomplete, read more. `head_request`: the request was `HEAD`, so no body follows.
pub fn parse_response(
    buf: &[u8],
    head_request: bool,
    out: &mut Vec<u8>,
) -> Result<Option<ResponseHead>, ResponseError> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Ok(None),
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Err(ResponseError::TooLarge);
        }
        Err(error) => return Err(ResponseError::Malformed(error.to_string())),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err(ResponseError::Malformed("no status line".into()));
    };
    if status == 101 {
        return Err(ResponseError::UnaskedUpgrade);
    }
    let headers = &*response.headers;
    let mut close = version == 0;
    let named = connection_tokens(headers, &mut close)
        .map_err(|_| ResponseError::Malformed("too many Connection tokens".into()))?;
    if version == 0 && connection_says(headers, b"keep-alive") {
        close = false;
    }
    out.clear();
    match buf.iter().position(|&b| b == b'\n') {
        // An HTTP/1.1 status line that ends in CRLF goes as it came (not when blank lines
        // came first: httparse skips those).
        Some(end) if version == 1 && buf.starts_with(b"HTTP/") && buf[end - 1] == b'\r' => {
            out.extend_from_slice(&buf[..=end]);
        }
        _ => {
            out.extend_from_slice(b"HTTP/1.1 ");
            push_decimal(out, u64::from(status));
            out.push(b' ');
            out.extend_from_slice(response.reason.unwrap_or_default().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut length: Option<u64> = None;
    let mut chunked = None;
    // With both, the transfer coding decides and `Content-Length` must not be forwarded (RFC
    // 9112 §6.3 item 3): a client that read it would frame the body differently than we do.
    let has_coding = headers
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case("transfer-encoding"));
    for field in headers {
        let name = field.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if has_coding {
                // Nor is the connection reused: an instance that sends both is confused about
                // framing, and its next response could start anywhere.
                close = true;
                continue;
            }
            let value = parse_length(field.value).ok_or(ResponseError::BadLength)?;
            if length.is_some_and(|seen| seen != value) {
                return Err(ResponseError::BadLength);
            }
            length = Some(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // Chunked must be the last coding; any other last coding means "until close".
            chunked = Some(last_token_is(field.value, b"chunked"));
        }
        if is_hop_by_hop(name) || named.contains(name) {
            continue;
        }
        push_field(out, name, field.value);
    }
    let framing = if head_request || (100..200).contains(&status) || status == 204 || status == 304
    {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(0)) => Framing::Empty,
            (None, Some(length)) => Framing::Length(length),
            (None, None) => Framing::UntilClose,
        }
    };
    Ok(Some(ResponseHead {
        status,
        len,
        framing,
        reusable: !close && framing != Framing::UntilClose,
    }))
}

/// Appends `name: value\r\n`.
pub fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends `value` in decimal, without allocating.
pub fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Names listed in `Connection` (other than `close` and `keep-alive`), compared without case.
#[derive(Default)]
struct Named<'a> {
    names: [&'a [u8]; MAX_CONNECTION_TOKENS],
    len: usize,
}

impl Named<'_> {
    fn contains(&self, name: &[u8]) -> bool {
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The tokens of every `Connection` field; sets `close` when one is `close`.
fn connection_tokens<'a>(
    headers: &[httparse::Header<'a>],
    close: &mut bool,
) -> Result<Named<'a>, Unsupported> {
    let mut named = Named::default();
    for field in headers {
        if !field.name.eq_ignore_ascii_case("connection") {
            continue;
        }
        for token in field.value.split(|&b| b == b',').map(trim) {
            if token.eq_ignore_ascii_case(b"close") {
                *close = true;
            } else if token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive") {
            } else if named.len < MAX_CONNECTION_TOKENS {
                named.names[named.len] = token;
                named.len += 1;
            } else {
                return Err(Unsupported);
            }
        }
    }
    Ok(named)
}

fn connection_says(headers: &[httparse::Header<'_>], token: &[u8]) -> bool {
    headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case("connection"))
        .flat_map(|f| f.value.split(|&b| b == b','))
        .any(|t| trim(t).eq_ignore_ascii_case(token))
}

fn last_token_is(value: &[u8], token: &[u8]) -> bool {
    value
        .rsplit(|&b| b == b',')
        .next()
        .is_some_and(|last| trim(last).eq_ignore_ascii_case(token))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

/// A `Content-Length` value: digits only (no sign, no spaces inside), at most `u64::MAX`.
fn parse_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Finds where a chunked body ends while its bytes pass through unchanged (RFC 9112 §7.1).
///
/// States, in the order a chunk goes through them:
/// 1. `Size`: hex digits of the chunk size;
/// 2. `Extension`: anything up to the line's end (chunk extensions are passed, not read);
/// 3. `SizeLf`: the size line's LF;
/// 4. `Data`: that many bytes, then 5. `DataCr` and 6. `DataLf`; back to 1. A size of 0 goes
///    to 7. `LineStart` instead: an empty line ends the body (8. `EndLf`, then 9. `Done`),
///    anything else is a trailer field, read through 10. `Trailer` to its LF and back to 7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedScanner {
    state: ChunkState,
    /// Bytes of the current size line, or of all trailers: capped like a head.
    line_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size { value: u64, digits: u32 },
    Extension { size: u64 },
    SizeLf { size: u64 },
    Data(u64),
    DataCr,
    DataLf,
    LineStart,
    EndLf,
    Trailer,
    Done,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        ChunkedScanner {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
            line_bytes: 0,
        }
    }
}

impl ChunkedScanner {
    /// Reads `bytes`, the next part of the body. `Ok(Some(n))`: the body ends after the first
    /// `n` of them; `Ok(None)`: all of them belong to it and more follow.
    pub fn scan(&mut self, bytes: &[u8]) -> Result<Option<usize>, ResponseError> {
        let mut at = 0;
        while at < bytes.len() {
            if let ChunkState::Data(left) = self.state {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                self.state = if take == left {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data(left - take)
                };
                continue;
            }
            if self.state == ChunkState::Done {
                return Ok(Some(at));
            }
            let byte = bytes[at];
            at += 1;
            self.line_bytes += 1;
            if self.line_bytes > MAX_HEAD_BYTES {
                return Err(ResponseError::BadChunk);
            }
            self.state = match (self.state, byte) {
                (ChunkState::Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                    if digits == MAX_CHUNK_SIZE_DIGITS {
                        return Err(ResponseError::BadChunk);
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0);
                    ChunkState::Size {
                        value: value << 4 | u64::from(digit),
                        digits: digits + 1,
                    }
                }
                (ChunkState::Size { digits: 0, .. }, _) => return Err(ResponseError::BadChunk),
                (ChunkState::Size { value, .. }, b'\r') => ChunkState::SizeLf { size: value },
                (ChunkState::Size { value, .. }, b';' | b' ' | b'\t') => {
                    ChunkState::Extension { size: value }
                }
                (ChunkState::Extension { size }, b'\r') => ChunkState::SizeLf { size },
                (ChunkState::Extension { .. }, b'\n') => return Err(ResponseError::BadChunk),
                (ChunkState::Extension { size }, _) => ChunkState::Extension { size },
                (ChunkState::SizeLf { size }, b'\n') => {
                    self.line_bytes = 0;
                    if size == 0 {
                        ChunkState::LineStart
                    } else {
                        ChunkState::Data(size)
                    }
                }
                (ChunkState::DataCr, b'\r') => ChunkState::DataLf,
                (ChunkState::DataLf, b'\n') => {
                    self.line_bytes = 0;
                    ChunkState::Size {
                        value: 0,
                        digits: 0,
                    }
                }
                (ChunkState::LineStart, b'\r') => ChunkState::EndLf,
                (ChunkState::EndLf, b'\n') => {
                    self.state = ChunkState::Done;
                    return Ok(Some(at));
                }
                (ChunkState::LineStart, b'\n') => return Err(ResponseError::BadChunk),
                (ChunkState::Trailer, b'\n') => ChunkState::LineStart,
                (ChunkState::LineStart | ChunkState::Trailer, _) => ChunkState::Trailer,
                _ => return Err(ResponseError::BadChunk),
            };
        }
        Ok(None)
    }

    /// The body ended (its last chunk and trailers were read).
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Option<(usize, RequestHead)>, Unsupported> {
        request_from(text, b"")
    }

    fn request_from(
        text: &str,
        client_ip: &[u8],
    ) -> Result<Option<(usize, RequestHead)>, Unsupported> {
        let mut head = RequestHead::default();
        Ok(parse_request(text.as_bytes(), &mut head, client_ip)?.map(|len| (len, head)))
    }

    fn forwarded(head: &RequestHead) -> String {
        String::from_utf8(head.forwarded.clone()).expect("utf-8")
    }

    #[test]
    fn a_request_head_is_rendered_without_hop_by_hop_fields_and_with_the_instance_host() {
        let text = "POST /forecast?x=1 HTTP/1.1\r\nHost: evolve:7070\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic x\r\nx-evolve-deadline-ms: 250\r\nContent-Length: 2\r\nX-Keep: yes\r\n\r\n{}";
        let (len, head) = request(text).expect("supported").expect("complete");
        assert_eq!(len, text.len() - 2, "the head ends before the body");
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.body_length, 2);
        assert_eq!(head.caller_budget_ms, Some(250));
        assert!(!head.close);
        assert_eq!(
            forwarded(&head),
            "Content-Length: 2\r\nX-Keep: yes\r\nx-forwarded-host: evolve:7070\r\nx-forwarded-proto: http\r\n"
        );
        let mut out = Vec::new();
        render_request(&mut out, &head, b"/v2", Some(b"127.0.0.1:9"), 249);
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "POST /v2/forecast?x=1 HTTP/1.1\r\nhost: 127.0.0.1:9\r\nx-evolve-deadline-ms: 249\r\nContent-Length: 2\r\nX-Keep: yes\r\nx-forwarded-host: evolve:7070\r\nx-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_request_head_arrives_in_parts_and_close_is_noticed() {
        let text = "GET / HTTP/1.1\r\nConnection: close\r\n\r\n";
        for cut in 0..text.len() {
            assert!(
                request(&text[..cut]).expect("supported").is_none(),
                "{cut} bytes are not a head"
            );
        }
        let (_, head) = request(text).expect("supported").expect("complete");
        assert!(head.close);
        assert_eq!(head.body_length, 0);
        assert_eq!(forwarded(&head), "x-forwarded-proto: http\r\n");
    }

    #[test]
    fn forwarded_for_is_appended_to_and_forwarded_host_and_proto_are_ours() {
        let text = "GET / HTTP/1.1\r\nHost: evolve:7070\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nx-forwarded-for:  10.0.0.1 \r\n\r\n";
        let (_, head) = request_from(text, b"127.0.0.1")
            .expect("supported")
            .expect("complete");
        assert_eq!(
            forwarded(&head),
            "x-forwarded-host: evolve:7070\r\nx-forwarded-proto: http\r\nx-forwarded-for: 203.0.113.7, 10.0.0.1, 127.0.0.1\r\n"
        );
        // Without a Host the client's X-Forwarded-Host is dropped all the same; the peer alone
        // is the list.
        let (_, head) = request_from(
            "GET / HTTP/1.1\r\nX-Forwarded-Host: evil.example\r\n\r\n",
            b"::1",
        )
        .expect("supported")
        .expect("complete");
        assert_eq!(
            forwarded(&head),
            "x-forwarded-proto: http\r\nx-forwarded-for: ::1\r\n"
        );
    }

    #[test]
    fn dot_segments_are_removed_from_the_target_and_hidden_ones_are_handed_on() {
        for (target, normal) in [
            ("/a/../admin?x=/../y", "/admin?x=/../y"),
            ("/../../etc", "/etc"),
            ("/%2e%2e/admin", "/admin"),
            ("/a/.%2E/./b/", "/b/"),
            ("/a/b/..", "/a/"),
            ("/files/x.json", "/files/x.json"),
        ] {
            let text = format!("GET {target} HTTP/1.1\r\n\r\n");
            let (_, head) = request(&text).expect("supported").expect("complete");
            assert_eq!(String::from_utf8_lossy(&head.target), normal, "{target}");
        }
        // Refused by the general data path with 400.
        for target in ["/..%2fadmin", "/..;/admin", "/%2e%2e%5cadmin"] {
            let text = format!("GET {target} HTTP/1.1\r\n\r\n");
            assert_eq!(request(&text).err(), Some(Unsupported), "{target}");
        }
    }

    #[test]
    fn requests_outside_the_fast_path_are_handed_on() {
        for text in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://example/ HTTP/1.1\r\n\r\n",
            "CONNECT example:443 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            // Two Hosts get a 400 (RFC 9112 §3.2) from the general data path.
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
            "\x00\x01 garbage\r\n\r\n",
        ] {
            assert_eq!(request(text).err(), Some(Unsupported), "{text:?}");
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(request(&huge).err(), Some(Unsupported), "an endless head");
    }

    fn response(text: &str, head_request: bool) -> (ResponseHead, String) {
        let mut out = Vec::new();
        let head = parse_response(text.as_bytes(), head_request, &mut out)
            .expect("valid")
            .expect("complete");
        (head, String::from_utf8(out).expect("utf-8"))
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let (head, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\nhello",
            false,
        );
        assert_eq!(
            (head.status, head.framing, head.reusable),
            (200, Framing::Length(5), true)
        );
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n");
        let (head, _) = response("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true);
        assert_eq!(head.framing, Framing::Empty, "HEAD has no body");
        for status in ["204 No Content", "304 Not Modified", "103 Early Hints"] {
            let (head, _) = response(
                &format!("HTTP/1.1 {status}\r\nContent-Length: 5\r\n\r\n"),
                false,
            );
            assert_eq!(head.framing, Framing::Empty, "{status}");
        }
        let (head, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            false,
        );
        assert_eq!(head.framing, Framing::Chunked, "chunked wins over a length");
        assert_eq!(
            out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n",
            "the length is not forwarded beside the coding"
        );
        assert!(
            !head.reusable,
            "a confused instance's connection is not reused"
        );
        let (head, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\ncontent-length: 4\r\n\r\n",
            false,
        );
        assert_eq!(head.framing, Framing::UntilClose);
        assert!(
            !out.to_ascii_lowercase().contains("content-length"),
            "{out}"
        );
        let (head, _) = response("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false);
        assert_eq!((head.framing, head.reusable), (Framing::UntilClose, false));
        let (head, _) = response("HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((head.framing, head.reusable), (Framing::UntilClose, false));
        let (head, out) = response("HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!((head.framing, head.reusable), (Framing::Empty, false));
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        let (head, _) = response(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(head.reusable, "HTTP/1.0 keep-alive");
        let (head, _) = response(
            "HTTP/1.1 500 Oops\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert_eq!((head.status, head.reusable), (500, false));
    }

    #[test]
    fn a_status_line_is_copied_only_when_it_is_http_1_1_and_first() {
        let (_, out) = response("HTTP/1.1 299 Very Fine\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(out, "HTTP/1.1 299 Very Fine\r\nContent-Length: 0\r\n");
        // httparse skips blank lines before the status line; the copy must not start with one.
        let (head, out) = response("\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(head.status, 200);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n");
        let (_, out) = response("HTTP/1.1 200 OK\nContent-Length: 0\n\n", false);
        assert_eq!(
            out, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n",
            "bare LF is not copied"
        );
    }

    #[test]
    fn bad_responses_are_named() {
        let mut out = Vec::new();
        let mut parse = |text: &str| parse_response(text.as_bytes(), false, &mut out);
        assert_eq!(
            parse("HTTP/1.1 101 Switching Protocols\r\n\r\n"),
            Err(ResponseError::UnaskedUpgrade)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(ResponseError::BadLength)
        );
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(ResponseError::BadLength)
        );
        assert!(matches!(
            parse("SMTP ready\r\n\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert_eq!(parse("HTTP/1.1 200 OK\r\n"), Ok(None));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(parse(&huge), Err(ResponseError::TooLarge));
    }

    const CHUNKED: &str =
        "5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\nTrailer-One: 1\r\nTrailer-Two: 2\r\n\r\n";

    #[test]
    fn the_end_of_a_chunked_body_is_found_wherever_the_reads_split_it() {
        let body = format!("{CHUNKED}NEXT");
        let end = CHUNKED.len();
        for cut in 0..body.len() {
            let (first, second) = body.as_bytes().split_at(cut);
            let mut scanner = ChunkedScanner::default();
            let found = match scanner.scan(first).expect("valid") {
                Some(at) => at,
                None => cut + scanner.scan(second).expect("valid").expect("ends"),
            };
            assert_eq!(found, end, "split at {cut}");
            assert!(scanner.is_done());
        }
        let mut scanner = ChunkedScanner::default();
        for (at, byte) in body.as_bytes().iter().enumerate() {
            if let Some(n) = scanner.scan(std::slice::from_ref(byte)).expect("valid") {
                assert_eq!((at, n), (end - 1, 1), "byte by byte");
                break;
            }
        }
        let mut scanner = ChunkedScanner::default();
        assert_eq!(scanner.scan(b"0\r\n\r\n"), Ok(Some(5)), "an empty body");
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for body in [
            "x\r\n",
            "\r\n",
            "5\nhello\r\n",
            "5\r\nhelloXX",
            "11111111111111111\r\n",
            "5;ext\nhello",
            "0\r\n\n",
        ] {
            let mut scanner = ChunkedScanner::default();
            assert_eq!(
                scanner.scan(body.as_bytes()),
                Err(ResponseError::BadChunk),
                "{body:?}"
            );
        }
        let mut scanner = ChunkedScanner::default();
        let trailers = format!("0\r\nX: {}", "a".repeat(MAX_HEAD_BYTES));
        assert_eq!(
            scanner.scan(trailers.as_bytes()),
            Err(ResponseError::BadChunk),
            "endless trailers"
        );
    }

    #[test]
    fn decimals_render_without_allocating_a_string() {
        for value in [0, 7, 10, 249, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
        }
    }
}
