//! Best-model selection under a named [`ScoringPolicy`], with an answer that explains itself.
//!
//! Ranking runs these steps:
//! 1. candidates: every non-archived version of every model of the task type;
//! 2. per candidate and policy metric, the window's samples and their recency-weighted mean
//!    (weight `2^(-age / half_life)`); a candidate short of `min_samples` in any metric is
//!    excluded, with the reason;
//! 3. per metric, the eligible candidates' means are scaled to 0..1 (min-max; `down` metrics
//!    are flipped so 1 is always best; a metric where all are equal gives everyone 1);
//! 4. score = Σ weight × scaled / Σ weight, in 0..1;
//! 5. order by score, then the policy's tie-breaks, then model name and version so the order is
//!    total: the same data and `now` always give the same answer.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::RegistryError;
use super::from_millis;
use super::models::check_name;
use super::performance::SeriesIndex;

/// Scores closer than this are a tie (sums of the same terms in another order differ by ulps).
const SCORE_EPSILON: f64 = 1e-12;
/// Most metrics one policy weighs.
const MAX_POLICY_METRICS: usize = 32;
/// The policy that exists even when the config names none.
pub const DEFAULT_POLICY: &str = "default";
/// Metrics whose default direction is "lower is better"; any other metric defaults to higher.
pub const LOWER_IS_BETTER: &[&str] = &[
    "max_drawdown",
    "drawdown",
    "volatility",
    "loss",
    "mae",
    "mse",
    "rmse",
    "mape",
    "error_rate",
    "latency_ms",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Up,
    Down,
}

/// One weighted metric of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricTerm {
    pub name: String,
    #[serde(default = "one")]
    pub weight: f64,
    /// Default: `down` for the names in [`LOWER_IS_BETTER`], else `up`.
    #[serde(default)]
    pub direction: Option<Direction>,
}

fn one() -> f64 {
    1.0
}

