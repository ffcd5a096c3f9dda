//! Hot reload on file change: a tokio task polling the plugin files' modification time and size
//! (no inotify dependency) and calling `PluginHost::reload` when one changes.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::host::PluginHost;

/// Default polling period.
pub const WATCH_PERIOD: Duration = Duration::from_millis(500);

/// [`watch_every`] with the default 500 ms period.
pub fn watch(host: Arc<PluginHost>) -> JoinHandle<()> {
    watch_every(host, WATCH_PERIOD)
}

/// Spawns (on the current tokio runtime) a task that polls the plugin files every `period` and
/// reloads when one changed. The task holds only a weak reference: it ends when the host is
/// dropped. A rejected reload is logged and retried when the file changes again.
pub fn watch_every(host: Arc<PluginHost>, period: Duration) -> JoinHandle<()> {
    let weak: Weak<PluginHost> = Arc::downgrade(&host);
    let mut last = host.file_stamps();
    drop(host);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(host) = weak.upgrade() else { return };
            let now = host.file_stamps();
            if now == last {
                continue;
            }
            last = now;
            // Compiling takes a while: keep it off the async workers.
            match tokio::task::spawn_blocking(move || host.reload()).await {
                Ok(Ok(report)) => {
                    tracing::info!(target: "lockbroker::plugin", "plugin files changed: {report}")
                }
                Ok(Err(e)) => tracing::error!(target: "lockbroker::plugin", "{e}"),
                Err(e) => tracing::error!(target: "lockbroker::plugin", "reload task failed: {e}"),
            }
        }
    })
}
