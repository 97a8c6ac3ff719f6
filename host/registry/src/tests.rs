#![allow(clippy::unwrap_used)]

use super::*;
use crate::scoring::TieBreak;
use chrono::Duration;

fn open_in(dir: &std::path::Path) -> Registry {
    Registry::open(RegistryConfig::in_dir(dir)).unwrap()
}

fn model(name: &str, task: &str) -> NewModel {
    NewModel {
        name: name.into(),
        task_type: task.into(),
        description: format!("{name} model"),
        model_class: "lstm".into(),
        artifact_uri: Some(format!("s3://models/{name}")),
        sha256: None,
        tags: vec!["equities".into(), "daily".into()],
        dependencies: vec!["torch==2.3".into()],
        parameters: BTreeMap::from([("lookback".into(), serde_json::json!(30))]),
    }
}

fn ctx<'a>(reason: &'a str, actor: Option<&'a str>) -> MoveContext<'a> {
    MoveContext {
        reason,
        actor,
        at: Utc::now(),
    }
}

fn point(version: u32, metric: &str, value: f64, at: DateTime<Utc>) -> NewPoint {
    NewPoint {
        version,
        metric: metric.into(),
        value: performance::MetricValue(value),
        timestamp: Some(at),
    }
}

#[test]
fn alias_rollback_walks_back_through_moves_and_history_keeps_every_move() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    registry
        .register_model(model("momentum", "forecasting"), Some("ops"))
        .unwrap();
    for _ in 0..3 {
        registry
            .create_version("momentum", NewVersion::default(), Some("ops"))
            .unwrap();
    }
    for v in 1..=3 {
        let outcome = registry
            .set_alias(
                "momentum",
                "champion",
                v,
                &ctx(&format!("promote v{v}"), Some("ops")),
            )
            .unwrap();
        assert_eq!(outcome.alias.version, v);
        assert!(outcome.moved.is_some());
    }
    // Re-pointing where it already points writes no history.
    let same = registry
        .set_alias("momentum", "champion", 3, &ctx("again", Some("ops")))
        .unwrap();
    assert!(same.moved.is_none());

    let back = registry
        .rollback_alias("momentum", "champion", &ctx("v3 drifted", Some("risk")))
        .unwrap();
    assert_eq!((back.from, back.to), (Some(3), Some(2)));
    assert_eq!(registry.alias("momentum", "champion").unwrap().version, 2);
    let back = registry
        .rollback_alias("momentum", "champion", &ctx("v2 too", Some("risk")))
        .unwrap();
    assert_eq!((back.from, back.to), (Some(2), Some(1)));
    let err = registry
        .rollback_alias("momentum", "champion", &ctx("and v1?", None))
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NothingToRollBack { .. }),
        "{err}"
    );
    assert_eq!(registry.alias("momentum", "champion").unwrap().version, 1);

    let history = registry.alias_history("momentum", "champion").unwrap();
    type Move<'a> = (
        AliasAction,
        Option<u32>,
        Option<u32>,
        &'a str,
        Option<&'a str>,
    );
    let moves: Vec<Move<'_>> = history
        .iter()
        .map(|m| {
            (
                m.action,
                m.from,
                m.to,
                m.reason.as_str(),
                m.actor.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        moves,
        vec![
            (AliasAction::Set, None, Some(1), "promote v1", Some("ops")),
            (
                AliasAction::Set,
                Some(1),
                Some(2),
                "promote v2",
                Some("ops")
            ),
            (
                AliasAction::Set,
                Some(2),
                Some(3),
                "promote v3",
                Some("ops")
            ),
            (
                AliasAction::Rollback,
                Some(3),
                Some(2),
                "v3 drifted",
                Some("risk")
            ),
            (
                AliasAction::Rollback,
                Some(2),
                Some(1),
                "v2 too",
                Some("risk")
            ),
        ]
    );

    // A promotion after rollbacks is undone first; a delete is undone by a rollback.
    registry
        .set_alias("momentum", "champion", 3, &ctx("retry v3", None))
        .unwrap();
    registry
        .delete_alias("momentum", "champion", &ctx("pause", None))
        .unwrap();
    assert!(matches!(
        registry.alias("momentum", "champion"),
        Err(RegistryError::AliasNotFound { .. })
    ));
    let restored = registry
        .rollback_alias("momentum", "champion", &ctx("resume", None))
        .unwrap();
    assert_eq!(restored.to, Some(3));
    let again = registry
        .rollback_alias("momentum", "champion", &ctx("undo retry", None))
        .unwrap();
    assert_eq!(again.to, Some(1));
    assert_eq!(
        registry
            .alias_history("momentum", "champion")
            .unwrap()
            .len(),
        9
    );
}

#[test]
fn alias_history_is_append_only_and_versions_immutable_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    registry
        .register_model(model("m", "regression"), None)
        .unwrap();
    registry
        .create_version("m", NewVersion::default(), None)
        .unwrap();
    registry
        .set_alias("m", "champion", 1, &ctx("first", None))
        .unwrap();
    let state = registry.lock();
    let update = state
        .conn
        .execute("UPDATE alias_history SET reason = 'rewritten'", []);
    assert!(update.unwrap_err().to_string().contains("append-only"));
    let delete = state.conn.execute("DELETE FROM alias_history", []);
    assert!(delete.unwrap_err().to_string().contains("append-only"));
    let edit = state
        .conn
        .execute("UPDATE versions SET parameters = '{}'", []);
    assert!(edit.unwrap_err().to_string().contains("immutable"));
    drop(state);
    let archived = registry
        .set_version_status("m", 1, VersionStatus::Archived)
        .unwrap();
    assert_eq!(archived.status, VersionStatus::Archived);
}

