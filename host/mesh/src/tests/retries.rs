//! Retries: only when safe, to another instance, inside the budget; and a retry with nowhere
//! to go.

use super::*;

#[tokio::test]
async fn retries_go_to_another_instance_only_when_safe_and_stay_inside_the_budget() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.retry.max_retries = 1;
    config.retry.backoff_base_ms = 1;
    config.retry.backoff_max_ms = 2;
    config.retry.budget_pct = 20;
    // A floor of 1 retry/s over 10 s: 10 retries even before traffic earned any.
    config.retry.budget_min_per_s = 1;
    config.retry.budget_window_s = 10;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    f.mesh.register(spec, false).await.expect("register");
    a.set_status(503);

    // Round-robin starts at a: the GET fails there and is retried on b.
    let response = send(&f.mesh, "fc").await.expect("answer");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, proxy::HEADER_INSTANCE), "b");
    assert_eq!(header(&response, proxy::HEADER_ATTEMPTS), "2");
    text(response).await;
    // A POST is not idempotent: its 503 comes back as is, after one attempt.
    let service = f.mesh.service("fc").expect("fc");
    let mut answers = Vec::new();
    for _ in 0..2 {
        let response = f
            .mesh
            .proxy("fc", "/work".into(), post("/work", "{}"), false)
            .await
            .expect("answer");
        answers.push((
            header(&response, proxy::HEADER_INSTANCE),
            response.status().as_u16(),
            header(&response, proxy::HEADER_ATTEMPTS),
        ));
        text(response).await;
    }
    assert!(
        answers.contains(&("a".into(), 503, "1".into())),
        "{answers:?}"
    );
    assert_eq!(service.stats.retries.load(Ordering::SeqCst), 1);

    // Everything fails: retries stop at 20 % of the requests.
    b.set_status(503);
    let service_retries = service.stats.retries.load(Ordering::SeqCst);
    let hits = a.hits() + b.hits();
    for _ in 0..100 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let retries = service.stats.retries.load(Ordering::SeqCst) - service_retries;
    // Budget: 10 (floor) + 20 % of 103 requests = 30 retries in the window; 1 was spent above.
    assert_eq!(retries, 29, "retries outside the budget");
    assert_eq!(a.hits() + b.hits() - hits, 100 + retries);
    assert_eq!(
        service
            .stats
            .retries_denied_by_budget
            .load(Ordering::SeqCst),
        100 - retries
    );
}

#[tokio::test]
async fn a_retry_with_nowhere_to_go_returns_the_original_answer_and_frees_its_slot() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.retry.max_retries = 1;
    config.retry.backoff_base_ms = 1;
    config.retry.backoff_max_ms = 1;
    config.breaker.consecutive_failures = 1;
    config.breaker.jitter_pct = 0;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    spec.max_in_flight = Some(1);
    f.mesh.register(spec, false).await.expect("register");
    // b fails once: its circuit opens, so a retry of a's failure has nowhere to go.
    b.set_status(500);
    a.set_status(200);
    text(send(&f.mesh, "fc").await.expect("answer")).await; // a
    text(send(&f.mesh, "fc").await.expect("answer")).await; // b: opens
    a.set_status(503);
    let response = send(&f.mesh, "fc").await.expect("the original answer");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&response, proxy::HEADER_INSTANCE), "a");
    assert!(text(response).await.contains("\"backend\":\"a\""));
    assert_eq!(f.mesh.service("fc").expect("fc").limit.in_flight(), 0);
}
