//! Constructors and conveniences on the WIT types shared by both worlds.
//!
//! The types themselves are generated (see [`crate::bindings`]); because they are generated
//! inside this crate, they can carry inherent methods, so plugins build them with
//! `HealthReport::healthy(..)` instead of spelling out every field.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    AgentInfo, CheckerInfo, ErrorCode, HealthReport, HealthStatus, PluginError, Task, TaskOutcome,
};

/// Milliseconds since the Unix epoch by the wall clock (`wasi:clocks/wall-clock` in a guest).
///
/// A clock before the epoch reads as 0: a report's timestamp is informational and must never
/// make a check fail.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a JSON document into `T`, describing a failure with the path of the offending field.
///
/// `what` names the document for the message, e.g. "task `generate` input".
pub(crate) fn parse_json<T: DeserializeOwned>(what: &str, json: &str) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_str(json);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        // The root path prints as "."; naming it adds nothing.
        if path == "." {
            format!("{what}: {}", e.inner())
        } else {
            format!("{what}: `{path}`: {}", e.inner())
        }
    })?;
    // `serde_path_to_error` stops after one value; trailing garbage is still an error.
    de.end().map_err(|e| format!("{what}: {e}"))?;
    Ok(value)
}

impl HealthStatus {
    /// The WIT name: `healthy`, `degraded` or `unhealthy`.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HealthReport {
    /// A report with `status` and `detail`, checked now, with zero latency.
    ///
    /// Set the latency with [`with_latency`](Self::with_latency) when the check measured one.
    pub fn new(status: HealthStatus, detail: impl Into<String>) -> Self {
        HealthReport {
            status,
            latency_us: 0,
            detail: detail.into(),
            checked_at_ms: now_ms(),
        }
    }

    /// A `healthy` report, checked now.
    pub fn healthy(detail: impl Into<String>) -> Self {
        Self::new(HealthStatus::Healthy, detail)
    }

    /// A `degraded` report, checked now.
    pub fn degraded(detail: impl Into<String>) -> Self {
        Self::new(HealthStatus::Degraded, detail)
    }

    /// An `unhealthy` report, checked now.
    pub fn unhealthy(detail: impl Into<String>) -> Self {
        Self::new(HealthStatus::Unhealthy, detail)
    }

    /// Sets how long the check took (saturating at `u64::MAX` microseconds).
    #[must_use]
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self
    }

    /// The latency as a [`Duration`].
    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us)
    }
}

impl ErrorCode {
    /// The WIT name, e.g. `invalid-input`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "invalid-input",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Denied => "denied",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PluginError {
    /// An error with `code` and `message`.
    ///
    /// Retryability defaults from the code: `unavailable` and `timeout` describe conditions
    /// that may pass, everything else fails the same way again. Override it with
    /// [`with_retryable`](Self::with_retryable).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        PluginError {
            code,
            message: message.into(),
            retryable: matches!(code, ErrorCode::Unavailable | ErrorCode::Timeout),
        }
    }

    /// The task or target was malformed; retrying the same input fails again.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// Something the plugin needed does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// A dependency is down or busy (retryable).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    /// The host refused a capability: an HTTP host, a path, ...
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Denied, message)
    }

    /// The plugin ran out of its own time budget (retryable).
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Timeout, message)
    }

    /// Anything else.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }

    /// Overrides whether the same call may succeed if retried later.
    #[must_use]
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }
}

impl Task {
    /// A task named `name` with a JSON `input` document; mostly useful in tests.
    pub fn new(name: impl Into<String>, input: impl Into<String>) -> Self {
        Task {
            name: name.into(),
            input: input.into(),
        }
    }

    /// Deserializes the JSON input into `T`.
    ///
    /// An empty input counts as `{}`, so a struct whose fields all have defaults accepts "no
    /// input". A malformed input is an `invalid-input` error naming the task and the offending
    /// field.
    pub fn input<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        let json = if self.input.trim().is_empty() {
            "{}"
        } else {
            self.input.as_str()
        };
        parse_json(&format!("task `{}`: invalid input", self.name), json)
            .map_err(PluginError::invalid_input)
    }
}

impl TaskOutcome {
    /// An outcome with a one-line `summary`, output `null` and no artifacts.
    pub fn new(summary: impl Into<String>) -> Self {
        TaskOutcome {
            summary: summary.into(),
            output: "null".to_owned(),
            artifacts: Vec::new(),
        }
    }

