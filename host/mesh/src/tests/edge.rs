//! The network edge: a caller's own short deadline ends its wait but never judges an instance
//! (breaker, outlier detection, latency), and header hygiene (one `Host`, dot-segments,
//! `X-Forwarded-*`, a response framed twice) holds alike on the general data path, the
//! listener's fast path and its hyper fallback.

use super::fast_path::{AfterAnswers, listening, raw_backend, raw_exchange};
use super::*;

/// Breaker and outlier detection that react at once, so a test that keeps them quiet proves
/// something: three failures in a row open the circuit and eject.
fn touchy() -> MeshConfig {
    let mut config = calm();
    config.breaker.consecutive_failures = 3;
    config.outlier.consecutive_errors = 3;
    config.outlier.max_ejected_pct = 100;
    config.timeout_ms = 1_000;
    config
}

fn with_deadline(ms: &str) -> Request<Body> {
    Request::builder()
        .uri("/work")
        .header(proxy::HEADER_DEADLINE, ms)
        .body(Body::empty())
        .expect("request")
}

/// What outlier detection, the breaker and the balancer know of a service's first instance.
fn judged(mesh: &Mesh, name: &str) -> (&'static str, bool, instance::PeakEwma, u64) {
    let service = mesh.service(name).expect("service");
    let view = ServiceView::of(&service, Duration::ZERO);
    let instance = &service.instances[0];
    let samples = instance
        .stats
        .latency_buckets
        .iter()
        .map(|b| b.load(Ordering::SeqCst))
        .sum();
    let ewma = instance.lock().ewma.clone();
    (
        view.instances[0].circuit,
        view.instances[0].ejected,
        ewma,
        samples,
    )
}

