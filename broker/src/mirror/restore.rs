//! Restore at start: asks the mirror plugin for the leases it holds (retrying until
//! `restore_timeout_ms` while Redis is unreachable), installs them in the table as orphaned
//! leases of session 0 with their fence and remaining TTL, and raises the fence floor above the
//! largest fence ever handed out. Runs before the first client is served.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::MirrorError;
use super::convert::Modes;
use crate::broker::Broker;
use crate::plugins::{MirrorPlugin, wit};
use crate::table::Mode;

/// Fetches the restore state, retrying while the plugin fails.
pub async fn fetch(
    plugin: &MirrorPlugin,
    timeout: Duration,
) -> Result<wit::RestoreState, MirrorError> {
    let started = Instant::now();
    loop {
        match plugin.restore().await {
            Ok(state) => return Ok(state),
            Err(e) if started.elapsed() < timeout => {
                tracing::warn!(target: "lockbroker::mirror", "restore failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(MirrorError::Restore(e.to_string())),
        }
    }
}

/// Installs `state` in the table; returns the modes of the restored leases by fence.
pub fn install(broker: &Arc<Broker>, state: &wit::RestoreState) -> Modes {
    let mut modes = Modes::default();
    let (restored, skipped) = broker.with_table(|t, now, _out| {
        let (mut restored, mut skipped) = (0usize, 0usize);
        for l in &state.locks {
            let mode = Mode::from(l.mode);
            let ttl = Duration::from_millis(l.remaining_ttl_ms).min(crate::table::MAX_TTL);
            let deadline = now.checked_add(ttl).unwrap_or(now);
            match t.restore(
                now,
                bytes::Bytes::from(l.key.clone()),
                l.fence,
                mode,
                deadline,
            ) {
                Ok(()) => {
                    restored += 1;
                    modes.insert(l.fence, mode);
                }
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(
                        target: "lockbroker::mirror",
                        key = %String::from_utf8_lossy(&l.key),
                        fence = l.fence,
                        "restore: lease skipped: {e}"
                    );
                }
            }
        }
        t.raise_fence_floor(state.max_fence);
        (restored, skipped)
    });
    tracing::info!(
        target: "lockbroker::mirror",
        restored,
        skipped,
        max_fence = state.max_fence,
        "restored held locks from the mirror"
    );
    modes
}
