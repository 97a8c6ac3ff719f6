//! `evolve events tail --redis URL`: follows every node's events straight from Redis, one JSON
//! line per event, as the nodes publish them.

use redis::{AsyncConnectionConfig, PushKind};
use tokio::sync::mpsc;

use super::wire::Keys;

/// Why following stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error(transparent)]
    Url(#[from] super::ClusterError),
    #[error("cannot follow events on Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis closed the connection")]
    Closed,
}

/// Subscribes to `kind`'s channel (or every event channel) under `prefix` and hands each
/// message's JSON to `on_event` until the connection ends or `on_event` returns false.
pub async fn follow(
    url: &str,
    prefix: &str,
    kind: Option<&str>,
    mut on_event: impl FnMut(&str) -> bool,
) -> Result<(), TailError> {
    let client = super::client(url, &super::RedisAccess::default())?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let config = AsyncConnectionConfig::new().set_push_sender(tx);
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let keys = Keys::new(prefix);
    match kind {
        Some(kind) => con.subscribe(keys.events_channel(kind)).await?,
        None => con.psubscribe(keys.events_pattern()).await?,
    }
    while let Some(info) = rx.recv().await {
        let payload = match info.kind {
            PushKind::Message => info.data.get(1),
            PushKind::PMessage => info.data.get(2),
            PushKind::Disconnection => return Err(TailError::Closed),
            _ => None,
        };
        let Some(payload) = payload else { continue };
        let bytes: Vec<u8> = redis::from_redis_value_ref(payload).unwrap_or_default();
        if !on_event(&String::from_utf8_lossy(&bytes)) {
            return Ok(());
        }
    }
    Err(TailError::Closed)
}
