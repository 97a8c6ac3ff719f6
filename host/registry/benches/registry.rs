//! Model registry benchmarks (criterion) on 10 000 versions and 1 000 000 metric points.
//! Results and method: BENCHMARKS.md.
//!
//! Data set (generated once into `target/bench-registry/`, deterministic): 1 000 models × 10
//! versions, 5 task types (2 000 versions each), 100 points per version (34 `sharpe_ratio`,
//! 33 `max_drawdown`, 33 `win_rate`) spread evenly over the last 90 days; the default policy's
//! 30-day window holds about a third of them.
//!
//! | group | what | peer in the same run |
//! |---|---|---|
//! | `best_model` | `Registry::best_for_task("forecasting", None)`: 2 000 candidates × 3 metrics, recency-weighted | the same window means by SQL over the indexed table (what a store without the in-memory index does) |
//! | `tracking` | `Registry::record` of a 1 000-point batch: validation, one transaction, fsync, index update | bare rusqlite: the same 1 000 rows in one transaction, same pragmas |
//! | `cold_open` | `Registry::open`: header / ownership / `quick_check` / migrations, then loading 1 M points into the index | `store::open` alone (the checks, no index) |
//! | `backup` | `Registry::backup_now`: SQLite backup API copy, fsync, rename, `integrity_check` of the copy, prune | — (the time writers wait) |

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::{Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use evolve_registry::backup::{ModelExport, VersionExport};
use evolve_registry::performance::{MetricValue, Point};
use evolve_registry::{
    NewModel, NewPoint, NewVersion, Registry, RegistryConfig, RegistryExport, VersionStatus,
    backup, store,
};

const MODELS: u32 = 1_000;
const VERSIONS_PER_MODEL: u32 = 10;
const POINTS_PER_VERSION: u32 = 100;
const TASKS: [&str; 5] = [
    "forecasting",
    "classification",
    "regression",
    "anomaly_detection",
    "portfolio_optimisation",
];
const BATCH: usize = 1_000;

fn bench_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-registry")
}

/// A deterministic linear congruential generator in 0..1.
struct Lcg(u64);

impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn dataset() -> RegistryExport {
    let now = Utc::now();
    let span_ms = 90 * 86_400_000i64;
    let mut rng = Lcg(42);
    let mut models = Vec::new();
    for m in 0..MODELS {
        let task = TASKS[(m as usize) % TASKS.len()];
        let created = now - Duration::days(120);
        let versions = (1..=VERSIONS_PER_MODEL)
            .map(|v| VersionExport {
                version: v,
                status: VersionStatus::Registered,
                description: String::new(),
                artifact_uri: Some(format!("s3://models/m{m}/v{v}")),
                sha256: None,
                parameters: BTreeMap::new(),
                metadata: BTreeMap::new(),
                created_at: created + Duration::hours(i64::from(v)),
                created_by: None,
            })
            .collect();
        let mut metrics = Vec::new();
        for v in 1..=VERSIONS_PER_MODEL {
            let skill = rng.unit();
            for i in 0..POINTS_PER_VERSION {
                let (metric, value) = match i % 3 {
                    0 => ("sharpe_ratio", 0.5 + 2.0 * skill + 0.3 * rng.unit()),
                    1 => ("max_drawdown", 0.3 - 0.2 * skill + 0.05 * rng.unit()),
                    _ => ("win_rate", 0.45 + 0.15 * skill + 0.02 * rng.unit()),
                };
                let age =
                    span_ms * i64::from(POINTS_PER_VERSION - 1 - i) / i64::from(POINTS_PER_VERSION);
                metrics.push(Point {
                    version: v,
                    metric: metric.into(),
                    value,
                    timestamp: now - Duration::milliseconds(age),
                });
            }
        }
        models.push(ModelExport {
            name: format!("model-{m:04}"),
            task_type: task.into(),
            description: String::new(),
            model_class: "bench".into(),
            artifact_uri: None,
            sha256: None,
            tags: vec![],
            dependencies: vec![],
            parameters: BTreeMap::new(),
            created_at: created,
            created_by: None,
            versions,
            aliases: vec![],
            alias_history: vec![],
            metrics,
        });
    }
    RegistryExport {
        format: backup::EXPORT_FORMAT.into(),
        version: backup::EXPORT_VERSION,
        exported_at: now,
        models,
    }
}

/// The data set's registry file, generated on first use (points are relative to that day:
/// regenerate by deleting `target/bench-registry` when it is older than the window matters).
fn prepared() -> RegistryConfig {
    let dir = bench_dir();
    let config = RegistryConfig::in_dir(&dir);
    let marker = dir.join("complete");
    if !marker.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let registry = Registry::open(config.clone()).unwrap();
        let started = std::time::Instant::now();
        let points = registry.import(&dataset()).unwrap();
        eprintln!(
            "generated {points} points in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        std::fs::write(&marker, b"").unwrap();
    }
    config
}

/// (ns on a CPU, ns waiting in the run queue) of this thread so far, from
/// `/proc/thread-self/schedstat`: on a shared 2-core machine, wall time alone mixes in other
/// people's builds.
fn schedstat() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

