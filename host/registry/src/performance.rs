//! Performance tracking: named metric points per model version, their history and aggregates,
//! and the in-memory [`SeriesIndex`] the best-model scoring reads.
//!
//! SQLite is the record; the index mirrors it (loaded at open, appended after each committed
//! batch) so a best-model query never scans the table: it binary-searches each candidate's
//! series for the policy's window.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use serde::{Deserialize, Deserializer, Serialize};

use super::error::RegistryError;
use super::models::{check_name, model_id, version_id};
use super::{from_millis, to_millis};

/// Most points one history answer carries.
pub const MAX_HISTORY_LIMIT: u32 = 100_000;
/// Points one history answer carries when the query names no limit.
pub const DEFAULT_HISTORY_LIMIT: u32 = 1_000;
/// Most buckets one aggregate answer carries (protects against `bucket_s=1` over years).
pub const MAX_BUCKETS: u64 = 10_000;
/// A point may be stamped at most this far in the future (clock skew between hosts), ms.
const MAX_FUTURE_MS: i64 = 86_400_000;

/// A metric value as the API accepts it: a JSON number, or the strings `NaN`, `inf`,
/// `-inf`, `Infinity`, so such values get a clear "must be finite" error instead of a
/// JSON syntax error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct MetricValue(pub f64);

impl<'de> Deserialize<'de> for MetricValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Number(n) => Ok(MetricValue(n)),
            Raw::Text(text) => match text.trim().to_ascii_lowercase().as_str() {
                "nan" => Ok(MetricValue(f64::NAN)),
                "inf" | "+inf" | "infinity" | "+infinity" => Ok(MetricValue(f64::INFINITY)),
                "-inf" | "-infinity" => Ok(MetricValue(f64::NEG_INFINITY)),
                _ => Err(serde::de::Error::custom(format!(
                    "metric value \"{text}\" is not a number"
                ))),
            },
        }
    }
}

/// One point to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPoint {
    pub version: u32,
    pub metric: String,
    pub value: MetricValue,
    /// Default: when the registry receives it.
    #[serde(default)]
    pub timestamp: Option<DateTime<Utc>>,
}

/// A recorded point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub version: u32,
    pub metric: String,
    pub value: f64,
    pub timestamp: DateTime<Utc>,
}

impl Point {
    /// A point from a row of `version, metric, value, timestamp_ms` (in that order).
    pub(crate) fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Point> {
        Ok(Point {
            version: row.get(0)?,
            metric: row.get(1)?,
            value: row.get(2)?,
            timestamp: from_millis(row.get(3)?),
        })
    }
}

/// What a history query asks for; all optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub version: Option<u32>,
    pub metric: Option<String>,
    /// The last `days` days (fractional allowed); ignored when `since` is given.
    pub days: Option<f64>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Most recent points to return (default 1000, at most 100000).
    pub limit: Option<u32>,
    /// Also aggregate per window of this many seconds.
    pub bucket_s: Option<u64>,
}

/// Count, mean, min, max, first and last over a range, per version and metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub version: u32,
    pub metric: String,
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub first_at: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
}

/// An [`Aggregate`] over one window of `bucket_s` seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub version: u32,
    pub metric: String,
    pub start: DateTime<Utc>,
    pub count: u64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerformanceHistory {
    pub model: String,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Oldest first; the most recent `limit` points of the range.
    pub points: Vec<Point>,
    /// Whether the range held more points than `limit`.
    pub truncated: bool,
    /// Over the whole range, not only the returned points.
    pub aggregates: Vec<Aggregate>,
    pub buckets: Vec<Bucket>,
}

/// A validated point bound to its version's row id.
pub(crate) struct BoundPoint {
    pub version_id: i64,
    pub metric: String,
    pub ts: i64,
    pub value: f64,
}

