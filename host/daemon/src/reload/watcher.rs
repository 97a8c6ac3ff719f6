//! Follows the plugins directory: filesystem events (notify) mapped to plugin dirs, debounced,
//! settled, then reconciled; plus a periodic rescan for anything the events missed.
//!
//! How real tools write files, and what handles each:
//! - atomic rename (editors, `cp` to a temp name + `mv`): one event on the final name;
//! - truncate-then-write and multi-step writes (`cargo build`): the debounce waits for quiet,
//!   then the settle check re-reads sizes and mtimes and waits again if they still move;
//! - editor swap and backup files (`.x.swp`, `x~`, `4913`): ignored by name;
//! - a file still incomplete after all that: it fails validation, the serving generation stays,
//!   and the next write triggers another attempt.
//!
//! The directory itself being replaced or briefly missing: nothing is unloaded while it is
//! missing; the watch is re-established (checked at every rescan tick) and a full reconcile
//! follows when it is back.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Reloader, fingerprint};
use evolve_runtime::manifest::MANIFEST_FILE;

/// Filesystem events buffered between notify's thread and the reload task. Past this, events
/// are dropped and a full rescan is scheduled instead, which loses nothing.
const EVENT_BUFFER: usize = 4_096;

/// After the debounce, the files are looked at twice this far apart; a change in between means
/// a writer is still busy.
const SETTLE: Duration = Duration::from_millis(20);

/// How often a missing plugins dir or a failed watch is retried.
const REWATCH_INTERVAL: Duration = Duration::from_secs(1);

