//! The bundled price data: `data/prices.csv`, daily closes of two fictional symbols.
//!
//! How the file was made: [`generate`] (below) wrote it
//! (`EVOLVE_DEMO_REGENERATE=1 cargo test --release -p evolve-demo` writes it again), and the test
//! `the_bundled_file_is_what_the_generator_makes` checks that the committed file is exactly its
//! output. Each series is a multiplicative random walk `p[t+1] = p[t] × (1 + μ + σ·z)` over 500
//! weekdays from 2024-01-01, `z` approximately standard normal (the sum of 12 uniforms − 6,
//! Irwin–Hall) from a xorshift64* generator with a fixed seed, so the file is reproducible
//! with nothing but integer and IEEE arithmetic. Prices are rounded to cents.

use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate, Weekday};

/// The committed file.
pub const BUNDLED_CSV: &str = include_str!("../data/prices.csv");

/// Closes per symbol in the bundled file.
pub const DAYS: usize = 500;

/// (symbol, start price, daily drift μ, daily volatility σ, seed)
const SERIES: [(&str, f64, f64, f64, u64); 2] = [
    ("ACME", 100.0, 0.0004, 0.012, 0x5eed_0001),
    ("GLOBEX", 50.0, -0.0001, 0.02, 0x5eed_0002),
];

/// One symbol's daily closes, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub symbol: String,
    pub dates: Vec<NaiveDate>,
    pub closes: Vec<f64>,
}

/// A line of the CSV that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("prices.csv line {line}: {reason}")]
pub struct CsvError {
    pub line: usize,
    pub reason: String,
}

/// Parses `date,symbol,close` lines (with a header) into series keyed by symbol.
pub fn parse(text: &str) -> Result<BTreeMap<String, Series>, CsvError> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        let error = |reason: String| CsvError {
            line: index + 1,
            reason,
        };
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split(',');
        let (Some(date), Some(symbol), Some(close), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(error(format!("expected date,symbol,close, got {line:?}")));
        };
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .map_err(|e| error(format!("date {date:?}: {e}")))?;
        let close: f64 = close
            .parse()
            .map_err(|e| error(format!("close {close:?}: {e}")))?;
        if !(close.is_finite() && close > 0.0) {
            return Err(error(format!("close {close} must be a positive number")));
        }
        let series = out.entry(symbol.to_string()).or_insert_with(|| Series {
            symbol: symbol.to_string(),
            dates: Vec::new(),
            closes: Vec::new(),
        });
        if series.dates.last().is_some_and(|last| *last >= date) {
            return Err(error(format!("{symbol}: dates must increase ({date})")));
        }
        series.dates.push(date);
        series.closes.push(close);
    }
    Ok(out)
}

/// xorshift64*: small, fast, and the same on every platform.
struct XorShift(u64);

impl XorShift {
    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        bits as f64 / (1u64 << 53) as f64
    }

    /// Irwin–Hall: mean 0, variance 1, range ±6.
    fn next_normalish(&mut self) -> f64 {
        (0..12).map(|_| self.next_unit()).sum::<f64>() - 6.0
    }
}

/// The next weekday after `date`.
pub fn next_weekday(date: NaiveDate) -> NaiveDate {
    let mut next = date.succ_opt().unwrap_or(date);
    while matches!(next.weekday(), Weekday::Sat | Weekday::Sun) {
        next = next.succ_opt().unwrap_or(next);
    }
    next
}

/// The CSV text of the bundled file.
pub fn generate() -> String {
    let mut out = String::from("date,symbol,close\n");
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default();
    for (symbol, first, drift, volatility, seed) in SERIES {
        let mut rng = XorShift(seed);
        let mut price = first;
        let mut date = start;
        for _ in 0..DAYS {
            out.push_str(&format!("{date},{symbol},{price:.2}\n"));
            price *= 1.0 + drift + volatility * rng.next_normalish();
            date = next_weekday(date);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_bundled_file_is_what_the_generator_makes() {
        // `EVOLVE_DEMO_REGENERATE=1 cargo test -p evolve-demo` rewrites the file (then rebuild).
        if std::env::var_os("EVOLVE_DEMO_REGENERATE").is_some() {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/data/prices.csv");
            std::fs::write(path, generate()).unwrap();
            return;
        }
        assert!(
            BUNDLED_CSV == generate(),
            "data/prices.csv differs from generate()"
        );
        let series = parse(BUNDLED_CSV).unwrap();
        assert_eq!(series.keys().collect::<Vec<_>>(), ["ACME", "GLOBEX"]);
        assert!(series.values().all(|s| s.closes.len() == DAYS));
    }

    #[test]
    fn bad_lines_are_named() {
        let error = parse("date,symbol,close\n2024-01-01,X,1\n2024-01-02,X,-3\n").unwrap_err();
        assert_eq!(error.line, 3);
        let error = parse("date,symbol,close\n2024-01-02,X,1\n2024-01-01,X,2\n").unwrap_err();
        assert!(error.reason.contains("increase"), "{error}");
        assert!(parse("h\nnot,a\n").is_err());
    }

    #[test]
    fn weekends_are_skipped() {
        let friday = NaiveDate::from_ymd_opt(2024, 1, 5).unwrap();
        assert_eq!(
            next_weekday(friday),
            NaiveDate::from_ymd_opt(2024, 1, 8).unwrap()
        );
    }
}
