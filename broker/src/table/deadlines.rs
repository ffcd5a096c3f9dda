//! The deadline queue: a min-heap of (instant, what) with lazy deletion.
//!
//! Items are never removed when a lease is released or a waiter leaves; the table validates each
//! popped item against its state and drops stale ones. To bound memory under release-heavy
//! workloads the table rebuilds the heap from its live state whenever it has grown past
//! `2 * (size after the last rebuild) + 1024` items (amortised O(1) per push).
//!
//! At equal instants lease expiries come first, then lock-delay ends, then queue timeouts, so a
//! waiter whose deadline equals a lease's deadline is granted rather than timed out.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use super::keys::EntryId;
use super::queue::PendingKind;
use super::types::Fence;

/// What an item refers to, i.e. which timer of its entry fires: a lease's expiry, the end of a
/// lock delay, or a queued request's timeout (waiters and watchers are identified by their
/// queue sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Due {
    Lease(Fence),
    Unblock,
    Queued(PendingKind, u64),
}

impl Due {
    fn rank(self) -> (u8, u64) {
        match self {
            Due::Lease(f) => (0, f),
            Due::Unblock => (1, 0),
            Due::Queued(_, s) => (2, s),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) at: Instant,
    /// The entry (slab id and generation) the item belongs to.
    pub(crate) id: EntryId,
    pub(crate) generation: u32,
    pub(crate) due: Due,
}

impl Ord for Item {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.due.rank()).cmp(&(other.at, other.due.rank()))
    }
}
impl PartialOrd for Item {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Item {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Item {}

const SLACK: usize = 1024;

#[derive(Debug)]
pub(crate) struct Deadlines {
    heap: BinaryHeap<Reverse<Item>>,
    rebuild_at: usize,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            rebuild_at: SLACK,
        }
    }
}

impl Deadlines {
    #[inline]
    pub(crate) fn push(&mut self, at: Instant, id: EntryId, generation: u32, due: Due) {
        self.heap.push(Reverse(Item {
            at,
            id,
            generation,
            due,
        }));
    }

    /// Earliest queued instant; may belong to a stale item (early, never late).
    #[inline]
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|r| r.0.at)
    }

    /// Pops the earliest item if it is due at or before `now`.
    #[inline]
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Item> {
        if self.heap.peek()?.0.at > now {
            return None;
        }
        self.heap.pop().map(|r| r.0)
    }

    /// True when stale items may dominate and the owner should call [`Deadlines::rebuild`].
    #[inline]
    pub(crate) fn needs_rebuild(&self) -> bool {
        self.heap.len() > self.rebuild_at
    }

    /// Replaces the contents with exactly the live items, reusing the heap's buffer unless it
    /// has become much larger than needed.
    pub(crate) fn rebuild(&mut self, live: impl Iterator<Item = Item>) {
        let mut v = std::mem::take(&mut self.heap).into_vec();
        v.clear();
        v.extend(live.map(Reverse));
        let target = 2 * v.len() + SLACK;
        if v.capacity() > 2 * target {
            v.shrink_to(target);
        }
        self.heap = BinaryHeap::from(v);
        self.rebuild_at = target;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    #[cfg(any(test, fuzzing))]
    pub(crate) fn items(&self) -> impl Iterator<Item = &Item> {
        self.heap.iter().map(|r| &r.0)
    }
}
