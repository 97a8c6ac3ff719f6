//! Models and their versions: list, show, register, add a version, set a version's status.

use std::collections::BTreeMap;

use anyhow::bail;
use hyper::Method;
use serde_json::{Value, json};

use super::render::{aliases_text, joined, list_of};
use super::{AddVersionArgs, RegisterArgs};
use crate::cli::ApiArgs;
use crate::cli::client::{call_for_text, call_ok, query_string};
use crate::cli::render::{print_json, print_table, text_at};

pub(super) async fn list(
    api: &ApiArgs,
    task: Option<String>,
    tag: Option<String>,
    name: Option<String>,
) -> anyhow::Result<()> {
    let path = format!(
        "/v1/models{}",
        query_string(&[("task", task), ("tag", tag), ("name", name)])
    );
    let Some(value) = call_for_text(api, Method::GET, &path, None).await? else {
        return Ok(());
    };
    let mut rows = vec![["NAME", "TASK", "LATEST", "ALIASES", "TAGS", "CLASS"].map(String::from)];
    for m in list_of(&value, "models") {
        rows.push([
            text_at(&m, "/name"),
            text_at(&m, "/task_type"),
            format!("v{}", text_at(&m, "/latest_version")),
            aliases_text(&m),
            joined(&m["tags"], ","),
            text_at(&m, "/model_class"),
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub(super) async fn show(api: &ApiArgs, name: &str) -> anyhow::Result<()> {
    let model = call_ok(api, Method::GET, &format!("/v1/models/{name}"), None).await?;
    let versions = call_ok(
        api,
        Method::GET,
        &format!("/v1/models/{name}/versions"),
        None,
    )
    .await?;
    if api.json {
        return print_json(&json!({ "model": model, "versions": versions["versions"] }));
    }
    println!(
        "{} ({})",
        text_at(&model, "/name"),
        text_at(&model, "/task_type")
    );
    for (label, pointer) in [
        ("description", "/description"),
        ("class", "/model_class"),
        ("artifact", "/artifact_uri"),
        ("sha256", "/sha256"),
        ("created", "/created_at"),
        ("created by", "/created_by"),
    ] {
        println!("  {label:<12} {}", text_at(&model, pointer));
    }
    println!("  {:<12} {}", "aliases", aliases_text(&model));
    println!();
    let mut rows = vec![
        [
            "VERSION",
            "STATUS",
            "CREATED",
            "BY",
            "ARTIFACT",
            "DESCRIPTION",
        ]
        .map(String::from),
    ];
    for v in list_of(&versions, "versions") {
        rows.push([
            format!("v{}", text_at(&v, "/version")),
            text_at(&v, "/status"),
            text_at(&v, "/created_at"),
            text_at(&v, "/created_by"),
            text_at(&v, "/artifact_uri"),
            text_at(&v, "/description"),
        ]);
    }
    print_table(&rows);
    Ok(())
}

pub(super) async fn register(args: &RegisterArgs) -> anyhow::Result<()> {
    let body = json!({
        "name": args.name,
        "task_type": args.task,
        "description": args.description,
        "model_class": args.model_class,
        "artifact_uri": args.artifact_uri,
        "sha256": args.sha256,
        "tags": args.tags,
        "dependencies": args.dependencies,
        "parameters": key_values("--param", &args.parameters)?,
    });
    let Some(value) = call_for_text(&args.api, Method::POST, "/v1/models", Some(&body)).await?
    else {
        return Ok(());
    };
    println!(
        "registered {} ({})",
        text_at(&value, "/name"),
        text_at(&value, "/task_type")
    );
    Ok(())
}

pub(super) async fn add_version(args: &AddVersionArgs) -> anyhow::Result<()> {
    let body = json!({
        "description": args.description,
        "artifact_uri": args.artifact_uri,
        "sha256": args.sha256,
        "parameters": key_values("--param", &args.parameters)?,
        "metadata": key_values("--meta", &args.metadata)?,
        "status": args.status,
    });
    let Some(value) = call_for_text(
        &args.api,
        Method::POST,
        &format!("/v1/models/{}/versions", args.name),
        Some(&body),
    )
    .await?
    else {
        return Ok(());
    };
    println!(
        "created {} v{}",
        text_at(&value, "/model"),
        text_at(&value, "/version")
    );
    Ok(())
}

/// `version` is a number or an alias: the daemon resolves it.
pub(super) async fn set_status(
    api: &ApiArgs,
    name: &str,
    version: &str,
    status: &str,
) -> anyhow::Result<()> {
    let Some(value) = call_for_text(
        api,
        Method::POST,
        &format!("/v1/models/{name}/versions/{version}/status"),
        Some(&json!({ "status": status })),
    )
    .await?
    else {
        return Ok(());
    };
    println!(
        "{name} v{} is {}",
        text_at(&value, "/version"),
        text_at(&value, "/status")
    );
    Ok(())
}

/// `key=value` pairs; a value that parses as JSON is JSON, else a string.
fn key_values(what: &str, pairs: &[String]) -> anyhow::Result<BTreeMap<String, Value>> {
    let mut map = BTreeMap::new();
    for pair in pairs {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("{what} {pair:?} is not key=value");
        };
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        map.insert(key.to_string(), value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_take_json_or_strings() {
        let map = key_values(
            "--param",
            &["lookback=30".into(), "mode=fast".into(), "w=[1,2]".into()],
        )
        .expect("valid");
        assert_eq!(map["lookback"], json!(30));
        assert_eq!(map["mode"], json!("fast"));
        assert_eq!(map["w"], json!([1, 2]));
        assert!(key_values("--param", &["novalue".into()]).is_err());
    }
}
