//! Active health: scripted checks drive the hysteresis, panic routing, and what the inventory
//! reports.

use super::*;

#[tokio::test]
async fn active_checks_drive_health_with_thresholds_and_panic_routes_to_all() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.outlier.panic_threshold_pct = 50;
    let f = fixture(config);
    let mut rx = f.events.subscribe();
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(100)]);
    spec.health = Some(HealthCheckSpec {
        checker: "scripted".into(),
        interval_ms: 100,
        jitter_pct: 0,
        healthy_threshold: 2,
        unhealthy_threshold: 1,
        ..HealthCheckSpec::default()
    });
    f.mesh.register(spec, false).await.expect("register");
    f.checks
        .healthy
        .lock()
        .expect("lock")
        .insert(a.url(), false);
    f.mesh.start_health_checks();
    loop {
        let event = next_event(&mut rx, EventKind::HealthChanged).await;
        if event.data["instance"] == "a" {
            assert_eq!(event.data["to"], "unhealthy");
            break;
        }
    }
    let a_hits = a.hits();
    for _ in 0..10 {
        text(send(&f.mesh, "fc").await.expect("answer")).await;
    }
    assert_eq!(a.hits(), a_hits, "an unhealthy instance got traffic");

    // Both unhealthy: below the panic threshold the mesh routes to all instead of failing.
    f.checks
        .healthy
        .lock()
        .expect("lock")
        .insert(b.url(), false);
    loop {
        let event = next_event(&mut rx, EventKind::HealthChanged).await;
        if event.data["instance"] == "b" && event.data["to"] == "unhealthy" {
            break;
        }
    }
    let response = send(&f.mesh, "fc").await.expect("panic mode routes");
    assert_eq!(response.status(), StatusCode::OK);
    text(response).await;

    f.checks.healthy.lock().expect("lock").clear();
    let mut recovered = std::collections::BTreeSet::new();
    while recovered.len() < 2 {
        let event = next_event(&mut rx, EventKind::HealthChanged).await;
        assert_eq!(event.data["to"], "healthy");
        recovered.insert(event.data["instance"].as_str().unwrap_or("").to_string());
    }
    assert!(f.checks.calls.load(Ordering::SeqCst) >= 6);
    let view = f.mesh.views();
    assert_eq!(view[0].status, "healthy");
    assert!(view[0].instances.iter().all(|i| i.last_check.is_some()));
}

#[tokio::test]
async fn the_inventory_lists_each_instance_with_its_health_and_circuit() {
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut config = calm();
    config.breaker.consecutive_failures = 1;
    let f = fixture(config);
    let mut spec = service("fc", "forecast", vec![a.instance(100), b.instance(0)]);
    spec.lb = Some(LbKind::RoundRobin);
    spec.health = Some(HealthCheckSpec {
        checker: "scripted".into(),
        interval_ms: 100,
        jitter_pct: 0,
        ..HealthCheckSpec::default()
    });
    f.mesh.register(spec, false).await.expect("register");
    let mut rx = f.events.subscribe();
    f.mesh.start_health_checks();
    for _ in 0..2 {
        next_event(&mut rx, EventKind::HealthChanged).await;
    }
    a.set_status(500);
    text(send(&f.mesh, "fc").await.expect("answer")).await;
    let inventory = f.mesh.inventory();
    assert_eq!(inventory.len(), 2);
    let entry_a = &inventory[0];
    assert_eq!(entry_a.service.name, "fc");
    assert_eq!(entry_a.service.endpoint, a.url());
    assert_eq!(entry_a.service.capabilities, ["forecast"]);
    assert_eq!(entry_a.circuit, "open");
    assert_eq!(
        entry_a.health.as_ref().map(|h| h.status),
        Some(CheckVerdict::Healthy)
    );
    assert!(
        entry_a
            .service
            .metadata
            .contains(&("instance".to_string(), "a".to_string()))
    );
    assert_eq!(inventory[1].service.weight, 0);
    assert_eq!(inventory[1].circuit, "closed");
}
