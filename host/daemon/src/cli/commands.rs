//! Commands other than `serve`.

use std::path::Path;

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::{Value, json};

use super::ApiArgs;
use super::client::call_for_text;
use super::render::{print_json, print_table};
use crate::api::plugins::PluginView;
use crate::config::HostConfig;
use evolve_runtime::{LoadError, PluginKind, Runtime};

pub async fn plugin_list(api: &ApiArgs) -> anyhow::Result<()> {
    let Some(value) = call_for_text(api, Method::GET, "/v1/plugins", None).await? else {
        return Ok(());
    };
    let empty = Vec::new();
    let plugins = value["plugins"].as_array().unwrap_or(&empty);
    let mut rows = vec![
        [
            "NAME",
            "KIND",
            "VERSION",
            "STATE",
            "GEN",
            "CALLS",
            "FAILED",
            "SHA256",
            "LAST ERROR",
        ]
        .map(String::from),
    ];
    for p in plugins {
        let text = |key: &str| p[key].as_str().unwrap_or("-").to_string();
        let number = |ptr: &str| {
            p.pointer(ptr)
                .and_then(Value::as_u64)
                .map_or("-".into(), |n| n.to_string())
        };
        rows.push([
            text("name"),
            text("kind"),
            text("version"),
            text("state"),
            number("/generation"),
            number("/calls/total"),
            number("/calls/failed"),
            p["sha256"]
                .as_str()
                .map_or("-".into(), |s| s.chars().take(12).collect()),
            p.pointer("/last_error/message")
                .and_then(Value::as_str)
                .map_or("-".into(), |m| m.chars().take(80).collect()),
        ]);
    }
    print_table(&rows);
    let cache = &value["aot_cache"];
    println!(
        "\naot cache: {} hits, {} compiled",
        cache["hits"].as_u64().unwrap_or(0),
        cache["misses"].as_u64().unwrap_or(0)
    );
    Ok(())
}

pub async fn plugin_check(path: &Path, config: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = HostConfig::load(config)?;
    config.validate()?;
    let runtime = Runtime::new(
        config.runtime_config(),
        evolve_core::events::EventBus::new(),
    )?;
    let plugin = if path.is_dir() {
        runtime.open_checked(path).await?
    } else if path.is_file() {
        check_bare_component(&runtime, path).await?
    } else {
        bail!(
            "{}: no such plugin directory or component file",
            path.display()
        );
    };
    let view = PluginView::of(&plugin, "checked", None);
    if json {
        return print_json(&view);
    }
    println!(
        "ok: {} {} ({}, built against evolve:plugin@{})",
        view.name, view.version, view.kind, view.wit_version
    );
    println!(
        "  sha256       {}{}",
        view.sha256,
        if view.sha256_pinned {
            " (pinned)"
        } else {
            " (not pinned)"
        }
    );
    let perms = &view.permissions;
    let dirs: Vec<String> = perms
        .dirs
        .iter()
        .map(|d| {
            format!(
                "{} -> {} ({})",
                d.guest,
                d.host.display(),
                if d.write { "read-write" } else { "read-only" }
            )
        })
        .collect();
    println!("  http hosts   {}", list_or_none(&perms.http_hosts));
    println!("  env          {}", list_or_none(&perms.env));
    println!("  dirs         {}", list_or_none(&dirs));
    let l = &view.limits;
    println!(
        "  limits       memory {} MiB, deadline {} ms, concurrency {} (+{} queued), output {} KiB, logs {} KiB",
        l.memory_bytes >> 20,
        l.deadline_ms,
        l.max_concurrency,
        l.max_queue,
        l.max_output_bytes >> 10,
        l.max_log_bytes >> 10
    );
    if let Some(info) = &view.info {
        println!("  describe()   {}", serde_json::to_string(info)?);
    }
    if let Some(claimed) = &view.claimed_name {
        println!(
            "  warning      describe() names it `{claimed}`; it is served as `{}`, its manifest name",
            view.name
        );
    }
    Ok(())
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// Checks a bare `.wasm` by giving it a minimal manifest in a scratch dir, trying the meta-agent
/// world and then the health-checker world.
async fn check_bare_component(
    runtime: &Runtime,
    wasm: &Path,
) -> anyhow::Result<evolve_runtime::Plugin> {
    let stem = wasm
        .file_stem()
        .map(|s| s.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .trim_matches('-')
        .to_string();
    let name = if name.is_empty() {
        "component".to_string()
    } else {
        name
    };
    // A fresh private directory: a predictable name could be pre-created by another user.
    let scratch_dir = tempfile::tempdir().context("cannot create a scratch directory")?;
    let scratch = scratch_dir.path();
    std::fs::copy(wasm, scratch.join("plugin.wasm"))
        .with_context(|| format!("cannot read {}", wasm.display()))?;
    let mut last_error = None;
    for kind in [PluginKind::MetaAgent, PluginKind::HealthChecker] {
        std::fs::write(
            scratch.join("plugin.toml"),
            format!(
                "name = \"{name}\"\nversion = \"0.0.0\"\nkind = \"{kind}\"\nwasm = \"plugin.wasm\"\n"
            ),
        )?;
        match runtime.open_checked(scratch).await {
            Ok(plugin) => return Ok(plugin),
            Err(LoadError::WorldMismatch { .. }) if kind == PluginKind::MetaAgent => continue,
            Err(e) => {
                last_error = Some(e);
                break;
            }
        }
    }
    match last_error {
        Some(e) => Err(e.into()),
        None => bail!("{}: not a plugin component", wasm.display()),
    }
}

pub async fn checker_check(
    api: &ApiArgs,
    name: &str,
    service: &str,
    endpoint: &str,
    path: Option<&str>,
) -> anyhow::Result<()> {
    let mut body = json!({ "name": service, "endpoint": endpoint });
    if let Some(path) = path {
        body["metadata"] = json!({ "health_path": path });
    }
    let Some(value) = call_for_text(
        api,
        Method::POST,
        &format!("/v1/checkers/{name}/check"),
        Some(&body),
    )
    .await?
    else {
        return Ok(());
    };
    let report = &value["report"];
    println!(
        "{}: {} ({})",
        service,
        report["status"].as_str().unwrap_or("?"),
        report["detail"].as_str().unwrap_or("")
    );
    Ok(())
}
