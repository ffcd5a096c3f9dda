//! Per-key state: the `Entry` of one live key, the mode rules, and the lock-delay timer.
//!
//! An entry's holders live in `lease.rs` and its queues in `queue.rs` (both `impl Entry`); each
//! of the entry's timers is handled by its owner: lease expiry (`Entry::expire_lease`), queue
//! timeouts (`Entry::time_out`) and the end of a lock delay (`Entry::unblock`, here).
//!
//! Invariants kept by the entry (checked by the tests):
//! - holders are either exactly one `Exclusive`, or all `Shared`, or all `Semaphore(n)` with the
//!   same `n` and at most `n` of them; queued acquires are of the same family as the holders;
//! - the queue head is never grantable while the key is unblocked (it would have been granted),
//!   unless it is a member of a multi-key acquire that some other key of it does not admit yet
//!   (`groups.rs`); requests behind it wait (FIFO);
//! - watchers exist only while the key has holders;
//! - waiters and watchers are sorted by their sequence number (binary-searchable).
//!
//! Memory: most live keys have one holder and nothing else, so an entry keeps only the key
//! (inline when short, `stored_key.rs`), its ids and its holders inline; the queues and the lock
//! delay live in a boxed [`Rare`] part allocated when one of them is first used, and freed with
//! the entry when the key goes idle.

use std::time::Instant;

use super::deadlines::{Deadlines, Due, Item};
use super::faults::Faults;
use super::fences::FenceGen;
use super::keys::EntryId;
use super::lease::Holders;
use super::owners::Owners;
use super::queue::{PendingKind, Queue, Waiter, Watcher};
use super::sessions::Sessions;
use super::stored_key::StoredKey;
use super::types::{Effect, Mode, TableConfig, TableError, deadline_after};

/// Everything an entry transition may touch besides the entry itself.
pub struct Cx<'a> {
    pub now: Instant,
    pub cfg: &'a TableConfig,
    pub sessions: &'a mut Sessions,
    pub deadlines: &'a mut Deadlines,
    pub fences: &'a mut FenceGen,
    pub faults: &'a mut Faults,
    pub owners: &'a mut Owners,
    /// Multi-key acquires found at the head of a queue they are admitted to: the table, which
    /// sees all their keys, decides whether to grant them once the entry is done
    /// (`Table::settle_groups`). Empty unless some multi-key acquire is queued.
    pub ready: &'a mut Vec<u64>,
    pub out: &'a mut Vec<Effect>,
}

/// The state of one live key.
#[derive(Debug, Default)]
pub struct Entry {
    pub key: StoredKey,
    /// Slab id and generation, set by `Keys::insert`.
    pub id: EntryId,
    pub generation: u32,
    pub holders: Holders,
    /// Queues and lock delay; `None` until one is used (then kept until the key goes idle).
    rare: Option<Box<Rare>>,
}

/// The parts of an entry most keys never use.
#[derive(Debug, Default)]
struct Rare {
    waiters: Queue<Waiter>,
    watchers: Queue<Watcher>,
    blocked_until: Option<Instant>,
}

impl Rare {
    fn is_empty(&self) -> bool {
        self.waiters.is_empty() && self.watchers.is_empty() && self.blocked_until.is_none()
    }
}

static NO_WAITERS: Queue<Waiter> = Queue::new();
static NO_WATCHERS: Queue<Watcher> = Queue::new();

/// `Err(InvalidMode)` for a mode no key admits.
#[inline]
pub fn check_mode(mode: Mode) -> Result<(), TableError> {
    if mode == Mode::Semaphore(0) {
        return Err(TableError::InvalidMode(
            "a semaphore needs at least one permit",
        ));
    }
    Ok(())
}

impl Entry {
    pub fn new(key: &[u8]) -> Self {
        Self {
            key: StoredKey::new(key),
            ..Self::default()
        }
    }

    /// Queued acquires, in order.
    #[inline]
    pub fn waiters(&self) -> &Queue<Waiter> {
        self.rare.as_ref().map_or(&NO_WAITERS, |r| &r.waiters)
    }

    /// `wait_until_unlocked` watchers, in order.
    #[inline]
    pub fn watchers(&self) -> &Queue<Watcher> {
        self.rare.as_ref().map_or(&NO_WATCHERS, |r| &r.watchers)
    }

