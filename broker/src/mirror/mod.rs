//! Mirroring the lock table to Redis through a `mirror` plugin.
//!
//! ```text
//! table ──(under the table lock)──▶ queue (bounded) ──▶ task ──▶ plugin.on-events ──▶ Redis
//!                                     │ full/failed → resync from a table snapshot
//! grant path (sync mode) ◀── outcome per Acquired event (Ok / Conflict / Failed)
//! ```
//! * `config.rs`: the `[mirror]` table; `queue.rs`: the bounded, ordered event queue and the
//!   sync-mode confirmations; `task.rs`: batching, shipping, resync, retry; `convert.rs`: table
//!   events → WIT events; `sync.rs`: answering grants in `sync` mode; `restore.rs`: reloading
//!   held locks at start; `stats.rs`: counters.
//! * Start-up: [`Mirror::start`] (from `Server::start_mirror`) loads the plugin with the
//!   `[[redis]]` connections it may use, restores held locks into the table, then starts the
//!   task — all before the first client is served.

mod config;
mod convert;
mod queue;
mod restore;
mod stats;
pub(crate) mod sync;
mod task;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use config::{MirrorConfig, MirrorMode};
pub use stats::MirrorStats;

use crate::config::Config;
use crate::plugins::{MirrorPlugin, PluginError};
use crate::server::Broker;

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
    /// Loads the plugin, restores held locks into `broker`'s table, attaches the mirror to the
    /// broker and starts its task. `Ok(None)` when no mirror is configured.
    pub async fn start(
        cfg: &Config,
        broker: &Arc<Broker>,
    ) -> Result<Option<Arc<Mirror>>, MirrorError> {
        let mc = &cfg.mirror;
        if mc.path.is_none() {
            return Ok(None);
        }
        mc.validate(&cfg.redis).map_err(MirrorError::Config)?;
        let all = crate::redis::Connections::new(&cfg.redis).map_err(MirrorError::Config)?;
        let conns = all
            .only(&mc.connection_names(&cfg.redis))
            .map_err(MirrorError::Config)?;
        let plugin = MirrorPlugin::load(
            mc.plugin_settings(),
            &cfg.data_dir.join("plugin-cache"),
            conns,
        )?;
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
        broker.attach_mirror(mirror.clone());
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

    /// Queues the lock events among `effects`. Called by the broker under the table lock.
    pub(crate) fn push(&self, effects: &[crate::table::Effect]) {
        self.queue.push(effects);
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