impl MetricTerm {
    pub fn direction(&self) -> Direction {
        self.direction.unwrap_or_else(|| {
            if LOWER_IS_BETTER.contains(&self.name.as_str()) {
                Direction::Down
            } else {
                Direction::Up
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieBreak {
    /// More samples in the window wins.
    MoreSamples,
    /// The version created later wins.
    Newest,
    /// The version created earlier wins (the incumbent).
    Oldest,
}

impl TieBreak {
    fn as_str(self) -> &'static str {
        match self {
            TieBreak::MoreSamples => "more_samples",
            TieBreak::Newest => "newest",
            TieBreak::Oldest => "oldest",
        }
    }
}

/// How the best model is chosen. `[registry.policies.<name>]` in the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScoringPolicy {
    pub metrics: Vec<MetricTerm>,
    /// Only points of the last `window_days` days count (0 = all history), days.
    pub window_days: f64,
    /// A point this old weighs half as much as a fresh one (0 = no decay), days.
    pub half_life_days: f64,
    /// Samples each metric needs in the window for a version to be eligible.
    pub min_samples: u32,
    /// Applied in order when scores tie; model name, then version, decide last.
    pub tie_break: Vec<TieBreak>,
}

impl Default for ScoringPolicy {
    fn default() -> Self {
        let term = |name: &str| MetricTerm {
            name: name.into(),
            weight: 1.0,
            direction: None,
        };
        ScoringPolicy {
            metrics: vec![term("sharpe_ratio"), term("max_drawdown"), term("win_rate")],
            window_days: 30.0,
            half_life_days: 7.0,
            min_samples: 1,
            tie_break: vec![TieBreak::MoreSamples, TieBreak::Newest],
        }
    }
}

impl ScoringPolicy {
    /// Checks the policy; `key` names it in errors (e.g. `registry.policies.fast`).
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if self.metrics.is_empty() || self.metrics.len() > MAX_POLICY_METRICS {
            return Err(format!(
                "{key}.metrics must list 1 to {MAX_POLICY_METRICS} metrics"
            ));
        }
        for (index, term) in self.metrics.iter().enumerate() {
            check_name("metric", &term.name, true)
                .map_err(|e| format!("{key}.metrics[{index}].name: {e}"))?;
            if !term.weight.is_finite() || term.weight <= 0.0 || term.weight > 1e6 {
                return Err(format!(
                    "{key}.metrics[{index}].weight must be a number above 0 and at most 1e6"
                ));
            }
            if self.metrics[..index].iter().any(|t| t.name == term.name) {
                return Err(format!("{key}.metrics lists {} twice", term.name));
            }
        }
        for (field, value) in [
            ("window_days", self.window_days),
            ("half_life_days", self.half_life_days),
        ] {
            if !value.is_finite() || !(0.0..=36_500.0).contains(&value) {
                return Err(format!("{key}.{field} must be between 0 and 36500 days"));
            }
        }
        if self.min_samples == 0 {
            return Err(format!("{key}.min_samples must be at least 1"));
        }
        Ok(())
    }
}

/// A version that may be chosen.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub version_id: i64,
    pub model: String,
    pub version: u32,
    pub created_at: i64,
}

/// One metric's part in a candidate's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricScore {
    pub metric: String,
    pub direction: Direction,
    pub weight: f64,
    pub samples: u64,
    pub weighted_mean: f64,
    pub latest: f64,
    pub latest_at: DateTime<Utc>,
    /// 0..1 among the eligible candidates, 1 best.
    pub scaled: f64,
    /// weight × scaled / Σ weights: this metric's share of the score.
    pub contribution: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedCandidate {
    pub rank: u32,
    pub model: String,
    pub version: u32,
    pub score: f64,
    pub samples: u64,
    pub created_at: DateTime<Utc>,
    pub metrics: Vec<MetricScore>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Excluded {
    pub model: String,
    pub version: u32,
    pub reason: String,
}

/// The best model of a task type, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BestModelAnswer {
    pub task_type: String,
    pub policy: String,
    pub evaluated_at: DateTime<Utc>,
    /// Start of the window (`None`: all history).
    pub window_start: Option<DateTime<Utc>>,
    pub winner: RankedCandidate,
    /// One paragraph for humans: why the winner won.
    pub explanation: String,
    /// Every eligible candidate, best first.
    pub candidates: Vec<RankedCandidate>,
    pub excluded: Vec<Excluded>,
}

/// Ranks `candidates` (see the module docs for the steps).
pub(crate) fn rank(
    task: &str,
    policy_name: &str,
    policy: &ScoringPolicy,
    candidates: &[Candidate],
    index: &SeriesIndex,
    now_ms: i64,
) -> Result<BestModelAnswer, RegistryError> {
    let day_ms = 86_400_000.0;
    let window_start =
        (policy.window_days > 0.0).then(|| now_ms - (policy.window_days * day_ms) as i64);
    let from = window_start.unwrap_or(i64::MIN);
    let half_life = (policy.half_life_days > 0.0).then_some(policy.half_life_days * day_ms);
    let weight_sum: f64 = policy.metrics.iter().map(|t| t.weight).sum();

    // 1-2. Window stats per candidate; exclusions.
    let metric_ids: Vec<Option<u32>> = policy
        .metrics
        .iter()
        .map(|t| index.metric_id(&t.name))
        .collect();
    let mut eligible: Vec<(&Candidate, Vec<MetricScore>)> = Vec::with_capacity(candidates.len());
    let mut excluded = Vec::new();
    for candidate in candidates {
        let series = index.version(candidate.version_id);
        let mut scores = Vec::with_capacity(policy.metrics.len());
        let mut missing = Vec::new();
        for (term, metric_id) in policy.metrics.iter().zip(&metric_ids) {
            let stats = metric_id
                .and_then(|id| series.iter().find(|(m, _)| *m == id))
                .and_then(|(_, s)| s.window(from, now_ms, half_life));
            match stats {
                Some(stats) if stats.samples >= u64::from(policy.min_samples) => {
                    scores.push(MetricScore {
                        metric: term.name.clone(),
                        direction: term.direction(),
                        weight: term.weight,
                        samples: stats.samples,
                        weighted_mean: stats.weighted_mean,
                        latest: stats.latest,
                        latest_at: from_millis(stats.latest_at),
                        scaled: 0.0,
                        contribution: 0.0,
                    })
                }
                found => missing.push(format!(
                    "{} has {} samples",
                    term.name,
                    found.map_or(0, |s| s.samples)
                )),
            }
        }
        if missing.is_empty() {
            eligible.push((candidate, scores));
        } else {
            excluded.push(Excluded {
                model: candidate.model.clone(),
                version: candidate.version,
                reason: format!(
                    "{} in the window, the policy needs {} each",
                    missing.join(", "),
                    policy.min_samples
                ),
            });
        }
    }
    excluded.sort_by(|a, b| a.model.cmp(&b.model).then(a.version.cmp(&b.version)));
    if eligible.is_empty() {
        let reasons = if candidates.is_empty() {
            "no non-archived versions of this task type exist".to_string()
        } else {
            let shown: Vec<String> = excluded
                .iter()
                .take(5)
                .map(|e| format!("{} v{}: {}", e.model, e.version, e.reason))
                .collect();
            format!(
                "{} candidates, all excluded ({}{})",
                excluded.len(),
                shown.join("; "),
                if excluded.len() > 5 { "; …" } else { "" }
            )
        };
        return Err(RegistryError::NoEligibleModel {
            task: task.to_string(),
            policy: policy_name.to_string(),
            reasons,
        });
    }

    // 3. Scale each metric over the eligible candidates.
    for (m, _term) in policy.metrics.iter().enumerate() {
        let (min, max) = eligible
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, s)| {
                (lo.min(s[m].weighted_mean), hi.max(s[m].weighted_mean))
            });
        let span = max - min;
        for (_, scores) in eligible.iter_mut() {
            let score = &mut scores[m];
            let up = if span > 0.0 && span.is_finite() {
                (score.weighted_mean - min) / span
            } else {
                1.0
            };
            score.scaled = match score.direction {
                Direction::Up => up,
                Direction::Down if span > 0.0 && span.is_finite() => 1.0 - up,
                Direction::Down => 1.0,
            };
            score.contribution = score.weight * score.scaled / weight_sum;
        }
    }

    // 4. Scores.
    let mut ranked: Vec<RankedCandidate> = eligible
        .into_iter()
        .map(|(candidate, metrics)| RankedCandidate {
            rank: 0,
            model: candidate.model.clone(),
            version: candidate.version,
            score: metrics.iter().map(|s| s.contribution).sum(),
            samples: metrics.iter().map(|s| s.samples).sum(),
            created_at: from_millis(candidate.created_at),
            metrics,
        })
        .collect();

    // 5. Total order.
    ranked.sort_by(|a, b| compare(a, b, &policy.tie_break));
    for (position, candidate) in ranked.iter_mut().enumerate() {
        candidate.rank = position as u32 + 1;
    }
    let explanation = explain(task, &ranked, &excluded, &policy.tie_break);
    Ok(BestModelAnswer {
        task_type: task.to_string(),
        policy: policy_name.to_string(),
        evaluated_at: from_millis(now_ms),
        window_start: window_start.map(from_millis),
        winner: ranked[0].clone(),
        explanation,
        candidates: ranked,
        excluded,
    })
}

