//! `/v1/services/{name}/proxy`: bodies stream, the caller's deadline is honoured, h2c
//! instances are reached over HTTP/2.

use super::*;

#[tokio::test]
async fn named_proxy_streams_bodies_and_honours_a_shorter_caller_deadline() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    // A body of unknown length streams (no buffering, no retry).
    let body = Body::new(Chunks(
        vec![Bytes::from_static(b"hello "), Bytes::from_static(b"world")].into(),
    ));
    let request = Request::builder()
        .method(Method::PUT)
        .uri("/v1/services/fc/proxy/items/7?full=1")
        .header(proxy::HEADER_DEADLINE, "1500")
        .header("authorization", "Bearer daemon-token")
        .body(body)
        .expect("request");
    let response = f
        .mesh
        .proxy("fc", "/items/7?full=1".into(), request, true)
        .await
        .expect("proxied");
    assert_eq!(response.status(), StatusCode::OK);
    let seen = a.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("PUT", "/items/7?full=1")
    );
    assert_eq!(seen.body, b"hello world");
    assert!(seen.deadline_ms.expect("deadline") <= 1_500);
    assert!(
        !seen.authorization,
        "the daemon's token must not reach the instance"
    );
    assert_eq!(seen.version, "HTTP/1.1");
}

/// A body of unknown length, sent in chunks.
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[tokio::test]
async fn h2c_instances_are_reached_over_http2() {
    let a = Backend::start_with("a", true).await;
    let f = fixture(calm());
    let mut instance = a.instance(100);
    instance.protocol = Protocol::H2c;
    f.mesh
        .register(service("fc", "forecast", vec![instance]), false)
        .await
        .expect("register");
    for _ in 0..3 {
        let response = f
            .mesh
            .proxy("fc", "/x".into(), get("/v1/services/fc/proxy/x"), false)
            .await
            .expect("proxied");
        assert_eq!(response.status(), StatusCode::OK);
        text(response).await;
    }
    assert_eq!(a.last().version, "HTTP/2.0");
    assert_eq!(a.hits(), 3);
}