/// Device and inode of a directory (`None` when it is missing).
fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Names of editor temp, swap and backup files, which never trigger a reload.
pub fn is_ignored_name(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name == "4913"
        || [".swp", ".swo", ".swx", ".tmp", ".part", ".crdownload"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
}

enum Target {
    Dir(PathBuf),
    Ignore,
    Rescan,
}

enum Signal {
    /// Something changed under this path.
    Changed(PathBuf),
    /// Events were lost or the tree moved: reconcile everything.
    Rescan,
}

impl Reloader {
    /// Starts watching (before returning, so nothing written after this call is missed; call it
    /// before the initial reconcile) and spawns the loop that follows the events.
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (tx, rx) = mpsc::channel::<Signal>(EVENT_BUFFER);
        let watch = self.establish_watch(&tx);
        let reloader = Arc::clone(self);
        tokio::spawn(async move { reloader.watch_loop(tx, rx, watch).await })
    }

    async fn watch_loop(
        self: Arc<Self>,
        tx: mpsc::Sender<Signal>,
        mut rx: mpsc::Receiver<Signal>,
        mut watch: Option<notify::RecommendedWatcher>,
    ) {
        // Identity of the watched directory: a replaced dir (same path, new inode) silently
        // ends an inotify watch, so a change of identity means watch again.
        let mut watched = dir_identity(&self.plugins_dir);
        let debounce = self.config.debounce();
        let mut pending: HashMap<PathBuf, Instant> = HashMap::new();
        let rescan_every = match self.config.rescan_s {
            0 => Duration::MAX,
            s => Duration::from_secs(s),
        };
        let mut next_rescan = Instant::now() + rescan_every.min(Duration::from_secs(86_400 * 365));
        let mut next_rewatch = Instant::now() + REWATCH_INTERVAL;

        loop {
            let next_due = pending.values().min().copied();
            let wake = [
                Some(next_rescan),
                next_due,
                watch.is_none().then_some(next_rewatch),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_rescan);
            tokio::select! {
                signal = rx.recv() => {
                    let Some(signal) = signal else { return };
                    match signal {
                        Signal::Changed(path) => match self.classify(&path) {
                            Target::Dir(dir) => {
                                pending.insert(dir, Instant::now() + debounce);
                            }
                            Target::Ignore => {}
                            Target::Rescan => next_rescan = Instant::now(),
                        },
                        Signal::Rescan => next_rescan = Instant::now(),
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    // A replaced plugins dir may announce itself only through events on its
                    // files: compare identities at every wake (one stat), not just at rescans.
                    let identity = dir_identity(&self.plugins_dir);
                    if watch.is_some() && identity.is_some() && identity != watched {
                        watch = self.establish_watch(&tx);
                        watched = identity;
                        next_rescan = now;
                    }
                    if watch.is_none() && now >= next_rewatch {
                        watch = self.establish_watch(&tx);
                        watched = dir_identity(&self.plugins_dir);
                        next_rewatch = now + REWATCH_INTERVAL;
                        if watch.is_some() {
                            next_rescan = now;
                        }
                    }
                    let mut due: Vec<PathBuf> = pending
                        .iter()
                        .filter(|(_, at)| **at <= now)
                        .map(|(dir, _)| dir.clone())
                        .collect();
                    // Present dirs before vanished ones: a renamed dir then moves its plugin
                    // with a swap, never a moment unloaded.
                    due.sort_by_key(|dir| !dir.join(MANIFEST_FILE).is_file());
                    for dir in due {
                        pending.remove(&dir);
                        if self.settled(&dir).await {
                            self.reconcile(&dir, false).await;
                        } else {
                            pending.insert(dir, Instant::now() + debounce);
                        }
                    }
                    if Instant::now() >= next_rescan {
                        next_rescan = Instant::now() + rescan_every.min(Duration::from_secs(86_400 * 365));
                        if !self.plugins_dir.is_dir() {
                            // Briefly missing (being replaced): keep serving, watch again.
                            tracing::warn!(dir = %self.plugins_dir.display(), "plugins dir is missing; keeping the loaded plugins and waiting for it");
                            watch = None;
                            next_rewatch = Instant::now() + REWATCH_INTERVAL;
                            continue;
                        }

                        if let Err(e) = self.reconcile_all(true).await {
                            tracing::warn!(dir = %self.plugins_dir.display(), error = %e, "rescan of the plugins dir failed");
                        }
                    }
                }
            }
        }
    }

    /// Watches the plugins dir; `None` (and a warning) when it cannot, to be retried.
    fn establish_watch(&self, tx: &mpsc::Sender<Signal>) -> Option<notify::RecommendedWatcher> {
        let sender = tx.clone();
        let handler = move |result: notify::Result<notify::Event>| {
            let signals: Vec<Signal> = match result {
                Ok(event) if event.need_rescan() => vec![Signal::Rescan],
                // Opens and reads (our own reconcile reading the files among them) change
                // nothing; acting on them would loop.
                Ok(event) if matches!(event.kind, notify::EventKind::Access(_)) => Vec::new(),
                Ok(event) => event.paths.into_iter().map(Signal::Changed).collect(),
                Err(_) => vec![Signal::Rescan],
            };
            for signal in signals {
                if sender.try_send(signal).is_err() {
                    // Full (or closed): a rescan covers whatever was dropped.
                    let _ = sender.try_send(Signal::Rescan);
                    break;
                }
            }
        };
        let result = notify::recommended_watcher(handler).and_then(|mut watcher| {
            watcher.watch(&self.plugins_dir, RecursiveMode::Recursive)?;
            Ok(watcher)
        });
        match result {
            Ok(watcher) => {
                tracing::info!(dir = %self.plugins_dir.display(), "watching plugins dir for changes");
                Some(watcher)
            }
            Err(e) => {
                tracing::warn!(dir = %self.plugins_dir.display(), error = %e, "cannot watch plugins dir; retrying");
                None
            }
        }
    }

    /// What a changed path means: a plugin dir to reconcile (the first component below the
    /// plugins dir), nothing (an editor's temp file), or a rescan (the plugins dir itself, or a
    /// path outside it). notify reports absolute paths, so a relative plugins dir is also
    /// compared in canonical form.
    fn classify(&self, path: &Path) -> Target {
        let relative = match path.strip_prefix(&self.plugins_dir) {
            Ok(relative) => relative.to_path_buf(),
            Err(_) => match self
                .plugins_dir
                .canonicalize()
                .ok()
                .and_then(|root| path.strip_prefix(root).ok().map(Path::to_path_buf))
            {
                Some(relative) => relative,
                None => return Target::Rescan,
            },
        };
        let Some(Component::Normal(first)) = relative.components().next() else {
            return Target::Rescan;
        };
        let leaf = relative
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        if is_ignored_name(&first.to_string_lossy()) || is_ignored_name(&leaf) {
            return Target::Ignore;
        }
        Target::Dir(self.plugins_dir.join(first))
    }

    /// Whether the dir's files stopped changing: two looks [`SETTLE`] apart agree.
    async fn settled(&self, dir: &Path) -> bool {
        let before = fingerprint(dir);
        tokio::time::sleep(SETTLE).await;
        before == fingerprint(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::is_ignored_name;

    #[test]
    fn editor_droppings_are_ignored_and_plugin_files_are_not() {
        for name in [
            ".echo.wasm.swp",
            "plugin.toml~",
            "4913",
            "x.tmp",
            ".#plugin.toml",
            "a.wasm.part",
        ] {
            assert!(is_ignored_name(name), "{name}");
        }
        for name in ["plugin.toml", "echo.wasm", "README.md"] {
            assert!(!is_ignored_name(name), "{name}");
        }
    }
}
