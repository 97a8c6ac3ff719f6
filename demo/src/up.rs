//! `evolve-demo up`: the demo in one command (what `cargo xtask serve` runs, and the end-to-end
//! test runs the same way).
//!
//! 1. read the demo config: the daemon's `server.listen` and, in `[[mesh.services]]`, every
//!    instance of a service offering `forecast` or `analysis`;
//! 2. bind and serve a demo backend at each of those instances' addresses (in this process);
//! 3. install the bundled plugins (`--plugins`) into `<data-dir>/plugins`, replacing older copies;
//! 4. spawn `evolve serve --config <config> --data-dir <data-dir>` and wait until its API answers;
//! 5. seed the registry through the public API, idempotently: the `forecast` models `drift`,
//!    `ses` (v1, v2) and `linear-trend`, the `champion` alias on `ses` v2 when the alias does not
//!    exist yet, and, for versions without points, `mae` / `mape` from real rolling backtests on
//!    the bundled data over the last five days;
//! 6. print the lines to paste, and `evolve-demo: ready at <url>`;
//! 7. on Ctrl-C or SIGTERM, SIGTERM the daemon, wait for it, stop the backends. If the daemon
//!    exits by itself, stop the backends and exit with its status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use hyper::{Method, StatusCode};
use serde_json::json;
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::client::Api;
use crate::data::{self, Series};
use crate::forecast::{HOLDOUT, backtest, method_for};
use crate::server::{self, Backend, Role};

/// The registry task type of the demo's models (the route's `task`).
pub const TASK: &str = "forecast";

/// (model, versions it should have, description)
pub const MODELS: [(&str, u32, &str); 3] = [
    (
        "drift",
        1,
        "naive with drift: the last close plus the mean daily change",
    ),
    (
        "ses",
        2,
        "simple exponential smoothing: v1 alpha 0.5, v2 alpha fitted",
    ),
    (
        "linear-trend",
        1,
        "least-squares line over the last 60 closes",
    ),
];

/// Where the champion alias is set on first start.
pub const CHAMPION: (&str, u32) = ("ses", 2);

/// How long the daemon may take to answer after start (a cold AOT cache compiles every plugin).
const READY_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the daemon gets after SIGTERM before it is killed (its own grace is 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// Rolling backtests seeded per model version, one a day.
const SEED_DAYS: usize = 5;

/// Closes between two seeded backtest origins.
const SEED_ORIGIN_STEP: usize = 10;

/// Plugins read the registry through a view the daemon refreshes every second after a change
/// (README, "Model registry"); `GET /v1/registry` says when it reflects every write
/// (`inventory_current`). A refresh is one query; this bounds a daemon that never catches up.
const SEED_VISIBLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// The `evolve` binary.
    #[arg(long, default_value = "target/release/evolve")]
    pub evolve: PathBuf,
    /// The demo config.
    #[arg(long, default_value = "examples/demo/evolve.toml")]
    pub config: PathBuf,
    /// The daemon's state directory (`--data-dir`); plugins are installed into its `plugins/`.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// A directory of built plugin dirs to install (`cargo xtask build-plugins` makes
    /// target/plugins/bundled).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Write the daemon's stderr to this file instead of the terminal.
    #[arg(long)]
    pub daemon_log: Option<PathBuf>,
}

/// A backend the config asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedBackend {
    pub role: Role,
    pub service: String,
    pub instance: String,
    pub addr: SocketAddr,
}

/// What `up` needs from the demo config.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub api: SocketAddr,
    pub backends: Vec<PlannedBackend>,
}

