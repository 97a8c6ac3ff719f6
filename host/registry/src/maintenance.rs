//! The registry's own background work, owned by the registry rather than by whoever starts the
//! daemon: recomputing the plugins' inventory view after writes, and scheduled backups.
//!
//! [`Maintenance::start`] spawns both on the current tokio runtime; they run on blocking
//! threads (SQLite is synchronous) and stop when the returned [`Maintenance`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use evolve_core::events::{Event, EventBus, EventKind};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use crate::Registry;

/// How often the inventory view (models, best per task) is recomputed when it changed: plugins
/// see registry writes at most this late, and a burst of writes costs one recomputation.
pub const INVENTORY_REFRESH: Duration = Duration::from_secs(1);

/// The registry's background tasks; dropping this stops them.
#[derive(Debug)]
pub struct Maintenance {
    tasks: Vec<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the inventory refresh and, when `backup_every` is given, scheduled backups (the
    /// first one period after start), each announced as `registry.backup_written` on `events`.
    pub fn start(
        registry: Arc<Registry>,
        backup_every: Option<Duration>,
        events: EventBus,
    ) -> Maintenance {
        let mut tasks = vec![tokio::spawn(refresh_inventory(Arc::clone(&registry)))];
        if let Some(period) = backup_every.filter(|p| !p.is_zero()) {
            tasks.push(tokio::spawn(scheduled_backups(registry, period, events)));
        }
        Maintenance { tasks }
    }
}

impl Drop for Maintenance {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn refresh_inventory(registry: Arc<Registry>) {
    let mut tick = tokio::time::interval(INVENTORY_REFRESH);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let registry = Arc::clone(&registry);
        let _ = tokio::task::spawn_blocking(move || registry.refresh_inventory()).await;
    }
}

async fn scheduled_backups(registry: Arc<Registry>, period: Duration, events: EventBus) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let registry = Arc::clone(&registry);
        match tokio::task::spawn_blocking(move || registry.backup_now()).await {
            Ok(Ok(backup)) => events.publish(Event::new(
                EventKind::RegistryBackupWritten,
                &backup.file,
                serde_json::json!({ "path": backup.path, "bytes": backup.bytes, "scheduled": true }),
            )),
            Ok(Err(error)) => tracing::error!(%error, "scheduled registry backup failed"),
            Err(error) => tracing::error!(%error, "scheduled registry backup task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{NewModel, RegistryConfig};

    fn model(name: &str) -> NewModel {
        NewModel {
            name: name.into(),
            task_type: "forecasting".into(),
            description: String::new(),
            model_class: "lstm".into(),
            artifact_uri: None,
            sha256: None,
            tags: Vec::new(),
            dependencies: Vec::new(),
            parameters: Default::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn writes_reach_the_inventory_and_backups_run_on_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(RegistryConfig::in_dir(dir.path())).unwrap());
        let events = EventBus::new();
        let mut seen = events.subscribe();
        let maintenance = Maintenance::start(
            Arc::clone(&registry),
            Some(Duration::from_secs(60)),
            events.clone(),
        );
        registry
            .register_model(model("momentum"), Some("ops"))
            .unwrap();
        assert!(!registry.inventory_current(), "a write is pending");
        // Time advances by itself while every task waits: the next refresh tick comes.
        while !registry.inventory_current() {
            tokio::time::sleep(INVENTORY_REFRESH).await;
        }
        assert_eq!(registry.inventory_models()[0].name, "momentum");
        let backup = seen.recv().await.unwrap();
        assert_eq!(backup.kind, EventKind::RegistryBackupWritten);
        assert_eq!(backup.data["scheduled"], true);
        drop(maintenance);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_it_stops_the_work() {
        let dir = tempfile::tempdir().unwrap();
        let registry = Arc::new(Registry::open(RegistryConfig::in_dir(dir.path())).unwrap());
        let maintenance = Maintenance::start(Arc::clone(&registry), None, EventBus::new());
        drop(maintenance);
        // Let the aborted tasks be dropped, then write: no refresh follows.
        tokio::task::yield_now().await;
        registry
            .register_model(model("momentum"), Some("ops"))
            .unwrap();
        tokio::time::sleep(INVENTORY_REFRESH * 5).await;
        assert!(!registry.inventory_current());
    }
}
