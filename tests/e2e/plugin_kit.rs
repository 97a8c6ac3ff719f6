//! The plugin author's path, for each language and kind: `evolve plugin new` → `evolve plugin
//! build` → `evolve plugin test` (the template's scenario files pass unchanged; an edited
//! expectation fails, naming its case) → the plugin dir dropped into a running daemon's plugins
//! dir → hot reload loads it → it serves. The Rust templates also pass their own `cargo test
//! --release` (the test kit) unchanged.
//!
//! CI time: builds use the workspace's own target dir, so a Rust template's `cargo test
//! --release` reuses the daemon's compiled dependencies (the template's release profile and
//! lock file match the workspace's; see `nested_cargo`), and the component builds share
//! `target/evolve-wasm`; the Python / JavaScript toolchains are the ones `cargo xtask` installed
//! under `target/plugin-tools`.

use std::path::{Path, PathBuf};
use std::process::Command;

use evolve_e2e::http::Backend;
use evolve_e2e::{Daemon, Env, cli, root};
use serde_json::json;

fn build_envs() -> Vec<(&'static str, String)> {
    vec![
        (
            "EVOLVE_PLUGIN_TOOLS",
            root().join("target/plugin-tools").display().to_string(),
        ),
        (
            "CARGO_TARGET_DIR",
            root().join("target").display().to_string(),
        ),
    ]
}

/// A `cargo` for a plugin project that sees the environment `cargo xtask` builds the workspace
/// in. This test runs under `cargo test`, which sets `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ... for
/// it; build scripts that declare `rerun-if-env-changed` on such a variable (ring does, on
/// `CARGO_MANIFEST_DIR`) would see a change and rerun, rebuilding everything above them here
/// and again in the next workspace build. `cargo xtask` runs its cargo with `CARGO_MANIFEST_DIR`
/// = the xtask crate (`cargo run` sets it), so that is the value given here.
fn nested_cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" {
            cmd.env_remove(&*key);
        }
    }
    cmd.env("CARGO_MANIFEST_DIR", root().join("xtask"))
        .envs(build_envs());
    cmd
}

/// `evolve plugin test PROJECT [args]`: exit code, stdout, stderr.
fn plugin_test(project: &Path, args: &[&str]) -> (i32, String, String) {
    let envs = build_envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let project_arg = project.display().to_string();
    let mut all = vec!["plugin", "test", project_arg.as_str()];
    all.extend_from_slice(args);
    cli(&all, &envs)
}

/// `evolve plugin new` then `evolve plugin build` in `work`; the built plugin dir.
fn new_and_build(work: &Path, name: &str, kind: &str, lang: &str) -> PathBuf {
    let project = work.join(name);
    evolve_e2e::plugin_new(name, kind, Some(lang), &project);
    let project_arg = project.display().to_string();
    let manifest = std::fs::read_to_string(project.join("plugin.toml")).unwrap();
    assert!(manifest.contains("# [permissions]"), "{manifest}");

    let envs = build_envs();
    let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr) = cli(&["plugin", "build", &project_arg], &envs);
    assert_eq!(code, 0, "plugin build: {stdout}\n{stderr}");
    let built = project.join("target/plugin").join(name);
    let pinned = std::fs::read_to_string(built.join("plugin.toml")).unwrap();
    assert!(pinned.contains("sha256 = "), "{pinned}");

    // The template's scenario tests pass unchanged (the build above is reused: unchanged
    // sources are not built again).
    let (code, stdout, stderr) = plugin_test(&project, &[]);
    assert_eq!(code, 0, "plugin test: {stdout}\n{stderr}");
    let cases = if kind == "meta-agent" { 5 } else { 6 };
    assert!(
        stdout.contains(&format!("scenario result: ok. {cases} passed; 0 failed")),
        "{stdout}"
    );
    assert!(
        stdout.contains("case tests/scenarios.toml :: reports healthy ... ok")
            || stdout.contains("case tests/scenarios.toml :: a 5xx answer is unhealthy ... ok"),
        "{stdout}"
    );
    if kind == "meta-agent" {
        a_failing_case_is_named(&project);
    }
    built
}

