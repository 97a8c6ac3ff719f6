//! The tester's report: checks in order, their verdicts, and the text forms. Pure, so it is
//! tested without a host.

use evolve_plugin_sdk::probes::ProbeResult;
use serde::Serialize;
use serde_json::{Value, json};

/// One check and how it went.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// `service`, `checker`, `best-model` or `agent`.
    pub kind: &'static str,
    pub target: String,
    pub ok: bool,
    pub detail: String,
    pub latency_us: u64,
}

impl Check {
    pub(crate) fn from_probe(kind: &'static str, target: &str, probe: ProbeResult) -> Check {
        Check {
            kind,
            target: target.to_owned(),
            ok: probe.ok,
            detail: probe.detail,
            latency_us: probe.latency_us,
        }
    }

    /// `PASS service forecast-api (3.1 ms): HTTP 200`.
    pub(crate) fn line(&self) -> String {
        format!(
            "{} {} {} ({:.1} ms): {}",
            if self.ok { "PASS" } else { "FAIL" },
            self.kind,
            self.target,
            self.latency_us as f64 / 1000.0,
            self.detail.replace('\n', " ")
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    checks: Vec<Check>,
}

impl Report {
    pub(crate) fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    pub(crate) fn counts(&self) -> (usize, usize) {
        let passed = self.checks.iter().filter(|c| c.ok).count();
        (passed, self.checks.len() - passed)
    }

    pub(crate) fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    pub(crate) fn summary(&self) -> String {
        let (passed, failed) = self.counts();
        match (passed + failed, failed) {
            (0, _) => "nothing to check: no services, checkers, models or other agents".to_owned(),
            (total, 0) => format!("all {total} checks passed"),
            (total, failed) => format!("{failed} of {total} checks failed"),
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let (passed, failed) = self.counts();
        let lines: Vec<String> = self.checks.iter().map(Check::line).collect();
        json!({
            "ok": failed == 0,
            "passed": passed,
            "failed": failed,
            "checks": self.checks,
            "report": lines.join("\n"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(ok: bool, detail: &str, latency_us: u64) -> ProbeResult {
        ProbeResult {
            ok,
            detail: detail.into(),
            latency_us,
        }
    }

    #[test]
    fn one_line_per_check_and_the_verdict_counts_failures() {
        let mut report = Report::default();
        report.push(Check::from_probe(
            "service",
            "a",
            probe(true, "HTTP 200", 3_100),
        ));
        report.push(Check::from_probe(
            "service",
            "b",
            probe(false, "connection refused", 250),
        ));
        report.push(Check::from_probe("agent", "c", probe(true, "healthy", 40)));
        let json = report.to_json();
        assert_eq!(json["ok"], false);
        assert_eq!(
            (json["passed"].as_u64(), json["failed"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(
            json["report"],
            "PASS service a (3.1 ms): HTTP 200\nFAIL service b (0.2 ms): connection refused\nPASS agent c (0.0 ms): healthy"
        );
        assert_eq!(report.summary(), "1 of 3 checks failed");
        assert_eq!(Report::default().to_json()["ok"], true);
    }
}
