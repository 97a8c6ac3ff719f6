//! The data-plane listener's HTTP/1.1 fast path, against backends written by hand so each
//! test chooses every byte of the response: pipelining, framing, reused connections the
//! instance closed, retries, hand-over to hyper, large bodies.

use super::*;

/// Starts the data-plane listener for `service` on an ephemeral port; it stops when the
/// returned sender is dropped or sends `true`.
pub(super) async fn listen(
    mesh: &Mesh,
    service: &str,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(listener::serve(
        socket,
        mesh.clone(),
        service.into(),
        stop_rx,
    ));
    (addr, stop_tx)
}

/// Registers service `name` (capability `c`) with `instances` and starts the data-plane
/// listener for it.
pub(super) async fn listening(
    f: &Fixture,
    name: &str,
    instances: Vec<InstanceSpec>,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    f.mesh
        .register(service(name, "c", instances), false)
        .await
        .expect("register");
    listen(&f.mesh, name).await
}

/// Writes `request` (one or more pipelined requests) on a fresh connection to `addr` and
/// returns everything read until the listener closes it.
pub(super) async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    // Bounded, so a listener that wrongly keeps the connection open fails the test instead of
    // hanging it.
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("the listener closes the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// What a hand-written backend does after its answers on one connection.
#[derive(Clone, Copy)]
pub(super) enum AfterAnswers {
    /// Closes right after the last answer.
    Close,
    /// Reads the next request, then closes without answering it (as an instance closing an
    /// idle connection just as a request arrives does).
    DropNext,
}

/// A loopback backend speaking HTTP/1.1 by hand, so the test chooses every byte of the
/// response: per connection it answers `answers` requests (heads with an optional
/// `Content-Length` body) with `response`, then does `after`. Counts its connections.
pub(super) async fn raw_backend(
    response: &'static str,
    answers: usize,
    after: AfterAnswers,
) -> (InstanceSpec, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    // One request: its head, then its body by Content-Length.
                    let head_end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    if answered == answers {
                        // AfterAnswers::DropNext: the request was read; close unanswered.
                        return;
                    }
                    if stream.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                    answered += 1;
                    if answered == answers && matches!(after, AfterAnswers::Close) {
                        return;
                    }
                }
            });
        }
    });
    let instance = InstanceSpec {
        id: Some("raw".into()),
        endpoint: format!("http://{addr}"),
        weight: 100,
        protocol: Protocol::Http1,
        metadata: BTreeMap::new(),
    };
    (instance, connections)
}

#[tokio::test]
async fn the_fast_path_serves_pipelined_requests_on_one_instance_connection() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    let answer = raw_exchange(
        addr,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n\
          POST /two HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
          GET /three?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    assert_eq!(answer.matches("x-evolve-service: fc\r\n").count(), 3);
    assert_eq!(answer.matches("x-evolve-instance: a\r\n").count(), 3);
    assert_eq!(answer.matches("x-evolve-attempts: 1\r\n").count(), 3);
    assert_eq!(answer.matches("connection: close\r\n").count(), 1);
    assert_eq!(
        answer.matches("{\"backend\":\"a\",\"status\":200}").count(),
        3
    );
    assert_eq!(a.hits(), 3);
    assert_eq!(a.last().path, "/three?q=1");
    let service = f.mesh.service("fc").expect("fc");
    let stats = &service.instances[0].pool.stats;
    assert_eq!(
        stats.opened.load(Ordering::SeqCst),
        1,
        "one instance connection"
    );
    assert_eq!(stats.reused.load(Ordering::SeqCst), 2);
    assert_eq!(service.limit.in_flight(), 0);
}

