//! Steps 1-3 of a scenario file: read it (bounded), parse it (unknown keys are errors naming the
//! key), and validate each case (one call; expectations that fit the call).

use std::path::Path;

use serde_json::Value;

use super::{
    Call, Case, Expect, FileSpec, MAX_CASES_PER_FILE, MAX_HTTP_DELAY_MS, MAX_SCENARIO_BYTES,
    ScenarioError, ScenarioFile, SetupSpec,
};
use crate::mock::service;

impl ScenarioFile {
    /// Steps 1-3 for one file.
    pub fn read(path: &Path) -> Result<ScenarioFile, ScenarioError> {
        let read_error = |source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        };
        let bytes = std::fs::metadata(path).map_err(read_error)?.len();
        if bytes > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::TooLarge {
                path: path.to_path_buf(),
                bytes,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        ScenarioFile::parse(path, &text)
    }

    /// Steps 2-3: `text` is the content of `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<ScenarioFile, ScenarioError> {
        let spec: FileSpec = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let parse_error = |message: String| ScenarioError::Parse {
            path: path.to_path_buf(),
            message,
        };
        if spec.cases.is_empty() {
            return Err(parse_error(
                "no `[[case]]`; a scenario file holds at least one case".to_owned(),
            ));
        }
        if spec.cases.len() > MAX_CASES_PER_FILE {
            return Err(parse_error(format!(
                "{} cases; at most {MAX_CASES_PER_FILE} per file",
                spec.cases.len()
            )));
        }
        let defaults = SetupSpec {
            config: spec.config,
            limits: spec.limits,
            inventory: spec.inventory,
            probes: spec.probes,
            http: spec.http,
        };
        let mut names = std::collections::HashSet::new();
        let mut cases = Vec::with_capacity(spec.cases.len());
        for case in spec.cases {
            let invalid = |key: &str, message: String| ScenarioError::Invalid {
                path: path.to_path_buf(),
                case: case.name.clone(),
                key: key.to_owned(),
                message,
            };
            if case.name.trim().is_empty() {
                return Err(parse_error("a case has an empty `name`".to_owned()));
            }
            if !names.insert(case.name.clone()) {
                return Err(invalid("name", "two cases have this name".to_owned()));
            }
            let call = match (case.run, case.health, case.check) {
                (Some(run), None, None) => {
                    let input = match run.input {
                        None => Value::Object(serde_json::Map::new()),
                        Some(value) => serde_json::to_value(value)
                            .map_err(|e| invalid("run.input", e.to_string()))?,
                    };
                    Call::Run {
                        task: run.task,
                        input,
                    }
                }
                (None, Some(true), None) => Call::Health,
                (None, Some(false), None) => {
                    return Err(invalid(
                        "health",
                        "`health = false` makes no call; write `health = true`".to_owned(),
                    ));
                }
                (None, None, Some(check)) => {
                    let mut target = service(&check.name, &check.endpoint);
                    if let Some(service_type) = check.service_type {
                        target.service_type = service_type;
                    }
                    target.capabilities = check.capabilities;
                    if let Some(weight) = check.weight {
                        target.weight = weight;
                    }
                    target.metadata = check.metadata.into_iter().collect();
                    Call::Check(target)
                }
                _ => {
                    return Err(invalid(
                        "run / health / check",
                        "a case makes exactly one call: `run = {...}`, `health = true` or `check = {...}`"
                            .to_owned(),
                    ));
                }
            };
            let setup = SetupSpec {
                config: case.config,
                limits: case.limits,
                inventory: case.inventory,
                probes: case.probes,
                http: case.http,
            }
            .over(&defaults);
            validate_setup(&setup).map_err(|(key, message)| invalid(&key, message))?;
            validate_expect(&call, &case.expect)
                .map_err(|(key, message)| invalid(&key, message))?;
            cases.push(Case {
                name: case.name,
                setup,
                call,
                expect: case.expect,
            });
        }
        Ok(ScenarioFile {
            path: path.to_path_buf(),
            cases,
        })
    }
}

fn validate_setup(setup: &SetupSpec) -> Result<(), (String, String)> {
    for (authority, spec) in setup.http.iter().flatten() {
        let key = format!("http.\"{authority}\"");
        let Some((host, port)) = authority.rsplit_once(':') else {
            return Err((
                key,
                "a fake host is `host:port`, e.g. \"svc.test:80\"".to_owned(),
            ));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err((
                key,
                "a fake host is `host:port`, e.g. \"svc.test:80\"".to_owned(),
            ));
        }
        match (spec.status, spec.fail) {
            (Some(status), None) => {
                if !(100..=599).contains(&status) {
                    return Err((key, format!("status {status} is not 100-599")));
                }
            }
            (None, Some(_)) => {
                if spec.body.is_some() || spec.delay_ms.is_some() {
                    return Err((
                        key,
                        "`body` / `delay_ms` go with `status`, not with `fail`".to_owned(),
                    ));
                }
            }
            _ => {
                return Err((
                    key,
                    "give `status` (an answer) or `fail = \"timeout\" | \"refused\"`, not both"
                        .to_owned(),
                ));
            }
        }
        if spec.delay_ms.is_some_and(|d| d > MAX_HTTP_DELAY_MS) {
            return Err((key, format!("`delay_ms` is at most {MAX_HTTP_DELAY_MS}")));
        }
    }
    Ok(())
}

fn validate_expect(call: &Call, expect: &Expect) -> Result<(), (String, String)> {
    let only = |present: bool, key: &str, calls: &str| {
        if present {
            Err((
                format!("expect.{key}"),
                format!("applies to {calls}, not to `{}`", call.key()),
            ))
        } else {
            Ok(())
        }
    };
    let is_run = matches!(call, Call::Run { .. });
    let is_health = matches!(call, Call::Health);
    only(
        !is_run && (expect.summary.is_some() || expect.output.is_some()),
        if expect.summary.is_some() {
            "summary"
        } else {
            "output"
        },
        "`run`",
    )?;
    only(
        is_run
            && (expect.status.is_some()
                || expect.detail.is_some()
                || expect.detail_contains.is_some()),
        if expect.status.is_some() {
            "status"
        } else {
            "detail"
        },
        "`health` and `check`",
    )?;
    only(
        is_health && expect.error.is_some(),
        "error",
        "`run` and `check`",
    )?;
    let fails = expect.error.is_some() || expect.call_error.is_some();
    if expect.error.is_some() && expect.call_error.is_some() {
        return Err((
            "expect.error".to_owned(),
            "a call fails either with the plugin's `error` or with the host's `call_error`, not both"
                .to_owned(),
        ));
    }
    if expect.error_message.is_some() && expect.error.is_none() {
        return Err((
            "expect.error_message".to_owned(),
            "goes with `error`".to_owned(),
        ));
    }
    let success_keys = [
        ("summary", expect.summary.is_some()),
        ("output", expect.output.is_some()),
        ("status", expect.status.is_some()),
        ("detail", expect.detail.is_some()),
        ("detail_contains", expect.detail_contains.is_some()),
    ];
    if fails && let Some((key, _)) = success_keys.iter().find(|(_, set)| *set) {
        return Err((
            format!("expect.{key}"),
            "describes a successful call, but the case expects an error".to_owned(),
        ));
    }
    Ok(())
}