#[test]
fn unknown_names_and_bad_values_are_clear_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    registry
        .register_model(model("m", "forecasting"), None)
        .unwrap();
    registry
        .create_version("m", NewVersion::default(), None)
        .unwrap();
    let now = Utc::now();

    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let batch = vec![
            point(1, "sharpe_ratio", 1.0, now),
            point(1, "sharpe_ratio", bad, now),
        ];
        let err = registry.record("m", &batch).unwrap_err();
        assert!(matches!(err, RegistryError::NonFinite { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("points[1]") && text.contains("finite"),
            "{text}"
        );
    }
    let err = registry
        .record("nobody", &[point(1, "x", 1.0, now)])
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::ModelNotFound(ref n) if n == "nobody"),
        "{err}"
    );
    let err = registry
        .record("m", &[point(7, "x", 1.0, now)])
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::VersionNotFound { version: 7, .. }),
        "{err}"
    );
    let err = registry
        .record("m", &[point(1, "bad metric!", 1.0, now)])
        .unwrap_err();
    assert!(matches!(err, RegistryError::Invalid { .. }), "{err}");
    // Nothing of the refused batches was stored.
    let history = registry.history("m", &HistoryQuery::default()).unwrap();
    assert!(history.points.is_empty());

    assert!(matches!(
        registry.register_model(model("m", "forecasting"), None),
        Err(RegistryError::ModelExists(_))
    ));
    assert!(matches!(
        registry.register_model(model("best", "forecasting"), None),
        Err(RegistryError::Invalid { .. })
    ));
    assert!(matches!(
        registry.set_alias("m", "champion", 9, &ctx("", None)),
        Err(RegistryError::VersionNotFound { .. })
    ));
    assert!(matches!(
        registry.set_alias("m", "42", 1, &ctx("", None)),
        Err(RegistryError::Invalid { .. })
    ));
    assert!(matches!(
        registry.best_for_task("forecasting", Some("nope")),
        Err(RegistryError::PolicyNotFound { .. })
    ));
}

