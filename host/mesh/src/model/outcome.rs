//! Outcome metrics a backend reports about the model it ran: `mae=0.12; latency_ms=4.1` in the
//! `x-evolve-outcome` header, or an object in a JSON body's `evolve_outcome` field. Parsed
//! strictly (names as the registry accepts them, finite numbers, bounded counts), since the
//! backend is not trusted to send what the registry can store.

use serde_json::Value;

/// Longest `x-evolve-outcome` header read, bytes.
pub const MAX_OUTCOME_HEADER_BYTES: usize = 1_024;
/// Most metrics one outcome records.
pub const MAX_OUTCOME_METRICS: usize = 16;
/// Longest metric name, as the registry accepts it.
const MAX_METRIC_NAME: usize = 128;

/// Why an outcome was not recorded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutcomeError {
    #[error("the x-evolve-outcome header is not text")]
    NotText,
    #[error("the outcome is longer than {MAX_OUTCOME_HEADER_BYTES} bytes")]
    TooLong,
    #[error("the outcome lists no metric")]
    Empty,
    #[error("the outcome lists more than {MAX_OUTCOME_METRICS} metrics")]
    TooMany,
    #[error("\"{0}\" is not metric=value")]
    NotPair(String),
    #[error(
        "metric name \"{0}\" must be 1-128 of A-Z a-z 0-9 . _ - : starting with a letter or digit"
    )]
    BadName(String),
    #[error("metric {0} is not a finite number")]
    NotFinite(String),
    #[error("metric {0} appears twice")]
    Duplicate(String),
    #[error("evolve_outcome must be an object of metric names to numbers")]
    NotObject,
}

fn check_metric(name: &str, value: f64, seen: &[(String, f64)]) -> Result<(), OutcomeError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_METRIC_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if !valid {
        return Err(OutcomeError::BadName(name.chars().take(64).collect()));
    }
    if !value.is_finite() {
        return Err(OutcomeError::NotFinite(name.to_string()));
    }
    if seen.iter().any(|(n, _)| n == name) {
        return Err(OutcomeError::Duplicate(name.to_string()));
    }
    if seen.len() >= MAX_OUTCOME_METRICS {
        return Err(OutcomeError::TooMany);
    }
    Ok(())
}

/// Parses `mae=0.12; latency_ms=4.1` (`;`-separated; spaces around parts ignored).
pub fn parse_outcome_header(text: &str) -> Result<Vec<(String, f64)>, OutcomeError> {
    if text.len() > MAX_OUTCOME_HEADER_BYTES {
        return Err(OutcomeError::TooLong);
    }
    let mut metrics = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, value)) = part.split_once('=') else {
            return Err(OutcomeError::NotPair(part.chars().take(64).collect()));
        };
        let name = name.trim();
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| OutcomeError::NotFinite(name.chars().take(64).collect()))?;
        check_metric(name, value, &metrics)?;
        metrics.push((name.to_string(), value));
    }
    if metrics.is_empty() {
        return Err(OutcomeError::Empty);
    }
    Ok(metrics)
}

/// Parses `{"mae": 0.12, ...}`.
pub fn parse_outcome_json(value: &Value) -> Result<Vec<(String, f64)>, OutcomeError> {
    let Value::Object(object) = value else {
        return Err(OutcomeError::NotObject);
    };
    if object.len() > MAX_OUTCOME_METRICS {
        return Err(OutcomeError::TooMany);
    }
    let mut metrics = Vec::new();
    for (name, value) in object {
        let number = value
            .as_f64()
            .ok_or_else(|| OutcomeError::NotFinite(name.chars().take(64).collect()))?;
        check_metric(name, number, &metrics)?;
        metrics.push((name.clone(), number));
    }
    if metrics.is_empty() {
        return Err(OutcomeError::Empty);
    }
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Map, json};

    #[test]
    fn outcome_header_parses_pairs_and_refuses_what_is_malformed() {
        assert_eq!(
            parse_outcome_header("mae=0.12; latency_ms=4.1").expect("valid"),
            vec![("mae".to_string(), 0.12), ("latency_ms".to_string(), 4.1)]
        );
        assert_eq!(
            parse_outcome_header(" sharpe_ratio = -1e-3 ;").expect("valid"),
            vec![("sharpe_ratio".to_string(), -0.001)]
        );
        assert_eq!(parse_outcome_header(""), Err(OutcomeError::Empty));
        assert_eq!(
            parse_outcome_header("mae"),
            Err(OutcomeError::NotPair("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=NaN"),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=inf"),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=abc"),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        assert_eq!(
            parse_outcome_header("m ae=1"),
            Err(OutcomeError::BadName("m ae".into()))
        );
        assert_eq!(
            parse_outcome_header("_x=1"),
            Err(OutcomeError::BadName("_x".into()))
        );
        assert_eq!(
            parse_outcome_header("mae=1;mae=2"),
            Err(OutcomeError::Duplicate("mae".into()))
        );
        let sixteen: Vec<String> = (0..16).map(|i| format!("m{i}=1")).collect();
        assert_eq!(
            parse_outcome_header(&sixteen.join(";"))
                .expect("valid")
                .len(),
            16
        );
        let seventeen: Vec<String> = (0..17).map(|i| format!("m{i}=1")).collect();
        assert_eq!(
            parse_outcome_header(&seventeen.join(";")),
            Err(OutcomeError::TooMany)
        );
        let long = format!("mae={}", "1".repeat(MAX_OUTCOME_HEADER_BYTES));
        assert_eq!(parse_outcome_header(&long), Err(OutcomeError::TooLong));
    }

    #[test]
    fn outcome_field_takes_an_object_of_finite_numbers() {
        assert_eq!(
            parse_outcome_json(&json!({"mae": 0.5, "hits": 3})).expect("valid"),
            vec![("hits".to_string(), 3.0), ("mae".to_string(), 0.5)]
        );
        assert_eq!(
            parse_outcome_json(&json!([1, 2])),
            Err(OutcomeError::NotObject)
        );
        assert_eq!(parse_outcome_json(&json!({})), Err(OutcomeError::Empty));
        assert_eq!(
            parse_outcome_json(&json!({"mae": "0.5"})),
            Err(OutcomeError::NotFinite("mae".into()))
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("m{i}"), json!(1))).collect();
        assert_eq!(
            parse_outcome_json(&Value::Object(many)),
            Err(OutcomeError::TooMany)
        );
    }
}