    /// End of the key's lock delay (or grace), if it is blocked.
    #[inline]
    pub fn blocked_until(&self) -> Option<Instant> {
        self.rare.as_ref().and_then(|r| r.blocked_until)
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// The waiter queue, for adding (allocates the rare part).
    pub fn waiters_mut(&mut self) -> &mut Queue<Waiter> {
        &mut self.rare_mut().waiters
    }

    /// The watcher queue, for adding (allocates the rare part).
    pub fn watchers_mut(&mut self) -> &mut Queue<Watcher> {
        &mut self.rare_mut().watchers
    }

    /// The waiter queue if it may have anyone (for taking requests out).
    #[inline]
    pub fn queued_waiters(&mut self) -> Option<&mut Queue<Waiter>> {
        self.rare.as_deref_mut().map(|r| &mut r.waiters)
    }

    /// The watcher queue if it may have anyone (for taking requests out).
    #[inline]
    pub fn queued_watchers(&mut self) -> Option<&mut Queue<Watcher>> {
        self.rare.as_deref_mut().map(|r| &mut r.watchers)
    }

    pub fn set_blocked_until(&mut self, until: Option<Instant>) {
        match (until, self.rare.as_deref_mut()) {
            (None, None) => {}
            (None, Some(r)) => r.blocked_until = None,
            (Some(_), _) => self.rare_mut().blocked_until = until,
        }
    }

    #[cfg(test)]
    pub fn has_rare_part(&self) -> bool {
        self.rare.is_some()
    }

    /// Every live deadline of this key (for rebuilding the deadline heap).
    pub fn deadline_items(&self) -> impl Iterator<Item = Item> + '_ {
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
            .map(move |h| item(h.deadline, Due::Lease));
        let block = self.blocked_until().map(|at| item(at, Due::Unblock));
        let waiters = self
            .waiters()
            .iter()
            .filter_map(move |w| Some(item(w.deadline?, Due::Queued(w.kind(), w.seq))));
        let watchers = self
            .watchers()
            .iter()
            .filter_map(move |w| Some(item(w.deadline?, Due::Queued(PendingKind::Watch, w.seq))));
        holders.chain(block).chain(waiters).chain(watchers)
    }

    /// No holder, no waiter, no watcher, no block: the key must be freed.
    #[inline]
    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.rare.as_ref().is_none_or(|r| r.is_empty())
    }

    /// The mode family currently in force on the key (first holder, else queue head).
    #[inline]
    fn current_mode(&self) -> Option<Mode> {
        self.holders
            .as_slice()
            .first()
            .map(|h| h.mode)
            .or_else(|| self.waiters().front().map(|w| w.mode))
    }

    /// `Err(InvalidMode)` if `mode` cannot coexist with the key's holders/waiters.
    #[inline]
    pub fn check_family(&self, mode: Mode) -> Result<(), TableError> {
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
    pub fn admits(&self, mode: Mode) -> bool {
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
    pub fn grantable_now(&self, mode: Mode) -> bool {
        self.blocked_until().is_none() && self.waiters().is_empty() && self.admits(mode)
    }

    /// Whether the multi-key acquire `seq` may take this key now: unblocked, at the head of the
    /// queue and no holder (it is exclusive).
    #[inline]
    pub fn admits_group(&self, seq: u64) -> bool {
        self.blocked_until().is_none()
            && self.holders.is_empty()
            && self.waiters().front().is_some_and(|w| w.seq == seq)
    }

    /// Blocks the key for `lock_delay` after an orphaned lease that was due at `deadline`
    /// expired (its owner may still believe it holds the lock), keeping any later block.
    pub fn block_after(&mut self, deadline: Instant, cx: &mut Cx<'_>) {
        if cx.cfg.lock_delay.is_zero() {
            return;
        }
        self.block_until(deadline_after(deadline, cx.cfg.lock_delay), cx.deadlines);
    }

    /// Blocks the key until `until` (lock delay, restart grace), keeping any later block.
    pub fn block_until(&mut self, until: Instant, deadlines: &mut Deadlines) {
        if self.blocked_until().is_none_or(|b| b < until) {
            self.set_blocked_until(Some(until));
            deadlines.push(until, self.id, self.generation, Due::Unblock);
        }
    }

    /// Lock-delay timer: lifts the block if it ends at `at` (else the item is stale), then
    /// grants waiters.
    pub fn unblock(&mut self, at: Instant, cx: &mut Cx<'_>) {
        if self.blocked_until() == Some(at) {
            self.set_blocked_until(None);
            self.grant_waiters(cx);
        }
    }
}