/// Two forecasting models with hand-checkable means; returns the evaluation time.
fn scored_fixture(registry: &Registry, reverse: bool) -> DateTime<Utc> {
    let now = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let mut names = vec!["alpha", "beta"];
    if reverse {
        names.reverse();
    }
    for name in &names {
        registry
            .register_model(model(name, "forecasting"), None)
            .unwrap();
        registry
            .create_version(name, NewVersion::default(), None)
            .unwrap();
    }
    // alpha: sharpe 2.0, drawdown 0.10, win 0.55; beta: sharpe 1.0, drawdown 0.05, win 0.60.
    let rows = [("alpha", [2.0, 0.10, 0.55]), ("beta", [1.0, 0.05, 0.60])];
    let mut ordered: Vec<_> = rows.iter().collect();
    if reverse {
        ordered.reverse();
    }
    for (name, [sharpe, drawdown, win]) in ordered {
        let at = now - Duration::days(1);
        registry
            .record(
                name,
                &[
                    point(1, "sharpe_ratio", *sharpe, at),
                    point(1, "max_drawdown", *drawdown, at),
                    point(1, "win_rate", *win, at),
                ],
            )
            .unwrap();
    }
    now
}

#[test]
fn best_model_is_explained_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    let now = scored_fixture(&registry, false);
    let answer = registry.best_for_task_at("forecasting", None, now).unwrap();
    // alpha: sharpe scaled 1, drawdown (down) 0, win 0 → 1/3; beta: 0 + 1 + 1 → 2/3.
    assert_eq!(answer.winner.model, "beta");
    assert!((answer.winner.score - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(answer.candidates.len(), 2);
    assert!((answer.candidates[1].score - 1.0 / 3.0).abs() < 1e-12);
    let sharpe = &answer.candidates[1].metrics[0];
    assert_eq!(
        (sharpe.metric.as_str(), sharpe.weighted_mean, sharpe.scaled),
        ("sharpe_ratio", 2.0, 1.0)
    );
    assert!(
        answer
            .explanation
            .contains("beta v1 has the highest score, 0.6667")
            && answer.explanation.contains("alpha v1 at 0.3333"),
        "{}",
        answer.explanation
    );
    // The same data, inserted in the opposite order, gives the identical answer.
    let other_dir = tempfile::tempdir().unwrap();
    let other = open_in(other_dir.path());
    let now = scored_fixture(&other, true);
    let mut reversed = other.best_for_task_at("forecasting", None, now).unwrap();
    let mut first = registry.best_for_task_at("forecasting", None, now).unwrap();
    // Creation times differ between the two registries; everything else must match.
    for answer in [&mut reversed, &mut first] {
        answer.winner.created_at = from_millis(0);
        for c in &mut answer.candidates {
            c.created_at = from_millis(0);
        }
    }
    assert_eq!(first, reversed);
}

#[test]
fn weights_windows_min_samples_and_tie_breaks_decide() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RegistryConfig::in_dir(dir.path());
    config.policies.insert(
        "sharpe_only".into(),
        ScoringPolicy {
            metrics: vec![scoring::MetricTerm {
                name: "sharpe_ratio".into(),
                weight: 1.0,
                direction: None,
            }],
            window_days: 7.0,
            half_life_days: 0.0,
            min_samples: 2,
            tie_break: vec![TieBreak::MoreSamples],
        },
    );
    let registry = Registry::open(config).unwrap();
    let now = Utc::now();
    for name in ["a", "b", "c", "d"] {
        registry
            .register_model(model(name, "classification"), None)
            .unwrap();
        registry
            .create_version(name, NewVersion::default(), None)
            .unwrap();
    }
    // a: 3 samples of 1.0; b: 2 samples of 1.0 (tie with a, fewer samples);
    // c: one sample in the window, one outside → excluded; d: archived.
    let day = Duration::days(1);
    registry
        .record(
            "a",
            &[
                point(1, "sharpe_ratio", 1.0, now - day),
                point(1, "sharpe_ratio", 1.0, now - day * 2),
                point(1, "sharpe_ratio", 1.0, now - day * 3),
            ],
        )
        .unwrap();
    registry
        .record(
            "b",
            &[
                point(1, "sharpe_ratio", 1.0, now - day),
                point(1, "sharpe_ratio", 1.0, now - day * 2),
            ],
        )
        .unwrap();
    registry
        .record(
            "c",
            &[
                point(1, "sharpe_ratio", 9.0, now - day),
                point(1, "sharpe_ratio", 9.0, now - day * 30),
            ],
        )
        .unwrap();
    registry
        .record(
            "d",
            &[
                point(1, "sharpe_ratio", 99.0, now - day),
                point(1, "sharpe_ratio", 99.0, now - day),
            ],
        )
        .unwrap();
    registry
        .set_version_status("d", 1, VersionStatus::Archived)
        .unwrap();

    let answer = registry
        .best_for_task("classification", Some("sharpe_only"))
        .unwrap();
    assert_eq!(answer.winner.model, "a");
    assert!(
        answer
            .explanation
            .contains("tie-break more_samples (3 vs 2 samples)"),
        "{}",
        answer.explanation
    );
    assert_eq!(answer.excluded.len(), 1);
    assert_eq!(answer.excluded[0].model, "c");
    assert!(
        answer.excluded[0]
            .reason
            .contains("sharpe_ratio has 1 samples"),
        "{}",
        answer.excluded[0].reason
    );
    assert!(answer.candidates.iter().all(|c| c.model != "d"));

    // The default policy needs drawdown and win rate, which nobody recorded.
    let err = registry.best_for_task("classification", None).unwrap_err();
    assert!(matches!(err, RegistryError::NoEligibleModel { .. }));
    assert!(
        err.to_string().contains("max_drawdown has 0 samples"),
        "{err}"
    );
}

