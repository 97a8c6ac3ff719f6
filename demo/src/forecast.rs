//! Forecasting methods over a close series, and the holdout backtest whose errors the backend
//! reports as `x-evolve-outcome`.
//!
//! | model (version) | method |
//! |---|---|
//! | `drift` | naive with drift: the last close plus the mean daily change over the whole series |
//! | `ses` v1 | simple exponential smoothing with α = 0.5 (a flat forecast at the smoothed level) |
//! | `ses` v2 and later | simple exponential smoothing with α fitted: the grid 0.05, 0.10, …, 1.00 minimising one-step squared errors |
//! | `linear-trend` | ordinary least squares line over the last 60 closes, extrapolated |
//! | none, or any other name | the default, `drift` (the answer says it fell back and why) |

/// Closes the backtest holds out: the method is fitted on the rest and forecasts these.
pub const HOLDOUT: usize = 30;

/// Window of the linear trend, closes.
pub const TREND_WINDOW: usize = 60;

/// α of `ses` v1.
pub const SES_V1_ALPHA: f64 = 0.5;

/// Longest forecast a request may ask for, days.
pub const MAX_HORIZON: usize = 250;

/// The model a request names when nothing else is sent.
pub const DEFAULT_MODEL: &str = "drift";

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    Drift,
    /// `None`: α fitted on the series.
    Ses {
        alpha: Option<f64>,
    },
    LinearTrend {
        window: usize,
    },
}

impl Method {
    pub fn describe(self) -> String {
        match self {
            Method::Drift => "naive with drift".into(),
            Method::Ses { alpha: Some(alpha) } => {
                format!("simple exponential smoothing, alpha {alpha}")
            }
            Method::Ses { alpha: None } => "simple exponential smoothing, alpha fitted".into(),
            Method::LinearTrend { window } => format!("linear trend over the last {window} closes"),
        }
    }
}

/// The method for a model, and why the default was used when it was.
pub fn method_for(model: Option<&str>, version: Option<u32>) -> (Method, Option<String>) {
    match model {
        Some("drift") => (Method::Drift, None),
        Some("ses") if version == Some(1) => (
            Method::Ses {
                alpha: Some(SES_V1_ALPHA),
            },
            None,
        ),
        Some("ses") => (Method::Ses { alpha: None }, None),
        Some("linear-trend") => (
            Method::LinearTrend {
                window: TREND_WINDOW,
            },
            None,
        ),
        Some(other) => (
            Method::Drift,
            Some(format!(
                "model {other:?} is not one this backend knows (drift, ses, linear-trend); used {DEFAULT_MODEL}"
            )),
        ),
        None => (
            Method::Drift,
            Some(format!("no model was sent; used {DEFAULT_MODEL}")),
        ),
    }
}

/// A forecast could not be made.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ForecastError {
    #[error("{needed} closes are needed, the series has {have}")]
    TooShort { needed: usize, have: usize },
}

/// `horizon` values after the last close.
pub fn forecast(closes: &[f64], method: Method, horizon: usize) -> Result<Vec<f64>, ForecastError> {
    let need = |needed: usize| {
        if closes.len() < needed {
            Err(ForecastError::TooShort {
                needed,
                have: closes.len(),
            })
        } else {
            Ok(())
        }
    };
    let steps = 1..=horizon;
    match method {
        Method::Drift => {
            need(2)?;
            let (first, last) = (closes[0], closes[closes.len() - 1]);
            let slope = (last - first) / (closes.len() - 1) as f64;
            Ok(steps.map(|h| last + h as f64 * slope).collect())
        }
        Method::Ses { alpha } => {
            need(2)?;
            let alpha = alpha.unwrap_or_else(|| fit_alpha(closes));
            let level = smoothed_level(closes, alpha);
            Ok(steps.map(|_| level).collect())
        }
        Method::LinearTrend { window } => {
            need(2)?;
            let window = window.clamp(2, closes.len());
            let tail = &closes[closes.len() - window..];
            let (intercept, slope) = least_squares(tail);
            Ok(steps
                .map(|h| intercept + slope * (window - 1 + h) as f64)
                .collect())
        }
    }
}

/// The level after smoothing every close: `l₀ = y₀`, `lₜ = α·yₜ + (1 − α)·lₜ₋₁`.
fn smoothed_level(closes: &[f64], alpha: f64) -> f64 {
    closes[1..]
        .iter()
        .fold(closes[0], |level, y| alpha * y + (1.0 - alpha) * level)
}

/// The α of the grid 0.05..=1.00 with the least one-step squared error (ties: the smaller α).
pub fn fit_alpha(closes: &[f64]) -> f64 {
    let mut best = (f64::INFINITY, 1.0);
    for step in 1..=20 {
        let alpha = f64::from(step) * 0.05;
        let mut level = closes[0];
        let mut sse = 0.0;
        for y in &closes[1..] {
            sse += (y - level).powi(2);
            level = alpha * y + (1.0 - alpha) * level;
        }
        if sse < best.0 {
            best = (sse, alpha);
        }
    }
    best.1
}

