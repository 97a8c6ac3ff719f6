//! `evolve dev PATH`: the plugin author's loop, for Rust, Python and JavaScript projects. On every
//! source change: build (Rust: cargo for wasm32-wasip2, reading the compiler's first error;
//! Python / JavaScript: evolve-plugin-build's componentize path, the one `evolve plugin build`
//! uses) → install component and manifest into the daemon's plugins dir (atomically) → ask the
//! daemon to reload it → print one line:
//!
//! - `reloaded to generation N in X ms (build B ms, reload R ms)`
//! - `build failed in X ms: <the compiler's first error>`
//! - `validation failed: <reason>; generation N still serving`
//!
//! A failed build installs nothing, so the last good generation keeps serving.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use evolve_plugin_build::{Language, Tools, build_project};
use hyper::{Method, StatusCode};
use notify::{RecursiveMode, Watcher};
use serde_json::Value;

use super::client::{call, call_ok};
use super::{ApiArgs, DevArgs};
use crate::reload::watcher::is_ignored_name;
use evolve_runtime::Manifest;
use evolve_runtime::manifest::MANIFEST_FILE;
use evolve_runtime::plugin::hex_sha256;

/// Quiet time after the last source change before a build starts: editors write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// How long a plugin the daemon did not know yet may take to show up after install.
const FIRST_LOAD_WAIT: Duration = Duration::from_secs(30);

/// Directories whose changes are build output or caches, not sources.
const BUILD_OUTPUT_DIRS: [&str; 3] = ["target", "__pycache__", "node_modules"];

/// Longest compiler message shown on a build-failure line.
const MAX_ERROR_CHARS: usize = 400;

struct DevContext {
    crate_dir: PathBuf,
    lang: Language,
    install_dir: PathBuf,
    name: String,
    wasm_file: PathBuf,
    api: ApiArgs,
}

pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let crate_dir = args
        .path
        .canonicalize()
        .with_context(|| format!("{}: no such plugin crate", args.path.display()))?;
    let Some(lang) = Language::detect(&crate_dir) else {
        bail!(
            "{}: expected a plugin project with exactly one of Cargo.toml (Rust), app.py (Python), app.js (JavaScript); create one with `evolve plugin new`",
            crate_dir.display()
        );
    };
    let manifest = Manifest::load(&crate_dir)?;
    let plugins_dir =
        match args.plugins_dir {
            Some(dir) => dir,
            None => {
                let runtime = call_ok(&args.api, Method::GET, "/v1/runtime", None).await?;
                PathBuf::from(runtime["plugins_dir"].as_str().context(
                    "the daemon did not say where its plugins dir is; pass --plugins-dir",
                )?)
            }
        };
    let ctx = DevContext {
        install_dir: plugins_dir.join(&manifest.name),
        name: manifest.name.clone(),
        wasm_file: manifest.wasm.clone(),
        crate_dir,
        lang,
        api: args.api,
    };
    println!(
        "dev: {} from {} into {}",
        ctx.name,
        ctx.crate_dir.display(),
        ctx.install_dir.display()
    );
    let first = attempt(&ctx).await;
    if args.once {
        return first.then_some(()).context("the attempt failed");
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
        let Ok(event) = result else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|path| {
            !path
                .components()
                .any(|c| BUILD_OUTPUT_DIRS.iter().any(|dir| c.as_os_str() == *dir))
                && path
                    .file_name()
                    .is_some_and(|name| !is_ignored_name(&name.to_string_lossy()))
        });
        if relevant {
            let _ = tx.send(());
        }
    })
    .context("cannot watch the plugin crate")?;
    watcher
        .watch(&ctx.crate_dir, RecursiveMode::Recursive)
        .with_context(|| format!("cannot watch {}", ctx.crate_dir.display()))?;
    println!("dev: watching for changes; Ctrl-C to stop");
    loop {
        tokio::select! {
            changed = rx.recv() => {
                if changed.is_none() {
                    return Ok(());
                }
                // Let the burst of writes finish.
                loop {
                    match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return Ok(()),
                        Err(_quiet) => break,
                    }
                }
                attempt(&ctx).await;
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

/// One build → install → reload; prints its line; returns whether the plugin now serves the
/// new build.
async fn attempt(ctx: &DevContext) -> bool {
    let started = Instant::now();
    let built = match ctx.lang {
        Language::Rust => build(&ctx.crate_dir).await,
        Language::Python | Language::JavaScript => build_with_tools(ctx).await,
    };
    let artifact = match built {
        Ok(artifact) => artifact,
        Err(error) => {
            println!(
                "build failed in {} ms: {error}",
                started.elapsed().as_millis()
            );
            return false;
        }
    };
    let built_ms = started.elapsed().as_millis();
    let reload_started = Instant::now();
    if let Err(error) = install(ctx, &artifact) {
        println!("install failed: {error:#}");
        return false;
    }
    let result = reload(ctx).await;
    let reload_ms = reload_started.elapsed().as_millis();
    let total_ms = started.elapsed().as_millis();
    match result {
        Ok(Reloaded::To(generation)) => {
            println!(
                "reloaded to generation {generation} in {total_ms} ms (build {built_ms} ms, reload {reload_ms} ms)"
            );
            true
        }
        Ok(Reloaded::Unchanged(generation)) => {
            println!("unchanged: generation {generation} still serving ({total_ms} ms)");
            true
        }
        Ok(Reloaded::Failed { reason, serving }) => {
            match serving {
                Some(generation) => {
                    println!("validation failed: {reason}; generation {generation} still serving")
                }
                None => println!("validation failed: {reason}; nothing serving"),
            }
            false
        }
        Err(error) => {
            println!("reload failed: {error:#}");
            false
        }
    }
}

/// Builds a Python / JavaScript project through evolve-plugin-build (the componentizer's own
/// output goes to the terminal; unchanged sources are not componentized again); the path of the
/// component, or the build error.
async fn build_with_tools(ctx: &DevContext) -> Result<PathBuf, String> {
    let project = ctx.crate_dir.clone();
    let built = tokio::task::spawn_blocking(move || {
        build_project(&project, None, Tools::from_env(), false)
    })
    .await
    .map_err(|e| format!("the build task failed: {e}"))?
    .map_err(|e| e.to_string())?;
    Ok(built.dir.join(&ctx.wasm_file))
}

/// Builds the crate; the path of the component, or the compiler's first error.
async fn build(crate_dir: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The same profile as `evolve plugin build`: `component` when the crate defines it.
    let profile =
        evolve_plugin_build::compile::rust_profile(crate_dir).map_err(|e| e.to_string())?;
    let output = tokio::process::Command::new(cargo)
        .args([
            "build",
            "--profile",
            profile,
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(crate_dir)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(first_error(&String::from_utf8_lossy(&output.stderr)));
    }
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|name| name.as_str().map(PathBuf::from))
        .rfind(|path| path.extension().is_some_and(|e| e == "wasm"))
        .ok_or_else(|| "the build produced no .wasm; is the crate a `cdylib`?".to_string())
}

/// The first `error` line of rendered compiler output with its location line, on one line.
fn first_error(stderr: &str) -> String {
    let mut lines = stderr.lines().skip_while(|l| !l.starts_with("error"));
    let Some(head) = lines.next() else {
        return stderr
            .lines()
            .last()
            .unwrap_or("cargo failed")
            .trim()
            .to_string();
    };
    let location = lines
        .take(3)
        .find(|l| l.trim_start().starts_with("-->"))
        .map(|l| format!(" {}", l.trim()))
        .unwrap_or_default();
    let mut line = format!("{head}{location}");
    if line.len() > MAX_ERROR_CHARS {
        let mut cut = MAX_ERROR_CHARS;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        line.truncate(cut);
    }
    line
}

/// Copies the component, then the manifest pinned to it, each with a rename so the daemon
/// never sees a half-written file.
fn install(ctx: &DevContext, artifact: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(&ctx.install_dir)
        .with_context(|| format!("cannot create {}", ctx.install_dir.display()))?;
    let bytes =
        std::fs::read(artifact).with_context(|| format!("cannot read {}", artifact.display()))?;
    let mut manifest: toml::Table = toml::from_str(
        &std::fs::read_to_string(ctx.crate_dir.join(MANIFEST_FILE))
            .context("cannot read plugin.toml")?,
    )
    .context("plugin.toml is not valid TOML")?;
    manifest.insert("sha256".into(), toml::Value::String(hex_sha256(&bytes)));
    let wasm_path = ctx.install_dir.join(&ctx.wasm_file);
    if let Some(parent) = wasm_path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    write_atomic(&wasm_path, &bytes)?;
    write_atomic(
        &ctx.install_dir.join(MANIFEST_FILE),
        toml::to_string(&manifest)?.as_bytes(),
    )
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    evolve_core::fsutil::write_atomic(path, bytes, ".evolve-dev-")
        .with_context(|| format!("cannot replace {}", path.display()))
}

enum Reloaded {
    To(u64),
    Unchanged(u64),
    Failed {
        reason: String,
        serving: Option<u64>,
    },
}

async fn reload(ctx: &DevContext) -> anyhow::Result<Reloaded> {
    let path = format!("/v1/plugins/{}/reload", ctx.name);
    let (status, body) = call(&ctx.api, Method::POST, &path, None).await?;
    match status {
        StatusCode::OK => {
            let generation = body["generation"].as_u64().unwrap_or(0);
            Ok(match body["outcome"].as_str() {
                Some("unchanged") => Reloaded::Unchanged(generation),
                _ => Reloaded::To(generation),
            })
        }
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::CONFLICT => Ok(Reloaded::Failed {
            reason: body["error"]["reload"]["reason"]
                .as_str()
                .or_else(|| body["error"]["message"].as_str())
                .unwrap_or("unknown")
                .to_string(),
            serving: body["error"]["reload"]["serving_generation"].as_u64(),
        }),
        // Not known to the daemon yet: its watcher loads new plugin dirs; wait for the verdict.
        StatusCode::NOT_FOUND => wait_first_load(ctx).await,
        other => bail!(
            "the daemon answered {other}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        ),
    }
}

async fn wait_first_load(ctx: &DevContext) -> anyhow::Result<Reloaded> {
    let deadline = Instant::now() + FIRST_LOAD_WAIT;
    let path = format!("/v1/plugins/{}", ctx.name);
    loop {
        let (status, body) = call(&ctx.api, Method::GET, &path, None).await?;
        if status == StatusCode::OK {
            match body["state"].as_str() {
                Some("failed") => {
                    return Ok(Reloaded::Failed {
                        reason: body["last_error"]["message"]
                            .as_str()
                            .unwrap_or("unknown")
                            .to_string(),
                        serving: None,
                    });
                }
                Some(_) => return Ok(Reloaded::To(body["generation"].as_u64().unwrap_or(1))),
                None => {}
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the daemon has not loaded {} after {} s; is it watching {}?",
                ctx.name,
                FIRST_LOAD_WAIT.as_secs(),
                ctx.install_dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::first_error;

    #[test]
    fn first_error_takes_the_headline_and_its_location() {
        let stderr = "   Compiling x v0.1.0\nwarning: unused\nerror[E0308]: mismatched types\n  --> src/lib.rs:10:5\n   |\nerror: aborting\n";
        assert_eq!(
            first_error(stderr),
            "error[E0308]: mismatched types --> src/lib.rs:10:5"
        );
    }
}