#[test]
fn export_import_round_trips_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    let now = scored_fixture(&registry, false);
    registry
        .create_version(
            "alpha",
            NewVersion {
                description: "retrained".into(),
                sha256: Some("AB".repeat(32)),
                metadata: BTreeMap::from([(
                    "data".into(),
                    serde_json::json!({"from": "2020", "rows": 12345}),
                )]),
                status: VersionStatus::Validated,
                ..Default::default()
            },
            Some("ci"),
        )
        .unwrap();
    registry
        .set_alias("alpha", "champion", 1, &ctx("first", Some("ops")))
        .unwrap();
    registry
        .set_alias("alpha", "champion", 2, &ctx("better", Some("ops")))
        .unwrap();
    registry
        .rollback_alias("alpha", "champion", &ctx("oops", Some("risk")))
        .unwrap();
    registry
        .record(
            "alpha",
            &[
                point(2, "sharpe_ratio", 0.1 + 0.2, now),
                point(2, "custom/metric", -1e-300, now),
            ],
        )
        .unwrap();

    let exported = registry.export().unwrap();
    let text = serde_json::to_string(&exported).unwrap();
    let parsed: RegistryExport = serde_json::from_str(&text).unwrap();

    let other_dir = tempfile::tempdir().unwrap();
    let other = open_in(other_dir.path());
    assert_eq!(other.import(&parsed).unwrap(), 8);
    let again = other.export().unwrap();
    assert_eq!(again.models, exported.models);
    assert_eq!(
        other.best_for_task_at("forecasting", None, now).unwrap(),
        registry.best_for_task_at("forecasting", None, now).unwrap()
    );
    // Import only into an empty registry.
    assert!(matches!(
        other.import(&parsed),
        Err(RegistryError::NotEmpty { models: 2 })
    ));
}

#[test]
fn reopen_keeps_everything_and_rebuilds_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let now = {
        let registry = open_in(dir.path());
        scored_fixture(&registry, false)
    };
    let registry = open_in(dir.path());
    let answer = registry.best_for_task_at("forecasting", None, now).unwrap();
    assert_eq!(answer.winner.model, "beta");
    assert_eq!(registry.health().unwrap().points, 6);
    assert_eq!(
        registry.health().unwrap().integrity_check,
        vec!["ok".to_string()]
    );
}

