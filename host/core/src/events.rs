//! The host's internal event bus: every state change of a plugin (and, as they land, of services,
//! health, circuits, the registry and agents) is published here as a versioned, serialisable
//! [`Event`]. Subscribers: the log (every event is a tracing line with `event = <kind>`), the
//! recent-events ring behind `GET /v1/events`, and the cluster's Redis publisher
//! ([`crate::cluster`]).
//!
//! Publishing never blocks: the broadcast channel drops the oldest events for a subscriber that
//! falls behind, and that subscriber sees how many it missed.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

/// Schema version of [`Event`]'s JSON form; bumped on any incompatible change.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// Events buffered per subscriber before the slowest one starts missing events.
const CHANNEL_CAPACITY: usize = 1_024;

/// Events kept for `GET /v1/events`.
const RECENT_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "plugin.loaded")]
    PluginLoaded,
    #[serde(rename = "plugin.reloaded")]
    PluginReloaded,
    #[serde(rename = "plugin.reload_failed")]
    PluginReloadFailed,
    #[serde(rename = "plugin.rolled_back")]
    PluginRolledBack,
    #[serde(rename = "plugin.quarantined")]
    PluginQuarantined,
    #[serde(rename = "plugin.unloaded")]
    PluginUnloaded,
    #[serde(rename = "plugin.retired")]
    PluginRetired,
    #[serde(rename = "plugin.released")]
    PluginReleased,
    /// A plugin's `describe()` named it differently from its manifest (`data.claimed_name`);
    /// the manifest name is the one used. Once per loaded generation.
    #[serde(rename = "plugin.name_mismatch")]
    PluginNameMismatch,
    #[serde(rename = "agent.run_finished")]
    AgentRunFinished,
    #[serde(rename = "agent.health_changed")]
    AgentHealthChanged,
    #[serde(rename = "service.registered")]
    ServiceRegistered,
    #[serde(rename = "service.deregistered")]
    ServiceDeregistered,
    #[serde(rename = "health.changed")]
    HealthChanged,
    #[serde(rename = "circuit.opened")]
    CircuitOpened,
    #[serde(rename = "circuit.closed")]
    CircuitClosed,
    #[serde(rename = "instance.ejected")]
    InstanceEjected,
    #[serde(rename = "model.registered")]
    ModelRegistered,
    #[serde(rename = "model.version_created")]
    ModelVersionCreated,
    /// An alias was set, rolled back or deleted (`data.action`).
    #[serde(rename = "model.alias_moved")]
    ModelAliasMoved,
    #[serde(rename = "registry.backup_written")]
    RegistryBackupWritten,
    #[serde(rename = "registry.restored")]
    RegistryRestored,
    /// This node reached Redis and joined the cluster.
    #[serde(rename = "cluster.connected")]
    ClusterConnected,
    /// This node lost Redis: it routes on the last known catalog and buffers events.
    #[serde(rename = "cluster.disconnected")]
    ClusterDisconnected,
    /// Another node was seen for the first time (subject: its node id).
    #[serde(rename = "cluster.peer_joined")]
    ClusterPeerJoined,
    /// Another node's heartbeat lapsed or it left; its services were removed.
    #[serde(rename = "cluster.peer_lost")]
    ClusterPeerLost,
    /// Another node's services were merged into the routing table (subject: that node).
    #[serde(rename = "cluster.catalog_merged")]
    ClusterCatalogMerged,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PluginLoaded => "plugin.loaded",
            EventKind::PluginReloaded => "plugin.reloaded",
            EventKind::PluginReloadFailed => "plugin.reload_failed",
            EventKind::PluginRolledBack => "plugin.rolled_back",
            EventKind::PluginQuarantined => "plugin.quarantined",
            EventKind::PluginUnloaded => "plugin.unloaded",
            EventKind::PluginRetired => "plugin.retired",
            EventKind::PluginReleased => "plugin.released",
            EventKind::PluginNameMismatch => "plugin.name_mismatch",
            EventKind::AgentRunFinished => "agent.run_finished",
            EventKind::AgentHealthChanged => "agent.health_changed",
            EventKind::ServiceRegistered => "service.registered",
            EventKind::ServiceDeregistered => "service.deregistered",
            EventKind::HealthChanged => "health.changed",
            EventKind::CircuitOpened => "circuit.opened",
            EventKind::CircuitClosed => "circuit.closed",
            EventKind::InstanceEjected => "instance.ejected",
            EventKind::ModelRegistered => "model.registered",
            EventKind::ModelVersionCreated => "model.version_created",
            EventKind::ModelAliasMoved => "model.alias_moved",
            EventKind::RegistryBackupWritten => "registry.backup_written",
            EventKind::RegistryRestored => "registry.restored",
            EventKind::ClusterConnected => "cluster.connected",
            EventKind::ClusterDisconnected => "cluster.disconnected",
            EventKind::ClusterPeerJoined => "cluster.peer_joined",
            EventKind::ClusterPeerLost => "cluster.peer_lost",
            EventKind::ClusterCatalogMerged => "cluster.catalog_merged",
        }
    }
}