/// Validates a batch against the model's versions; nothing is written.
pub(crate) fn bind_batch(
    conn: &Connection,
    model: &str,
    points: &[NewPoint],
    now: DateTime<Utc>,
    max_points: usize,
) -> Result<Vec<BoundPoint>, RegistryError> {
    if points.is_empty() {
        return Err(RegistryError::invalid("points", "the batch is empty"));
    }
    if points.len() > max_points {
        return Err(RegistryError::invalid(
            "points",
            format!(
                "{} points in one batch, at most {max_points} allowed (registry.max_batch_points)",
                points.len()
            ),
        ));
    }
    let id = model_id(conn, model)?;
    let now_ms = to_millis(now);
    let mut version_ids: HashMap<u32, i64> = HashMap::new();
    let mut bound = Vec::with_capacity(points.len());
    for (index, point) in points.iter().enumerate() {
        check_name(&format!("points[{index}].metric"), &point.metric, true)?;
        if !point.value.0.is_finite() {
            return Err(RegistryError::NonFinite {
                what: format!(
                    "points[{index}] ({} of version {})",
                    point.metric, point.version
                ),
                value: point.value.0,
            });
        }
        let ts = point.timestamp.map_or(now_ms, to_millis);
        if ts < 0 || ts > now_ms + MAX_FUTURE_MS {
            return Err(RegistryError::invalid(
                format!("points[{index}].timestamp"),
                "must be after 1970 and at most one day in the future",
            ));
        }
        let version_id = match version_ids.get(&point.version) {
            Some(id) => *id,
            None => {
                let found = version_id(conn, id, model, point.version)?;
                version_ids.insert(point.version, found);
                found
            }
        };
        bound.push(BoundPoint {
            version_id,
            metric: point.metric.clone(),
            ts,
            value: point.value.0,
        });
    }
    Ok(bound)
}

pub(crate) fn insert_points(conn: &Connection, points: &[BoundPoint]) -> Result<(), RegistryError> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO metrics (version_id, metric, ts, value) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for point in points {
        insert.execute(params![
            point.version_id,
            point.metric,
            point.ts,
            point.value
        ])?;
    }
    Ok(())
}

