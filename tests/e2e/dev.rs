//! `evolve dev`: one line per attempt: reloaded to generation N, build failed with the
//! compiler's first error, or validation failed with the previous generation still serving.

use evolve_e2e::{Env, cli, root};
use serde_json::json;

/// A standalone plugin crate (the `versioned` test guest's code) in a scratch dir, sharing the
/// guest target dir and lockfile so its dependencies are already built.
fn scratch_crate(dir: &std::path::Path) {
    let root = root();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            r#"[package]
name = "dev-probe"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
evolve-plugin-sdk = {{ path = {:?} }}
serde = {{ version = "1", features = ["derive"] }}
serde_json = "1"

[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
panic = "abort"
"#,
            root.join("plugin-sdk").display().to_string()
        ),
    )
    .unwrap();
    std::fs::copy(root.join("plugins/Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::copy(
        root.join("plugins/testing/versioned/src/lib.rs"),
        dir.join("src/lib.rs"),
    )
    .unwrap();
    // Its own package name, so its artifact does not overwrite the real guest's.
    let manifest =
        std::fs::read_to_string(root.join("plugins/testing/versioned/plugin.toml")).unwrap();
    std::fs::write(
        dir.join("plugin.toml"),
        manifest.replace("versioned.wasm", "dev_probe.wasm"),
    )
    .unwrap();
}

#[test]
fn dev_builds_installs_and_reloads_with_one_line_per_attempt() {
    let env = Env::new();
    let daemon = env.start();
    let crate_dir = env.temp.path().join("my-plugin");
    scratch_crate(&crate_dir);
    let target_dir = evolve_e2e::root().join("target/wasm");
    let envs = [("CARGO_TARGET_DIR", target_dir.to_str().unwrap())];
    let dev = || {
        cli(
            &[
                "dev",
                crate_dir.to_str().unwrap(),
                "--once",
                "--api",
                &daemon.url(),
            ],
            &envs,
        )
    };

    // First build: the daemon does not know the plugin yet and loads it.
    let (code, stdout, stderr) = dev();
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("reloaded to generation 1 in"), "{stdout}");
    let run = || daemon.post("/v1/agents/versioned/run", &json!({"task": "tag"}));
    assert_eq!(run().json()["outcome"]["output"]["tag"], "v1");

    // A source change: a new generation with the new code.
    let source = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    std::fs::write(
        crate_dir.join("src/lib.rs"),
        source.replace(
            "TaskOutcome::new(format!(\"tag {}\", config.tag))",
            "TaskOutcome::new(format!(\"tag {} (edited)\", config.tag))",
        ),
    )
    .unwrap();
    let (code, stdout, _) = dev();
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("reloaded to generation 2"), "{stdout}");
    assert_eq!(run().json()["outcome"]["summary"], "tag v1 (edited)");

    // A compile error: the compiler's first error, and generation 2 keeps serving.
    std::fs::write(
        crate_dir.join("src/lib.rs"),
        format!("{source}\nfn broken() -> u32 {{ \"no\" }}\n"),
    )
    .unwrap();
    let (code, stdout, _) = dev();
    assert_ne!(code, 0);
    assert!(
        stdout.contains("build failed in")
            && stdout.contains("error[E0308]")
            && stdout.contains("src/lib.rs"),
        "{stdout}"
    );
    assert_eq!(run().json()["generation"], 2);

    // Builds, but does not validate: the manifest claims the other world.
    std::fs::write(crate_dir.join("src/lib.rs"), &source).unwrap();
    let manifest = std::fs::read_to_string(crate_dir.join("plugin.toml")).unwrap();
    std::fs::write(
        crate_dir.join("plugin.toml"),
        // `[agent]` is for meta agents only; drop it so the daemon, not the local manifest
        // check, is what refuses the mismatched world.
        manifest
            .replace("kind = \"meta-agent\"", "kind = \"health-checker\"")
            .replace("[agent]\noverlap = true\n", ""),
    )
    .unwrap();
    let (code, stdout, _) = dev();
    assert_ne!(code, 0);
    assert!(
        stdout.contains("validation failed") && stdout.contains("generation 2 still serving"),
        "{stdout}"
    );
    assert_eq!(run().status, 200);
}

/// `evolve dev` on a Python project (`evolve plugin new --lang python`): built through the same
/// componentize path as `evolve plugin build`, installed, reloaded; a source change is a new
/// generation; a broken source is a failed build and the last good generation keeps serving.
#[test]
fn dev_rebuilds_a_python_plugin_and_keeps_the_last_good_one_on_a_broken_build() {
    let env = Env::new();
    let daemon = env.start();
    let project = env.temp.path().join("py-dev");
    evolve_e2e::plugin_new("py-dev", "meta-agent", Some("python"), &project);
    let project_arg = project.display().to_string();
    let tools = root().join("target/plugin-tools");
    let envs = [("EVOLVE_PLUGIN_TOOLS", tools.to_str().unwrap())];
    let url = daemon.url();
    let dev = || cli(&["dev", &project_arg, "--once", "--api", &url], &envs);
    let run = || {
        daemon.post(
            "/v1/agents/py-dev/run",
            &json!({"task": "hello", "input": {"who": "dev"}}),
        )
    };

    let (code, stdout, stderr) = dev();
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("reloaded to generation 1 in"), "{stdout}");
    assert_eq!(run().json()["outcome"]["summary"], "hello, dev");

    let app = project.join("app.py");
    let source = std::fs::read_to_string(&app).unwrap();
    let anchor = r#"text = f"{greeting}, {data.get('who', 'world')}""#;
    assert!(source.contains(anchor), "{source}");
    std::fs::write(
        &app,
        source.replace(
            anchor,
            r#"text = f"{greeting}, {data.get('who', 'world')} (edited)""#,
        ),
    )
    .unwrap();
    let (code, stdout, stderr) = dev();
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("reloaded to generation 2"), "{stdout}");
    assert_eq!(run().json()["outcome"]["summary"], "hello, dev (edited)");

    // A syntax error fails the componentize step: nothing is installed, generation 2 serves.
    std::fs::write(&app, format!("{source}\ndef broken(:\n")).unwrap();
    let (code, stdout, stderr) = dev();
    assert_ne!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("build failed in"), "{stdout}");
    assert!(stderr.contains("SyntaxError"), "{stderr}");
    let response = run();
    assert_eq!(response.json()["generation"], 2, "{}", response.text());
    assert_eq!(response.json()["outcome"]["summary"], "hello, dev (edited)");
}
