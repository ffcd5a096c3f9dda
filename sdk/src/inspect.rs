//! What `Client::inspect` reports about a key.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::Mode;

/// One holder of a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The broker session holding it.
    pub session: u64,
    /// Its fencing token (also the lease id).
    pub fence: u64,
    pub mode: Mode,
    /// Time left on the lease when the broker answered.
    pub remaining: Duration,
}

/// The state of one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// The key inspected (after any policy rewrite).
    pub key: Bytes,
    pub holders: Vec<Holder>,
    /// Requests queued for the key.
    pub waiters: u32,
    /// How long the key stays blocked by lock-delay after a lost holder's lease expired.
    pub blocked_for: Duration,
    /// When this answer arrived (remaining TTLs count from here).
    pub observed_at: Instant,
}

impl LockInfo {
    pub(crate) fn from_wire(w: lockbroker_proto::LockInfo) -> Self {
        LockInfo {
            key: w.key,
            holders: w
                .holders
                .into_iter()
                .map(|h| Holder {
                    session: h.session,
                    fence: h.fence,
                    mode: h.mode,
                    remaining: Duration::from_millis(h.remaining_ms),
                })
                .collect(),
            waiters: w.waiters,
            blocked_for: Duration::from_millis(w.blocked_ms),
            observed_at: Instant::now(),
        }
    }

    /// True when someone holds the key.
    pub fn is_locked(&self) -> bool {
        !self.holders.is_empty()
    }

    /// The exclusive owner's session, if the key is held exclusively.
    pub fn owner(&self) -> Option<u64> {
        match self.holders.as_slice() {
            [h] if h.mode == Mode::Exclusive => Some(h.session),
            _ => None,
        }
    }

    /// When the last current lease ends unless renewed (`None` when not locked).
    pub fn locked_until(&self) -> Option<Instant> {
        self.holders
            .iter()
            .map(|h| self.observed_at + h.remaining)
            .max()
    }
}
