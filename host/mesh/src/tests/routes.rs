//! `POST /v1/route/{type}`: capability routes, model-aware routes in a mesh without a
//! registry, and the fan-out body cap.

use super::*;

#[tokio::test]
async fn route_forwards_to_a_service_offering_the_capability() {
    let a = Backend::start("a").await;
    let mut config = calm();
    config.routes.insert(
        "predict".into(),
        RouteEntry::Full(RouteConfig {
            path: Some("/v2/forecast".into()),
            timeout_ms: Some(4_000),
            ..RouteConfig::for_type("forecast")
        }),
    );
    let f = fixture(config);
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");
    f.mesh
        .register(
            service(
                "other",
                "audit",
                vec![Backend::start("x").await.instance(100)],
            ),
            false,
        )
        .await
        .expect("register");

    let response = f
        .mesh
        .route(
            "predict",
            post("/v1/route/predict?h=24", "{\"x\":1}"),
            false,
        )
        .await
        .expect("routed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, proxy::HEADER_SERVICE), "fc");
    assert_eq!(header(&response, proxy::HEADER_INSTANCE), "a");
    assert_eq!(header(&response, proxy::HEADER_ATTEMPTS), "1");
    assert!(text(response).await.contains("\"backend\":\"a\""));
    let seen = a.last();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/v2/forecast?h=24");
    assert_eq!(seen.body, b"{\"x\":1}");
    // The instance learns the remaining budget, at most the route's timeout.
    let deadline = seen.deadline_ms.expect("deadline header");
    assert!(deadline <= 4_000 && deadline > 3_000, "{deadline}");

    // An unmapped type falls back to the capability of its own name.
    let response = f
        .mesh
        .route("forecast", post("/v1/route/forecast", "{}"), false)
        .await
        .expect("routed");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(a.last().path, "/forecast");

    let err = f
        .mesh
        .route("weather", post("/v1/route/weather", "{}"), false)
        .await
        .expect_err("nobody offers weather");
    assert!(matches!(err, MeshError::NoRoute { .. }), "{err}");
}

/// A model-aware route in a mesh with no registry attached (an embedding without one): the
/// route's stated fallback, never a 500.
#[tokio::test]
async fn a_model_route_without_a_registry_takes_its_fallback() {
    let a = Backend::start("a").await;
    let mut config = calm();
    for (name, fallback) in [
        ("forward", config::ModelFallback::Forward),
        ("reject", config::ModelFallback::Reject),
    ] {
        config.routes.insert(
            name.into(),
            RouteEntry::Full(RouteConfig {
                path: Some("/forecast".into()),
                task: Some("forecast".into()),
                model: Some("champion".into()),
                model_fallback: Some(fallback),
                ..RouteConfig::for_type("forecast")
            }),
        );
    }
    let f = fixture(config);
    f.mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");

    let response = f
        .mesh
        .route("forward", post("/v1/route/forward", "{\"x\":1}"), false)
        .await
        .expect("forwarded without a model");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, model::HEADER_MODEL_SOURCE), "none");
    assert_eq!(
        header(&response, model::HEADER_MODEL_FALLBACK),
        "no_registry"
    );
    assert_eq!(a.last().body, b"{\"x\":1}", "the body goes as it came");

    let hits = a.hits.load(Ordering::SeqCst);
    let err = f
        .mesh
        .route("reject", post("/v1/route/reject", "{}"), false)
        .await
        .expect_err("reject answers no_model");
    assert!(matches!(err, MeshError::NoModel { .. }), "{err}");
    assert_eq!(a.hits.load(Ordering::SeqCst), hits, "nothing was sent");
}

/// Fan-out reads the body into memory once, so it refuses a body over `route_body_kb` with
/// 413 before sending anything.
#[tokio::test]
async fn a_fan_out_body_over_the_route_body_cap_is_refused_before_sending() {
    let a = Backend::start("a").await;
    let mut config = calm();
    config.route_body_kb = 1;
    config.routes.insert(
        "spread".into(),
        RouteEntry::Full(RouteConfig {
            path: Some("/analysis".into()),
            fanout: config::Fanout::All,
            ..RouteConfig::for_type("analysis")
        }),
    );
    let f = fixture(config);
    f.mesh
        .register(service("an", "analysis", vec![a.instance(100)]), false)
        .await
        .expect("register");

    let big: &'static str = Box::leak("x".repeat(1025).into_boxed_str());
    let err = f
        .mesh
        .route("spread", post("/v1/route/spread", big), false)
        .await
        .expect_err("over the cap");
    assert!(
        matches!(err, MeshError::BodyTooLarge { limit_kb: 1 }),
        "{err}"
    );
    assert_eq!(a.hits.load(Ordering::SeqCst), 0, "nothing was sent");

    let fits: &'static str = Box::leak("x".repeat(1024).into_boxed_str());
    let response = f
        .mesh
        .route("spread", post("/v1/route/spread", fits), false)
        .await
        .expect("at the cap");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(a.hits.load(Ordering::SeqCst), 1);
}