fn tied(a: f64, b: f64) -> bool {
    (a - b).abs() <= SCORE_EPSILON
}

/// `Less` when `a` ranks before `b`.
fn compare(a: &RankedCandidate, b: &RankedCandidate, tie_breaks: &[TieBreak]) -> Ordering {
    if !tied(a.score, b.score) {
        return b.score.total_cmp(&a.score);
    }
    for tie_break in tie_breaks {
        let order = decide(a, b, *tie_break);
        if order != Ordering::Equal {
            return order;
        }
    }
    a.model.cmp(&b.model).then(b.version.cmp(&a.version))
}

fn decide(a: &RankedCandidate, b: &RankedCandidate, tie_break: TieBreak) -> Ordering {
    match tie_break {
        TieBreak::MoreSamples => b.samples.cmp(&a.samples),
        TieBreak::Newest => b.created_at.cmp(&a.created_at),
        TieBreak::Oldest => a.created_at.cmp(&b.created_at),
    }
}

fn explain(
    task: &str,
    ranked: &[RankedCandidate],
    excluded: &[Excluded],
    tie_breaks: &[TieBreak],
) -> String {
    let winner = &ranked[0];
    let excluded_note = match excluded.len() {
        0 => String::new(),
        n => format!(" {n} version(s) were excluded for too few samples."),
    };
    let Some(runner_up) = ranked.get(1) else {
        return format!(
            "{} v{} is the only eligible {task} model (score {:.4}).{excluded_note}",
            winner.model, winner.version, winner.score
        );
    };
    if tied(winner.score, runner_up.score) {
        let rule = tie_breaks
            .iter()
            .find(|t| decide(winner, runner_up, **t) != Ordering::Equal)
            .map_or_else(
                || "model name, then higher version".to_string(),
                |t| match t {
                    TieBreak::MoreSamples => format!(
                        "{} ({} vs {} samples)",
                        t.as_str(),
                        winner.samples,
                        runner_up.samples
                    ),
                    _ => format!(
                        "{} (created {} vs {})",
                        t.as_str(),
                        winner.created_at.to_rfc3339(),
                        runner_up.created_at.to_rfc3339()
                    ),
                },
            );
        return format!(
            "{} v{} tied with {} v{} at score {:.4} and won on the tie-break {rule}.{excluded_note}",
            winner.model, winner.version, runner_up.model, runner_up.version, winner.score
        );
    }
    // The metric that gave the winner its largest lead.
    let lead = winner
        .metrics
        .iter()
        .zip(&runner_up.metrics)
        .max_by(|(a, ra), (b, rb)| {
            (a.contribution - ra.contribution).total_cmp(&(b.contribution - rb.contribution))
        });
    let detail = lead.map_or(String::new(), |(w, r)| {
        format!(
            "; its largest lead is {} ({}, weight {}): {:.4} vs {:.4}",
            w.metric,
            match w.direction {
                Direction::Up => "higher is better",
                Direction::Down => "lower is better",
            },
            w.weight,
            w.weighted_mean,
            r.weighted_mean
        )
    });
    format!(
        "{} v{} has the highest score, {:.4}, ahead of {} v{} at {:.4} among {} eligible {task} versions{detail}.{excluded_note}",
        winner.model,
        winner.version,
        winner.score,
        runner_up.model,
        runner_up.version,
        runner_up.score,
        ranked.len()
    )
}

/// The policies a registry knows: the config's, plus [`DEFAULT_POLICY`] unless it overrides it.
pub fn with_default(
    mut policies: BTreeMap<String, ScoringPolicy>,
) -> BTreeMap<String, ScoringPolicy> {
    policies.entry(DEFAULT_POLICY.to_string()).or_default();
    policies
}