/// Edits one expectation of the agent template's scenarios: the run fails, and says which case
/// and what differed.
fn a_failing_case_is_named(project: &Path) {
    let path = project.join("tests/scenarios.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let anchor = r#"expect = { summary = "hi, evolve""#;
    assert!(text.contains(anchor), "{text}");
    std::fs::write(
        &path,
        text.replace(anchor, r#"expect = { summary = "hey, evolve""#),
    )
    .unwrap();
    let (code, stdout, stderr) = plugin_test(project, &[]);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(
            "case tests/scenarios.toml :: greets the caller with the configured greeting ... FAILED"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(r#"summary: expected "hey, evolve", got "hi, evolve""#),
        "{stdout}"
    );
    assert!(stdout.contains("4 passed; 1 failed"), "{stdout}");
    assert!(
        stderr.contains("1 case(s) failed: tests/scenarios.toml :: greets the caller"),
        "{stderr}"
    );
    std::fs::write(&path, text).unwrap();
}

/// Copies a built plugin dir into the daemon's plugins dir, the component before the manifest
/// (as a careful deploy does), and waits for the hot reload to load it.
fn drop_in(env: &Env, daemon: &Daemon, built: &Path, name: &str) {
    let staging = env.temp.path().join(format!("staging-{name}"));
    std::fs::create_dir_all(&staging).unwrap();
    for entry in std::fs::read_dir(built).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, staging.join(path.file_name().unwrap())).unwrap();
    }
    // One rename: the watcher sees a complete plugin dir appear.
    std::fs::rename(&staging, env.plugins_dir.join(name)).unwrap();
    daemon.wait_event("plugin.loaded", name, |_| true);
    assert_eq!(daemon.plugin(name)["state"], "serving");
}

fn agent_serves(daemon: &Daemon, name: &str) {
    let response = daemon.post(
        &format!("/v1/agents/{name}/run"),
        &json!({"task": "hello", "input": {"who": "evolve"}}),
    );
    assert_eq!(response.status, 200, "{name}: {}", response.text());
    assert_eq!(
        response.json()["outcome"]["output"],
        json!({"greeting": "hello, evolve"}),
        "{name}"
    );
    let refused = daemon.post(&format!("/v1/agents/{name}/run"), &json!({"task": "nope"}));
    assert_eq!(refused.status, 422, "{name}: {}", refused.text());
    assert_eq!(
        refused.json()["error"]["plugin_error"]["code"],
        "invalid-input",
        "{name}"
    );
}

fn checker_serves(daemon: &Daemon, name: &str) {
    let up = Backend::start(200);
    let down = Backend::start(503);
    for (backend, status) in [(&up, "healthy"), (&down, "unhealthy")] {
        let response = daemon.post(
            &format!("/v1/checkers/{name}/check"),
            &json!({"name": "svc", "endpoint": backend.url()}),
        );
        assert_eq!(response.status, 200, "{name}: {}", response.text());
        assert_eq!(response.json()["report"]["status"], status, "{name}");
        assert_eq!(backend.connections(), 1, "{name}");
    }
}

fn author_path(lang: &str) {
    let env = Env::new();
    let daemon = env.start();
    let work = env.temp.path().join("work");
    let agent = format!("{lang}-agent");
    let checker = format!("{lang}-checker");
    let built = new_and_build(&work, &agent, "meta-agent", lang);
    drop_in(&env, &daemon, &built, &agent);
    agent_serves(&daemon, &agent);
    let built = new_and_build(&work, &checker, "health-checker", lang);
    drop_in(&env, &daemon, &built, &checker);
    checker_serves(&daemon, &checker);
}

#[test]
fn rust_plugins_from_new_to_serving() {
    author_path("rust");
}

#[test]
fn python_plugins_from_new_to_serving() {
    author_path("python");
}

#[test]
fn js_plugins_from_new_to_serving() {
    author_path("js");
}

/// `cargo test --release` in each Rust template, in the workspace's target dir: the template's
/// release profile, its copy of the workspace's Cargo.lock and the test kit's tokio features make
/// the workspace's compiled dependencies (wasmtime, tokio, hyper, ...) fresh for it; what builds
/// is the project, the Evolve crates it depends on (a path outside the workspace gets its own
/// build) and the few dependencies the host crates' dev-dependencies unify differently.
#[test]
fn rust_templates_pass_their_own_tests_unchanged() {
    // Minutes of compiling (the daemon's crates for the project): one such test at a time, on
    // one core (`-j 1`), so the daemons of the other tests are not starved.
    let _cpu = evolve_e2e::cpu_heavy();
    let work = tempfile::tempdir().unwrap();
    for kind in ["meta-agent", "health-checker"] {
        let project = work.path().join(kind);
        evolve_e2e::plugin_new("tested", kind, None, &project);
        assert!(
            project.join("Cargo.lock").is_file(),
            "plugin new copies the workspace's lock file"
        );
        let output = nested_cargo()
            .args(["test", "--release", "-j", "1"])
            .current_dir(&project)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{kind}: cargo test failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains("test result: ok"), "{stdout}");
    }
}

#[test]
fn build_errors_name_the_fix() {
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("p");
    evolve_e2e::plugin_new("p", "meta-agent", Some("python"), &project);
    let project_arg = project.display().to_string();
    // A tools dir without the toolchain: the error names the install command.
    let empty = work.path().join("no-tools");
    let (code, _, stderr) = cli(
        &[
            "plugin",
            "build",
            &project_arg,
            "--tools",
            &empty.display().to_string(),
        ],
        &[],
    );
    assert_ne!(code, 0);
    assert!(
        stderr.contains("componentize-py 0.25.1 is not installed"),
        "{stderr}"
    );
    assert!(stderr.contains("evolve plugin setup --tools"), "{stderr}");

    // Not a project; and a name the daemon would refuse.
    let (code, _, stderr) = cli(
        &["plugin", "build", &work.path().display().to_string()],
        &[],
    );
    assert_ne!(code, 0);
    assert!(stderr.contains("has no plugin.toml"), "{stderr}");
    let (code, _, stderr) = cli(&["plugin", "new", "Bad_Name", "--kind", "meta-agent"], &[]);
    assert_ne!(code, 0);
    assert!(stderr.contains("a plugin name is"), "{stderr}");
}

/// `evolve plugin test --plugin DIR` on a bundled plugin (no build): a failing case is named
/// with what differed; a malformed scenario file is an error naming the file and the key, and
/// nothing runs.
#[test]
fn scenario_failures_and_errors_name_file_case_and_key() {
    let work = tempfile::tempdir().unwrap();
    let project = work.path();
    let tests = project.join("tests");
    std::fs::create_dir_all(&tests).unwrap();
    let bundled = root().join("target/plugins/bundled/http-health");
    let plugin = bundled.display().to_string();
    std::fs::write(
        tests.join("grading.toml"),
        r#"
http."down.test:80" = { status = 503 }

[[case]]
name = "a 503 is unhealthy"
check = { endpoint = "http://down.test" }
expect = { status = "unhealthy", http_requests = ["GET http://down.test/health"] }

[[case]]
name = "a 503 is healthy (wrong on purpose)"
check = { endpoint = "http://down.test" }
expect = { status = "healthy" }
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = plugin_test(project, &["--plugin", &plugin]);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("case tests/grading.toml :: a 503 is unhealthy ... ok"),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("case tests/grading.toml :: a 503 is healthy (wrong on purpose) ... FAILED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("status: expected `healthy`, got `unhealthy`"),
        "{stdout}"
    );
    // --case picks cases by name.
    let (code, stdout, stderr) =
        plugin_test(project, &["--plugin", &plugin, "--case", "is unhealthy"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed; 0 failed"), "{stdout}");

    std::fs::write(
        tests.join("typo.toml"),
        "[[case]]\nname = \"typo\"\ncheck = { endpoint = \"http://x.test\" }\nexpect = { satus = \"healthy\" }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = plugin_test(project, &["--plugin", &plugin]);
    assert_ne!(code, 0, "{stdout}\n{stderr}");
    assert!(stderr.contains("typo.toml"), "{stderr}");
    assert!(stderr.contains("satus"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stdout.contains("running "), "nothing runs: {stdout}");
}