fn best_model(c: &mut Criterion) {
    let config = prepared();
    let registry = Registry::open(config.clone()).unwrap();
    let answer = registry.best_for_task("forecasting", None).unwrap();
    assert_eq!(answer.candidates.len() + answer.excluded.len(), 2_000);
    if let Some((cpu0, wait0)) = schedstat() {
        const RUNS: u32 = 500;
        let started = std::time::Instant::now();
        for _ in 0..RUNS {
            std::hint::black_box(registry.best_for_task("forecasting", None).unwrap());
        }
        let wall = started.elapsed().as_secs_f64() * 1e3 / f64::from(RUNS);
        if let Some((cpu1, wait1)) = schedstat() {
            eprintln!(
                "best_for_task over {RUNS} runs: {wall:.3} ms wall, {:.3} ms on-CPU, {:.3} ms waiting for a CPU, per query",
                (cpu1 - cpu0) as f64 / 1e6 / f64::from(RUNS),
                (wait1 - wait0) as f64 / 1e6 / f64::from(RUNS)
            );
        }
    }

    // Peer: the same 30-day window means computed by SQL on the indexed table.
    let conn = rusqlite::Connection::open(&config.db_path).unwrap();
    let window_start = (Utc::now() - Duration::days(30)).timestamp_millis();
    let mut statement = conn
        .prepare(
            "SELECT p.version_id, p.metric, count(*), avg(p.value) FROM metrics p
             JOIN versions v ON v.id = p.version_id JOIN models m ON m.id = v.model_id
             WHERE m.task_type = 'forecasting' AND v.status != 'archived' AND p.ts >= ?1
               AND p.metric IN ('sharpe_ratio', 'max_drawdown', 'win_rate')
             GROUP BY p.version_id, p.metric",
        )
        .unwrap();

    let mut group = c.benchmark_group("best_model");
    group.bench_function("evolve_best_for_task", |b| {
        b.iter(|| registry.best_for_task("forecasting", None).unwrap())
    });
    group.bench_function("sql_window_means_peer", |b| {
        b.iter(|| {
            let rows: Vec<(i64, String, i64, f64)> = statement
                .query_map([window_start], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(rows.len(), 6_000);
            rows
        })
    });
    group.finish();
}

fn tracking(c: &mut Criterion) {
    let source = prepared();
    // A copy, so the benchmark's writes do not grow the shared data set.
    let dir = bench_dir().join("tracking");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(&source.db_path, dir.join("registry.db")).unwrap();
    let registry = Registry::open(RegistryConfig::in_dir(&dir)).unwrap();
    registry
        .register_model(
            NewModel {
                name: "tracked".into(),
                task_type: "bench_tracking".into(),
                description: String::new(),
                model_class: String::new(),
                artifact_uri: None,
                sha256: None,
                tags: vec![],
                dependencies: vec![],
                parameters: BTreeMap::new(),
            },
            None,
        )
        .unwrap();
    registry
        .create_version("tracked", NewVersion::default(), None)
        .unwrap();
    let now = Utc::now();
    let batch: Vec<NewPoint> = (0..BATCH)
        .map(|i| NewPoint {
            version: 1,
            metric: ["sharpe_ratio", "max_drawdown", "win_rate"][i % 3].into(),
            value: MetricValue(i as f64 / 1_000.0),
            timestamp: Some(now - Duration::milliseconds(i as i64)),
        })
        .collect();

    // Peer: the same rows through bare rusqlite, same pragmas, one transaction.
    let peer_path = dir.join("peer.db");
    let mut peer = rusqlite::Connection::open(&peer_path).unwrap();
    peer.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
         CREATE TABLE IF NOT EXISTS metrics (seq INTEGER PRIMARY KEY, version_id INTEGER, metric TEXT, ts INTEGER, value REAL);
         CREATE INDEX IF NOT EXISTS by_series ON metrics(version_id, metric, ts, value);",
    )
    .unwrap();

    let mut group = c.benchmark_group("tracking");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("evolve_record_batch_1000", |b| {
        b.iter(|| registry.record("tracked", &batch).unwrap())
    });
    group.bench_function("bare_sqlite_insert_1000_peer", |b| {
        b.iter(|| {
            let tx = peer.transaction().unwrap();
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO metrics (version_id, metric, ts, value) VALUES (1, ?1, ?2, ?3)",
                    )
                    .unwrap();
                for point in &batch {
                    insert
                        .execute(rusqlite::params![
                            point.metric,
                            point.timestamp.unwrap().timestamp_millis(),
                            point.value.0
                        ])
                        .unwrap();
                }
            }
            tx.commit().unwrap();
        })
    });
    group.finish();
}

fn cold_open(c: &mut Criterion) {
    let config = prepared();
    let hint = store::restore_hint(&config.db_path, &config.backup_dir);
    let mut group = c.benchmark_group("cold_open");
    group.sample_size(10);
    group.bench_function("evolve_registry_open_1m_points", |b| {
        b.iter(|| Registry::open(config.clone()).unwrap())
    });
    group.bench_function("store_checks_only", |b| {
        b.iter(|| store::open(&config.db_path, &hint).unwrap())
    });
    group.finish();

    // How long an online backup holds the writer lock on the 1 M-point store.
    let mut backup_config = config.clone();
    backup_config.backup_dir = bench_dir().join("backups");
    backup_config.backup_keep = 2;
    let registry = Registry::open(backup_config).unwrap();
    let mut group = c.benchmark_group("backup");
    group.sample_size(10);
    group.bench_function("online_backup_1m_points", |b| {
        b.iter(|| registry.backup_now().unwrap())
    });
    group.finish();
}

criterion_group!(benches, best_model, tracking, cold_open);
criterion_main!(benches);
