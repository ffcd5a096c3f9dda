//! The expiry driver: one task that sleeps until the table's next deadline, expires what is
//! due (in slices of `serve::EXPIRY_SLICE`, yielding between them), and re-arms; `with_table` wakes it early when an operation adds an earlier deadline.
//! Beside it, the horizon keeper: once the table is empty, the lease-horizon file is set back
//! to `clean`, so a crash after the last lease ended needs no restart grace.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Broker;
use crate::table::serve::EXPIRY_SLICE;

impl Broker {
    /// Runs until the broker shuts down.
    pub async fn run_expiry(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        loop {
            let next = {
                let mut core = self.core.lock();
                let core = &mut *core;
                core.timer.arm(&core.table)
            };
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                () = sleep => {
                    // A storm of timeouts due at once is handled in slices, letting other
                    // requests take the table in between.
                    while self.with_table(|t, now, out| t.expire_some(now, EXPIRY_SLICE, out)) {
                        tokio::task::yield_now().await;
                    }
                }
                () = self.timer.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Runs until the broker shuts down: every `horizon::SLACK`, an empty table (no lease, no
    /// waiter, no block) marks the horizon file `clean`.
    pub async fn run_horizon_keeper(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        loop {
            tokio::select! {
                () = tokio::time::sleep(crate::horizon::SLACK) => {}
                _ = shutdown.changed() => return,
            }
            let mut core = self.core.lock();
            if core.table.key_count() == 0 && core.table.grace_until(Instant::now()).is_none() {
                core.horizon.mark_clean();
            }
        }
    }
}
