//! The registry file itself: health, backups, restore, export and import.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use hyper::Method;
use serde_json::{Value, json};

use super::render::{joined, list_of};
use crate::cli::ApiArgs;
use crate::cli::client::{call, call_for_text, call_ok};
use crate::cli::render::{print_json, print_table, text_at};
use evolve_registry::backup;

/// Prints the report whatever the status (an unhealthy registry answers non-2xx with the same
/// report), then fails when it was not a success.
pub(super) async fn health(api: &ApiArgs) -> anyhow::Result<()> {
    let (status, value) = call(api, Method::GET, "/v1/registry", None).await?;
    if api.json {
        print_json(&value)?;
    } else {
        println!("registry    {}", text_at(&value, "/path"));
        println!("integrity   {}", joined(&value["integrity_check"], "; "));
        println!("schema      v{}", text_at(&value, "/schema_version"));
        println!(
            "contents    {} models, {} versions, {} points",
            text_at(&value, "/models"),
            text_at(&value, "/versions"),
            text_at(&value, "/points")
        );
        println!(
            "size        {} bytes (+ {} bytes WAL)",
            text_at(&value, "/db_bytes"),
            text_at(&value, "/wal_bytes")
        );
        println!(
            "backups     {} in {} (latest {})",
            text_at(&value, "/backups"),
            text_at(&value, "/backup_dir"),
            text_at(&value, "/last_backup/file")
        );
    }
    if !status.is_success() {
        bail!("the registry is not healthy ({status})");
    }
    Ok(())
}

pub(super) async fn backup_now(api: &ApiArgs) -> anyhow::Result<()> {
    let Some(value) = call_for_text(api, Method::POST, "/v1/registry/backups", None).await? else {
        return Ok(());
    };
    println!(
        "backup written: {} ({} bytes)",
        text_at(&value, "/path"),
        text_at(&value, "/bytes")
    );
    Ok(())
}

/// From `dir` when given (no daemon needed), else from the daemon.
pub(super) async fn backups(api: &ApiArgs, dir: Option<&Path>) -> anyhow::Result<()> {
    let value = match dir {
        Some(dir) => json!({ "backups": backup::list(dir)? }),
        None => call_ok(api, Method::GET, "/v1/registry/backups", None).await?,
    };
    if api.json {
        return print_json(&value);
    }
    let mut rows = vec![["FILE", "CREATED", "BYTES"].map(String::from)];
    for b in list_of(&value, "backups") {
        rows.push([
            text_at(&b, "/file"),
            text_at(&b, "/created_at"),
            text_at(&b, "/bytes"),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// With `db`, `file` is a backup's path restored offline into that registry file; without,
/// it is a backup's file name the daemon restores.
pub(super) async fn restore(api: &ApiArgs, file: &str, db: Option<&Path>) -> anyhow::Result<()> {
    if let Some(db) = db {
        return restore_offline(api, file, db);
    }
    let Some(value) = call_for_text(
        api,
        Method::POST,
        "/v1/registry/restore",
        Some(&json!({ "backup": file })),
    )
    .await?
    else {
        return Ok(());
    };
    println!(
        "restored from {file}; the previous content was saved as {}",
        text_at(&value, "/previous_saved_as/file")
    );
    Ok(())
}

/// The previous registry file is kept in the backup dir the daemon would use for `db`.
fn restore_offline(api: &ApiArgs, file: &str, db: &Path) -> anyhow::Result<()> {
    let source = PathBuf::from(file);
    let backup_dir = db
        .parent()
        .map(|p| p.join("backups").join("registry"))
        .unwrap_or_default();
    let moved = backup::restore_offline(db, &source, &backup_dir)
        .with_context(|| format!("cannot restore {} into {}", source.display(), db.display()))?;
    if api.json {
        return print_json(&json!({ "restored": db, "from": source, "previous_moved_to": moved }));
    }
    println!("restored {} from {}", db.display(), source.display());
    if let Some(moved) = moved {
        println!("the previous file was moved to {}", moved.display());
    }
    Ok(())
}

/// The export is JSON either way, so `--json` changes nothing; with `out` the count goes to
/// stderr, keeping stdout for data.
pub(super) async fn export(api: &ApiArgs, out: Option<&Path>) -> anyhow::Result<()> {
    let value = call_ok(api, Method::GET, "/v1/registry/export", None).await?;
    let contents = serde_json::to_string_pretty(&value)?;
    match out {
        Some(path) => {
            evolve_core::fsutil::write_atomic(path, contents.as_bytes(), ".evolve-export-")
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!(
                "exported {} models to {}",
                list_of(&value, "models").len(),
                path.display()
            );
        }
        None => println!("{contents}"),
    }
    Ok(())
}

pub(super) async fn import(api: &ApiArgs, file: &Path) -> anyhow::Result<()> {
    let contents =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let body: Value = serde_json::from_str(&contents)
        .with_context(|| format!("{} is not JSON", file.display()))?;
    let Some(value) = call_for_text(api, Method::POST, "/v1/registry/import", Some(&body)).await?
    else {
        return Ok(());
    };
    println!(
        "imported {} models, {} points",
        text_at(&value, "/imported_models"),
        text_at(&value, "/imported_points")
    );
    Ok(())
}