/// (intercept, slope) of the least-squares line through `(i, yᵢ)`.
fn least_squares(ys: &[f64]) -> (f64, f64) {
    let n = ys.len() as f64;
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mean_x;
        sxy += dx * (y - mean_y);
        sxx += dx * dx;
    }
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    (mean_y - slope * mean_x, slope)
}

/// Errors of a method on the last `holdout` closes when fitted on the ones before.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Backtest {
    pub holdout: usize,
    /// Mean absolute error, in price units.
    pub mae: f64,
    /// Mean absolute percentage error, %.
    pub mape: f64,
}

pub fn backtest(closes: &[f64], method: Method, holdout: usize) -> Result<Backtest, ForecastError> {
    if holdout == 0 || closes.len() < holdout + 2 {
        return Err(ForecastError::TooShort {
            needed: holdout + 2,
            have: closes.len(),
        });
    }
    let (train, actual) = closes.split_at(closes.len() - holdout);
    let predicted = forecast(train, method, holdout)?;
    let n = holdout as f64;
    let mae = actual
        .iter()
        .zip(&predicted)
        .map(|(a, p)| (a - p).abs())
        .sum::<f64>()
        / n;
    let mape = actual
        .iter()
        .zip(&predicted)
        .map(|(a, p)| ((a - p) / a).abs())
        .sum::<f64>()
        / n
        * 100.0;
    Ok(Backtest { holdout, mae, mape })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn drift_extends_the_mean_change() {
        // From 10 to 16 over 3 steps: +2 a day.
        let f = forecast(&[10.0, 11.0, 15.0, 16.0], Method::Drift, 3).unwrap();
        assert_eq!(f, vec![18.0, 20.0, 22.0]);
    }

    #[test]
    fn ses_with_alpha_one_is_the_last_close_and_a_half_weights_recent_closes() {
        let closes = [10.0, 20.0, 40.0];
        let f = forecast(&closes, Method::Ses { alpha: Some(1.0) }, 2).unwrap();
        assert_eq!(f, vec![40.0, 40.0]);
        // l = 10 → 15 → 27.5
        let f = forecast(&closes, Method::Ses { alpha: Some(0.5) }, 1).unwrap();
        assert!(close(f[0], 27.5), "{f:?}");
    }

    #[test]
    fn a_fitted_alpha_follows_a_random_walk_and_smooths_noise() {
        // A steady climb: the last close predicts best, α = 1.
        let climb: Vec<f64> = (0..50).map(f64::from).collect();
        assert!(close(fit_alpha(&climb), 1.0));
        // Alternating noise around 10: heavy smoothing predicts best.
        let noise: Vec<f64> = (0..50)
            .map(|i| if i % 2 == 0 { 9.0 } else { 11.0 })
            .collect();
        assert!(fit_alpha(&noise) <= 0.1, "{}", fit_alpha(&noise));
    }

    #[test]
    fn linear_trend_recovers_a_line_over_its_window() {
        // Noise far back, then an exact line y = 3 + 2i over the window.
        let mut closes = vec![100.0, 1.0, 50.0];
        closes.extend((0..10).map(|i| 3.0 + 2.0 * f64::from(i)));
        let f = forecast(&closes, Method::LinearTrend { window: 10 }, 2).unwrap();
        assert!(close(f[0], 23.0) && close(f[1], 25.0), "{f:?}");
    }

    #[test]
    fn backtest_errors_are_computed_on_the_holdout() {
        // Train [1, 2, 3] → drift +1 → predicts 4, 5; actual 4, 7: errors 0 and 2.
        let b = backtest(&[1.0, 2.0, 3.0, 4.0, 7.0], Method::Drift, 2).unwrap();
        assert!(close(b.mae, 1.0), "{b:?}");
        // |0/4| and |2/7| → mean 1/7 → 14.2857 %
        assert!(close(b.mape, 100.0 / 7.0), "{b:?}");
        // A perfect line: no error.
        let line: Vec<f64> = (1..=40).map(f64::from).collect();
        let b = backtest(&line, Method::LinearTrend { window: 60 }, 10).unwrap();
        assert!(b.mae < 1e-9 && b.mape < 1e-9, "{b:?}");
        assert_eq!(
            backtest(&[1.0, 2.0], Method::Drift, 5),
            Err(ForecastError::TooShort { needed: 7, have: 2 })
        );
    }

    #[test]
    fn models_pick_methods_and_unknown_ones_fall_back_with_a_reason() {
        assert_eq!(method_for(Some("drift"), Some(3)), (Method::Drift, None));
        assert_eq!(
            method_for(Some("ses"), Some(1)).0,
            Method::Ses { alpha: Some(0.5) }
        );
        assert_eq!(
            method_for(Some("ses"), Some(2)).0,
            Method::Ses { alpha: None }
        );
        assert_eq!(
            method_for(Some("linear-trend"), None).0,
            Method::LinearTrend {
                window: TREND_WINDOW
            }
        );
        let (method, why) = method_for(Some("lstm"), None);
        assert_eq!(method, Method::Drift);
        assert!(why.unwrap().contains("\"lstm\""));
        assert!(method_for(None, None).1.is_some());
    }
}