/// One thing that happened.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub v: u32,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    /// The subject: a plugin name, or a service name for mesh events.
    pub subject: String,
    /// Kind-specific fields (generation, sha256, reason, durations, ...).
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(kind: EventKind, subject: impl Into<String>, data: serde_json::Value) -> Event {
        Event {
            v: EVENT_SCHEMA_VERSION,
            kind,
            at: Utc::now(),
            subject: subject.into(),
            data,
        }
    }
}

/// Cheap to clone; all clones publish to the same subscribers.
#[derive(Debug, Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Event>,
    recent: Arc<Mutex<VecDeque<Event>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new()
    }
}

impl EventBus {
    pub fn new() -> EventBus {
        let (sender, _) = broadcast::channel(CHANNEL_CAPACITY);
        EventBus {
            sender,
            recent: Arc::default(),
        }
    }

    /// Publishes `event`: logs it, keeps it for `recent`, and sends it to subscribers.
    pub fn publish(&self, event: Event) {
        let data = event.data.to_string();
        match event.kind {
            EventKind::PluginReloadFailed
            | EventKind::PluginRolledBack
            | EventKind::PluginQuarantined
            | EventKind::PluginNameMismatch
            | EventKind::CircuitOpened
            | EventKind::InstanceEjected
            | EventKind::ClusterDisconnected
            | EventKind::ClusterPeerLost => {
                tracing::warn!(event = event.kind.as_str(), subject = %event.subject, data = %data, "{}", event.kind.as_str());
            }
            _ => {
                tracing::info!(event = event.kind.as_str(), subject = %event.subject, data = %data, "{}", event.kind.as_str());
            }
        }
        // Kept and sent under one lock, so `follow` sees each event exactly once: in its
        // snapshot or on its receiver.
        let mut recent = crate::sync::lock(&self.recent);
        if recent.len() == RECENT_CAPACITY {
            recent.pop_front();
        }
        recent.push_back(event.clone());
        // No subscriber is not an error: events are also logged and kept in `recent`.
        let _ = self.sender.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.sender.subscribe()
    }

    /// The recent events (oldest first) and a receiver of every later one, with no gap and no
    /// event in both: what a follower (`GET /v1/events?follow=true`) replays, then streams.
    pub fn follow(&self) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let recent = crate::sync::lock(&self.recent);
        let receiver = self.sender.subscribe();
        (recent.iter().cloned().collect(), receiver)
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        let recent = crate::sync::lock(&self.recent);
        recent.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_get_published_events_and_recent_keeps_a_bounded_tail() {
        let bus = EventBus::new();
        let mut rx = bus.subscribe();
        for i in 0..RECENT_CAPACITY + 3 {
            bus.publish(Event::new(
                EventKind::PluginLoaded,
                format!("p{i}"),
                serde_json::Value::Null,
            ));
        }
        let first = rx.recv().await.expect("event");
        assert_eq!(first.subject, "p0");
        let recent = bus.recent();
        assert_eq!(recent.len(), RECENT_CAPACITY);
        assert_eq!(recent[0].subject, "p3");
        let json = serde_json::to_value(&recent[0]).expect("serialises");
        assert_eq!(json["kind"], "plugin.loaded");
        assert_eq!(json["v"], EVENT_SCHEMA_VERSION);
    }

    #[tokio::test]
    async fn a_follower_sees_every_event_once_across_its_snapshot_and_receiver() {
        // Fewer than the channel holds, so the receiver cannot lag.
        const TOTAL: usize = 1_000;
        let bus = EventBus::new();
        let publisher = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for i in 0..TOTAL {
                    bus.publish(Event::new(
                        EventKind::PluginLoaded,
                        i.to_string(),
                        serde_json::Value::Null,
                    ));
                }
            })
        };
        // Follow while the publisher runs (any moment works; the assertion holds for all).
        while bus.recent().len() < 10 {
            std::thread::yield_now();
        }
        let (snapshot, mut receiver) = bus.follow();
        publisher.join().expect("publisher");
        let mut seen: Vec<usize> = snapshot
            .iter()
            .map(|e| e.subject.parse().expect("index"))
            .collect();
        while let Ok(event) = receiver.try_recv() {
            seen.push(event.subject.parse().expect("index"));
        }
        let first = seen[0];
        let expected: Vec<usize> = (first..TOTAL).collect();
        assert_eq!(seen, expected, "no gap and no duplicate");
    }
}
