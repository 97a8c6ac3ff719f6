//! Plugin authoring: `evolve plugin new` (a project from an embedded template), `evolve plugin
//! build` (any language → a plugin dir: component + manifest pinned to its sha256) and `evolve
//! plugin setup` (the pinned Python / JavaScript toolchains) and `evolve plugin test` (scenario
//! files against the built plugin, through [`evolve_plugin_testkit`]). The build itself is
//! `evolve-plugin-build`'s, shared with `cargo xtask build-plugins`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use evolve_plugin_build::{Language, Tools, build_project};

use evolve_plugin_testkit::scenario;

/// Templates, embedded: `{{name}}`, `{{wasm}}`, `{{memory_mb}}`, `{{sdk_path}}`,
/// `{{testkit_path}}` are filled in.
mod templates {
    pub const RUST_CARGO: &str = include_str!("templates/rust/Cargo.toml");
    pub const RUST_AGENT_LIB: &str = include_str!("templates/rust/meta-agent.lib.rs");
    pub const RUST_AGENT_TEST: &str = include_str!("templates/rust/meta-agent.test.rs");
    pub const RUST_AGENT_MANIFEST: &str = include_str!("templates/rust/meta-agent.plugin.toml");
    pub const RUST_CHECKER_LIB: &str = include_str!("templates/rust/health-checker.lib.rs");
    pub const RUST_CHECKER_TEST: &str = include_str!("templates/rust/health-checker.test.rs");
    pub const RUST_CHECKER_MANIFEST: &str =
        include_str!("templates/rust/health-checker.plugin.toml");
    pub const PY_AGENT: &str = include_str!("templates/python/meta-agent.app.py");
    pub const PY_AGENT_MANIFEST: &str = include_str!("templates/python/meta-agent.plugin.toml");
    pub const PY_CHECKER: &str = include_str!("templates/python/health-checker.app.py");
    pub const PY_CHECKER_MANIFEST: &str =
        include_str!("templates/python/health-checker.plugin.toml");
    pub const JS_AGENT: &str = include_str!("templates/js/meta-agent.app.js");
    pub const JS_AGENT_MANIFEST: &str = include_str!("templates/js/meta-agent.plugin.toml");
    pub const JS_CHECKER: &str = include_str!("templates/js/health-checker.app.js");
    pub const JS_CHECKER_MANIFEST: &str = include_str!("templates/js/health-checker.plugin.toml");
    /// Scenario tests (`evolve plugin test`), the same for every language.
    pub const AGENT_SCENARIOS: &str = include_str!("templates/scenarios/meta-agent.toml");
    pub const CHECKER_SCENARIOS: &str = include_str!("templates/scenarios/health-checker.toml");
}

/// Where a new project's scenario tests go.
const SCENARIO_FILE: &str = "tests/scenarios.toml";

/// Where this binary was built from: the default SDK and test kit of a Rust project.
const SOURCE_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Linear memory a new plugin asks for, MiB: a Rust guest needs little, an interpreter more.
const RUST_MEMORY_MB: u32 = 16;
const PYTHON_MEMORY_MB: u32 = 96;
const JS_MEMORY_MB: u32 = 64;