#[tokio::test]
async fn chunked_and_close_delimited_responses_reach_the_client_whole() {
    let f = fixture(calm());
    let (chunked, chunked_connections) = raw_backend(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        usize::MAX,
        AfterAnswers::Close,
    )
    .await;
    let (addr, _stop) = listening(&f, "chunked", vec![chunked]).await;
    let answer = raw_exchange(
        addr,
        b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer
            .matches("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n")
            .count(),
        2,
        "both bodies, trailers included: {answer}"
    );
    assert_eq!(chunked_connections.load(Ordering::SeqCst), 1);

    let (until_close, _) = raw_backend(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        1,
        AfterAnswers::Close,
    )
    .await;
    let (addr, _stop) = listening(&f, "close", vec![until_close]).await;
    // The body ends with the connection, so the client's connection ends after it too and
    // the second request gets no answer.
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\n\r\nGET /second HTTP/1.1\r\n\r\n").await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 1, "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nuntil the end"), "{answer}");
}

#[tokio::test]
async fn a_reused_connection_the_instance_closed_is_replaced_only_for_an_idempotent_request() {
    let f = fixture(calm());
    let (instance, connections) = raw_backend(
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        1,
        AfterAnswers::DropNext,
    )
    .await;
    let (addr, _stop) = listening(&f, "flaky", vec![instance]).await;
    // The second GET meets the first one's connection, which the instance closes unanswered:
    // it goes again on a fresh connection, which is no mesh retry.
    let answer = raw_exchange(
        addr,
        b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert_eq!(answer.matches("x-evolve-attempts: 1\r\n").count(), 2);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    let service = f.mesh.service("flaky").expect("flaky");
    assert_eq!(service.stats.retries.load(Ordering::SeqCst), 0);
    // A POST the instance may have read is not sent twice: the client hears of the failure.
    let answer = raw_exchange(
        addr,
        b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.contains("HTTP/1.1 502 Bad Gateway"), "{answer}");
    assert!(
        answer.contains("the connection failed before a response"),
        "{answer}"
    );
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_fast_path_retries_a_5xx_elsewhere_or_returns_it_whole() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.retry.max_retries = 1;
    config.retry.backoff_base_ms = 1;
    config.retry.backoff_max_ms = 1;
    config.retry.budget_min_per_s = 10;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    f.mesh.register(spec, false).await.expect("register");
    a.set_status(503);
    let (addr, _stop) = listen(&f.mesh, "fc").await;
    // Round-robin starts at a: the GET fails there and is retried on b.
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("x-evolve-instance: b\r\n"), "{answer}");
    assert!(answer.contains("x-evolve-attempts: 2\r\n"), "{answer}");
    // b drained: the retry of a's 503 has nowhere to go, so a's answer comes back whole.
    let service = f.mesh.service("fc").expect("fc");
    service.instances[1].weight.store(0, Ordering::SeqCst);
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("x-evolve-instance: a\r\n"), "{answer}");
    assert!(
        answer.ends_with("{\"backend\":\"a\",\"status\":503}"),
        "{answer}"
    );
    assert_eq!(service.limit.in_flight(), 0);
}

#[tokio::test]
async fn requests_the_fast_path_does_not_take_are_served_by_hyper_on_the_same_connection() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    // A fast-path GET, then a chunked POST: hyper takes the connection from there.
    let answer = raw_exchange(
        addr,
        b"GET /first HTTP/1.1\r\n\r\n\
          POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer}");
    assert_eq!(
        answer.matches("x-evolve-service: fc").count(),
        2,
        "{answer}"
    );
    let seen = a.last();
    assert_eq!(
        (seen.path.as_str(), seen.body.as_slice()),
        ("/chunked", &b"abcde"[..])
    );
    // A malformed request gets hyper's 400, not a dropped connection.
    let answer = raw_exchange(addr, b"NOT HTTP AT ALL\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test]
async fn a_body_larger_than_the_retry_buffer_streams_to_the_instance_intact() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    let body: Vec<u8> = (0..1_048_576u32).map(|i| (i % 251) as u8).collect();
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /big HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    for part in body.chunks(10_000) {
        stream.write_all(part).await.expect("body");
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    assert!(answer.starts_with(b"HTTP/1.1 200 OK\r\n"));
    let seen = a.last();
    assert_eq!(seen.path, "/big");
    assert!(
        seen.body == body,
        "the body arrived changed ({} bytes)",
        seen.body.len()
    );
}
