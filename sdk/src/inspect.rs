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
    /// The owner label given with the acquire (`LockRequest::owner`), if any.
    pub owner: Option<String>,
    /// A cached lease ([`ClientBuilder::cache_locks`](crate::ClientBuilder::cache_locks)): its
    /// client grants the key again in its own process until another client asks for it.
    pub cached: bool,
}

/// The state of one key.
///
/// The holders list may be truncated: a key can have more holders (thousands of readers)
/// than one answer of the broker can carry. The broker then lists the oldest leases (lowest
/// fences) first, as many as fit, and [`LockInfo::holders_total`] counts them all
/// ([`LockInfo::is_truncated`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// The key inspected (after any policy rewrite).
    pub key: Bytes,
    /// The holders, in fence order; possibly only the first of them (see `holders_total`).
    pub holders: Vec<Holder>,
    /// How many holders the key has: `holders.len()`, or more when the list was truncated.
    pub holders_total: usize,
    /// Requests queued for the key.
    pub waiters: u32,
    /// How long the key stays blocked by lock-delay after a lost holder's lease expired.
    pub blocked_for: Duration,
    /// When this answer arrived (remaining TTLs count from here).
    pub observed_at: Instant,
    /// Where this client's first queued acquire of the key stands in the queue (1: next to be
    /// granted), when it has one waiting at the broker that answered.
    pub queue_position: Option<u32>,
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
                    owner: (!h.owner.is_empty())
                        .then(|| String::from_utf8_lossy(&h.owner).into_owned()),
                    cached: h.cached,
                })
                .collect(),
            holders_total: w.holders_total as usize,
            waiters: w.waiters,
            blocked_for: Duration::from_millis(w.blocked_ms),
            observed_at: Instant::now(),
            queue_position: (w.position > 0).then_some(w.position),
        }
    }

    /// True when someone holds the key.
    pub fn is_locked(&self) -> bool {
        self.holders_total > 0
    }

    /// True when the broker listed only some of the holders (`holders_total` counts them all).
    pub fn is_truncated(&self) -> bool {
        self.holders_total > self.holders.len()
    }

    /// The exclusive owner's session, if the key is held exclusively.
    pub fn owner(&self) -> Option<u64> {
        match self.holders.as_slice() {
            [h] if h.mode == Mode::Exclusive && self.holders_total == 1 => Some(h.session),
            _ => None,
        }
    }

    /// The exclusive owner's label, if the key is held exclusively by a lease that was given
    /// one ([`LockRequest::owner`](crate::LockRequest::owner)).
    pub fn owner_label(&self) -> Option<&str> {
        match self.holders.as_slice() {
            [h] if h.mode == Mode::Exclusive && self.holders_total == 1 => h.owner.as_deref(),
            _ => None,
        }
    }

    /// When the last lease listed ends unless renewed (`None` when none is listed). With a
    /// truncated list, holders not listed may hold the key longer.
    pub fn locked_until(&self) -> Option<Instant> {
        self.holders
            .iter()
            .map(|h| self.observed_at + h.remaining)
            .max()
    }
}
