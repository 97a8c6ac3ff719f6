//! A [`ModelSelector`] double for the model tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::routing::RoutedOutcome;
use super::selector::{ModelSelector, NoModel, Selection};
use crate::config::ModelWanted;

/// Answers `version` (changeable) and counts its calls; recorded outcomes go to a channel.
pub(super) struct FakeSelector {
    pub(super) version: std::sync::atomic::AtomicU32,
    pub(super) calls: AtomicU64,
    recorded: std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedSender<RoutedOutcome>>>,
}

impl ModelSelector for FakeSelector {
    fn select(
        &self,
        _task: &str,
        _wanted: &ModelWanted,
        _policy: Option<&str>,
    ) -> Result<Selection, NoModel> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Selection {
            name: "m".into(),
            version: self.version.load(Ordering::SeqCst),
            source: "best:default".into(),
        })
    }

    fn record_outcome(
        &self,
        model: &str,
        version: u32,
        metrics: &[(String, f64)],
        source: &str,
    ) -> Result<(), String> {
        if let Some(sender) = self.recorded.lock().expect("lock").as_ref() {
            let _ = sender.send(RoutedOutcome {
                model: model.into(),
                version,
                metrics: metrics.to_vec(),
                source: source.into(),
            });
        }
        Ok(())
    }
}

pub(super) fn fake() -> (
    Arc<FakeSelector>,
    tokio::sync::mpsc::UnboundedReceiver<RoutedOutcome>,
) {
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    let selector = Arc::new(FakeSelector {
        version: std::sync::atomic::AtomicU32::new(1),
        calls: AtomicU64::new(0),
        recorded: std::sync::Mutex::new(Some(sender)),
    });
    (selector, receiver)
}
