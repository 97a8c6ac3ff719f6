//! Risk and return figures of a close series: daily simple returns, annualised volatility,
//! maximum drawdown and the Sharpe ratio.

use serde::Serialize;

/// Trading days a year, for annualising daily figures.
pub const TRADING_DAYS: f64 = 252.0;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Drawdown {
    /// Largest fall from a running peak, as a fraction of the peak (0.25 = 25 %).
    pub value: f64,
    /// Indices of the peak and of the trough after it.
    pub peak: usize,
    pub trough: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Analysis {
    /// last / first − 1.
    pub total_return: f64,
    pub mean_daily_return: f64,
    /// Sample standard deviation of daily returns × √252.
    pub volatility_annualised: f64,
    pub max_drawdown: Drawdown,
    /// (mean daily return − daily risk-free rate) / daily standard deviation × √252; 0 when the
    /// returns do not vary.
    pub sharpe_ratio: f64,
}

/// `pₜ / pₜ₋₁ − 1` for each day after the first.
pub fn daily_returns(closes: &[f64]) -> Vec<f64> {
    closes.windows(2).map(|w| w[1] / w[0] - 1.0).collect()
}

pub fn max_drawdown(closes: &[f64]) -> Drawdown {
    let mut worst = Drawdown {
        value: 0.0,
        peak: 0,
        trough: 0,
    };
    let mut peak = 0;
    for (i, close) in closes.iter().enumerate() {
        if *close > closes[peak] {
            peak = i;
        }
        let fall = 1.0 - close / closes[peak];
        if fall > worst.value {
            worst = Drawdown {
                value: fall,
                peak,
                trough: i,
            };
        }
    }
    worst
}

/// The figures over `closes` (at least 3, so returns have a sample deviation);
/// `risk_free_annual` is a yearly rate, e.g. 0.03.
pub fn analyse(closes: &[f64], risk_free_annual: f64) -> Option<Analysis> {
    if closes.len() < 3 {
        return None;
    }
    let returns = daily_returns(closes);
    let n = returns.len() as f64;
    let mean = returns.iter().sum::<f64>() / n;
    let variance = returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let deviation = variance.sqrt();
    let excess = mean - risk_free_annual / TRADING_DAYS;
    Some(Analysis {
        total_return: closes[closes.len() - 1] / closes[0] - 1.0,
        mean_daily_return: mean,
        volatility_annualised: deviation * TRADING_DAYS.sqrt(),
        max_drawdown: max_drawdown(closes),
        sharpe_ratio: if deviation > 0.0 {
            excess / deviation * TRADING_DAYS.sqrt()
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn returns_and_drawdown_by_hand() {
        let closes = [100.0, 110.0, 99.0, 120.0, 90.0, 95.0];
        let r = daily_returns(&closes);
        assert!(close(r[0], 0.1) && close(r[1], -0.1), "{r:?}");
        // Peak 120 (index 3) to 90 (index 4): 25 %; the earlier 110 → 99 is only 10 %.
        let dd = max_drawdown(&closes);
        assert!(close(dd.value, 0.25));
        assert_eq!((dd.peak, dd.trough), (3, 4));
        assert_eq!(max_drawdown(&[1.0, 2.0, 3.0]).value, 0.0);
    }

    #[test]
    fn volatility_and_sharpe_by_hand() {
        // Returns +10 %, −10 %, +10 %: mean 1/30, sample variance ((2/30)²·2 + (4/30)²)/2 = 0.0133…
        let closes = [100.0, 110.0, 99.0, 108.9];
        let a = analyse(&closes, 0.0).unwrap();
        let mean: f64 = 0.1 / 3.0;
        let deviation: f64 = ((2.0f64 * (0.1 - mean).powi(2) + (-0.1 - mean).powi(2)) / 2.0).sqrt();
        assert!((a.mean_daily_return - mean).abs() < 1e-12);
        assert!((a.volatility_annualised - deviation * 252f64.sqrt()).abs() < 1e-12);
        assert!((a.sharpe_ratio - mean / deviation * 252f64.sqrt()).abs() < 1e-9);
        assert!((a.total_return - 0.089).abs() < 1e-12);
        // A risk-free rate lowers the Sharpe ratio by rf/252 per day of mean.
        let with_rf = analyse(&closes, 0.0252).unwrap();
        assert!((with_rf.sharpe_ratio - (mean - 0.0001) / deviation * 252f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn flat_or_short_series() {
        let flat = analyse(&[5.0, 5.0, 5.0], 0.0).unwrap();
        assert_eq!((flat.volatility_annualised, flat.sharpe_ratio), (0.0, 0.0));
        assert!(analyse(&[1.0, 2.0], 0.0).is_none());
    }
}
