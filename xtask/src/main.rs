//! Project automation: `cargo xtask <command>` (the alias lives in `.cargo/config.toml`).
//!
//! Commands (the README's two set-up commands are `serve` and `test`):
//!
//! - `serve [-- ARGS]`: builds everything (wasm target, plugins, host and demo in release) and
//!   runs the demo: `evolve-demo up --config examples/demo/evolve.toml --plugins
//!   target/plugins/bundled ARGS`, which installs the bundled plugins into `data/plugins/`,
//!   starts the demo backends and the daemon (state under `./data`, no Redis), and seeds the
//!   registry (see `demo/src/up.rs`, the one place the demo is orchestrated).
//! - `test [-- ARGS]`: installs `redis-server` (Debian's package) when it is missing, builds
//!   everything, then runs every test of the workspace in release
//!   (a debug wasmtime compiles components ~30x slower; release also shares the build with
//!   `serve`). ARGS go to `cargo test`.
//! - `build-plugins`: builds the guest workspace in `plugins/` for `wasm32-wasip2` and installs
//!   every plugin into `target/plugins/bundled/<name>/` (plugins shipped with the daemon) or
//!   `target/plugins/testing/<name>/` (hostile and helper guests for the test suite), each as
//!   its `plugin.toml` pinned to the built component's sha256 plus the component itself.
//!   Python (`app.py`) and JavaScript (`app.js`) plugins are componentized with the pinned
//!   componentize-py / componentize-js, which this installs into `target/plugin-tools/` first
//!   when they are missing (a venv and an npm prefix: nothing global). The build logic is
//!   `evolve-plugin-build`'s, shared with `evolve plugin build`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use evolve_plugin_build::compile::{WASM_TARGET, command_line};
use evolve_plugin_build::{BuildOptions, Language, PluginManifest, Tools};

const USAGE: &str = "usage: cargo xtask <command> [-- ARGS]

commands:
  serve           build everything, run the demo: backends + daemon with the bundled plugins
  test            build everything and run every test (release)
  build-plugins   build plugins/ for wasm32-wasip2 and install them into target/plugins/";

