//! `evolve service …`: the mesh catalog of a running daemon.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::{Value, json};

use super::ApiArgs;
use super::client::{call_for_text, call_ok};
use super::render::print_json;

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// List services and their instances' state.
    List(ApiArgs),
    /// Register a service (or replace it with --replace).
    Register(RegisterArgs),
    /// Show one service.
    Show {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Remove a service registered through the API.
    Remove {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Health, breaker state, last check and latency of every instance.
    Health(ApiArgs),
    /// Send one health-path request through the mesh to a service.
    Probe {
        name: String,
        #[command(flatten)]
        api: ApiArgs,
    },
}

#[derive(Debug, Args)]
pub struct RegisterArgs {
    /// A JSON or TOML file with the whole service spec (as `POST /v1/services` takes);
    /// excludes the flags below.
    #[arg(long, conflicts_with_all = ["name", "instance"])]
    pub file: Option<PathBuf>,
    /// Service name.
    #[arg(long, required_unless_present = "file")]
    pub name: Option<String>,
    /// Free-form type, e.g. model-server.
    #[arg(long = "type", default_value = "")]
    pub service_type: String,
    /// A capability offered (repeatable).
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
    /// An instance: URL[,weight=N][,id=ID][,protocol=http1|h2c] (repeatable).
    #[arg(long = "instance", required_unless_present = "file")]
    pub instance: Vec<String>,
    /// Health-checker plugin for active checks (e.g. http-health).
    #[arg(long)]
    pub checker: Option<String>,
    /// Health path passed to the checker.
    #[arg(long, default_value = "/health")]
    pub health_path: String,
    /// Time between checks, ms.
    #[arg(long, default_value_t = 10_000)]
    pub interval_ms: u64,
    /// Load-balancing algorithm: round_robin, least_loaded, weighted, p2c_ewma.
    #[arg(long)]
    pub lb: Option<String>,
    /// Replace an existing service of that name.
    #[arg(long)]
    pub replace: bool,
    #[command(flatten)]
    pub api: ApiArgs,
}

pub async fn run(command: ServiceCommand) -> anyhow::Result<()> {
    match command {
        ServiceCommand::List(api) => {
            let value = call_ok(&api, Method::GET, "/v1/services", None).await?;
            print_services(&api, &value)
        }
        ServiceCommand::Register(args) => register(args).await,
        ServiceCommand::Show { name, api } => {
            let value = call_ok(&api, Method::GET, &format!("/v1/services/{name}"), None).await?;
            print_json(&value)
        }
        ServiceCommand::Remove { name, api } => {
            let value =
                call_ok(&api, Method::DELETE, &format!("/v1/services/{name}"), None).await?;
            if api.json {
                println!("{value}");
            } else {
                println!("removed {name}");
            }
            Ok(())
        }
        ServiceCommand::Health(api) => {
            let value = call_ok(&api, Method::GET, "/v1/services/health", None).await?;
            print_services(&api, &value)
        }
        ServiceCommand::Probe { name, api } => {
            let value = call_ok(
                &api,
                Method::POST,
                &format!("/v1/services/{name}/probe"),
                None,
            )
            .await?;
            if api.json {
                println!("{value}");
            } else {
                println!(
                    "{name}: HTTP {} from {} in {} µs",
                    value["status"],
                    value["instance"].as_str().unwrap_or("?"),
                    value["latency_us"]
                );
            }
            Ok(())
        }
    }
}

async fn register(args: RegisterArgs) -> anyhow::Result<()> {
    let spec = match &args.file {
        Some(path) => read_spec(path)?,
        None => spec_from_flags(&args)?,
    };
    let name = spec["name"].as_str().unwrap_or_default().to_string();
    let (method, path) = if args.replace {
        (Method::PUT, format!("/v1/services/{name}"))
    } else {
        (Method::POST, "/v1/services".to_string())
    };
    let Some(value) = call_for_text(&args.api, method, &path, Some(&spec)).await? else {
        return Ok(());
    };
    let instances = value["instances"].as_array().map_or(0, Vec::len);
    println!("registered {name} with {instances} instance(s)");
    Ok(())
}

fn read_spec(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not TOML", path.display()))?;
        Ok(serde_json::to_value(table)?)
    } else {
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
    }
}

fn spec_from_flags(args: &RegisterArgs) -> anyhow::Result<Value> {
    let mut instances = Vec::new();
    for text in &args.instance {
        instances.push(parse_instance(text)?);
    }
    let mut spec = json!({
        "name": args.name,
        "type": args.service_type,
        "capabilities": args.capabilities,
        "instances": instances,
    });
    if let Some(checker) = &args.checker {
        spec["health"] = json!({
            "checker": checker,
            "path": args.health_path,
            "interval_ms": args.interval_ms,
        });
    }
    if let Some(lb) = &args.lb {
        spec["lb"] = json!(lb);
    }
    Ok(spec)
}

/// `URL[,weight=N][,id=ID][,protocol=P]`
fn parse_instance(text: &str) -> anyhow::Result<Value> {
    let mut parts = text.split(',');
    let endpoint = parts.next().unwrap_or_default().trim();
    let mut instance = json!({ "endpoint": endpoint });
    for part in parts {
        let Some((key, value)) = part.split_once('=') else {
            bail!("--instance {text}: \"{part}\" is not key=value (weight=, id=, protocol=)");
        };
        match key.trim() {
            "weight" => {
                let weight: u32 = value.trim().parse().with_context(|| {
                    format!("--instance {text}: weight \"{value}\" is not a number")
                })?;
                instance["weight"] = json!(weight);
            }
            "id" => instance["id"] = json!(value.trim()),
            "protocol" => instance["protocol"] = json!(value.trim()),
            other => bail!("--instance {text}: unknown key \"{other}\" (weight, id, protocol)"),
        }
    }
    Ok(instance)
}

fn print_services(api: &ApiArgs, value: &Value) -> anyhow::Result<()> {
    if api.json {
        return print_json(value);
    }
    let services = value["services"].as_array().cloned().unwrap_or_default();
    if services.is_empty() {
        println!("no services");
    }
    for service in services {
        println!(
            "{} ({})",
            service["name"].as_str().unwrap_or("?"),
            service["status"].as_str().unwrap_or("?")
        );
        for i in service["instances"].as_array().cloned().unwrap_or_default() {
            println!(
                "  {:<24} weight {:<4} health {:<9} circuit {:<9} ejected {:<5} ewma {} µs",
                i["id"].as_str().unwrap_or("?"),
                i["weight"],
                i["health"].as_str().unwrap_or("?"),
                i["circuit"].as_str().unwrap_or("?"),
                i["ejected"],
                i["ewma_latency_us"]
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_flags_parse() {
        let v = parse_instance("http://a:1,weight=5,id=x,protocol=h2c").expect("valid");
        assert_eq!(
            v,
            json!({"endpoint": "http://a:1", "weight": 5, "id": "x", "protocol": "h2c"})
        );
        assert!(parse_instance("http://a:1,weight=heavy").is_err());
        assert!(parse_instance("http://a:1,colour=red").is_err());
    }
}
