//! `evolve health`: the daemon's `GET /v1/health`, one line per part. Exits non-zero when the
//! system is unhealthy, so scripts can gate on it.

use anyhow::bail;
use hyper::{Method, StatusCode};
use serde_json::Value;

use super::ApiArgs;
use super::client::{call, error_text};

pub async fn health(api: &ApiArgs) -> anyhow::Result<()> {
    let (status, value) = call(api, Method::GET, "/v1/health", None).await?;
    if !status.is_success() && status != StatusCode::SERVICE_UNAVAILABLE {
        bail!("{}", error_text(status, &value));
    }
    if api.json {
        println!("{value}");
    } else {
        print!("{}", render(&value));
    }
    if value["status"] == "unhealthy" {
        bail!("the system is unhealthy");
    }
    Ok(())
}

/// `system: STATUS` then `  part  STATUS  summary` and the reasons under their part.
fn render(value: &Value) -> String {
    let mut out = format!("system: {}\n", value["status"].as_str().unwrap_or("?"));
    let Some(parts) = value["parts"].as_object() else {
        return out;
    };
    for (name, part) in parts {
        out.push_str(&format!(
            "  {name:<9} {:<9} {}\n",
            part["status"].as_str().unwrap_or("?"),
            summary(name, &part["detail"])
        ));
        for reason in part["reasons"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "            - {}\n",
                reason.as_str().unwrap_or("")
            ));
        }
    }
    out
}

fn summary(part: &str, detail: &Value) -> String {
    match part {
        "plugins" => format!(
            "{} serving, {} failed, {} quarantined",
            detail["serving"],
            detail["failed"].as_array().map_or(0, Vec::len),
            detail["quarantined"].as_array().map_or(0, Vec::len)
        ),
        "services" => {
            let services = detail["services"].as_array().map_or(&[][..], Vec::as_slice);
            let routable: u64 = services.iter().filter_map(|s| s["routable"].as_u64()).sum();
            let instances: u64 = services
                .iter()
                .filter_map(|s| s["instances"].as_u64())
                .sum();
            format!(
                "{} services, {routable}/{instances} instances routable, {} breakers open",
                services.len(),
                detail["breakers_open"]
            )
        }
        "registry" => format!(
            "{} (read {}, quick_check at open {})",
            detail["path"].as_str().unwrap_or("?"),
            detail["read_probe"].as_str().unwrap_or("?"),
            detail["quick_check_at_open"].as_str().unwrap_or("?")
        ),
        "agents" => {
            let agents = detail["agents"].as_array().map_or(&[][..], Vec::as_slice);
            let count = |status: &str| agents.iter().filter(|a| a["status"] == status).count();
            let unchecked = match count("unknown") {
                0 => String::new(),
                n => format!(", {n} not checked yet"),
            };
            format!("{}/{} healthy{unchecked}", count("healthy"), agents.len())
        }
        _ => detail["summary"].as_str().unwrap_or("").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn renders_one_line_per_part_with_reasons_beneath() {
        let text = super::render(&json!({
            "status": "degraded",
            "parts": {
                "agents": {"status": "degraded", "reasons": ["agent x is unhealthy: y"],
                           "detail": {"agents": [{"status": "unhealthy"}, {"status": "healthy"},
                                                {"status": "unknown"}]}},
                "cluster": {"status": "healthy", "reasons": [],
                            "detail": {"summary": "not configured (single node)"}},
            }
        }));
        assert_eq!(
            text,
            "system: degraded\n  agents    degraded  1/3 healthy, 1 not checked yet\n            - agent x is unhealthy: y\n  cluster   healthy   not configured (single node)\n"
        );
    }
}
