//! What the manager keeps besides runs: health samples and registrations.

use serde_json::{Value, json};

use super::*;

#[tokio::test(start_paused = true)]
async fn health_checks_record_samples_and_publish_only_status_changes() {
    let h = harness(config());
    lock(&h.runner.health).extend([
        Ok(HealthStatus::Healthy),
        Ok(HealthStatus::Healthy),
        Err(CallError::Trap {
            plugin: "doc".into(),
            message: "health trapped".into(),
        }),
    ]);
    for _ in 0..3 {
        let _ = h.manager.check_health("doc").await;
    }
    let samples = h.manager.health().remove("doc").expect("doc sampled");
    let statuses: Vec<_> = samples.iter().map(|s| s.status).collect();
    assert_eq!(statuses, ["healthy", "healthy", "unhealthy"]);
    assert_eq!(samples[2].error_code, Some("trap"));
    assert_eq!(samples[2].generation, Some(1));

    let changes: Vec<(Value, Value)> = h
        .events
        .recent()
        .into_iter()
        .filter(|e| e.kind == EventKind::AgentHealthChanged)
        .map(|e| (e.data["from"].clone(), e.data["to"].clone()))
        .collect();
    assert_eq!(
        changes,
        [
            (Value::Null, json!("healthy")),
            (json!("healthy"), json!("unhealthy"))
        ]
    );

    assert!(matches!(
        h.manager.check_health("ghost").await,
        Err(CallError::NotFound { .. })
    ));
    assert!(
        !h.manager.health().contains_key("ghost"),
        "nothing recorded"
    );
}

#[tokio::test(start_paused = true)]
async fn registration_follows_the_runner_but_keeps_agents_with_runs_in_progress() {
    let h = harness(config());
    h.manager.sync();
    let registered: Vec<String> = h.manager.health().into_keys().collect();
    assert_eq!(registered, ["doc", "fleet"]);

    h.runner.script("doc", [Attempt::Hang]);
    let started = h
        .manager
        .start_run("doc", request(None))
        .await
        .expect("admitted");
    h.runner.wait_started(1).await;
    h.runner.unload("doc");
    h.runner.unload("fleet");
    h.manager.sync();
    let registered: Vec<String> = h.manager.health().into_keys().collect();
    assert_eq!(registered, ["doc"], "doc's run is still finishing");
    assert!(
        h.manager.inventory().is_empty(),
        "the inventory lists loaded agents"
    );

    h.manager.cancel("doc", started.id).expect("cancellable");
    started.done.await.expect("answered");
    h.manager.sync();
    assert!(h.manager.health().is_empty());
}
