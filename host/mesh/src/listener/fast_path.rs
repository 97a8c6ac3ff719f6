//! One client connection on the listener's fast path ([`Connection`]): reads each request,
//! forwards it to an instance chosen as every route chooses, retries when allowed, and writes
//! the response back in the framing it came with (the steps of [`super`]).

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::task::coop::unconstrained;
use tokio::time::{Instant, Sleep};

use crate::h1::{self, Framing, RequestHead, ResponseHead};
use crate::instance::InstanceState;
use crate::proxy::{
    ATTEMPTS, ATTEMPTS_NAME, AttemptGuard, Budget, INSTANCE_NAME, InFlight, Retry, SERVICE_NAME,
    error_chain, retry_after, take_slot,
};
use crate::retry::is_idempotent;
use crate::service::{AttemptOutcome, ServiceState, choose};
use crate::{Mesh, MeshError};

use super::handoff::serve_with_hyper;
use super::io::{copy_chunked, copy_length, copy_until_close, read_more, send_all};

/// One client connection on the fast path, with its buffers (reused by every exchange).
pub(super) struct Connection {
    client: TcpStream,
    /// The client's address as text, appended to `X-Forwarded-For` (empty when unknown).
    client_ip: Vec<u8>,
    /// Read from the client and not used yet: the next head, the start of a body.
    input: Vec<u8>,
    head: RequestHead,
    /// The request as rendered for an instance (head and the body bytes at hand).
    request: Vec<u8>,
    /// Read from the instance.
    upstream_input: Vec<u8>,
    /// The response head as rendered for the client.
    response: Vec<u8>,
    /// Bytes of the current request's body at the start of `input`, not yet used.
    body_at_hand: usize,
    /// Bytes of the current request's body still to be read from the client (beyond those).
    body_left: u64,
}

/// How an exchange left the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Ready for the next request.
    KeepAlive,
    /// Closed, or in a state that allows no further request.
    Close,
}

/// Why an attempt got no response head.
enum Failure {
    /// No connection: the instance received nothing.
    Connect(crate::pool::SendError),
    /// The connection failed after the request went out (or while it did).
    Reset(String),
    /// The client went away while its body was being forwarded.
    ClientGone,
}

/// Why an attempt got no final response head.
enum NoHead {
    /// The connection ended or failed before a single response byte: the instance may not
    /// have read the request (a reused connection it had closed).
    Silent(String),
    /// It failed after the instance had answered something.
    Failed(String),
}

/// A failed attempt's response, read whole so a retry holds no connection or slot meanwhile.
struct Kept {
    /// Head (complete, with the `x-evolve-*` fields) and body, as the client gets them.
    bytes: Vec<u8>,
    /// Its body ends with the connection, which must therefore close after it.
    close: bool,
}

/// The answer a retry falls back on when no instance can take it.
enum Previous {
    Kept(Kept),
    Error(MeshError),
}

impl Connection {
    pub(super) fn new(client: TcpStream) -> Connection {
        let client_ip = client
            .peer_addr()
            .map(|addr| addr.ip().to_canonical().to_string().into_bytes())
            .unwrap_or_default();
        Connection {
            client,
            client_ip,
            input: Vec::new(),
            head: RequestHead::default(),
            request: Vec::new(),
            upstream_input: Vec::new(),
            response: Vec::new(),
            body_at_hand: 0,
            body_left: 0,
        }
    }