pub(crate) fn history(
    conn: &Connection,
    model: &str,
    query: &HistoryQuery,
    now: DateTime<Utc>,
) -> Result<PerformanceHistory, RegistryError> {
    let id = model_id(conn, model)?;
    if let Some(version) = query.version {
        version_id(conn, id, model, version)?;
    }
    let since = match (query.since, query.days) {
        (Some(since), _) => Some(since),
        (None, Some(days)) => {
            if !days.is_finite() || days <= 0.0 || days > 36_500.0 {
                return Err(RegistryError::invalid(
                    "days",
                    "must be a number of days between 0 and 36500",
                ));
            }
            Some(now - chrono::Duration::milliseconds((days * 86_400_000.0) as i64))
        }
        (None, None) => None,
    };
    let until = query.until;
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        return Err(RegistryError::invalid("since", "is after until"));
    }
    let limit = query
        .limit
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .min(MAX_HISTORY_LIMIT);
    let since_ms = since.map_or(i64::MIN, to_millis);
    let until_ms = until.map_or(i64::MAX, to_millis);
    let filter = "FROM metrics p JOIN versions v ON v.id = p.version_id
         WHERE v.model_id = ?1 AND (?2 IS NULL OR v.version = ?2) AND (?3 IS NULL OR p.metric = ?3)
           AND p.ts >= ?4 AND p.ts <= ?5";
    let args = params![id, query.version, query.metric, since_ms, until_ms];

    let mut statement = conn.prepare_cached(&format!(
        "SELECT v.version, p.metric, p.value, p.ts {filter} ORDER BY p.ts DESC, p.seq DESC LIMIT {}",
        u64::from(limit) + 1
    ))?;
    let mut points: Vec<Point> = statement
        .query_map(args, Point::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    let truncated = points.len() > limit as usize;
    points.truncate(limit as usize);
    points.reverse();

    let mut statement = conn.prepare_cached(&format!(
        "SELECT v.version, p.metric, count(*), avg(p.value), min(p.value), max(p.value), min(p.ts), max(p.ts)
         {filter} GROUP BY v.version, p.metric ORDER BY v.version, p.metric"
    ))?;
    let aggregates = statement
        .query_map(args, |row| {
            Ok(Aggregate {
                version: row.get(0)?,
                metric: row.get(1)?,
                count: row.get(2)?,
                mean: row.get(3)?,
                min: row.get(4)?,
                max: row.get(5)?,
                first_at: from_millis(row.get(6)?),
                last_at: from_millis(row.get(7)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;

    let buckets = match query.bucket_s {
        None => Vec::new(),
        Some(0) => return Err(RegistryError::invalid("bucket_s", "must be at least 1")),
        Some(bucket_s) => {
            let bucket_ms = i64::try_from(bucket_s.saturating_mul(1_000)).unwrap_or(i64::MAX);
            let mut statement = conn.prepare_cached(&format!(
                "SELECT v.version, p.metric, (p.ts / ?6) * ?6 AS start, count(*), avg(p.value), min(p.value), max(p.value)
                 {filter} GROUP BY v.version, p.metric, start ORDER BY v.version, p.metric, start LIMIT {}",
                MAX_BUCKETS + 1
            ))?;
            let buckets: Vec<Bucket> = statement
                .query_map(
                    params![
                        id,
                        query.version,
                        query.metric,
                        since_ms,
                        until_ms,
                        bucket_ms
                    ],
                    |row| {
                        Ok(Bucket {
                            version: row.get(0)?,
                            metric: row.get(1)?,
                            start: from_millis(row.get(2)?),
                            count: row.get(3)?,
                            mean: row.get(4)?,
                            min: row.get(5)?,
                            max: row.get(6)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?;
            if buckets.len() as u64 > MAX_BUCKETS {
                return Err(RegistryError::invalid(
                    "bucket_s",
                    format!(
                        "gives more than {MAX_BUCKETS} buckets; choose a larger bucket or a shorter range"
                    ),
                ));
            }
            buckets
        }
    };
    Ok(PerformanceHistory {
        model: model.to_string(),
        since,
        until,
        points,
        truncated,
        aggregates,
        buckets,
    })
}

/// One metric of one version, sorted by time. Time and value sit side by side: a best-model
/// query touches thousands of series, and one allocation per series halves its cache misses.
#[derive(Debug, Default, Clone)]
pub(crate) struct Series {
    points: Vec<(i64, f64)>,
}

/// What a scoring window sees of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WindowStats {
    pub samples: u64,
    /// Mean weighted by `2^(-age / half_life)`; the plain mean without a half-life.
    pub weighted_mean: f64,
    pub latest: f64,
    pub latest_at: i64,
}

impl Series {
    fn insert(&mut self, ts: i64, value: f64) {
        // Appends in the common case; a late point goes after points of the same time.
        let at = if self.points.last().is_none_or(|last| last.0 <= ts) {
            self.points.len()
        } else {
            self.points.partition_point(|p| p.0 <= ts)
        };
        self.points.insert(at, (ts, value));
    }

    /// Stats of the points with `from <= ts <= to`; `None` when there are none.
    pub(crate) fn window(
        &self,
        from: i64,
        to: i64,
        half_life_ms: Option<f64>,
    ) -> Option<WindowStats> {
        let start = self.points.partition_point(|p| p.0 < from);
        let end = self.points.partition_point(|p| p.0 <= to);
        if start >= end {
            return None;
        }
        let points = &self.points[start..end];
        let (mut weighted, mut weights) = (0.0f64, 0.0f64);
        match half_life_ms {
            Some(half_life) => {
                let per_ms = 1.0 / half_life;
                for (ts, value) in points {
                    let weight = ((*ts - to) as f64 * per_ms).exp2();
                    weighted += weight * value;
                    weights += weight;
                }
            }
            None => {
                for (_, value) in points {
                    weighted += value;
                    weights += 1.0;
                }
            }
        }
        // Far older than the half-life, every weight underflows to 0: fall back to the plain
        // mean rather than dividing by zero.
        let weighted_mean = if weights > 0.0 {
            weighted / weights
        } else {
            points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64
        };
        let (latest_at, latest) = points[points.len() - 1];
        Some(WindowStats {
            samples: points.len() as u64,
            weighted_mean,
            latest,
            latest_at,
        })
    }
}

/// A multiply-rotate hasher for the index's small integer keys: SipHash's DoS resistance is not
/// needed for row ids, and it is a large share of a best-model query's time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_i64(&mut self, n: i64) {
        self.write_u64(n as u64);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A version's series by metric id; a version has a handful, so a short vector beats a map.
type VersionSeries = Vec<(u32, Series)>;

/// Every series by version row id and metric; metric names are interned to small ids. One hash
/// lookup per candidate finds all its series side by side.
#[derive(Debug, Default)]
pub(crate) struct SeriesIndex {
    metric_ids: HashMap<String, u32>,
    by_version: IdMap<i64, VersionSeries>,
    points: u64,
}

impl SeriesIndex {
    pub(crate) fn load(conn: &Connection) -> Result<SeriesIndex, RegistryError> {
        let mut index = SeriesIndex::default();
        let mut statement = conn.prepare(
            "SELECT version_id, metric, ts, value FROM metrics ORDER BY version_id, metric, ts",
        )?;
        let mut rows = statement.query([])?;
        let mut current: Option<(i64, u32, Series)> = None;
        while let Some(row) = rows.next()? {
            let version_id: i64 = row.get(0)?;
            let metric = row.get_ref(1)?.as_str().map_err(rusqlite::Error::from)?;
            let metric_id = index.intern(metric);
            let same = current
                .as_ref()
                .is_some_and(|(v, m, _)| *v == version_id && *m == metric_id);
            if !same {
                if let Some((v, m, series)) = current.take() {
                    index.by_version.entry(v).or_default().push((m, series));
                }
                current = Some((version_id, metric_id, Series::default()));
            }
            if let Some((_, _, series)) = current.as_mut() {
                series.points.push((row.get(2)?, row.get(3)?));
            }
            index.points += 1;
        }
        if let Some((v, m, series)) = current.take() {
            index.by_version.entry(v).or_default().push((m, series));
        }
        Ok(index)
    }

    fn intern(&mut self, metric: &str) -> u32 {
        if let Some(id) = self.metric_ids.get(metric) {
            return *id;
        }
        let id = self.metric_ids.len() as u32;
        self.metric_ids.insert(metric.to_string(), id);
        id
    }

    pub(crate) fn add(&mut self, points: &[BoundPoint]) {
        for point in points {
            let metric = self.intern(&point.metric);
            let version = self.by_version.entry(point.version_id).or_default();
            let at = match version.iter().position(|(m, _)| *m == metric) {
                Some(at) => at,
                None => {
                    version.push((metric, Series::default()));
                    version.len() - 1
                }
            };
            version[at].1.insert(point.ts, point.value);
        }
        self.points += points.len() as u64;
    }

    /// The id of a metric name, `None` when no point of it was ever recorded.
    pub(crate) fn metric_id(&self, metric: &str) -> Option<u32> {
        self.metric_ids.get(metric).copied()
    }

    /// All series of a version (empty when it has no points).
    pub(crate) fn version(&self, version_id: i64) -> &[(u32, Series)] {
        self.by_version.get(&version_id).map_or(&[], Vec::as_slice)
    }

    pub(crate) fn points(&self) -> u64 {
        self.points
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_weights_recent_points_more() {
        let mut series = Series::default();
        series.insert(0, 0.0);
        series.insert(1_000, 1.0);
        let plain = series.window(0, 1_000, None).expect("points");
        assert_eq!(plain.samples, 2);
        assert_eq!(plain.weighted_mean, 0.5);
        // Half-life 1 s: the older point weighs 1/2, the newer 1 → (0*0.5 + 1*1) / 1.5.
        let decayed = series.window(0, 1_000, Some(1_000.0)).expect("points");
        assert!((decayed.weighted_mean - 1.0 / 1.5).abs() < 1e-12);
        assert!(series.window(2_000, 3_000, None).is_none());
    }

    #[test]
    fn late_points_are_kept_in_time_order() {
        let mut series = Series::default();
        for ts in [5, 1, 3, 3, 9] {
            series.insert(ts, ts as f64);
        }
        let times: Vec<i64> = series.points.iter().map(|p| p.0).collect();
        assert_eq!(times, vec![1, 3, 3, 5, 9]);
        assert_eq!(series.window(0, 10, None).map(|w| w.latest), Some(9.0));
    }

    #[test]
    fn nan_and_infinity_strings_parse_so_they_can_be_refused() {
        let value: MetricValue = serde_json::from_str("\"NaN\"").expect("parses");
        assert!(value.0.is_nan());
        let value: MetricValue = serde_json::from_str("\"-inf\"").expect("parses");
        assert_eq!(value.0, f64::NEG_INFINITY);
        assert!(serde_json::from_str::<MetricValue>("\"abc\"").is_err());
    }
}
