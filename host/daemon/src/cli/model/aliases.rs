//! Aliases: point one at a version (promote), roll it back, read its history.

use hyper::Method;
use serde_json::{Value, json};

use super::render::list_of;
use crate::cli::ApiArgs;
use crate::cli::client::call_for_text;
use crate::cli::render::{print_table, text_at};

/// Moves `alias` to `version`, or without one shows where it points.
pub(super) async fn alias(
    api: &ApiArgs,
    name: &str,
    alias: &str,
    version: Option<u32>,
    reason: &str,
) -> anyhow::Result<()> {
    let path = format!("/v1/models/{name}/aliases/{alias}");
    let (method, body) = match version {
        Some(version) => (
            Method::PUT,
            Some(json!({ "version": version, "reason": reason })),
        ),
        None => (Method::GET, None),
    };
    let Some(value) = call_for_text(api, method, &path, body.as_ref()).await? else {
        return Ok(());
    };
    match version {
        None => println!("{name}@{alias} → v{}", text_at(&value, "/version")),
        Some(_) if value["moved"].is_null() => {
            println!(
                "{name}@{alias} already points at v{}",
                text_at(&value, "/alias/version")
            )
        }
        Some(_) => println!(
            "{name}@{alias}: {} → v{}",
            value
                .pointer("/moved/from")
                .and_then(Value::as_u64)
                .map_or("(new)".into(), |v| format!("v{v}")),
            text_at(&value, "/alias/version")
        ),
    }
    Ok(())
}

pub(super) async fn rollback(
    api: &ApiArgs,
    name: &str,
    alias: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let Some(value) = call_for_text(
        api,
        Method::POST,
        &format!("/v1/models/{name}/aliases/{alias}/rollback"),
        Some(&json!({ "reason": reason })),
    )
    .await?
    else {
        return Ok(());
    };
    println!(
        "{name}@{alias} rolled back: v{} → v{}",
        text_at(&value, "/from"),
        text_at(&value, "/to")
    );
    Ok(())
}

pub(super) async fn history(api: &ApiArgs, name: &str, alias: &str) -> anyhow::Result<()> {
    let Some(value) = call_for_text(
        api,
        Method::GET,
        &format!("/v1/models/{name}/aliases/{alias}/history"),
        None,
    )
    .await?
    else {
        return Ok(());
    };
    let version = |v: &Value, p: &str| match v.pointer(p).and_then(Value::as_u64) {
        Some(n) => format!("v{n}"),
        None => "-".into(),
    };
    let mut rows = vec![["WHEN", "ACTION", "FROM", "TO", "WHO", "REASON"].map(String::from)];
    for m in list_of(&value, "history") {
        rows.push([
            text_at(&m, "/at"),
            text_at(&m, "/action"),
            version(&m, "/from"),
            version(&m, "/to"),
            text_at(&m, "/actor"),
            text_at(&m, "/reason"),
        ]);
    }
    print_table(&rows);
    Ok(())
}
