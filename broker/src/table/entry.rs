//! Per-key state: the `Entry` of one live key, the mode rules, and the lock-delay timer.
//!
//! An entry's holders live in `lease.rs` and its queues in `queue.rs` (both `impl Entry`); each
//! of the entry's timers is handled by its owner: lease expiry (`Entry::expire_lease`), queue
//! timeouts (`Entry::time_out`) and the end of a lock delay (`Entry::unblock`, here).
//!
//! Invariants kept by the entry (checked by the tests):
//! - holders are either exactly one `Exclusive`, or all `Shared`, or all `Semaphore(n)` with the
//!   same `n` and at most `n` of them; queued acquires are of the same family as the holders;
//! - the queue head is never grantable while the key is unblocked (it would have been granted);
//! - watchers exist only while the key has holders;
//! - waiters and watchers are sorted by their sequence number (binary-searchable).

use std::time::Instant;

use super::deadlines::{Deadlines, Due, Item};
use super::faults::Faults;
use super::fences::FenceGen;
use super::keys::EntryId;
use super::lease::Holders;
use super::queue::{PendingKind, Queue, Waiter, Watcher};
use super::sessions::Sessions;
use super::types::{Effect, Key, Mode, TableConfig, TableError, deadline_after};

/// Everything an entry transition may touch besides the entry itself.
pub(crate) struct Cx<'a> {
    pub(crate) now: Instant,
    pub(crate) cfg: &'a TableConfig,
    pub(crate) sessions: &'a mut Sessions,
    pub(crate) deadlines: &'a mut Deadlines,
    pub(crate) fences: &'a mut FenceGen,
    pub(crate) faults: &'a mut Faults,
    pub(crate) out: &'a mut Vec<Effect>,
}

/// The state of one live key.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    pub(crate) key: Key,
    /// Slab id and generation, set by `Keys::insert`.
    pub(crate) id: EntryId,
    pub(crate) generation: u32,
    /// Hash of `key` in the key index.
    pub(crate) hash: u64,
    pub(crate) holders: Holders,
    pub(crate) waiters: Queue<Waiter>,
    pub(crate) watchers: Queue<Watcher>,
    pub(crate) blocked_until: Option<Instant>,
}

/// `Err(InvalidMode)` for a mode no key admits.
#[inline]
pub(crate) fn check_mode(mode: Mode) -> Result<(), TableError> {
    if mode == Mode::Semaphore(0) {
        return Err(TableError::InvalidMode(
            "a semaphore needs at least one permit",
        ));
    }
    Ok(())
}

impl Entry {
    pub(crate) fn new(key: Key) -> Self {
        Self {
            key,
            ..Self::default()
        }
    }

    /// Every live deadline of this key (for rebuilding the deadline heap).
    pub(crate) fn deadline_items(&self) -> impl Iterator<Item = Item> + '_ {
        let (id, generation) = (self.id, self.generation);
        let item = move |at, due| Item {
            at,
            id,
            generation,
            due,
        };
        let holders = self
            .holders
            .as_slice()
            .iter()
            .map(move |h| item(h.deadline, Due::Lease(h.fence)));
        let block = self.blocked_until.map(|at| item(at, Due::Unblock));
        let waiters = self
            .waiters
            .iter()
            .filter_map(move |w| Some(item(w.deadline?, Due::Queued(PendingKind::Acquire, w.seq))));
        let watchers = self
            .watchers
            .iter()
            .filter_map(move |w| Some(item(w.deadline?, Due::Queued(PendingKind::Watch, w.seq))));
        holders.chain(block).chain(waiters).chain(watchers)
    }

    /// No holder, no waiter, no watcher, no block: the key must be freed.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.holders.is_empty()
            && self.waiters.is_empty()
            && self.watchers.is_empty()
            && self.blocked_until.is_none()
    }

    /// The mode family currently in force on the key (first holder, else queue head).
    #[inline]
    fn current_mode(&self) -> Option<Mode> {
        self.holders
            .as_slice()
            .first()
            .map(|h| h.mode)
            .or_else(|| self.waiters.front().map(|w| w.mode))
    }

    /// `Err(InvalidMode)` if `mode` cannot coexist with the key's holders/waiters.
    #[inline]
    pub(crate) fn check_family(&self, mode: Mode) -> Result<(), TableError> {
        match (self.current_mode(), mode) {
            (Some(Mode::Semaphore(a)), Mode::Semaphore(b)) if a != b => Err(
                TableError::InvalidMode("semaphore permit count differs from the key's holders"),
            ),
            (Some(Mode::Semaphore(_)), Mode::Exclusive | Mode::Shared)
            | (Some(Mode::Exclusive | Mode::Shared), Mode::Semaphore(_)) => Err(
                TableError::InvalidMode("key is held or queued in a different lock mode"),
            ),
            _ => Ok(()),
        }
    }

    /// Whether the current holders admit one more holder in `mode` (family already checked).
    #[inline]
    pub(crate) fn admits(&self, mode: Mode) -> bool {
        let hs = self.holders.as_slice();
        match mode {
            Mode::Exclusive => hs.is_empty(),
            // Holders are one Exclusive or all Shared, so the first one decides.
            Mode::Shared => hs.first().is_none_or(|h| h.mode == Mode::Shared),
            Mode::Semaphore(n) => hs.len() < n as usize,
        }
    }

    /// A new request may be granted at once: unblocked, nobody queued ahead, compatible.
    #[inline]
    pub(crate) fn grantable_now(&self, mode: Mode) -> bool {
        self.blocked_until.is_none() && self.waiters.is_empty() && self.admits(mode)
    }

    /// Blocks the key for `lock_delay` after an orphaned lease that was due at `deadline`
    /// expired (its owner may still believe it holds the lock), keeping any later block.
    pub(crate) fn block_after(&mut self, deadline: Instant, cx: &mut Cx<'_>) {
        if cx.cfg.lock_delay.is_zero() {
            return;
        }
        self.block_until(deadline_after(deadline, cx.cfg.lock_delay), cx.deadlines);
    }

    /// Blocks the key until `until` (lock delay, restart grace), keeping any later block.
    pub(crate) fn block_until(&mut self, until: Instant, deadlines: &mut Deadlines) {
        if self.blocked_until.is_none_or(|b| b < until) {
            self.blocked_until = Some(until);
            deadlines.push(until, self.id, self.generation, Due::Unblock);
        }
    }

    /// Lock-delay timer: lifts the block if it ends at `at` (else the item is stale), then
    /// grants waiters.
    pub(crate) fn unblock(&mut self, at: Instant, cx: &mut Cx<'_>) {
        if self.blocked_until == Some(at) {
            self.blocked_until = None;
            self.grant_waiters(cx);
        }
    }
}
