//! `GET /v1/cluster`: this node, its connection to Redis, the peers with last-seen and
//! heartbeat age, the last full sync and its lag, the event publisher's buffered and dropped
//! counts, and how every remote registration resolved in the merged catalog. Without
//! `[cluster] redis_url` it answers `state: "disabled"` (a single daemon).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::ApiState;

pub(super) async fn show(State(state): State<ApiState>) -> Json<Value> {
    let status = match &state.cluster {
        Some(cluster) => cluster.status(),
        None => evolve_cluster::Cluster::disabled(String::new()).status(),
    };
    let now = chrono::Utc::now();
    let peers: Vec<Value> = status
        .peers
        .iter()
        .map(|p| {
            let mut peer = serde_json::to_value(p).unwrap_or(Value::Null);
            peer["heartbeat_age_ms"] = json!((now - p.heartbeat_at).num_milliseconds());
            peer["last_seen_ago_ms"] = json!((now - p.last_seen).num_milliseconds());
            peer
        })
        .collect();
    let remote = state
        .mesh
        .as_ref()
        .map(|m| m.remote_entries())
        .unwrap_or_default();
    let mut body = serde_json::to_value(&status).unwrap_or_else(|_| json!({}));
    body["mode"] = json!(if status.enabled {
        "cluster"
    } else {
        "embedded"
    });
    body["peers"] = json!(peers);
    body["remote_services"] = json!(remote);
    Json(body)
}
