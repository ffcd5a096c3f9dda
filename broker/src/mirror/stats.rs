//! Mirror counters (lock-free) and their snapshot, `MirrorStats`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub events: AtomicU64,
    pub coalesced: AtomicU64,
    pub batches: AtomicU64,
    pub errors: AtomicU64,
    pub dropped: AtomicU64,
    pub resyncs: AtomicU64,
    pub conflicts: AtomicU64,
    pub confirmed: AtomicU64,
    pub refused: AtomicU64,
    pub unavailable: AtomicU64,
}

/// A snapshot of the mirror's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorStats {
    /// Events shipped to the plugin (in batches that returned outcomes).
    pub events: u64,
    /// Events not shipped because their lease started and ended within one batch.
    pub coalesced: u64,
    /// Plugin calls (`on-events`) that returned.
    pub batches: u64,
    /// Failed calls or events (Redis down, plugin fault, error replies).
    pub errors: u64,
    /// Events dropped because the queue was full or a resync was pending.
    pub dropped: u64,
    /// Successful full resyncs.
    pub resyncs: u64,
    /// Holds the mirror refused because someone else holds the key in Redis.
    pub conflicts: u64,
    /// Sync-mode grants acknowledged after the mirror stored them.
    pub confirmed: u64,
    /// Sync-mode grants refused (key held in Redis) → `Busy`.
    pub refused: u64,
    /// Sync-mode grants failed (mirror unavailable) → `Unavailable`.
    pub unavailable: u64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MirrorStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MirrorStats {
            events: r(&self.events),
            coalesced: r(&self.coalesced),
            batches: r(&self.batches),
            errors: r(&self.errors),
            dropped: r(&self.dropped),
            resyncs: r(&self.resyncs),
            conflicts: r(&self.conflicts),
            confirmed: r(&self.confirmed),
            refused: r(&self.refused),
            unavailable: r(&self.unavailable),
        }
    }
}
