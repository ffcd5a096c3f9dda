//! The deadline queue: min-heaps of (instant, what) with lazy deletion.
//!
//! Items are never removed when a lease is released or a waiter leaves; the table validates each
//! popped item against its state and drops stale ones. To bound memory under release-heavy
//! workloads the table rebuilds the heaps from its live state whenever they have grown past
//! `2 * (size after the last rebuild) + 1024` items (amortised O(1) per push).
//!
//! At equal instants lease expiries come first, then lock-delay ends, then queue timeouts, so a
//! waiter whose deadline equals a lease's deadline is granted rather than timed out.
//!
//! Memory: every held lease has an item, so those are kept small. Lease and lock-delay items
//! ([`Timer`], 24 bytes) name only the entry and the kind — the entry then ends every lease due
//! at that instant —; queue timeouts ([`QueuedTimer`]) also carry the request's sequence number
//! and live in a heap of their own.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use super::keys::EntryId;
use super::queue::PendingKind;

/// Entry generations use 31 bits, so a [`Timer`] can keep its kind in the 32nd.
pub const GENERATION_MASK: u32 = u32::MAX >> 1;

/// What an item refers to, i.e. which timer of its entry fires: the expiry of the leases due at
/// that instant, the end of a lock delay, or a queued request's timeout (waiters and watchers
/// are identified by their queue sequence number).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Due {
    Lease,
    Unblock,
    Queued(PendingKind, u64),
}

/// A deadline as the table pushes and pops it.
#[derive(Debug, PartialEq, Eq)]
pub struct Item {
    pub at: Instant,
    /// The entry (slab id and generation) the item belongs to.
    pub id: EntryId,
    pub generation: u32,
    pub due: Due,
}

/// A lease expiry or lock-delay end, as stored.
#[derive(Debug, PartialEq, Eq)]
struct Timer {
    at: Instant,
    id: EntryId,
    /// Generation (31 bits) and, in the top bit, 1 for `Unblock`.
    tag: u32,
}

impl Timer {
    const UNBLOCK: u32 = 1 << 31;

    fn due(&self) -> Due {
        if self.tag & Self::UNBLOCK == 0 {
            Due::Lease
        } else {
            Due::Unblock
        }
    }

    fn item(&self) -> Item {
        Item {
            at: self.at,
            id: self.id,
            generation: self.tag & GENERATION_MASK,
            due: self.due(),
        }
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.tag & Self::UNBLOCK, self.id).cmp(&(
            other.at,
            other.tag & Self::UNBLOCK,
            other.id,
        ))
    }
}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A queue timeout, as stored.
#[derive(Debug, PartialEq, Eq)]
struct QueuedTimer {
    at: Instant,
    seq: u64,
    id: EntryId,
    generation: u32,
    kind: PendingKind,
}

impl Ord for QueuedTimer {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}
impl PartialOrd for QueuedTimer {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

const SLACK: usize = 1024;

#[derive(Debug)]
pub struct Deadlines {
    timers: BinaryHeap<Reverse<Timer>>,
    queued: BinaryHeap<Reverse<QueuedTimer>>,
    rebuild_at: usize,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            timers: BinaryHeap::new(),
            queued: BinaryHeap::new(),
            rebuild_at: SLACK,
        }
    }
}

/// An item in its stored form.
enum Stored {
    Timer(Timer),
    Queued(QueuedTimer),
}

impl Stored {
    #[inline]
    fn new(at: Instant, id: EntryId, generation: u32, due: Due) -> Self {
        let generation = generation & GENERATION_MASK;
        match due {
            Due::Lease => Stored::Timer(Timer {
                at,
                id,
                tag: generation,
            }),
            Due::Unblock => Stored::Timer(Timer {
                at,
                id,
                tag: generation | Timer::UNBLOCK,
            }),
            Due::Queued(kind, seq) => Stored::Queued(QueuedTimer {
                at,
                seq,
                id,
                generation,
                kind,
            }),
        }
    }
}

impl Deadlines {
    #[inline]
    pub fn push(&mut self, at: Instant, id: EntryId, generation: u32, due: Due) {
        match Stored::new(at, id, generation, due) {
            Stored::Timer(t) => self.timers.push(Reverse(t)),
            Stored::Queued(q) => self.queued.push(Reverse(q)),
        }
    }

    /// Earliest queued instant; may belong to a stale item (early, never late).
    #[inline]
    pub fn peek(&self) -> Option<Instant> {
        let t = self.timers.peek().map(|r| r.0.at);
        let q = self.queued.peek().map(|r| r.0.at);
        match (t, q) {
            (Some(t), Some(q)) => Some(t.min(q)),
            (t, q) => t.or(q),
        }
    }

    /// Pops the earliest item if it is due at or before `now` (at equal instants a lease or
    /// lock-delay item before a queue timeout).
    #[inline]
    pub fn pop_due(&mut self, now: Instant) -> Option<Item> {
        let t = self.timers.peek().map(|r| r.0.at).filter(|&t| t <= now);
        let q = self.queued.peek().map(|r| r.0.at).filter(|&q| q <= now);
        match (t, q) {
            (Some(t), Some(q)) if q < t => self.pop_queued(),
            (Some(_), _) => self.timers.pop().map(|r| r.0.item()),
            (None, Some(_)) => self.pop_queued(),
            (None, None) => None,
        }
    }

    fn pop_queued(&mut self) -> Option<Item> {
        self.queued.pop().map(|Reverse(q)| Item {
            at: q.at,
            id: q.id,
            generation: q.generation,
            due: Due::Queued(q.kind, q.seq),
        })
    }

    /// Items stored, stale ones included.
    pub fn len(&self) -> usize {
        self.timers.len() + self.queued.len()
    }

    /// True when stale items may dominate and the owner should call [`Deadlines::rebuild`].
    #[inline]
    pub fn needs_rebuild(&self) -> bool {
        self.len() > self.rebuild_at
    }

    /// Replaces the contents with exactly the live items, reusing the heaps' buffers unless
    /// they have become much larger than needed.
    pub fn rebuild(&mut self, live: impl Iterator<Item = Item>) {
        let mut timers = std::mem::take(&mut self.timers).into_vec();
        let mut queued = std::mem::take(&mut self.queued).into_vec();
        timers.clear();
        queued.clear();
        for i in live {
            match Stored::new(i.at, i.id, i.generation, i.due) {
                Stored::Timer(t) => timers.push(Reverse(t)),
                Stored::Queued(q) => queued.push(Reverse(q)),
            }
        }
        let target = 2 * (timers.len() + queued.len()) + SLACK;
        shrink(&mut timers, target);
        shrink(&mut queued, target);
        self.timers = BinaryHeap::from(timers);
        self.queued = BinaryHeap::from(queued);
        self.rebuild_at = target;
    }

    /// Bytes a lease's or lock delay's item takes in its heap.
    #[cfg(test)]
    pub const TIMER_BYTES: usize = std::mem::size_of::<Reverse<Timer>>();

    #[cfg(any(test, fuzzing))]
    pub fn items(&self) -> impl Iterator<Item = Item> + '_ {
        let timers = self.timers.iter().map(|r| r.0.item());
        let queued = self.queued.iter().map(|Reverse(q)| Item {
            at: q.at,
            id: q.id,
            generation: q.generation,
            due: Due::Queued(q.kind, q.seq),
        });
        timers.chain(queued)
    }
}

/// Gives memory back when a buffer is more than twice `target`.
fn shrink<T>(v: &mut Vec<T>, target: usize) {
    if v.capacity() > 2 * target {
        v.shrink_to(target);
    }
}
