//! The expiry driver: one task that sleeps until the table's next deadline, expires what is
//! due, and re-arms; `with_table` wakes it early when an operation adds an earlier deadline.

use std::sync::Arc;
use std::time::Duration;

use super::Broker;

impl Broker {
    /// Runs until the broker shuts down.
    pub async fn run_expiry(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        loop {
            let next = {
                let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
                core.timer_at = core.table.next_deadline();
                core.timer_at
            };
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                () = sleep => self.with_table(|t, now, out| t.expire(now, out)),
                () = self.timer.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