    /// Sets the structured output by serializing `output` to JSON.
    ///
    /// Fails with `internal` only if `T`'s `Serialize` impl fails (e.g. a map with non-string
    /// keys).
    pub fn with_output<T: Serialize + ?Sized>(mut self, output: &T) -> Result<Self, PluginError> {
        self.output = serde_json::to_string(output)
            .map_err(|e| PluginError::internal(format!("cannot serialize task output: {e}")))?;
        Ok(self)
    }

    /// Sets the structured output to an already-encoded JSON document.
    ///
    /// The host validates it; a document that is not JSON fails the call.
    #[must_use]
    pub fn with_json_output(mut self, json: impl Into<String>) -> Self {
        self.output = json.into();
        self
    }

    /// Adds the path (as the plugin sees it, e.g. `/out/report.md`) of a file the run wrote.
    #[must_use]
    pub fn with_artifact(mut self, path: impl Into<String>) -> Self {
        self.artifacts.push(path.into());
        self
    }
}

impl AgentInfo {
    /// Describes an agent with no capabilities and no suggested schedule.
    ///
    /// Typically `AgentInfo::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), "...")`.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        AgentInfo {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            capabilities: Vec::new(),
            schedule: None,
        }
    }

    /// Adds capabilities, e.g. `["documentation"]`.
    #[must_use]
    pub fn with_capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.capabilities
            .extend(capabilities.into_iter().map(Into::into));
        self
    }

    /// Suggests a schedule (`every 5m` or a cron expression); the manifest has the last word.
    #[must_use]
    pub fn with_schedule(mut self, schedule: impl Into<String>) -> Self {
        self.schedule = Some(schedule.into());
        self
    }
}

impl CheckerInfo {
    /// Describes a checker with no capabilities.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
    ) -> Self {
        CheckerInfo {
            name: name.into(),
            version: version.into(),
            description: description.into(),
            capabilities: Vec::new(),
        }
    }

    /// Adds capabilities (protocols checked), e.g. `["http"]`.
    #[must_use]
    pub fn with_capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.capabilities
            .extend(capabilities.into_iter().map(Into::into));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Input {
        #[serde(default)]
        count: u32,
        #[serde(default)]
        nested: Nested,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    struct Nested {
        #[serde(default)]
        flag: bool,
    }

    #[test]
    fn empty_input_is_an_empty_object() {
        let input: Input = Task::new("t", "").input().expect("empty input parses");
        assert_eq!(input.count, 0);
    }

    #[test]
    fn bad_input_names_the_task_and_field() {
        let err = Task::new("gen", r#"{"nested":{"flag":"yes"}}"#)
            .input::<Input>()
            .expect_err("a string is not a bool");
        assert_eq!(err.code, ErrorCode::InvalidInput);
        assert!(!err.retryable);
        assert!(err.message.contains("task `gen`"), "{}", err.message);
        assert!(err.message.contains("`nested.flag`"), "{}", err.message);
    }

    #[test]
    fn unknown_and_trailing_input_is_rejected() {
        let err = Task::new("t", r#"{"cnt": 1}"#)
            .input::<Input>()
            .expect_err("unknown field");
        assert!(err.message.contains("cnt"), "{}", err.message);
        Task::new("t", r#"{"count": 1} x"#)
            .input::<Input>()
            .expect_err("trailing characters");
    }

    #[test]
    fn reports_carry_status_latency_and_time() {
        let report = HealthReport::degraded("slow").with_latency(Duration::from_millis(3));
        assert_eq!(report.status, HealthStatus::Degraded);
        assert_eq!(report.latency_us, 3_000);
        assert!(report.checked_at_ms > 1_600_000_000_000);
        assert_eq!(report.status.to_string(), "degraded");
    }

    #[test]
    fn retryability_follows_the_code() {
        assert!(PluginError::unavailable("x").retryable);
        assert!(PluginError::timeout("x").retryable);
        assert!(!PluginError::denied("x").retryable);
        assert!(PluginError::internal("x").with_retryable(true).retryable);
        assert_eq!(PluginError::not_found("x").code.to_string(), "not-found");
    }

    #[test]
    fn outcome_output_is_json() {
        let outcome = TaskOutcome::new("done")
            .with_output(&serde_json::json!({"n": 1}))
            .expect("serializable")
            .with_artifact("/out/a.md");
        assert_eq!(outcome.output, r#"{"n":1}"#);
        assert_eq!(outcome.artifacts, ["/out/a.md"]);
        assert_eq!(TaskOutcome::new("x").output, "null");
    }
}