#[derive(Debug, Subcommand)]
pub enum AuthorCommand {
    /// Create a plugin project that builds and passes its own tests unchanged.
    New(NewArgs),
    /// Build a plugin project (Rust, Python or JavaScript) into a plugin dir: the component and
    /// its plugin.toml pinned to the component's sha256. Drop the dir into a daemon's plugins dir.
    Build(BuildArgs),
    /// Install the pinned Python (componentize-py) and JavaScript (componentize-js) toolchains.
    Setup(SetupArgs),
    /// Build a plugin project, then run its scenario files (`tests/*.toml`) against the built
    /// plugin in a mocked host (scripted config, inventory, probes, fake HTTP; production limits).
    Test(TestArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Kind {
    MetaAgent,
    HealthChecker,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Plugin name: 1-64 characters of a-z, 0-9 and '-' (also the directory name).
    pub name: String,
    #[arg(long, value_enum)]
    pub kind: Kind,
    #[arg(long, value_enum, default_value = "rust")]
    pub lang: Lang,
    /// Directory to create (default: ./NAME). Must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// evolve-plugin-sdk for a Rust project (default: the checkout this binary was built from).
    #[arg(long)]
    pub sdk: Option<PathBuf>,
    /// evolve-plugin-testkit for a Rust project's tests (default: beside the SDK).
    #[arg(long)]
    pub testkit: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The plugin project (default: the current directory).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Where to write the plugin dir (default: PATH/target/plugin/NAME).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Tools dir of the Python / JavaScript toolchains (default: $EVOLVE_PLUGIN_TOOLS, else
    /// ~/.cache/evolve/plugin-tools).
    #[arg(long)]
    pub tools: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The plugin project (default: the current directory).
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Run only the cases whose name contains this text.
    #[arg(long)]
    pub case: Option<String>,
    /// Test this built plugin dir instead of building the project (its scenario files are still
    /// read from PATH/tests).
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// Tools dir of the Python / JavaScript toolchains (default: $EVOLVE_PLUGIN_TOOLS, else
    /// ~/.cache/evolve/plugin-tools).
    #[arg(long)]
    pub tools: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Which toolchains (default: both).
    #[arg(value_enum)]
    pub langs: Vec<Lang>,
    /// Tools dir (default: $EVOLVE_PLUGIN_TOOLS, else ~/.cache/evolve/plugin-tools).
    #[arg(long)]
    pub tools: Option<PathBuf>,
}

pub fn run(command: AuthorCommand) -> anyhow::Result<()> {
    match command {
        AuthorCommand::New(args) => new(&args),
        AuthorCommand::Build(args) => build(&args).map(drop),
        AuthorCommand::Setup(args) => setup(&args),
        AuthorCommand::Test(args) => test(&args),
    }
}

fn tools(dir: Option<&Path>) -> Tools {
    dir.map_or_else(Tools::from_env, Tools::new)
}

fn new(args: &NewArgs) -> anyhow::Result<()> {
    let name = args.name.as_str();
    if !evolve_runtime::manifest::valid_name(name) {
        bail!(
            "`{name}`: a plugin name is 1-64 characters of a-z, 0-9 and '-', not starting or ending with '-'"
        );
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} already exists and is not empty; choose another --dir",
            dir.display()
        );
    }
    let wasm = format!("{}.wasm", name.replace('-', "_"));
    let (memory_mb, files): (u32, Vec<(&str, &str)>) = match (args.lang, args.kind) {
        (Lang::Rust, kind) => {
            let (lib, test, manifest) = match kind {
                Kind::MetaAgent => (
                    templates::RUST_AGENT_LIB,
                    templates::RUST_AGENT_TEST,
                    templates::RUST_AGENT_MANIFEST,
                ),
                Kind::HealthChecker => (
                    templates::RUST_CHECKER_LIB,
                    templates::RUST_CHECKER_TEST,
                    templates::RUST_CHECKER_MANIFEST,
                ),
            };
            (
                RUST_MEMORY_MB,
                vec![
                    ("Cargo.toml", templates::RUST_CARGO),
                    ("plugin.toml", manifest),
                    ("src/lib.rs", lib),
                    ("tests/plugin.rs", test),
                ],
            )
        }
        (Lang::Python, Kind::MetaAgent) => (
            PYTHON_MEMORY_MB,
            vec![
                ("app.py", templates::PY_AGENT),
                ("plugin.toml", templates::PY_AGENT_MANIFEST),
            ],
        ),
        (Lang::Python, Kind::HealthChecker) => (
            PYTHON_MEMORY_MB,
            vec![
                ("app.py", templates::PY_CHECKER),
                ("plugin.toml", templates::PY_CHECKER_MANIFEST),
            ],
        ),
        (Lang::Js, Kind::MetaAgent) => (
            JS_MEMORY_MB,
            vec![
                ("app.js", templates::JS_AGENT),
                ("plugin.toml", templates::JS_AGENT_MANIFEST),
            ],
        ),
        (Lang::Js, Kind::HealthChecker) => (
            JS_MEMORY_MB,
            vec![
                ("app.js", templates::JS_CHECKER),
                ("plugin.toml", templates::JS_CHECKER_MANIFEST),
            ],
        ),
    };
    let mut files = files;
    files.push((
        SCENARIO_FILE,
        match args.kind {
            Kind::MetaAgent => templates::AGENT_SCENARIOS,
            Kind::HealthChecker => templates::CHECKER_SCENARIOS,
        },
    ));
    let (sdk, testkit) = if matches!(args.lang, Lang::Rust) {
        let sdk = args
            .sdk
            .clone()
            .unwrap_or_else(|| Path::new(SOURCE_ROOT).join("plugin-sdk"));
        let testkit = args.testkit.clone().unwrap_or_else(|| {
            sdk.parent()
                .unwrap_or(Path::new("."))
                .join("plugin-testkit")
        });
        for (what, path, flag) in [
            ("evolve-plugin-sdk", &sdk, "--sdk"),
            ("evolve-plugin-testkit", &testkit, "--testkit"),
        ] {
            if !path.join("Cargo.toml").is_file() {
                bail!(
                    "{what} is not at {}; pass {flag} PATH to it (in a checkout of Evolve)",
                    path.display()
                );
            }
        }
        (absolute(&sdk)?, absolute(&testkit)?)
    } else {
        (String::new(), String::new())
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{wasm}}", &wasm)
            .replace("{{memory_mb}}", &memory_mb.to_string())
            .replace("{{sdk_path}}", &sdk)
            .replace("{{testkit_path}}", &testkit)
    };
    if matches!(args.lang, Lang::Rust) {
        // The SDK checkout's lock file: the same dependency versions as the daemon, so the
        // project's `cargo test --release` can reuse its compiled dependencies (see the
        // template's Cargo.toml).
        let lock = Path::new(&sdk)
            .parent()
            .map(|checkout| checkout.join("Cargo.lock"));
        if let Some(lock) = lock.filter(|lock| lock.is_file()) {
            let to = dir.join("Cargo.lock");
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            std::fs::copy(&lock, &to)
                .with_context(|| format!("cannot copy {} to {}", lock.display(), to.display()))?;
        }
    }
    for (file, text) in files
        .iter()
        .chain(std::iter::once(&(".gitignore", "/target\n__pycache__/\n")))
    {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, fill(text))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let lang = match args.lang {
        Lang::Rust => Language::Rust,
        Lang::Python => Language::Python,
        Lang::Js => Language::JavaScript,
    };
    println!("created {} ({lang}) in {}", name, dir.display());
    println!("next: evolve plugin build {}", dir.display());
    if lang == Language::Rust {
        println!(
            "      cargo test --release --manifest-path {}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("      evolve plugin test {}", dir.display());
    Ok(())
}

/// `path` as an absolute path string for a generated Cargo.toml (TOML-escaped by the caller's
/// template: paths with `"` or `\` are refused rather than mangled).
fn absolute(path: &Path) -> anyhow::Result<String> {
    let path = path
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", path.display()))?;
    let text = path.to_string_lossy().into_owned();
    if text.contains(['"', '\\']) {
        bail!("{text}: a path with `\"` or `\\` cannot go into Cargo.toml as is; move it");
    }
    Ok(text)
}

fn build(args: &BuildArgs) -> anyhow::Result<evolve_plugin_build::Installed> {
    let project = &args.path;
    if !project.join("plugin.toml").is_file() {
        bail!(
            "{} has no plugin.toml; create a project with `evolve plugin new NAME --kind meta-agent|health-checker`",
            project.display()
        );
    }
    let lang = Language::detect(project).with_context(|| {
        format!(
            "{}: expected exactly one of Cargo.toml (Rust), app.py (Python), app.js (JavaScript)",
            project.display()
        )
    })?;
    let installed = build_project(
        project,
        args.out.as_deref(),
        tools(args.tools.as_deref()),
        false,
    )?;
    println!(
        "built {} ({lang}): {} ({} KiB, sha256 {})",
        installed.name,
        installed.dir.display(),
        installed.bytes.div_ceil(1024),
        &installed.sha256[..12]
    );
    Ok(installed)
}

/// `evolve plugin test`: build (through the one build path), read every scenario file, run the
/// cases one by one, print a line per case and every mismatch of the failed ones.
fn test(args: &TestArgs) -> anyhow::Result<()> {
    let project = &args.path;
    // Scenario files first: a malformed one is reported before a long Python / JS build.
    let files = scenario::load_project(project)?;
    let plugin_dir = match &args.plugin {
        Some(dir) => dir.clone(),
        None => {
            build(&BuildArgs {
                path: project.clone(),
                out: None,
                tools: args.tools.clone(),
            })?
            .dir
        }
    };
    let selected: Vec<(&Path, &scenario::Case)> = files
        .iter()
        .flat_map(|file| file.cases.iter().map(|case| (file.path.as_path(), case)))
        .filter(|(_, case)| {
            args.case
                .as_deref()
                .is_none_or(|part| case.name.contains(part))
        })
        .collect();
    if selected.is_empty() {
        bail!(
            "no case matches `--case {}`",
            args.case.as_deref().unwrap_or_default()
        );
    }
    println!(
        "running {} case(s) from {} file(s) against {}",
        selected.len(),
        files.len(),
        plugin_dir.display()
    );
    // The kit owns an async runtime of its own; this command runs inside the CLI's, so the cases
    // run on a plain thread.
    let failures = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut failures = Vec::new();
                for (file, case) in &selected {
                    let label = format!("{} :: {}", shown(project, file), case.name);
                    match case.run(&plugin_dir, None) {
                        scenario::CaseResult::Passed => println!("case {label} ... ok"),
                        scenario::CaseResult::Failed(mismatches) => {
                            println!("case {label} ... FAILED");
                            failures.push((label, mismatches));
                        }
                    }
                }
                failures
            })
            .join()
    })
    .map_err(|_| anyhow::anyhow!("the scenario runner panicked"))?;
    for (label, mismatches) in &failures {
        println!("\n---- {label} ----");
        for mismatch in mismatches {
            println!("  {mismatch}");
        }
    }
    let passed = selected.len() - failures.len();
    if failures.is_empty() {
        println!("\nscenario result: ok. {passed} passed; 0 failed");
        Ok(())
    } else {
        println!(
            "\nscenario result: FAILED. {passed} passed; {} failed",
            failures.len()
        );
        let names: Vec<&str> = failures.iter().map(|(label, _)| label.as_str()).collect();
        bail!("{} case(s) failed: {}", failures.len(), names.join(", "))
    }
}

/// `file` relative to the project when it is inside it (`tests/hello.toml`).
fn shown(project: &Path, file: &Path) -> String {
    file.strip_prefix(project)
        .unwrap_or(file)
        .display()
        .to_string()
}

fn setup(args: &SetupArgs) -> anyhow::Result<()> {
    let tools = tools(args.tools.as_deref());
    let langs = if args.langs.is_empty() {
        vec![Lang::Python, Lang::Js]
    } else {
        args.langs.clone()
    };
    for lang in langs {
        match lang {
            Lang::Python => {
                let exe = tools.python(true)?;
                println!(
                    "componentize-py {}: {}",
                    evolve_plugin_build::COMPONENTIZE_PY_VERSION,
                    exe.display()
                );
            }
            Lang::Js => {
                let exe = tools.js(true)?;
                println!(
                    "componentize-js {}: {}",
                    evolve_plugin_build::COMPONENTIZE_JS_VERSION,
                    exe.display()
                );
            }
            Lang::Rust => println!(
                "rust: `rustup target add {}` (evolve plugin build checks for it)",
                evolve_plugin_build::compile::WASM_TARGET
            ),
        }
    }
    Ok(())
}