    pub(super) async fn serve(mut self, mesh: Mesh, service: Arc<str>) {
        // The deadline timer is reset per request rather than made anew: a later deadline only
        // moves the registered one (no timer-wheel lock), where a fresh timer per request
        // registered and removed itself each time.
        let mut timer = pin!(tokio::time::sleep_until(Instant::now()));
        loop {
            // Step 1.
            let head_len = match self.read_head().await {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(h1::Unsupported) => {
                    return serve_with_hyper(self.client, self.input, mesh, service).await;
                }
            };
            let state = mesh.service(&service);
            if state.as_ref().is_some_and(|s| s.has_h2c) {
                return serve_with_hyper(self.client, self.input, mesh, service).await;
            }
            self.input.drain(..head_len);
            let length = self.head.body_length;
            self.body_at_hand = (self.input.len() as u64).min(length) as usize;
            self.body_left = length - self.body_at_hand as u64;
            let next = match state {
                Some(state) => self.exchange(&mesh, &state, timer.as_mut()).await,
                None => {
                    let error = MeshError::UnknownService(service.to_string());
                    self.answer_error_after(error).await
                }
            };
            if next == Next::Close || self.body_left > 0 {
                return;
            }
        }
    }

    /// Reads until a whole head is buffered. `Ok(None)`: the client closed (or failed) first.
    async fn read_head(&mut self) -> Result<Option<usize>, h1::Unsupported> {
        loop {
            if !self.input.is_empty()
                && let Some(len) = h1::parse_request(&self.input, &mut self.head, &self.client_ip)?
            {
                return Ok(Some(len));
            }
            match read_more(&mut self.client, &mut self.input).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
    }

    /// Steps 2-5 for the request whose head is in `self.head`.
    async fn exchange(
        &mut self,
        mesh: &Mesh,
        service: &Arc<ServiceState>,
        mut timer: Pin<&mut Sleep>,
    ) -> Next {
        let config = mesh.config();
        let started = Instant::now();
        let timeout = Duration::from_millis(config.timeout_ms);
        let budget = Budget::new(self.head.caller_budget_ms, timeout);
        let deadline = started + budget.total;
        let retries = config.retry.max_retries;
        let may_retry = retries > 0 && is_idempotent(&self.head.method);
        // Step 2.
        let cap = config.retry_buffer_kb.saturating_mul(1024);
        let length = self.head.body_length;
        let replayable = length == 0 || (may_retry && length <= cap);
        // When the request is complete: `started`, unless its body had to be waited for.
        let mut complete_at = started;
        if replayable {
            while (self.input.len() as u64) < length {
                match read_more(&mut self.client, &mut self.input).await {
                    Ok(0) | Err(_) => return Next::Close,
                    Ok(_) => complete_at = Instant::now(),
                }
            }
            self.body_at_hand = length as usize;
            self.body_left = 0;
        }

        let services = std::slice::from_ref(service);
        let mut tried: Vec<u64> = Vec::new();
        let mut attempt = 0u32;
        let mut previous: Option<Previous> = None;
        loop {
            attempt += 1;
            // Step 3. Clock readings are shared where nothing was awaited in between: each
            // costs a vDSO call and Instant arithmetic per request.
            let chosen_at = if attempt == 1 {
                complete_at
            } else {
                Instant::now()
            };
            let pick = match choose(services, &service.balancer, &tried, config, chosen_at) {
                Ok(pick) => pick,
                Err(why) => {
                    if let Some(previous) = previous {
                        return self.answer_previous(previous).await;
                    }
                    service.stats.no_instance.fetch_add(1, Ordering::Relaxed);
                    let error = MeshError::Unavailable {
                        target: service.name().to_string(),
                        detail: why,
                    };
                    return self.answer_error_after(error).await;
                }
            };
            let mut guard = AttemptGuard::new(pick);
            if attempt == 1 {
                service.budget.deposit(chosen_at);
            }
            let permit = match take_slot(service, deadline).await {
                Ok(permit) => permit,
                Err(error) => {
                    if let Some(previous) = previous {
                        return self.answer_previous(previous).await;
                    }
                    return self.answer_error_after(error).await;
                }
            };
            let instance = Arc::clone(&guard.pick.instance);
            instance.stats.requests.fetch_add(1, Ordering::Relaxed);
            let in_flight = InFlight::enter(Arc::clone(&instance), permit);

            // After the slot, which may have been waited for: the deadline header, the pool's
            // idle check and the latency start here.
            let sent = Instant::now();
            let send = self.send(&instance, sent, deadline);
            let result = within(timer.as_mut(), deadline, send).await;
            let outcome = match &result {
                Ok(Ok((_, head))) => AttemptOutcome::Status(head.status),
                Ok(Err(Failure::Connect(_))) => AttemptOutcome::ConnectError,
                Ok(Err(Failure::Reset(_))) => AttemptOutcome::Reset,
                Ok(Err(Failure::ClientGone)) => AttemptOutcome::Cancelled,
                Err(_) => budget.timeout_outcome(),
            };
            let ended = guard.finish(outcome, sent, config, mesh.events());
            // Step 4.
            let rules = Retry {
                retries,
                may_retry,
                replayable,
                services,
                deadline,
            };
            let retry = retry_after(config, rules, outcome, attempt, service, &instance, &tried);
            // A body cut off mid-stream (timeout, reset, client gone) leaves the client's
            // connection in an unknown state: it closes after the answer.
            let error = match result {
                Ok(Ok((upstream, head))) => {
                    // An answer with a 5xx status, kept while the retry runs.
                    if let Some(pause) = retry {
                        tried.push(instance.uid);
                        previous = Some(
                            match self
                                .keep(upstream, head, &instance, attempt, cap, deadline)
                                .await
                            {
                                Ok(kept) => Previous::Kept(kept),
                                Err(error) => Previous::Error(error),
                            },
                        );
                        drop(in_flight);
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    // Step 5.
                    self.consume_body_at_hand();
                    let next = self
                        .respond(upstream, head, &instance, attempt, in_flight, ended)
                        .await;
                    return next;
                }
                Ok(Err(Failure::ClientGone)) => return Next::Close,
                Ok(Err(Failure::Connect(error))) => MeshError::Upstream {
                    service: service.name().to_string(),
                    instance: instance.id.clone(),
                    message: error_chain(&error),
                    attempts: attempt,
                },
                Ok(Err(Failure::Reset(message))) => MeshError::Upstream {
                    service: service.name().to_string(),
                    instance: instance.id.clone(),
                    message: format!("the connection failed before a response: {message}"),
                    attempts: attempt,
                },
                Err(_) => MeshError::Timeout {
                    service: service.name().to_string(),
                    instance: instance.id.clone(),
                    timeout_ms: budget.total.as_millis() as u64,
                    attempts: attempt,
                },
            };
            drop(in_flight);
            if let Some(pause) = retry {
                tried.push(instance.uid);
                previous = Some(Previous::Error(error));
                tokio::time::sleep(pause).await;
                continue;
            }
            return self.answer_error_after(error).await;
        }
    }

    /// Sends the request on a connection to `instance` and reads the response head; the body
    /// bytes at hand go with the head, the rest (`self.body_left`) streams from the client.
    async fn send(
        &mut self,
        instance: &InstanceState,
        sent: Instant,
        deadline: Instant,
    ) -> Result<(TcpStream, ResponseHead), Failure> {
        let remaining = deadline.saturating_duration_since(sent);
        h1::render_request(
            &mut self.request,
            &self.head,
            instance.target.prefix.as_bytes(),
            instance.target.host_header.as_ref().map(|h| h.as_bytes()),
            remaining.as_millis() as u64,
        );
        self.request
            .extend_from_slice(&self.input[..self.body_at_hand]);
        let streamed = self.body_left;
        loop {
            let (mut upstream, reused) = match instance.pool.take_raw(sent) {
                Some(stream) => (stream, true),
                None => (
                    instance
                        .pool
                        .connect_raw()
                        .await
                        .map_err(Failure::Connect)?,
                    false,
                ),
            };
            // A reused connection the instance closed meanwhile fails before any response byte.
            // The request goes again on a fresh one when nothing of it came from the client
            // since, and either the write failed or the request is idempotent: the instance may
            // have read a request it never answered (this is no retry in the mesh's sense).
            let resend_unwritten = reused && streamed == 0;
            let resend = resend_unwritten && is_idempotent(&self.head.method);
            if let Err(error) = send_all(&mut upstream, &self.request).await {
                if resend_unwritten {
                    continue;
                }
                return Err(Failure::Reset(error.to_string()));
            }
            if streamed > 0 {
                self.stream_body(&mut upstream).await?;
            }
            match self.read_response_head(&mut upstream).await {
                Ok(head) => return Ok((upstream, head)),
                Err(NoHead::Silent(_)) if resend => continue,
                Err(NoHead::Silent(why) | NoHead::Failed(why)) => return Err(Failure::Reset(why)),
            }
        }
    }

    /// Forwards the body bytes that were not at hand from the client to `upstream`.
    async fn stream_body(&mut self, upstream: &mut TcpStream) -> Result<(), Failure> {
        // Those at hand went with the head.
        self.consume_body_at_hand();
        while self.body_left > 0 {
            self.input.clear();
            match read_more(&mut self.client, &mut self.input).await {
                Ok(0) | Err(_) => return Err(Failure::ClientGone),
                Ok(n) => {
                    let take = (n as u64).min(self.body_left) as usize;
                    self.body_left -= take as u64;
                    upstream
                        .write_all(&self.input[..take])
                        .await
                        .map_err(|e| Failure::Reset(e.to_string()))?;
                    // Bytes past the body belong to the next request (pipelining).
                    self.input.drain(..take);
                }
            }
        }
        Ok(())
    }

    /// Reads a final response head from `upstream` into `self.upstream_input` (rendered into
    /// `self.response`), forwarding interim (1xx) responses to the client on the way.
    async fn read_response_head(
        &mut self,
        upstream: &mut TcpStream,
    ) -> Result<ResponseHead, NoHead> {
        self.upstream_input.clear();
        let head_request = self.head.method == http::Method::HEAD;
        // Any byte, interim responses included: after one, the request was surely read.
        let mut heard = false;
        loop {
            if !self.upstream_input.is_empty() {
                let parsed =
                    h1::parse_response(&self.upstream_input, head_request, &mut self.response)
                        .map_err(|e| NoHead::Failed(e.to_string()))?;
                if let Some(head) = parsed {
                    if !(100..200).contains(&head.status) {
                        return Ok(head);
                    }
                    // An interim response goes to the client as it came (RFC 9110 §15.2).
                    self.response.extend_from_slice(b"\r\n");
                    self.client
                        .write_all(&self.response)
                        .await
                        .map_err(|e| NoHead::Failed(format!("the client went away: {e}")))?;
                    self.upstream_input.drain(..head.len);
                    continue;
                }
            }
            let why = match read_more(upstream, &mut self.upstream_input).await {
                Ok(0) => "the instance closed the connection".to_string(),
                Ok(_) => {
                    heard = true;
                    continue;
                }
                Err(error) => error.to_string(),
            };
            return Err(if heard {
                NoHead::Failed(format!("{why} inside the response head"))
            } else {
                NoHead::Silent(why)
            });
        }
    }

    /// Adds the mesh's fields (and `connection: close` when `close`) to the head in
    /// `self.response` and ends it.
    fn finish_head(&mut self, instance: &InstanceState, attempt: u32, close: bool) {
        let out = &mut self.response;
        if let Some(value) = &instance.service_header {
            h1::push_field(out, SERVICE_NAME.as_str().as_bytes(), value.as_bytes());
        }
        if let Some(value) = &instance.id_header {
            h1::push_field(out, INSTANCE_NAME.as_str().as_bytes(), value.as_bytes());
        }
        out.extend_from_slice(ATTEMPTS_NAME.as_str().as_bytes());
        out.extend_from_slice(b": ");
        match ATTEMPTS.get(attempt.saturating_sub(1) as usize) {
            Some(value) => out.extend_from_slice(value.as_bytes()),
            None => h1::push_decimal(out, u64::from(attempt)),
        }
        out.extend_from_slice(b"\r\n");
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }

    /// Step 5: forwards the response whose head was read, then its body.
    async fn respond(
        &mut self,
        mut upstream: TcpStream,
        head: ResponseHead,
        instance: &InstanceState,
        attempt: u32,
        in_flight: InFlight,
        head_at: Instant,
    ) -> Next {
        let close = self.head.close || head.framing == Framing::UntilClose;
        self.finish_head(instance, attempt, close);
        let at_hand = &self.upstream_input[head.len..];
        // Whether body bytes were read from the instance after its head.
        let mut streamed = false;
        let (ended, reusable) = match head.framing {
            Framing::Empty => {
                let clean = at_hand.is_empty();
                if send_all(&mut self.client, &self.response).await.is_err() {
                    return Next::Close;
                }
                (true, clean)
            }
            Framing::Length(length) => {
                let take = (at_hand.len() as u64).min(length) as usize;
                let clean = at_hand.len() as u64 <= length;
                self.response.extend_from_slice(&at_hand[..take]);
                if send_all(&mut self.client, &self.response).await.is_err() {
                    return Next::Close;
                }
                let left = length - take as u64;
                streamed = left > 0;
                match copy_length(
                    &mut upstream,
                    &mut self.client,
                    left,
                    &mut self.upstream_input,
                )
                .await
                {
                    Ok(()) => (true, clean),
                    Err(()) => (false, false),
                }
            }
            Framing::Chunked => {
                let mut scanner = h1::ChunkedScanner::default();
                match scanner.scan(at_hand) {
                    Ok(Some(end)) => {
                        let clean = end == at_hand.len();
                        self.response.extend_from_slice(&at_hand[..end]);
                        if send_all(&mut self.client, &self.response).await.is_err() {
                            return Next::Close;
                        }
                        (true, clean)
                    }
                    Ok(None) => {
                        self.response.extend_from_slice(at_hand);
                        if send_all(&mut self.client, &self.response).await.is_err() {
                            return Next::Close;
                        }
                        streamed = true;
                        match copy_chunked(
                            &mut upstream,
                            &mut self.client,
                            scanner,
                            &mut self.upstream_input,
                        )
                        .await
                        {
                            Ok(clean) => (true, clean),
                            Err(()) => (false, false),
                        }
                    }
                    // Nothing of it was sent yet: the head goes, and the connection closes
                    // where the body turned bad.
                    Err(_) => {
                        let _ = self.client.write_all(&self.response).await;
                        (false, false)
                    }
                }
            }
            Framing::UntilClose => {
                self.response.extend_from_slice(at_hand);
                if self.client.write_all(&self.response).await.is_ok() {
                    let _ =
                        copy_until_close(&mut upstream, &mut self.client, &mut self.upstream_input)
                            .await;
                }
                (false, false)
            }
        };
        drop(in_flight);
        if ended && reusable && head.reusable {
            // Idle since its last byte was read: with the head, unless the body came after
            // (stamped at the head, a long body would make it look expired, and the pool drops
            // every connection older than an expired one).
            let idle_since = if streamed { Instant::now() } else { head_at };
            instance.pool.check_in_raw(upstream, idle_since);
        }
        if ended && !close {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Reads a failed attempt's response whole (up to `cap` bytes, until `deadline`) for step 4.
    async fn keep(
        &mut self,
        mut upstream: TcpStream,
        head: ResponseHead,
        instance: &InstanceState,
        attempt: u32,
        cap: u64,
        deadline: Instant,
    ) -> Result<Kept, MeshError> {
        let close = head.framing == Framing::UntilClose;
        self.finish_head(instance, attempt, close);
        let mut bytes = std::mem::take(&mut self.response);
        let start = bytes.len();
        bytes.extend_from_slice(&self.upstream_input[head.len..]);
        let read = async {
            let mut scanner = h1::ChunkedScanner::default();
            // Body bytes the scanner has seen.
            let mut scanned = 0;
            loop {
                let body = &bytes[start..];
                let done = match head.framing {
                    Framing::Empty => Some(0),
                    Framing::Length(length) => {
                        (body.len() as u64 >= length).then_some(length as usize)
                    }
                    Framing::Chunked => {
                        let end = scanner.scan(&body[scanned..]).map_err(|_| ())?;
                        let seen = scanned;
                        scanned = body.len();
                        end.map(|end| seen + end)
                    }
                    Framing::UntilClose => None,
                };
                if let Some(end) = done {
                    bytes.truncate(start + end);
                    return Ok(());
                }
                if (bytes.len() - start) as u64 > cap {
                    return Err(());
                }
                match read_more(&mut upstream, &mut bytes).await {
                    Ok(0) if head.framing == Framing::UntilClose => return Ok(()),
                    Ok(0) | Err(_) => return Err(()),
                    Ok(_) => {}
                }
            }
        };
        match tokio::time::timeout_at(deadline, read).await {
            Ok(Ok(())) if (bytes.len() - start) as u64 <= cap => Ok(Kept { bytes, close }),
            _ => Err(MeshError::Upstream {
                service: instance.service.clone(),
                instance: instance.id.clone(),
                message: format!(
                    "answered HTTP {} with a body that could not be kept for the retry",
                    head.status
                ),
                attempts: 1,
            }),
        }
    }

    async fn answer_previous(&mut self, previous: Previous) -> Next {
        match previous {
            Previous::Error(error) => self.answer_error_after(error).await,
            Previous::Kept(kept) => {
                self.consume_body_at_hand();
                if self.client.write_all(&kept.bytes).await.is_err()
                    || kept.close
                    || self.head.close
                {
                    return Next::Close;
                }
                Next::KeepAlive
            }
        }
    }

    /// The body bytes at hand were used: the next request starts after them.
    fn consume_body_at_hand(&mut self) {
        self.input.drain(..self.body_at_hand);
        self.body_at_hand = 0;
    }

    /// Answers with the mesh's JSON error for `error` (the API's error body), past the
    /// request's body at hand.
    async fn answer_error_after(&mut self, error: MeshError) -> Next {
        self.consume_body_at_hand();
        let status = error.status();
        let body = error.json_body();
        let out = &mut self.response;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        h1::push_decimal(out, u64::from(status.as_u16()));
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        h1::push_field(out, b"content-type", b"application/json");
        if error.retry_after() {
            h1::push_field(out, b"retry-after", b"1");
        }
        out.extend_from_slice(b"content-length: ");
        h1::push_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
        // A body left unread cannot be skipped safely: the connection closes after this.
        let close = self.head.close || self.body_left > 0;
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        if self.client.write_all(&self.response).await.is_err() || close {
            return Next::Close;
        }
        Next::KeepAlive
    }
}

/// `future`'s output, or `Err(TimedOut)` once `deadline` passes first, on `timer`.
async fn within<F: Future>(
    mut timer: Pin<&mut Sleep>,
    deadline: Instant,
    future: F,
) -> Result<F::Output, TimedOut> {
    timer.as_mut().reset(deadline);
    let mut future = pin!(future);
    poll_fn(|cx| {
        // The future first, as `tokio::time::timeout` does: an answer at the deadline counts.
        if let Poll::Ready(output) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(output));
        }
        // Outside the task's cooperative budget: a future that always spends it (a client
        // streaming its body without a pause) must still meet its deadline.
        pin!(unconstrained(timer.as_mut()))
            .poll(cx)
            .map(|()| Err(TimedOut))
    })
    .await
}

/// The deadline passed before the attempt ended.
struct TimedOut;