#[tokio::test]
async fn a_flood_of_caller_deadlines_of_0_and_1_ms_opens_no_circuit_ejects_nothing_and_leaves_the_ewma()
 {
    let a = Backend::start("a").await;
    let f = fixture(touchy());
    let mut rx = f.events.subscribe();
    f.mesh
        .register(service("fc", "c", vec![a.instance(100)]), false)
        .await
        .expect("register");
    // One real sample first, so "unchanged" has something to keep.
    text(send(&f.mesh, "fc").await.expect("answer")).await;
    let before = judged(&f.mesh, "fc");
    assert_eq!((before.0, before.1, before.3), ("closed", false, 1));

    // The instance now answers only after a minute; tokio's clock jumps to each deadline.
    a.delay_ms.store(60_000, Ordering::SeqCst);
    tokio::time::pause();
    for i in 0..50 {
        let deadline = if i % 2 == 0 { "0" } else { "1" };
        let err = f
            .mesh
            .proxy("fc", "/work".into(), with_deadline(deadline), false)
            .await
            .expect_err("no answer within the caller's deadline");
        // Raised to the floor, and a 504 for the caller all the same.
        assert!(
            matches!(err, MeshError::Timeout { timeout_ms, .. } if timeout_ms == proxy::MIN_CALLER_DEADLINE_MS),
            "{err}"
        );
        assert_eq!(err.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(
        judged(&f.mesh, "fc"),
        before,
        "the caller's deadline judged the instance"
    );
    let stats = &f.mesh.service("fc").expect("fc").instances[0].stats;
    assert_eq!(stats.caller_deadlines.load(Ordering::SeqCst), 50);
    assert_eq!(stats.timeouts.load(Ordering::SeqCst), 0);

    // The route's own timeout still judges: three in a row open the circuit and eject.
    for _ in 0..3 {
        let err = send(&f.mesh, "fc").await.expect_err("too slow");
        assert!(
            matches!(
                err,
                MeshError::Timeout {
                    timeout_ms: 1_000,
                    ..
                }
            ),
            "{err}"
        );
    }
    let opened = next_event(&mut rx, EventKind::CircuitOpened).await;
    assert_eq!(opened.data["last_outcome"], "timeout");
    let after = judged(&f.mesh, "fc");
    assert_eq!((after.0, after.1), ("open", true));
    assert_eq!(stats.timeouts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn deadline_0_on_the_listener_fast_path_opens_no_circuit_and_a_normal_request_is_served() {
    let a = Backend::start("a").await;
    let f = fixture(touchy());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    let before = judged(&f.mesh, "fc");
    a.delay_ms.store(60_000, Ordering::SeqCst);
    let mut flood = Vec::new();
    for i in 0..50 {
        let deadline = if i % 2 == 0 { 0 } else { 1 };
        flood.extend_from_slice(
            format!("GET /work HTTP/1.1\r\nHost: x\r\nx-evolve-deadline-ms: {deadline}\r\n\r\n")
                .as_bytes(),
        );
    }
    flood.extend_from_slice(
        b"GET /work HTTP/1.1\r\nx-evolve-deadline-ms: 0\r\nConnection: close\r\n\r\n",
    );
    let answer = raw_exchange(addr, &flood).await;
    assert_eq!(
        answer.matches("HTTP/1.1 504 Gateway Timeout\r\n").count(),
        51,
        "{answer}"
    );
    assert_eq!(
        judged(&f.mesh, "fc"),
        before,
        "the caller's deadline judged the instance"
    );
    let service = f.mesh.service("fc").expect("fc");
    let stats = &service.instances[0].stats;
    assert_eq!(stats.caller_deadlines.load(Ordering::SeqCst), 51);
    assert_eq!(stats.timeouts.load(Ordering::SeqCst), 0);
    a.delay_ms.store(0, Ordering::SeqCst);
    let answer = raw_exchange(addr, b"GET /after HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(a.last().path, "/after");
}

const FRAMED_TWICE: &str = "HTTP/1.1 200 OK\r\nContent-Length: 50\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

#[tokio::test]
async fn a_response_with_both_a_length_and_a_coding_is_forwarded_without_the_length() {
    let f = fixture(calm());
    let (instance, _) = raw_backend(FRAMED_TWICE, usize::MAX, AfterAnswers::Close).await;
    let (addr, _stop) = listening(&f, "twice", vec![instance]).await;
    // The fast path.
    let answer = raw_exchange(addr, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert!(head.contains("Transfer-Encoding: chunked"), "{head}");
    assert_eq!(body, "5\r\nhello\r\n0\r\n\r\n");
    // The general data path (the API's proxy, the listener's hyper fallback).
    let response = send(&f.mesh, "twice").await.expect("answer");
    assert!(
        !response
            .headers()
            .contains_key(http::header::CONTENT_LENGTH),
        "{:?}",
        response.headers()
    );
    assert_eq!(text(response).await, "hello");
    // The hyper fallback, through real sockets: a chunked request hands the connection over.
    let answer = raw_exchange(
        addr,
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
    )
    .await;
    let (head, _) = answer.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
}

#[tokio::test]
async fn a_request_with_two_hosts_gets_400_on_every_data_path_and_reaches_no_instance() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    for request in [
        &b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\nConnection: close\r\n\r\n",
    ] {
        let answer = raw_exchange(addr, request).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(answer.contains("more than one Host"), "{answer}");
    }
    let mut request = get("/work");
    request
        .headers_mut()
        .append(http::header::HOST, http::HeaderValue::from_static("a"));
    request
        .headers_mut()
        .append(http::header::HOST, http::HeaderValue::from_static("b"));
    let err = f
        .mesh
        .proxy("fc", "/work".into(), request, false)
        .await
        .expect_err("two hosts");
    assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(a.hits(), 0);
}

#[tokio::test]
async fn dot_segments_stay_under_the_endpoint_prefix_on_every_data_path() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let mut instance = a.instance(100);
    instance.endpoint = format!("{}/api", a.url());
    let (addr, _stop) = listening(&f, "fc", vec![instance]).await;
    for (target, seen) in [
        ("/v1/../../admin", "/api/admin"),
        ("/%2e%2e/admin?x=1", "/api/admin?x=1"),
        ("/./a/.%2E/b", "/api/b"),
    ] {
        // The fast path, then the hyper fallback (a chunked body hands the connection over).
        let fast = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(addr, fast.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{target}: {answer}");
        assert_eq!(a.last().path, seen, "fast path, {target}");
        let handed = format!(
            "POST {target} HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        );
        let answer = raw_exchange(addr, handed.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{target}: {answer}");
        assert_eq!(a.last().path, seen, "hyper fallback, {target}");
        // The named-service proxy gets the suffix after `/proxy` as the client wrote it.
        text(
            f.mesh
                .proxy("fc", target.to_string(), get("/"), false)
                .await
                .expect("answer"),
        )
        .await;
        assert_eq!(a.last().path, seen, "named proxy, {target}");
    }
    let hits = a.hits();
    for target in ["/..;/admin", "/..%2fadmin", "/a/%2e%2e%5cadmin"] {
        let request = format!("GET {target} HTTP/1.1\r\nConnection: close\r\n\r\n");
        let answer = raw_exchange(addr, request.as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{target}: {answer}"
        );
        let err = f
            .mesh
            .proxy("fc", target.to_string(), get("/"), false)
            .await
            .expect_err("hidden dot-segment");
        assert_eq!(err.status(), StatusCode::BAD_REQUEST, "{err}");
    }
    assert_eq!(a.hits(), hits, "a refused path reached the instance");
}

#[tokio::test]
async fn forwarded_for_is_appended_to_and_forwarded_host_and_proto_are_ours_on_every_data_path() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let (addr, _stop) = listening(&f, "fc", vec![a.instance(100)]).await;
    let spoofed = "Host: evolve:7070\r\nX-Forwarded-For: 203.0.113.7\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n";
    let check = |path: &str| {
        let seen = a.last();
        let all = |name: &str| -> Vec<String> {
            seen.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().expect("text").to_string())
                .collect()
        };
        assert_eq!(all("x-forwarded-for"), ["203.0.113.7, 127.0.0.1"], "{path}");
        assert_eq!(all("x-forwarded-host"), ["evolve:7070"], "{path}");
        assert_eq!(all("x-forwarded-proto"), ["http"], "{path}");
    };
    let fast = format!("GET / HTTP/1.1\r\n{spoofed}Connection: close\r\n\r\n");
    assert!(
        raw_exchange(addr, fast.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );
    check("fast path");
    let handed = format!(
        "POST / HTTP/1.1\r\n{spoofed}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
    );
    assert!(
        raw_exchange(addr, handed.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );
    check("hyper fallback");
    // The API's server hands the proxy its peer as `ConnectInfo`.
    let mut request = Request::builder()
        .uri("/work")
        .header("host", "evolve:7070")
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .body(Body::empty())
        .expect("request");
    let peer: SocketAddr = "127.0.0.1:50000".parse().expect("addr");
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    text(
        f.mesh
            .proxy("fc", "/work".into(), request, false)
            .await
            .expect("answer"),
    )
    .await;
    check("named proxy");
}
