//! The bounded event queue between the lock table and the mirror task.
//!
//! `push` runs *under the table mutex* (from `Broker::with_table`), so events enter the queue
//! in exactly the table's order; it never blocks: when the queue is full, events are dropped
//! and a resync is requested. In `sync` mode every `Acquired` and `Extended` event carries a
//! one-shot channel on which the mirror task reports whether the hold (or its new deadline)
//! reached the mirror; the grant and renewal paths take the receiver by fence
//! (`take_confirmation`) and answer the client only then.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use super::stats::Counters;
use crate::broker::Confirmation;
use crate::table::{Effect, Fence, LockEvent};

/// One queued event.
pub struct Item {
    pub event: LockEvent,
    /// Sync mode, `Acquired` and `Extended`: where to report the outcome.
    pub confirm: Option<oneshot::Sender<Confirmation>>,
}

/// What a sync-mode confirmation is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Confirming {
    Grant,
    Renewal,
}

/// Receivers of confirmations not yet taken, by lease and kind, oldest first (two renewals of
/// one lease may be in flight).
type Waiting = HashMap<(Fence, Confirming), VecDeque<oneshot::Receiver<Confirmation>>>;

struct Inner {
    items: VecDeque<Item>,
    /// Events were lost: the mirror must be rebuilt from a table snapshot.
    resync: bool,
}

/// The queue.
pub struct Queue {
    inner: Mutex<Inner>,
    pending: Mutex<Waiting>,
    pub(super) notify: Notify,
    capacity: usize,
    sync: bool,
    /// Largest fence seen in any event (shipped or dropped).
    pub(super) max_fence: AtomicU64,
    stats: Arc<Counters>,
}

impl Queue {
    pub fn new(capacity: usize, sync: bool, stats: Arc<Counters>) -> Queue {
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::new(),
                resync: false,
            }),
            pending: Mutex::new(HashMap::new()),
            notify: Notify::new(),
            capacity,
            sync,
            max_fence: AtomicU64::new(0),
            stats,
        }
    }

    /// Queues the lock events among `effects` (which keep them). Called under the table lock.
    pub fn push(&self, effects: &[Effect]) {
        let mut pushed = false;
        let mut inner = None;
        for effect in effects {
            let Effect::Event(event) = effect else {
                continue;
            };
            let inner = inner.get_or_insert_with(|| self.inner.lock());
            let fence = fence_of(event);
            self.max_fence.fetch_max(fence, Ordering::Relaxed);
            let confirming = match event {
                LockEvent::Acquired { .. } => Some(Confirming::Grant),
                LockEvent::Extended { .. } => Some(Confirming::Renewal),
                _ => None,
            };
            let confirm = confirming.filter(|_| self.sync).map(|what| {
                let (tx, rx) = oneshot::channel();
                self.pending
                    .lock()
                    .entry((fence, what))
                    .or_default()
                    .push_back(rx);
                tx
            });
            // While a resync is pending, plain events are superseded by the coming snapshot;
            // confirmations still go through so the grant path gets an answer.
            if inner.items.len() >= self.capacity || (inner.resync && confirm.is_none()) {
                if !inner.resync {
                    tracing::warn!(
                        target: "lockbroker::mirror",
                        capacity = self.capacity,
                        "mirror queue full: dropping events until a full resync"
                    );
                }
                inner.resync = true;
                Counters::add(&self.stats.dropped, 1);
                if let Some(tx) = confirm {
                    let _ = tx.send(Confirmation::Failed("mirror queue is full".into()));
                }
                continue;
            }
            // Wake the task only when the queue turns non-empty: otherwise it is awake already
            // (or holds a wake-up permit).
            pushed |= inner.items.is_empty();
            inner.items.push_back(Item {
                event: event.clone(),
                confirm,
            });
        }
        drop(inner);
        if pushed {
            self.notify.notify_one();
        }
    }

    /// The receiver of the outcome of the oldest grant or renewal of lease `fence` not taken
    /// yet (sync mode).
    pub fn take_confirmation(
        &self,
        fence: Fence,
        what: Confirming,
    ) -> Option<oneshot::Receiver<Confirmation>> {
        let mut pending = self.pending.lock();
        let queue = pending.get_mut(&(fence, what))?;
        let rx = queue.pop_front();
        if queue.is_empty() {
            pending.remove(&(fence, what));
        }
        rx
    }

    /// Up to `max` items from the front.
    pub fn take_batch(&self, max: usize) -> Vec<Item> {
        let mut inner = self.inner.lock();
        let n = inner.items.len().min(max);
        inner.items.drain(..n).collect()
    }

    /// Everything queued, and whether a resync was requested (the flag is cleared). Call under
    /// the table lock to pair it with a consistent snapshot.
    pub fn take_all_for_resync(&self) -> (Vec<Item>, bool) {
        let mut inner = self.inner.lock();
        let resync = std::mem::take(&mut inner.resync);
        (inner.items.drain(..).collect(), resync)
    }

    /// While the mirror is down and waiting to retry: answers every queued confirmation with
    /// `Failed(why)` and drops the plain events (the pending resync supersedes them).
    pub fn drain_failing(&self, why: &str) {
        let items: Vec<Item> = self.inner.lock().items.drain(..).collect();
        for item in items {
            match item.confirm {
                Some(tx) => {
                    let _ = tx.send(Confirmation::Failed(why.to_string()));
                }
                None => Counters::add(&self.stats.dropped, 1),
            }
        }
    }

    /// Requests a resync (after a failed write).
    pub fn request_resync(&self) {
        self.inner.lock().resync = true;
        self.notify.notify_one();
    }

    /// Whether a resync is pending.
    pub fn resync_pending(&self) -> bool {
        self.inner.lock().resync
    }

    /// Queued items.
    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The fence of an event.
pub fn fence_of(e: &LockEvent) -> Fence {
    match e {
        LockEvent::Acquired { fence, .. }
        | LockEvent::Released { fence, .. }
        | LockEvent::Expired { fence, .. }
        | LockEvent::Extended { fence, .. } => *fence,
    }
}
