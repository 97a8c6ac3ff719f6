//! Keeping traffic from failing instances: the circuit breaker's half-open probe and slow
//! start, outlier ejection within its share, and the per-service concurrency cap.

use super::*;

#[tokio::test]
async fn a_failing_instance_gets_only_the_single_half_open_probe_then_slow_starts_back() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.breaker.consecutive_failures = 3;
    config.breaker.open_base_ms = 1_000;
    config.breaker.jitter_pct = 0;
    config.slow_start_ms = 60_000;
    let f = fixture(config);
    let mut rx = f.events.subscribe();
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::Weighted);
    f.mesh.register(spec, false).await.expect("register");

    a.set_status(500);
    // Weighted alternates a, b: a's third failure opens its circuit.
    for _ in 0..6 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let opened = next_event(&mut rx, EventKind::CircuitOpened).await;
    assert_eq!(opened.data["instance"], "a");
    assert_eq!(a.hits(), 3);
    for _ in 0..20 {
        let response = send(&f.mesh, "fc").await.expect("answer");
        assert_eq!(header(&response, proxy::HEADER_INSTANCE), "b");
        text(response).await;
    }
    assert_eq!(a.hits(), 3, "an open circuit let traffic through");

    // The open period ends: of 10 concurrent requests exactly one (the probe) reaches a.
    a.delay_ms.store(200, Ordering::SeqCst);
    skip(Duration::from_millis(1_000)).await;
    let burst: Vec<_> = (0..10)
        .map(|_| {
            let mesh = f.mesh.clone();
            tokio::spawn(async move { text(send(&mesh, "fc").await.expect("answer")).await })
        })
        .collect();
    for request in burst {
        request.await.expect("join");
    }
    assert_eq!(a.hits(), 4, "half-open must admit exactly one probe");
    // The probe failed: open again, for twice as long.
    let reopened = next_event(&mut rx, EventKind::CircuitOpened).await;
    assert_eq!(reopened.data["open_ms"], 2_000);
    assert_eq!(reopened.data["openings"], 2);

    // Recovered: after the period, one probe succeeds and closes the circuit.
    a.set_status(200);
    a.delay_ms.store(0, Ordering::SeqCst);
    skip(Duration::from_millis(2_000)).await;
    for _ in 0..2 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let closed = next_event(&mut rx, EventKind::CircuitClosed).await;
    assert_eq!(closed.data["instance"], "a");
    assert_eq!(a.hits(), 5);

    // Slow start: a comes back at 10 % of its weight (10 vs 100: 1 in 11 requests)...
    let before = a.hits();
    for _ in 0..110 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    let share = a.hits() - before;
    assert!((9..=12).contains(&share), "slow start share {share} of 110");
    // ...and at full weight once the window has passed.
    skip(Duration::from_millis(60_000)).await;
    let before = a.hits();
    for _ in 0..100 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert_eq!(a.hits() - before, 50);
}

#[tokio::test]
async fn consecutive_errors_eject_within_the_max_share_and_the_instance_returns() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.outlier.consecutive_errors = 2;
    config.outlier.base_ejection_ms = 5_000;
    config.outlier.max_ejected_pct = 50;
    let f = fixture(config);
    let mut rx = f.events.subscribe();
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.lb = Some(LbKind::RoundRobin);
    f.mesh.register(spec, false).await.expect("register");
    a.set_status(502);
    b.set_status(502);
    for _ in 0..4 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    // Both reached the threshold, but only half the instances may be ejected.
    let ejected = next_event(&mut rx, EventKind::InstanceEjected).await;
    assert_eq!(ejected.data["ejected_ms"], 5_000);
    let service = f.mesh.service("fc").expect("fc");
    let now = tokio::time::Instant::now();
    let ejected_now = service
        .instances
        .iter()
        .filter(|i| i.lock().outlier.is_ejected(now))
        .count();
    assert_eq!(ejected_now, 1);
    let (out, kept) = if ejected.data["instance"] == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let (out_hits, kept_hits) = (out.hits(), kept.hits());
    for _ in 0..10 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert_eq!(out.hits(), out_hits, "an ejected instance got traffic");
    assert_eq!(kept.hits(), kept_hits + 10);
    skip(Duration::from_millis(5_000)).await;
    out.set_status(200);
    kept.set_status(200);
    for _ in 0..10 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert!(out.hits() > out_hits, "the instance never came back");
}

#[tokio::test]
async fn concurrency_cap_sheds_with_503_and_the_reason_and_deadlines_time_out() {
    let a = Backend::start("a").await;
    let f = fixture(calm());
    let mut spec = service("fc", "forecast", vec![a.instance(100)]);
    spec.max_in_flight = Some(1);
    spec.max_pending = Some(0);
    f.mesh.register(spec, false).await.expect("register");
    a.delay_ms.store(300, Ordering::SeqCst);
    let first = {
        let mesh = f.mesh.clone();
        tokio::spawn(async move { text(send(&mesh, "fc").await.expect("answer")).await })
    };
    let service = f.mesh.service("fc").expect("fc");
    while service.limit.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    let err = send(&f.mesh, "fc").await.expect_err("over the cap");
    assert!(matches!(err, MeshError::Shed { .. }), "{err}");
    assert!(err.to_string().contains("max_in_flight = 1"), "{err}");
    first.await.expect("join");

    // The caller's deadline (100 ms) is shorter than the instance's 300 ms.
    let request = Request::builder()
        .uri("/work")
        .header(proxy::HEADER_DEADLINE, "100")
        .body(Body::empty())
        .expect("request");
    let err = f
        .mesh
        .proxy("fc", "/work".into(), request, false)
        .await
        .expect_err("too slow");
    assert!(
        matches!(
            err,
            MeshError::Timeout {
                timeout_ms: 100,
                ..
            }
        ),
        "{err}"
    );
}
