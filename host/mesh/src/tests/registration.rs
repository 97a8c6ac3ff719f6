//! Registrations: validated, persisted to the catalog file, read back after a restart.

use super::*;

#[tokio::test]
async fn registrations_are_validated_persisted_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh/catalog.json");
    let runner: Arc<dyn CheckRunner> = Arc::new(ScriptedChecks::default());
    let mut config = calm();
    config.services = vec![service(
        "from-config",
        "audit",
        vec![Backend::start("c").await.instance(100)],
    )];
    let mesh = Mesh::new(
        config.clone(),
        path.clone(),
        Arc::clone(&runner),
        EventBus::new(),
    )
    .expect("mesh");
    let a = Backend::start("a").await;
    mesh.register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect("register");

    let err = mesh
        .register(service("fc", "forecast", vec![a.instance(100)]), false)
        .await
        .expect_err("duplicate");
    assert!(matches!(err, MeshError::Duplicate(_)), "{err}");
    let mut bad = service("bad", "x", vec![a.instance(100)]);
    bad.instances[0].endpoint = "not a url".into();
    assert!(matches!(
        mesh.register(bad.clone(), false).await,
        Err(MeshError::Spec(CheckedSpecError::Spec(
            SpecError::BadUrl { .. }
        )))
    ));
    bad.instances[0] = a.instance(5_000);
    assert!(matches!(
        mesh.register(bad.clone(), false).await,
        Err(MeshError::Spec(CheckedSpecError::Spec(
            SpecError::WeightOutOfRange { .. }
        )))
    ));
    bad.instances[0] = a.instance(1);
    bad.health = Some(HealthCheckSpec {
        checker: "no-such-checker".into(),
        ..HealthCheckSpec::default()
    });
    assert!(matches!(
        mesh.register(bad, false).await,
        Err(MeshError::Spec(CheckedSpecError::UnknownChecker(_)))
    ));
    assert!(matches!(
        mesh.remove("from-config").await,
        Err(MeshError::ConfigOwned(_))
    ));
    drop(mesh);

    // A new daemon reads the catalog back.
    let mesh = Mesh::new(
        config.clone(),
        path.clone(),
        Arc::clone(&runner),
        EventBus::new(),
    )
    .expect("restart");
    let names: Vec<String> = mesh.services().keys().cloned().collect();
    assert_eq!(names, ["fc", "from-config"]);
    let report = mesh.probe_service("fc").await.expect("probe");
    assert_eq!((report.status, report.healthy), (200, true));
    assert_eq!(report.instance, "a");
    assert_eq!(a.last().path, "/health");
    mesh.remove("fc").await.expect("remove");
    drop(mesh);
    let mesh = Mesh::new(config, path, runner, EventBus::new()).expect("restart");
    assert_eq!(mesh.services().len(), 1);
}
