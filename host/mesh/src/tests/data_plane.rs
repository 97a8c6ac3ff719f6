//! The data-plane listener: forwarding every path to its service, and its thread stopping
//! without leaving connections behind.

use super::*;

#[tokio::test]
async fn the_data_plane_listener_forwards_any_path_to_its_service() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let served = tokio::spawn(listener::serve(
        socket,
        f.mesh.clone(),
        "fc".into(),
        stop_rx,
    ));
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::builder()
                .method(Method::POST)
                .uri(format!("http://{addr}/forecast?x=1"))
                .body(Full::new(Bytes::from_static(b"{}")))
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[proxy::HEADER_SERVICE], "fc");
    let seen = a.last();
    assert_eq!(
        (seen.method.as_str(), seen.path.as_str()),
        ("POST", "/forecast?x=1")
    );
    // An unknown service answers with the API's JSON error, not a dropped connection.
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let other = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let other_addr = other.local_addr().expect("addr");
    tokio::spawn(listener::serve(other, f.mesh.clone(), "nobody".into(), rx));
    let response = client
        .request(
            Request::builder()
                .uri(format!("http://{other_addr}/"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    stop_tx.send(true).expect("stop");
    served.await.expect("listener stops");
}

#[tokio::test]
async fn the_listener_thread_serves_then_stops_and_its_connections_do_not_outlive_it() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let thread = listener::start(socket, f.mesh.clone(), "fc".into(), stop_rx, Duration::ZERO)
        .expect("start");
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::builder()
                .uri(format!("http://{addr}/forecast"))
                .body(Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");
    // The client keeps its connection open: the thread ends all the same.
    stop_tx.send(true).expect("stop");
    tokio::task::spawn_blocking(move || thread.join())
        .await
        .expect("join task")
        .expect("the listener thread ends without a panic");
    // The upstream connection the listener's runtime opened and pooled died with it; a request
    // on this runtime discards it and opens its own.
    let response = f
        .mesh
        .proxy_to(
            "fc",
            http::uri::PathAndQuery::from_static("/after"),
            Request::new(Body::empty()),
            false,
        )
        .await
        .expect("proxied after the listener stopped");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(a.last().path, "/after");
}
