//! Runs the built component in-process against a mocked host (evolve-plugin-testkit), with the
//! limits the daemon applies. `build_plugin` builds it first (`evolve plugin build` does the same).
#![allow(clippy::unwrap_used)]

use evolve_plugin_testkit::types::{ErrorCode, HealthStatus};
use evolve_plugin_testkit::{Kit, build_plugin};
use serde_json::json;

fn kit() -> evolve_plugin_testkit::KitBuilder {
    let dir = build_plugin(env!("CARGO_MANIFEST_DIR")).unwrap();
    Kit::builder(dir)
}

#[test]
fn greets_with_the_configured_greeting() {
    let kit = kit().config("greeting", "hi").load().unwrap();
    kit.clear_logs();
    let outcome = kit.run("hello", json!({"who": "evolve"})).unwrap().unwrap();
    assert_eq!(outcome.summary, "hi, evolve");
    let output: serde_json::Value = serde_json::from_str(&outcome.output).unwrap();
    assert_eq!(output, json!({"greeting": "hi, evolve"}));
    assert_eq!(kit.logs()[0].message, "greeted: hi, evolve");
}

#[test]
fn refuses_unknown_tasks_and_bad_input() {
    let kit = kit().load().unwrap();
    let err = kit.run("nope", json!({})).unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
    let err = kit.run("hello", json!({"whom": 1})).unwrap().unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidInput);
}

#[test]
fn reports_healthy() {
    let kit = kit().load().unwrap();
    assert_eq!(kit.health().unwrap().status, HealthStatus::Healthy);
}