/// Reads the plan from the config's text (`server.listen`, `[[mesh.services]]`).
pub fn plan(config: &str) -> anyhow::Result<Plan> {
    let table: toml::Table = toml::from_str(config).context("the demo config is not TOML")?;
    let api = table
        .get("server")
        .and_then(|s| s.get("listen"))
        .and_then(toml::Value::as_str)
        .unwrap_or("127.0.0.1:7070")
        .parse()
        .context("server.listen is not host:port")?;
    let mut backends = Vec::new();
    let services = table
        .get("mesh")
        .and_then(|m| m.get("services"))
        .and_then(toml::Value::as_array)
        .cloned()
        .unwrap_or_default();
    for service in &services {
        let name = service
            .get("name")
            .and_then(toml::Value::as_str)
            .unwrap_or("");
        let capabilities: Vec<&str> = service
            .get("capabilities")
            .and_then(toml::Value::as_array)
            .map(|c| c.iter().filter_map(toml::Value::as_str).collect())
            .unwrap_or_default();
        let role = if capabilities.contains(&"forecast") {
            Role::Forecast
        } else if capabilities.contains(&"analysis") {
            Role::Analysis
        } else {
            continue;
        };
        let instances = service
            .get("instances")
            .and_then(toml::Value::as_array)
            .cloned()
            .unwrap_or_default();
        for instance in &instances {
            let endpoint = instance
                .get("endpoint")
                .and_then(toml::Value::as_str)
                .unwrap_or("");
            let authority = endpoint
                .strip_prefix("http://")
                .map(|rest| rest.split('/').next().unwrap_or(rest))
                .with_context(|| {
                    format!("service {name}: endpoint {endpoint:?} is not http://host:port")
                })?;
            let addr: SocketAddr = authority.parse().with_context(|| {
                format!("service {name}: endpoint {endpoint:?} needs a numeric IP and port")
            })?;
            let id = instance
                .get("id")
                .and_then(toml::Value::as_str)
                .map_or_else(|| authority.to_string(), str::to_string);
            backends.push(PlannedBackend {
                role,
                service: name.to_string(),
                instance: id,
                addr,
            });
        }
    }
    anyhow::ensure!(
        !backends.is_empty(),
        "the demo config has no [[mesh.services]] offering forecast or analysis"
    );
    Ok(Plan { api, backends })
}

pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let config_text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read the demo config {}", args.config.display()))?;
    let plan = plan(&config_text)?;
    let data = Arc::new(data::parse(data::BUNDLED_CSV)?);

    // 2. Backends, all bound before anything else starts.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for planned in &plan.backends {
        let listener = server::bind(
            planned.addr,
            &format!("{} instance {}", planned.service, planned.instance),
        )
        .await?;
        let backend = Arc::new(Backend {
            role: planned.role,
            instance: planned.instance.clone(),
            data: Arc::clone(&data),
        });
        tasks.push(tokio::spawn(server::serve(
            listener,
            backend,
            stop_rx.clone(),
        )));
        println!(
            "evolve-demo: {} backend {} ({}) on http://{}",
            planned.role.as_str(),
            planned.instance,
            planned.service,
            planned.addr
        );
    }

    // 3. Plugins.
    let plugins_dir = args.data_dir.join("plugins");
    if let Some(from) = &args.plugins {
        install_plugins(from, &plugins_dir)?;
        println!(
            "evolve-demo: bundled plugins installed into {}",
            plugins_dir.display()
        );
    }

    // 4. The daemon.
    let mut daemon = spawn_daemon(&args)?;
    let api = Api::new(format!("http://{}", plan.api));
    wait_ready(&api, &mut daemon).await?;

    // 5. Seed, 6. tell.
    match seed(&api, &data).await {
        Ok(0) => {}
        Ok(writes) => {
            println!("evolve-demo: registry seeded ({writes} writes)");
            if let Err(error) = wait_seed_visible(&api).await {
                stop_daemon(&mut daemon).await;
                return Err(error);
            }
        }
        Err(error) => {
            stop_daemon(&mut daemon).await;
            return Err(error.context("seeding the demo registry"));
        }
    }
    print_lines(api.base());

    // 7. Run until a signal or the daemon's exit.
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            println!("evolve-demo: stopping");
            stop_daemon(&mut daemon).await;
            Ok(())
        }
        status = daemon.wait() => match status {
            Ok(status) if status.success() => Ok(()),
            Ok(status) => Err(anyhow::anyhow!("the daemon exited: {status}")),
            Err(error) => Err(anyhow::anyhow!("waiting for the daemon: {error}")),
        },
    };
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    outcome
}

