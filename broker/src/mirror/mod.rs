//! Mirroring the lock table to Redis through a `mirror` plugin.
//!
//! ```text
//! table ──(under the table lock)──▶ queue (bounded) ──▶ task ──▶ plugin.on-events ──▶ Redis
//!                                     │ full/failed → resync from a table snapshot
//! grant path (sync mode) ◀── outcome per Acquired event (Ok / Conflict / Failed)
//! ```
//! * `queue.rs`: the bounded, ordered event queue and the sync-mode confirmations;
//!   `task.rs`: batching, shipping, resync, retry; `convert.rs`: table events → WIT events;
//!   `restore.rs`: reloading held locks at start; `stats.rs`: counters. The `[mirror]`
//!   settings live in `crate::config` (`MirrorConfig`).
//! * The mirror is the broker's [`GrantGate`]: it sees every effect batch under the table lock
//!   (`record` queues the lock events) and, in `sync` mode, holds each grant and each renewal
//!   until Redis confirmed it (`hold`, `hold_renewal`); the broker core answers the client
//!   (`crate::broker`) or, for a renewal Redis refused, ends the lease. A resync that finds a
//!   lease held in Redis by someone else ends it too (sync mode).
//! * Start-up: [`Mirror::start`] (wired by `lockbroker serve`) loads the plugin with the
//!   `[[redis]]` connections it may use, restores held locks into the table, attaches itself
//!   to the broker and starts the task — all before the first client is served.
//!
//! Layering: imports the broker core, the plugins host and `config`; never the server.

mod convert;
mod queue;
mod restore;
mod stats;
mod task;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use crate::config::{MirrorConfig, MirrorMode};
pub use stats::MirrorStats;

use crate::broker::{Broker, Confirmation, GrantGate, Pending};
use crate::plugins::{MirrorPlugin, PluginError};
use crate::redis::RedisSettings;
use crate::table::{Effect, Fence, Grant};
use queue::Confirming;

/// Why the mirror could not start.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("mirror: {0}")]
    Config(String),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("mirror: cannot restore held locks: {0}")]
    Restore(String),
}

/// A running mirror.
pub struct Mirror {
    pub(crate) cfg: MirrorConfig,
    pub(crate) queue: queue::Queue,
    pub(crate) stats: Arc<stats::Counters>,
    plugin: MirrorPlugin,
    /// Set by `flush`: the task exits once the queue is empty.
    stopping: AtomicBool,
    /// The task is waiting for work (nothing in flight).
    idle: AtomicBool,
}

impl Mirror {
    /// Loads the plugin (`mc`, on the `redis` connections it names; compiled artifacts cached
    /// under `data_dir`), restores held locks into `broker`'s table, attaches the mirror to the
    /// broker as its grant gate and starts its task. `Ok(None)` when no mirror is configured.
    pub async fn start(
        mc: &MirrorConfig,
        redis: &[RedisSettings],
        data_dir: &Path,
        broker: &Arc<Broker>,
    ) -> Result<Option<Arc<Mirror>>, MirrorError> {
        if mc.path.is_none() {
            return Ok(None);
        }
        mc.validate(redis).map_err(MirrorError::Config)?;
        let all = crate::redis::Connections::new(redis).map_err(MirrorError::Config)?;
        let conns = all
            .only(&mc.connection_names(redis))
            .map_err(MirrorError::Config)?;
        let plugin =
            MirrorPlugin::load(mc.plugin_settings(), &data_dir.join("plugin-cache"), conns)?;
        let state = restore::fetch(&plugin, Duration::from_millis(mc.restore_timeout_ms)).await?;
        let modes = restore::install(broker, &state);
        let counters = Arc::new(stats::Counters::default());
        let mirror = Arc::new(Mirror {
            queue: queue::Queue::new(
                mc.queue_capacity,
                mc.mode == MirrorMode::Sync,
                counters.clone(),
            ),
            stats: counters,
            cfg: mc.clone(),
            plugin,
            stopping: AtomicBool::new(false),
            idle: AtomicBool::new(true),
        });
        if broker.attach_gate(mirror.clone()).is_err() {
            return Err(MirrorError::Config(
                "the broker already has a grant gate".into(),
            ));
        }
        tokio::spawn(task::run(mirror.clone(), broker.clone(), modes));
        tracing::info!(
            target: "lockbroker::mirror",
            mode = ?mc.mode,
            restored = state.locks.len(),
            "mirror started"
        );
        Ok(Some(mirror))
    }

    /// The configured mode.
    pub fn mode(&self) -> MirrorMode {
        self.cfg.mode
    }

    /// True in `sync` mode.
    pub fn is_sync(&self) -> bool {
        self.cfg.mode == MirrorMode::Sync
    }

    /// Counters.
    pub fn stats(&self) -> MirrorStats {
        self.stats.snapshot()
    }

    /// Events queued for the plugin now.
    pub fn queue_depth(&self) -> usize {
        self.queue.len()
    }

    /// False while a resync is pending (a batch failed: Redis or the plugin is in trouble).
    pub fn healthy(&self) -> bool {
        !self.queue.resync_pending()
    }

    /// Waits (at most `limit`) until everything queued has been shipped, then stops the task.
    pub async fn flush(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.queue.is_empty() && self.idle.load(Ordering::Acquire) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.stopping.store(true, Ordering::Release);
        self.queue.notify.notify_one();
    }

    /// Waits (at most `limit`) until the queue is empty and no batch or resync is in flight,
    /// without stopping: for tests and benchmarks.
    pub async fn settle(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.queue.is_empty()
                && !self.queue.resync_pending()
                && self.idle.load(Ordering::Acquire)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }
}

impl Mirror {
    /// The confirmation of the oldest untaken grant or renewal of lease `fence` (sync mode).
    fn confirmation(&self, fence: Fence, what: Confirming) -> Option<Pending> {
        if !self.is_sync() {
            return None;
        }
        let rx = self.queue.take_confirmation(fence, what);
        let stats = self.stats.clone();
        Some(Box::pin(async move {
            let c = match rx {
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Confirmation::Failed("the mirror stopped".into())),
                None => Confirmation::Failed("the event was not queued for the mirror".into()),
            };
            let counter = match &c {
                Confirmation::Ok => &stats.confirmed,
                Confirmation::Conflict(_) => &stats.refused,
                Confirmation::Failed(_) | Confirmation::Moved(_) => &stats.unavailable,
            };
            stats::Counters::add(counter, 1);
            c
        }))
    }
}

impl GrantGate for Mirror {
    /// Queues the lock events among `effects` (under the table lock, in table order).
    fn record(&self, effects: &[Effect]) {
        self.queue.push(effects);
    }

    /// In `sync` mode a grant waits until the mirror stored its `Acquired` event.
    fn hold(&self, grant: &Grant) -> Option<Pending> {
        self.confirmation(grant.fence, Confirming::Grant)
    }

    /// In `sync` mode a renewal waits until the mirror stored its `Extended` event.
    fn hold_renewal(&self, fence: Fence) -> Option<Pending> {
        self.confirmation(fence, Confirming::Renewal)
    }
}
