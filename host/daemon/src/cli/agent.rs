//! `evolve agent …` and `evolve system …`: the agent manager through the daemon's API.

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::{Value, json};

use super::client::{call, call_for_text, error_text};
use super::render::{print_json, print_table, text};
use super::{AgentCommand, ApiArgs, RunArgs, SystemArgs, SystemCommand};

pub async fn agent(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::List(api) => list(&api).await,
        AgentCommand::Health(api) => health(&api).await,
        AgentCommand::Run {
            name,
            task,
            run,
            api,
        } => run_and_print(&api, &format!("/v1/agents/{name}/run"), &task, &run).await,
        AgentCommand::Runs { name, limit, api } => runs(&api, &name, limit).await,
        AgentCommand::Cancel { name, run_id, api } => cancel(&api, &name, run_id).await,
    }
}

pub async fn system(command: SystemCommand) -> anyhow::Result<()> {
    let (job, SystemArgs { run, api }) = match command {
        SystemCommand::IntegrationTests(args) => ("integration-tests", args),
        SystemCommand::LogAnalysis(args) => ("log-analysis", args),
        SystemCommand::Documentation(args) => ("documentation", args),
        SystemCommand::SecurityAudit(args) => ("security-audit", args),
    };
    run_and_print(&api, &format!("/v1/system/{job}"), "", &run).await
}

async fn run_and_print(api: &ApiArgs, path: &str, task: &str, run: &RunArgs) -> anyhow::Result<()> {
    let input: Value = serde_json::from_str(&run.input)
        .with_context(|| format!("--input is not JSON: {}", run.input))?;
    let mut body = json!({ "task": task, "input": input, "wait": !run.no_wait });
    if let Some(ms) = run.deadline_ms {
        body["deadline_ms"] = json!(ms);
    }
    let (status, value) = call(api, Method::POST, path, Some(&body)).await?;
    if api.json {
        print_json(&value)?;
    }
    if !status.is_success() {
        let run_id = value
            .pointer("/error/run_id")
            .map(|id| format!(" (run {id})"))
            .unwrap_or_default();
        bail!("{}{run_id}", error_text(status, &value));
    }
    if api.json {
        return Ok(());
    }
    if run.no_wait {
        println!("started run {}", value["run_id"]);
        return Ok(());
    }
    println!(
        "run {} ({} attempt(s), {} ms): {}",
        value["run_id"],
        value["attempts"],
        value["duration_ms"],
        value
            .pointer("/outcome/summary")
            .and_then(Value::as_str)
            .unwrap_or("")
    );
    if let Some(artifacts) = value
        .pointer("/outcome/artifacts")
        .and_then(Value::as_array)
    {
        for artifact in artifacts.iter().filter_map(Value::as_str) {
            println!("artifact: {artifact}");
        }
    }
    let output = &value["outcome"]["output"];
    // Agents that produce a human report put it in `markdown` or `report`.
    match output
        .get("markdown")
        .or_else(|| output.get("report"))
        .and_then(Value::as_str)
    {
        Some(text) => println!("\n{text}"),
        None => println!("{}", serde_json::to_string_pretty(output)?),
    }
    Ok(())
}

async fn list(api: &ApiArgs) -> anyhow::Result<()> {
    let Some(value) = call_for_text(api, Method::GET, "/v1/agents", None).await? else {
        return Ok(());
    };
    let mut rows = vec![[
        "NAME".to_string(),
        "VERSION".into(),
        "SCHEDULE".into(),
        "NEXT".into(),
        "HEALTH".into(),
        "RUNS".into(),
        "SUCCESS".into(),
        "P50 MS".into(),
        "P99 MS".into(),
        "RUNNING".into(),
    ]];
    for agent in value["agents"].as_array().into_iter().flatten() {
        let stats = &agent["stats"];
        rows.push([
            text(&agent["name"]),
            text(&agent["version"]),
            agent["schedule"]["spec"]
                .as_str()
                .unwrap_or("on demand")
                .to_string(),
            text(&agent["schedule"]["next_at"]),
            text(&agent["health"]["status"]),
            text(&stats["runs"]),
            percent(&stats["success_rate"]),
            text(&stats["p50_ms"]),
            text(&stats["p99_ms"]),
            agent["running"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

async fn health(api: &ApiArgs) -> anyhow::Result<()> {
    let Some(value) = call_for_text(api, Method::GET, "/v1/agents/health", None).await? else {
        return Ok(());
    };
    let mut rows = vec![[
        "AGENT".to_string(),
        "STATUS".into(),
        "CHECKED".into(),
        "DETAIL".into(),
        "SAMPLES".into(),
    ]];
    for agent in value["agents"].as_array().into_iter().flatten() {
        rows.push([
            text(&agent["name"]),
            text(&agent["status"]),
            text(&agent["latest"]["at"]),
            text(&agent["latest"]["detail"]),
            agent["history"].as_array().map_or(0, Vec::len).to_string(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

async fn runs(api: &ApiArgs, name: &str, limit: u32) -> anyhow::Result<()> {
    let Some(value) = call_for_text(
        api,
        Method::GET,
        &format!("/v1/agents/{name}/runs?limit={limit}"),
        None,
    )
    .await?
    else {
        return Ok(());
    };
    let stats = &value["stats"];
    println!(
        "{name}: {} runs, success {}, p50 {} ms, p99 {} ms\n",
        text(&stats["runs"]),
        percent(&stats["success_rate"]),
        text(&stats["p50_ms"]),
        text(&stats["p99_ms"])
    );
    let mut rows = vec![[
        "ID".to_string(),
        "STARTED".into(),
        "TRIGGER".into(),
        "TASK".into(),
        "OUTCOME".into(),
        "MS".into(),
        "TRIES".into(),
        "GEN".into(),
        "ERROR".into(),
    ]];
    for run in value["runs"].as_array().into_iter().flatten() {
        rows.push([
            text(&run["id"]),
            text(&run["started_at"]),
            text(&run["trigger"]),
            text(&run["task"]),
            text(&run["outcome"]),
            text(&run["duration_ms"]),
            text(&run["attempts"]),
            text(&run["generation"]),
            text(&run["error"]),
        ]);
    }
    print_table(&rows);
    Ok(())
}

async fn cancel(api: &ApiArgs, name: &str, run_id: i64) -> anyhow::Result<()> {
    let answer = call_for_text(
        api,
        Method::POST,
        &format!("/v1/agents/{name}/runs/{run_id}/cancel"),
        Some(&json!({})),
    )
    .await?;
    if answer.is_some() {
        println!("cancelling run {run_id} of {name}");
    }
    Ok(())
}

/// A rate in 0..=1 as a whole percentage, or `-`.
fn percent(rate: &Value) -> String {
    rate.as_f64()
        .map_or("-".into(), |r| format!("{:.0}%", r * 100.0))
}
