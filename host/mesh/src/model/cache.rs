//! Recent selections ([`SelectionCache`]), so the hot path does not ask the registry per
//! request; a registry event that changes what a selection returns empties it before the next
//! lookup.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::broadcast;
use tokio::time::Instant;

use super::selector::{NoModel, Selection};
use crate::config::ModelWanted;
use evolve_core::events::{Event, EventBus, EventKind};

/// A selection is reused for at most this long, so the hot path does not query SQLite per
/// request; alias moves and new versions empty the cache at once (see the module docs), so only
/// performance-driven changes of the best model wait up to this long.
pub const SELECTION_TTL: Duration = Duration::from_secs(1);
/// Selections cached at most (routes × tasks × policies in practice: a handful).
const MAX_CACHED_SELECTIONS: usize = 1_024;

pub(super) type CacheKey = (String, ModelWanted, Option<String>);
/// A selection (or why there is none) and when it was asked for.
type CacheEntry = (Instant, Result<Selection, NoModel>);

/// Recent selections, emptied by registry events.
pub struct SelectionCache {
    entries: Mutex<HashMap<CacheKey, CacheEntry>>,
    events: Mutex<broadcast::Receiver<Event>>,
}

impl SelectionCache {
    pub fn new(events: &EventBus) -> SelectionCache {
        SelectionCache {
            entries: Mutex::new(HashMap::new()),
            events: Mutex::new(events.subscribe()),
        }
    }

    /// Empties the cache when an event since the last call changed what a selection returns.
    /// Reading the receiver here (not in a task) makes the ordering strict: an alias move whose
    /// API answer the client has seen was published before its next request gets here.
    fn absorb_events(&self) {
        let Ok(mut receiver) = self.events.lock() else {
            return;
        };
        let mut stale = false;
        loop {
            match receiver.try_recv() {
                Ok(event) => {
                    stale |= matches!(
                        event.kind,
                        EventKind::ModelAliasMoved
                            | EventKind::ModelVersionCreated
                            | EventKind::ModelRegistered
                            | EventKind::RegistryRestored
                    );
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => stale = true,
                Err(_) => break,
            }
        }
        if stale && let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }

    pub(super) fn get(&self, key: &CacheKey, now: Instant) -> Option<Result<Selection, NoModel>> {
        self.absorb_events();
        let entries = self.entries.lock().ok()?;
        let (at, selection) = entries.get(key)?;
        (now.saturating_duration_since(*at) < SELECTION_TTL).then(|| selection.clone())
    }

    pub(super) fn put(&self, key: CacheKey, now: Instant, selection: Result<Selection, NoModel>) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= MAX_CACHED_SELECTIONS {
                entries.retain(|_, (at, _)| now.saturating_duration_since(*at) < SELECTION_TTL);
                if entries.len() >= MAX_CACHED_SELECTIONS {
                    return;
                }
            }
            entries.insert(key, (now, selection));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use serde_json::Value;

    use super::*;
    use crate::model::fake::fake;
    use crate::model::routing::ModelRouting;

    #[tokio::test(start_paused = true)]
    async fn selections_are_cached_for_the_ttl_and_emptied_by_alias_moves() {
        let events = EventBus::new();
        let (selector, _recorded) = fake();
        let routing = ModelRouting::start(selector.clone(), &events, Arc::default());
        let select = || routing.select("forecast", &ModelWanted::Best, None);
        assert_eq!(select().await.expect("model").version, 1);
        selector.version.store(2, Ordering::SeqCst);
        // Within the TTL the cached answer stands, without asking again.
        assert_eq!(select().await.expect("model").version, 1);
        assert_eq!(selector.calls.load(Ordering::SeqCst), 1);
        // After the TTL it asks again.
        tokio::time::advance(SELECTION_TTL).await;
        assert_eq!(select().await.expect("model").version, 2);
        assert_eq!(selector.calls.load(Ordering::SeqCst), 2);
        // An alias move empties the cache at once; other events do not.
        selector.version.store(3, Ordering::SeqCst);
        events.publish(Event::new(EventKind::PluginLoaded, "p", Value::Null));
        assert_eq!(select().await.expect("model").version, 2);
        events.publish(Event::new(EventKind::ModelAliasMoved, "m", Value::Null));
        assert_eq!(select().await.expect("model").version, 3);
        assert_eq!(selector.calls.load(Ordering::SeqCst), 3);
    }
}