fn main() {
    if let Err(err) = dispatch() {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> Result<()> {
    let root = project_root()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Everything after `--` (or after the command) is passed through.
    let rest: Vec<String> = args
        .iter()
        .skip(1)
        .skip_while(|a| *a == "--")
        .cloned()
        .collect();
    match args.first().map(String::as_str) {
        Some("build-plugins") => build_plugins(&root),
        Some("serve") => serve(&root, &rest),
        Some("test") => test(&root, &rest),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown command `{other}`\n\n{USAGE}"),
        None => bail!("no command given\n\n{USAGE}"),
    }
}

/// Builds the plugins, the release host and the demo.
fn build_all(root: &Path) -> Result<()> {
    build_plugins(root)?;
    run(cargo()
        .args([
            "build",
            "--release",
            "--package",
            "evolve-daemon",
            "--bin",
            "evolve",
            "--package",
            "evolve-demo",
            "--bin",
            "evolve-demo",
        ])
        .current_dir(root))
}

/// `serve`: build, then run the demo in the foreground (`evolve-demo up`: it installs the
/// bundled plugins, starts the backends and the daemon, seeds the registry; Ctrl-C stops all).
fn serve(root: &Path, args: &[String]) -> Result<()> {
    build_all(root)?;
    let release = root.join("target").join("release");
    run(Command::new(release.join("evolve-demo"))
        .arg("up")
        .arg("--evolve")
        .arg(release.join("evolve"))
        .args(["--config", "examples/demo/evolve.toml"])
        .args(["--plugins", "target/plugins/bundled"])
        .args(args)
        .current_dir(root))
}

/// `test`: build, then every test in release.
fn test(root: &Path, args: &[String]) -> Result<()> {
    ensure_redis_server()?;
    build_plugins(root)?;
    test_bundled_plugins(root)?;
    // Every target at once (the `evolve` binary, tests, benches): one feature resolution with
    // dev-dependencies, the same `cargo test` uses, so nothing is compiled twice.
    run(cargo()
        .args(["build", "--release", "--workspace", "--all-targets"])
        .current_dir(root))?;
    run(cargo()
        .args(["test", "--release", "--workspace"])
        .args(args)
        .current_dir(root))
}

/// The cluster tests start their own `redis-server` on free loopback ports: install
/// Debian's package when it is missing (as root, or through sudo).
fn ensure_redis_server() -> Result<()> {
    let present = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        return Ok(());
    }
    eprintln!(
        "xtask: redis-server is missing; installing Debian's package (apt-get install redis-server)"
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.arg("apt-get");
            sudo
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run(&mut apt(&["update", "-q"]))?;
    run(&mut apt(&[
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "redis-server",
    ]))?;
    // The package starts a system server on 6379 where an init system runs; the tests never
    // use it (each starts its own on a free port).
    Ok(())
}

/// Runs the bundled plugins' own unit tests (their pure logic: rendering, analysis, audit
/// rules) natively: the guest bindings compile for the host too, and tests never call imports.
fn test_bundled_plugins(root: &Path) -> Result<()> {
    let plugins_dir = root.join("plugins");
    let mut cmd = cargo();
    cmd.args(["test", "--target-dir"])
        .arg(root.join("target").join("plugin-tests"))
        .current_dir(&plugins_dir);
    for source in discover(&plugins_dir)? {
        if source.group == Group::Bundled
            && Language::detect(&source.dir) == Some(Language::Rust)
            && let Some(name) = source.dir.file_name()
        {
            cmd.arg("--package").arg(name);
        }
    }
    run(&mut cmd)
}

/// The repository root: the parent of this crate's directory.
fn project_root() -> Result<PathBuf> {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .with_context(|| format!("{} has no parent directory", manifest_dir.display()))
}

/// Runs `cmd`, failing with its command line if it cannot start or exits unsuccessfully.
///
/// Output is inherited, so the user sees the child's progress and errors as they happen.
fn run(cmd: &mut Command) -> Result<()> {
    let line = command_line(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{line}`"))?;
    ensure!(status.success(), "`{line}` failed ({status})");
    Ok(())
}

/// The `cargo` that runs us, so `cargo +toolchain xtask` builds guests with the same toolchain.
fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Where a plugin gets installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Group {
    /// Shipped with the daemon.
    Bundled,
    /// Guests for the test suite.
    Testing,
}

impl Group {
    fn dir_name(self) -> &'static str {
        match self {
            Group::Bundled => "bundled",
            Group::Testing => "testing",
        }
    }
}

/// A plugin crate found under `plugins/`.
#[derive(Debug)]
struct PluginSource {
    group: Group,
    /// The crate directory, holding `plugin.toml`.
    dir: PathBuf,
}

/// Builds every guest in `plugins/` and installs it under `target/plugins/`.
fn build_plugins(root: &Path) -> Result<()> {
    let plugins_dir = root.join("plugins");
    let target_dir = root.join("target").join("wasm");
    let install_root = root.join("target").join("plugins");

    // Idempotent; a fresh machine lacks the target.
    run(Command::new("rustup").args(["--quiet", "target", "add", WASM_TARGET]))?;

    run(cargo()
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .current_dir(&plugins_dir))?;
    let artifacts = target_dir.join(WASM_TARGET).join("release");

    let sources = discover(&plugins_dir)?;
    ensure!(
        !sources.is_empty(),
        "no plugin.toml found under {}",
        plugins_dir.display()
    );
    let options = BuildOptions {
        tools: Tools::new(root.join("target").join("plugin-tools")),
        install_tools: true,
        work_dir: root.join("target").join("plugin-work"),
        cargo_target_dir: None,
        cargo: std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()),
    };
    for source in &sources {
        install(source, &artifacts, &install_root, &options)?;
    }
    Ok(())
}

/// Plugin crates: `plugins/<name>/plugin.toml` are bundled, `plugins/testing/<name>/plugin.toml`
/// are test guests. Sorted, so the output is stable.
fn discover(plugins_dir: &Path) -> Result<Vec<PluginSource>> {
    let mut sources = Vec::new();
    for (group, dir) in [
        (Group::Bundled, plugins_dir.to_path_buf()),
        (Group::Testing, plugins_dir.join("testing")),
    ] {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list {}", dir.display()))?;
        dirs.retain(|d| d.join("plugin.toml").is_file());
        dirs.sort();
        sources.extend(dirs.into_iter().map(|dir| PluginSource { group, dir }));
    }
    Ok(sources)
}

/// Installs one plugin into `<install_root>/<group>/<name>/`: a Rust one from the workspace
/// build's `artifacts`, a Python or JavaScript one componentized now (skipped when its inputs
/// did not change).
fn install(
    source: &PluginSource,
    artifacts: &Path,
    install_root: &Path,
    options: &BuildOptions,
) -> Result<()> {
    let manifest = PluginManifest::read(&source.dir.join("plugin.toml"))?;
    let lang = Language::detect(&source.dir).with_context(|| {
        format!(
            "{}: expected exactly one of Cargo.toml, app.py, app.js",
            source.dir.display()
        )
    })?;
    let built = match lang {
        Language::Rust => artifacts.join(&manifest.wasm),
        Language::Python | Language::JavaScript => {
            let options = BuildOptions {
                work_dir: options.work_dir.join(&manifest.name),
                ..options.clone()
            };
            evolve_plugin_build::build_component(&source.dir, &manifest, &options)?
        }
    };
    ensure!(
        built.is_file(),
        "{}: `wasm = \"{}\"` was not built (looked for {})",
        manifest.path.display(),
        manifest.wasm,
        built.display()
    );
    let dest = install_root
        .join(source.group.dir_name())
        .join(&manifest.name);
    let installed = evolve_plugin_build::install(&manifest, &built, &dest)?;
    println!(
        "{:<8} {:<20} {:<6} {:>8} KiB  sha256 {}",
        source.group.dir_name(),
        installed.name,
        lang.as_str(),
        installed.bytes.div_ceil(1024),
        &installed.sha256[..12]
    );
    Ok(())
}