#[test]
fn backup_restore_keeps_n_and_refuses_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = RegistryConfig::in_dir(dir.path());
    config.backup_keep = 2;
    let registry = Registry::open(config.clone()).unwrap();
    registry
        .register_model(model("kept", "regression"), None)
        .unwrap();
    let first = registry.backup_now().unwrap();
    registry
        .register_model(model("later", "regression"), None)
        .unwrap();
    registry.backup_now().unwrap();
    registry.backup_now().unwrap();
    let backups = registry.backups().unwrap();
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(
        backups.iter().all(|b| b.file != first.file),
        "the oldest was pruned"
    );

    // Restore the newest, after adding a third model: the third is gone, the others stay.
    registry
        .register_model(model("third", "regression"), None)
        .unwrap();
    let newest = backups[0].file.clone();
    let saved = registry.restore(&newest).unwrap();
    assert!(saved.file.contains("pre-restore"));
    let names: Vec<String> = registry
        .models(&ModelFilter::default())
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, vec!["kept", "later"]);
    assert!(matches!(
        registry.restore("../etc/passwd"),
        Err(RegistryError::Invalid { .. })
    ));
    assert!(matches!(
        registry.restore("registry-nope.db"),
        Err(RegistryError::BackupNotFound(_))
    ));
    drop(registry);

    // A file that is not SQLite at all.
    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not a database, it is a text file of some length",
    )
    .unwrap();
    let mut bad = config.clone();
    bad.db_path = garbage.clone();
    let err = Registry::open(bad.clone()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, RegistryError::Store(DatabaseError::Foreign { .. })),
        "{text}"
    );
    assert!(
        text.contains("evolve model restore --db") && text.contains("backups"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&garbage).unwrap(),
        b"this is not a database, it is a text file of some length"
    );

    // Another application's SQLite file.
    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
        .unwrap();
    bad.db_path = foreign;
    assert!(matches!(
        Registry::open(bad.clone()),
        Err(RegistryError::Store(DatabaseError::Foreign { .. }))
    ));

    // A registry with damaged pages.
    let damaged = dir.path().join("damaged.db");
    std::fs::copy(&backups[0].path, &damaged).unwrap();
    let mut bytes = std::fs::read(&damaged).unwrap();
    assert!(bytes.len() > 8192);
    for b in &mut bytes[4096..8192] {
        *b = 0xA5;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    bad.db_path = damaged.clone();
    let err = Registry::open(bad).unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Store(DatabaseError::Corrupt { .. } | DatabaseError::Foreign { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("evolve model restore"), "{err}");

    // Offline restore replaces it with a good backup and keeps the damaged file aside.
    let moved = backup::restore_offline(&damaged, &backups[0].path, &config.backup_dir).unwrap();
    assert!(moved.is_some_and(|p| p.exists()));
    let mut good = config.clone();
    good.db_path = damaged;
    assert_eq!(
        Registry::open(good)
            .unwrap()
            .models(&ModelFilter::default())
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn export_holds_every_model_beyond_the_list_page() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    let count = models::MAX_LIST_LIMIT as usize + 1;
    let template = registry.export().unwrap();
    let mut document = template.clone();
    for i in 0..count {
        document.models.push(backup::ModelExport {
            name: format!("m{i:05}"),
            task_type: "regression".into(),
            description: String::new(),
            model_class: String::new(),
            artifact_uri: None,
            sha256: None,
            tags: vec![],
            dependencies: vec![],
            parameters: BTreeMap::new(),
            created_at: from_millis(0),
            created_by: None,
            versions: vec![],
            aliases: vec![],
            alias_history: vec![],
            metrics: vec![],
        });
    }
    registry.import(&document).unwrap();
    assert_eq!(registry.export().unwrap().models.len(), count);
    assert_eq!(
        registry.models(&ModelFilter::default()).unwrap().len(),
        models::MAX_LIST_LIMIT as usize
    );
}

#[test]
fn stray_files_in_the_backup_dir_are_listed_without_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let config = RegistryConfig::in_dir(dir.path());
    std::fs::create_dir_all(&config.backup_dir).unwrap();
    // Multi-byte characters where the time stamp would be.
    std::fs::write(config.backup_dir.join("registry-ééééééééééé.db"), b"x").unwrap();
    let backups = backup::list(&config.backup_dir).unwrap();
    assert_eq!(backups.len(), 1);
    assert_eq!(backups[0].created_at, None);
}

#[test]
fn history_filters_limits_and_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    registry
        .register_model(model("m", "forecasting"), None)
        .unwrap();
    registry
        .create_version("m", NewVersion::default(), None)
        .unwrap();
    let now = Utc::now();
    let points: Vec<NewPoint> = (0..10)
        .map(|i| {
            point(
                1,
                "sharpe_ratio",
                f64::from(i),
                now - Duration::hours(i64::from(i) * 12),
            )
        })
        .collect();
    registry.record("m", &points).unwrap();
    let recent = registry
        .history(
            "m",
            &HistoryQuery {
                days: Some(2.1),
                bucket_s: Some(86_400),
                ..Default::default()
            },
        )
        .unwrap();
    // Ages 0, 12, 24, 36, 48 h are within 2.1 days; 60 h is not.
    assert_eq!(recent.aggregates[0].count, 5);
    assert_eq!(recent.aggregates[0].max, 4.0);
    assert_eq!(recent.buckets.iter().map(|b| b.count).sum::<u64>(), 5);
    let limited = registry
        .history(
            "m",
            &HistoryQuery {
                limit: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(limited.truncated);
    let values: Vec<f64> = limited.points.iter().map(|p| p.value).collect();
    assert_eq!(
        values,
        vec![2.0, 1.0, 0.0],
        "the most recent three, oldest first"
    );
    assert_eq!(limited.aggregates[0].count, 10);
}

#[test]
fn inventory_view_is_current_only_after_a_refresh_that_followed_the_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    assert!(registry.inventory_current(), "the open's own refresh");
    assert!(registry.inventory_models().is_empty());

    registry
        .register_model(model("momentum", "forecasting"), Some("ops"))
        .unwrap();
    assert!(
        !registry.inventory_current(),
        "a committed write is pending"
    );
    assert!(
        registry.inventory_models().is_empty(),
        "plugins still see the old view"
    );

    registry.refresh_inventory();
    assert!(registry.inventory_current());
    assert_eq!(registry.inventory_models()[0].name, "momentum");
    assert!(registry.health().unwrap().inventory_current);

    registry
        .create_version("momentum", NewVersion::default(), Some("ops"))
        .unwrap();
    assert!(!registry.health().unwrap().inventory_current);
}

#[test]
fn a_streamed_export_comes_in_bounded_chunks_and_is_the_same_document() {
    let dir = tempfile::tempdir().unwrap();
    let registry = open_in(dir.path());
    let now = scored_fixture(&registry, false);
    registry
        .set_alias("alpha", "champion", 1, &ctx("first", Some("ops")))
        .unwrap();
    let many: Vec<NewPoint> = (0..5_000)
        .map(|i| point(1, "mae", f64::from(i) / 7.0, now))
        .collect();
    registry.record("alpha", &many).unwrap();

    let mut chunks: Vec<Vec<u8>> = Vec::new();
    registry
        .export_chunks(now, &mut |chunk| {
            chunks.push(chunk);
            true
        })
        .unwrap();
    assert!(chunks.len() >= 3, "{} chunks", chunks.len());
    let longest = chunks.iter().map(Vec::len).max().unwrap();
    // A chunk ends with the point that reaches the size; a point is well under 1 KiB.
    assert!(longest <= backup::EXPORT_CHUNK_BYTES + 1_024, "{longest}");
    // Byte for byte what serialising the in-memory document gives (a parse would compare
    // floats through serde_json's approximate reader).
    let mut whole = registry.export().unwrap();
    whole.exported_at = now;
    let streamed = chunks.concat();
    assert_eq!(
        String::from_utf8(streamed.clone()).unwrap(),
        serde_json::to_string(&whole).unwrap()
    );
    let parsed: RegistryExport = serde_json::from_slice(&streamed).unwrap();
    assert_eq!(
        parsed.models[0].metrics.len(),
        whole.models[0].metrics.len()
    );

    // The reader stops as soon as the consumer does.
    let mut emitted = 0;
    registry
        .export_chunks(now, &mut |_| {
            emitted += 1;
            false
        })
        .unwrap();
    assert_eq!(emitted, 1);

    // An empty registry streams an empty document.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = open_in(empty_dir.path());
    let mut bytes = Vec::new();
    empty
        .export_chunks(now, &mut |chunk| {
            bytes.extend(chunk);
            true
        })
        .unwrap();
    let document: RegistryExport = serde_json::from_slice(&bytes).unwrap();
    assert!(document.models.is_empty());
    assert_eq!(document.format, backup::EXPORT_FORMAT);
}
