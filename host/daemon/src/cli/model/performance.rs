//! Metrics and scoring: record points, read a model's performance, pick the best model of a
//! task type, list the scoring policies.

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::{Value, json};

use super::PerformanceArgs;
use super::render::{joined, list_of, number};
use crate::cli::ApiArgs;
use crate::cli::client::{call_for_text, query_string};
use crate::cli::render::{print_table, text_at};

/// `metrics` are `metric=value` pairs; `at` is RFC 3339, the daemon's now when absent.
pub(super) async fn record(
    api: &ApiArgs,
    name: &str,
    version: u32,
    metrics: &[String],
    at: Option<String>,
) -> anyhow::Result<()> {
    let mut values = serde_json::Map::new();
    for pair in metrics {
        let Some((metric, value)) = pair.split_once('=') else {
            bail!("{pair:?} is not metric=value");
        };
        let value: f64 = value
            .trim()
            .parse()
            .with_context(|| format!("{pair:?}: the value is not a number"))?;
        // Non-finite values go as strings so the daemon names the problem.
        let value = serde_json::Number::from_f64(value)
            .map_or_else(|| Value::String(value.to_string()), Value::Number);
        values.insert(metric.to_string(), value);
    }
    let mut body = json!({ "version": version, "metrics": values });
    if let Some(at) = at {
        body["timestamp"] = Value::String(at);
    }
    let Some(value) = call_for_text(
        api,
        Method::POST,
        &format!("/v1/models/{name}/performance"),
        Some(&body),
    )
    .await?
    else {
        return Ok(());
    };
    println!(
        "recorded {} points for {name} v{version}",
        text_at(&value, "/recorded")
    );
    Ok(())
}

/// Aggregates per version and metric, then the windows with `--bucket-s`.
pub(super) async fn performance(args: PerformanceArgs) -> anyhow::Result<()> {
    let path = format!(
        "/v1/models/{}/performance{}",
        args.name,
        query_string(&[
            ("version", args.version.map(|v| v.to_string())),
            ("metric", args.metric),
            ("days", args.days.map(|d| d.to_string())),
            ("since", args.since),
            ("until", args.until),
            ("limit", args.limit.map(|l| l.to_string())),
            ("bucket_s", args.bucket_s.map(|b| b.to_string())),
        ])
    );
    let Some(value) = call_for_text(&args.api, Method::GET, &path, None).await? else {
        return Ok(());
    };
    let mut rows = vec![
        [
            "VERSION", "METRIC", "COUNT", "MEAN", "MIN", "MAX", "FIRST", "LAST",
        ]
        .map(String::from),
    ];
    for a in list_of(&value, "aggregates") {
        rows.push([
            format!("v{}", text_at(&a, "/version")),
            text_at(&a, "/metric"),
            text_at(&a, "/count"),
            number(&a, "/mean", 4),
            number(&a, "/min", 4),
            number(&a, "/max", 4),
            text_at(&a, "/first_at"),
            text_at(&a, "/last_at"),
        ]);
    }
    print_table(&rows);
    let buckets = list_of(&value, "buckets");
    if !buckets.is_empty() {
        println!();
        let mut rows = vec![
            [
                "VERSION",
                "METRIC",
                "WINDOW START",
                "COUNT",
                "MEAN",
                "MIN",
                "MAX",
            ]
            .map(String::from),
        ];
        for b in buckets {
            rows.push([
                format!("v{}", text_at(&b, "/version")),
                text_at(&b, "/metric"),
                text_at(&b, "/start"),
                text_at(&b, "/count"),
                number(&b, "/mean", 4),
                number(&b, "/min", 4),
                number(&b, "/max", 4),
            ]);
        }
        print_table(&rows);
    }
    println!(
        "\n{} points in range{}",
        list_of(&value, "points").len(),
        if value["truncated"] == true {
            " (more exist: raise --limit)"
        } else {
            ""
        }
    );
    Ok(())
}

/// The winner, then every candidate with one column per metric of the policy (known only from
/// the answer), then the excluded ones and why.
pub(super) async fn best(
    api: &ApiArgs,
    task: String,
    policy: Option<String>,
) -> anyhow::Result<()> {
    let path = format!(
        "/v1/models/best{}",
        query_string(&[("task", Some(task)), ("policy", policy)])
    );
    let Some(value) = call_for_text(api, Method::GET, &path, None).await? else {
        return Ok(());
    };
    println!(
        "best {} model under policy '{}': {} v{} (score {})",
        text_at(&value, "/task_type"),
        text_at(&value, "/policy"),
        text_at(&value, "/winner/model"),
        text_at(&value, "/winner/version"),
        number(&value, "/winner/score", 4)
    );
    println!("{}\n", text_at(&value, "/explanation"));
    let candidates = list_of(&value, "candidates");
    let metric_names: Vec<String> = candidates
        .first()
        .and_then(|c| c["metrics"].as_array())
        .map(|m| m.iter().map(|s| text_at(s, "/metric")).collect())
        .unwrap_or_default();
    let mut header = vec![
        "RANK".to_string(),
        "MODEL".into(),
        "VERSION".into(),
        "SCORE".into(),
        "SAMPLES".into(),
    ];
    header.extend(metric_names.iter().map(|m| m.to_uppercase()));
    let mut rows = vec![header];
    for c in &candidates {
        let mut row = vec![
            text_at(c, "/rank"),
            text_at(c, "/model"),
            format!("v{}", text_at(c, "/version")),
            number(c, "/score", 4),
            text_at(c, "/samples"),
        ];
        for m in list_of(c, "metrics") {
            row.push(format!(
                "{} ({:+.3})",
                number(&m, "/weighted_mean", 4),
                m["contribution"].as_f64().unwrap_or(0.0)
            ));
        }
        rows.push(row);
    }
    print_table(&rows);
    for e in list_of(&value, "excluded") {
        println!(
            "excluded {} v{}: {}",
            text_at(&e, "/model"),
            text_at(&e, "/version"),
            text_at(&e, "/reason")
        );
    }
    Ok(())
}

pub(super) async fn policies(api: &ApiArgs) -> anyhow::Result<()> {
    let Some(value) = call_for_text(api, Method::GET, "/v1/registry/policies", None).await? else {
        return Ok(());
    };
    let default = text_at(&value, "/default");
    let mut rows = vec![
        [
            "POLICY",
            "METRICS",
            "WINDOW",
            "HALF-LIFE",
            "MIN SAMPLES",
            "TIE-BREAK",
        ]
        .map(String::from),
    ];
    if let Some(policies) = value["policies"].as_object() {
        for (name, p) in policies {
            let metrics: Vec<String> = list_of(p, "metrics")
                .iter()
                .map(|m| {
                    format!(
                        "{}×{}{}",
                        text_at(m, "/name"),
                        text_at(m, "/weight"),
                        match m["direction"].as_str() {
                            Some("down") => "↓",
                            Some("up") => "↑",
                            _ => "",
                        }
                    )
                })
                .collect();
            rows.push([
                if *name == default {
                    format!("{name} (default)")
                } else {
                    name.clone()
                },
                metrics.join(" "),
                format!("{} d", text_at(p, "/window_days")),
                format!("{} d", text_at(p, "/half_life_days")),
                text_at(p, "/min_samples"),
                joined(&p["tie_break"], ","),
            ]);
        }
    }
    print_table(&rows);
    Ok(())
}