fn install_plugins(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot list {}", from.display()))?
    {
        let source = entry?.path();
        let Some(name) = source.file_name() else {
            continue;
        };
        if !source.join("plugin.toml").is_file() {
            continue;
        }
        let target = to.join(name);
        // Wholesale: an older build's leftovers cannot linger.
        if target.exists() {
            std::fs::remove_dir_all(&target)
                .with_context(|| format!("cannot clear {}", target.display()))?;
        }
        std::fs::create_dir_all(&target)?;
        for file in std::fs::read_dir(&source)? {
            let file = file?.path();
            if let Some(file_name) = file.file_name() {
                std::fs::copy(&file, target.join(file_name))
                    .with_context(|| format!("cannot copy {}", file.display()))?;
            }
        }
    }
    Ok(())
}

fn spawn_daemon(args: &UpArgs) -> anyhow::Result<Child> {
    let mut command = Command::new(&args.evolve);
    command
        .arg("serve")
        .arg("--config")
        .arg(&args.config)
        .arg("--data-dir")
        .arg(&args.data_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(log) = &args.daemon_log {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        command.stderr(file);
    }
    command.spawn().with_context(|| {
        format!(
            "cannot start {} (build it with `cargo build --release -p evolve-daemon`)",
            args.evolve.display()
        )
    })
}

/// Polls `GET /readyz` until every plugin dir has had its first load (the API answers before).
async fn wait_ready(api: &Api, daemon: &mut Child) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = daemon.try_wait()? {
            bail!("the daemon exited during start-up ({status}); its log says why");
        }
        if let Ok((StatusCode::OK, _)) = api.call(Method::GET, "/readyz", None).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the daemon at {} did not finish loading its plugins within {READY_TIMEOUT:?} (GET /readyz lists what is still loading)",
                api.base()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `GET /v1/registry` until plugins' view of the registry reflects the seed, so the first
/// pasted line (the doc generator's registry section) sees the models.
async fn wait_seed_visible(api: &Api) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + SEED_VISIBLE_TIMEOUT;
    loop {
        let (_, health) = api.expect(Method::GET, "/v1/registry", None, &[]).await?;
        if health["inventory_current"] == true {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "plugins' view of the registry did not catch up with the seed within \
                 {SEED_VISIBLE_TIMEOUT:?} (GET /v1/registry: {health})"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then wait (kill after [`STOP_TIMEOUT`]).
async fn stop_daemon(daemon: &mut Child) {
    if let Some(pid) = daemon.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(STOP_TIMEOUT, daemon.wait())
        .await
        .is_err()
    {
        let _ = daemon.kill().await;
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Step 5: models, versions, the champion alias, performance points. Safe to repeat: nothing
/// that exists is changed (a moved alias stays where the user moved it). Returns the number of
/// writes made.
pub async fn seed(api: &Api, data: &BTreeMap<String, Series>) -> anyhow::Result<usize> {
    let mut writes = 0;
    let closes = &data
        .get(server::DEFAULT_SYMBOL)
        .context("the bundled data has no default symbol")?
        .closes;
    for (name, versions, description) in MODELS {
        let (status, _) = api
            .expect(
                Method::POST,
                "/v1/models",
                Some(&json!({
                    "name": name,
                    "task_type": TASK,
                    "description": description,
                    "model_class": "evolve-demo",
                    "tags": ["demo"],
                })),
                &[StatusCode::CONFLICT],
            )
            .await?;
        writes += usize::from(status == StatusCode::CREATED);
        let (_, listed) = api
            .expect(
                Method::GET,
                &format!("/v1/models/{name}/versions"),
                None,
                &[],
            )
            .await?;
        let have = listed["versions"].as_array().map_or(0, Vec::len) as u32;
        for version in have + 1..=versions {
            api.expect(
                Method::POST,
                &format!("/v1/models/{name}/versions"),
                Some(&json!({
                    "description": format!("{description} (v{version})"),
                    "status": "validated",
                })),
                &[],
            )
            .await?;
            writes += 1;
        }
        for version in 1..=versions {
            writes += usize::from(seed_points(api, name, version, closes).await?);
        }
    }
    let (model, version) = CHAMPION;
    let (status, _) = api
        .call(
            Method::GET,
            &format!("/v1/models/{model}/aliases/champion"),
            None,
        )
        .await?;
    if status == StatusCode::NOT_FOUND {
        api.expect(
            Method::PUT,
            &format!("/v1/models/{model}/aliases/champion"),
            Some(&json!({"version": version, "reason": "evolve-demo seed"})),
            &[],
        )
        .await?;
        writes += 1;
    }
    Ok(writes)
}

/// `mae` and `mape` of [`SEED_DAYS`] rolling backtests, one a day, for a version that has none;
/// whether it recorded them.
async fn seed_points(api: &Api, name: &str, version: u32, closes: &[f64]) -> anyhow::Result<bool> {
    let path = format!("/v1/models/{name}/performance");
    let (_, existing) = api
        .expect(
            Method::GET,
            &format!("{path}?version={version}&limit=1"),
            None,
            &[],
        )
        .await?;
    if existing["points"].as_array().is_some_and(|p| !p.is_empty()) {
        return Ok(false);
    }
    let (method, _) = method_for(Some(name), Some(version));
    let now = Utc::now();
    let mut points = Vec::new();
    for day in 0..SEED_DAYS {
        let end = closes.len() - day * SEED_ORIGIN_STEP;
        let test = backtest(&closes[..end], method, HOLDOUT)?;
        let at = now - chrono::Duration::days(day as i64 + 1);
        for (metric, value) in [("mae", test.mae), ("mape", test.mape)] {
            points.push(
                json!({"version": version, "metric": metric, "value": value, "timestamp": at}),
            );
        }
    }
    api.expect(Method::POST, &path, Some(&json!({ "points": points })), &[])
        .await?;
    Ok(true)
}

/// The README's quick-start block, compiled in so what `up` prints cannot differ from it.
const README: &str = include_str!("../../README.md");

/// The shell lines between the README's `quickstart` markers (the e2e test runs the same lines).
pub fn quickstart_lines() -> Vec<&'static str> {
    let (begin, end) = ("<!-- quickstart:begin -->", "<!-- quickstart:end -->");
    let Some(block) = README
        .split_once(begin)
        .and_then(|(_, rest)| rest.split_once(end))
        .map(|(block, _)| block)
    else {
        return Vec::new();
    };
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("```") && !l.starts_with('#'))
        .collect()
}

fn print_lines(base: &str) {
    println!("\nevolve-demo: in another shell, from the repository root (README, quick start):");
    for line in quickstart_lines() {
        println!("  {line}");
    }
    println!("\nevolve-demo: ready at {base} (Ctrl-C stops the daemon and the backends)");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_plan_comes_from_the_services_of_the_config() {
        let plan = plan(
            r#"
[server]
listen = "127.0.0.1:7171"
[[mesh.services]]
name = "fc"
capabilities = ["forecast"]
instances = [{ id = "a", endpoint = "http://127.0.0.1:7101" }, { endpoint = "http://127.0.0.1:7102/base" }]
[[mesh.services]]
name = "other"
capabilities = ["quotes"]
instances = [{ endpoint = "http://127.0.0.1:9" }]
[[mesh.services]]
name = "an"
capabilities = ["analysis"]
instances = [{ id = "x", endpoint = "http://127.0.0.1:7111" }]
"#,
        )
        .unwrap();
        assert_eq!(plan.api, "127.0.0.1:7171".parse().unwrap());
        let found: Vec<(Role, &str, u16)> = plan
            .backends
            .iter()
            .map(|b| (b.role, b.instance.as_str(), b.addr.port()))
            .collect();
        assert_eq!(
            found,
            vec![
                (Role::Forecast, "a", 7101),
                (Role::Forecast, "127.0.0.1:7102", 7102),
                (Role::Analysis, "x", 7111),
            ]
        );
        assert!(super::plan("[[mesh.services]]\nname = \"x\"\ncapabilities = [\"forecast\"]\ninstances = [{ endpoint = \"https://h:1\" }]\n").is_err());
    }

    #[test]
    fn the_readme_has_a_quick_start_block() {
        let lines = quickstart_lines();
        assert!(lines.len() >= 3, "{lines:?}");
        assert!(lines.iter().all(|l| !l.starts_with("```")), "{lines:?}");
    }

    #[test]
    fn the_bundled_demo_config_plans_two_forecast_and_two_analysis_backends() {
        let text = include_str!("../../examples/demo/evolve.toml");
        let plan = plan(text).unwrap();
        let count = |role| plan.backends.iter().filter(|b| b.role == role).count();
        assert_eq!((count(Role::Forecast), count(Role::Analysis)), (2, 2));
    }
}
