//! Per-key state and its transitions: holders, the FIFO acquire queue, `wait_until_unlocked`
//! watchers and the lock-delay block; mode compatibility and the grant rule.
//!
//! Invariants kept here (checked by the tests):
//! - holders are either exactly one `Exclusive`, or all `Shared`, or all `Semaphore(n)` with the
//!   same `n` and at most `n` of them; queued acquires are of the same family as the holders;
//! - the queue head is never grantable while the key is unblocked (it would have been granted);
//! - watchers exist only while the key has holders;
//! - waiters and watchers are sorted by their sequence number (binary-searchable).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::deadlines::{Deadlines, Due, Item};
use super::fences::FenceGen;
use super::keys::EntryId;
use super::sessions::{Role, Sessions};
use super::types::{
    Effect, Fence, Grant, Key, LockEvent, Mode, ReqId, SessionId, TableConfig, TableError,
    UnlockOutcome, deadline_after,
};

/// Everything an entry transition may touch besides the entry itself.
pub(crate) struct Cx<'a> {
    pub(crate) now: Instant,
    pub(crate) cfg: &'a TableConfig,
    pub(crate) sessions: &'a mut Sessions,
    pub(crate) deadlines: &'a mut Deadlines,
    pub(crate) fences: &'a mut FenceGen,
    pub(crate) out: &'a mut Vec<Effect>,
}

/// One lease on a key.
#[derive(Clone, Debug)]
pub(crate) struct HolderRec {
    pub(crate) session: SessionId,
    pub(crate) fence: Fence,
    pub(crate) mode: Mode,
    pub(crate) ttl: Duration,
    pub(crate) deadline: Instant,
    /// Owner session is gone (lost connection) or the lease was restored: in no session index.
    pub(crate) orphan: bool,
}

impl HolderRec {
    pub(crate) fn grant(&self, key: &Key) -> Grant {
        Grant {
            key: key.clone(),
            fence: self.fence,
            mode: self.mode,
            ttl: self.ttl,
            deadline: self.deadline,
        }
    }
}

/// The holders of a key, inline for the common single-holder case.
#[derive(Debug, Default)]
pub(crate) enum Holders {
    #[default]
    Empty,
    One(HolderRec),
    Many(Vec<HolderRec>),
}

impl Holders {
    pub(crate) fn as_slice(&self) -> &[HolderRec] {
        match self {
            Holders::Empty => &[],
            Holders::One(h) => std::slice::from_ref(h),
            Holders::Many(v) => v,
        }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [HolderRec] {
        match self {
            Holders::Empty => &mut [],
            Holders::One(h) => std::slice::from_mut(h),
            Holders::Many(v) => v,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn push(&mut self, h: HolderRec) {
        match std::mem::take(self) {
            Holders::Empty => *self = Holders::One(h),
            Holders::One(first) => *self = Holders::Many(vec![first, h]),
            Holders::Many(mut v) => {
                v.push(h);
                *self = Holders::Many(v);
            }
        }
    }

    pub(crate) fn remove(&mut self, fence: Fence) -> Option<HolderRec> {
        match self {
            Holders::Empty => None,
            Holders::One(h) if h.fence == fence => match std::mem::take(self) {
                Holders::One(h) => Some(h),
                _ => None,
            },
            Holders::One(_) => None,
            Holders::Many(v) => {
                let i = v.iter().position(|h| h.fence == fence)?;
                let h = v.swap_remove(i);
                if v.is_empty() {
                    *self = Holders::Empty;
                }
                Some(h)
            }
        }
    }

    pub(crate) fn get(&self, fence: Fence) -> Option<&HolderRec> {
        self.as_slice().iter().find(|h| h.fence == fence)
    }

    pub(crate) fn get_mut(&mut self, fence: Fence) -> Option<&mut HolderRec> {
        self.as_mut_slice().iter_mut().find(|h| h.fence == fence)
    }
}

/// A queued acquire.
#[derive(Clone, Debug)]
pub(crate) struct Waiter {
    pub(crate) seq: u64,
    pub(crate) session: SessionId,
    pub(crate) req: ReqId,
    pub(crate) mode: Mode,
    pub(crate) ttl: Duration,
    pub(crate) deadline: Option<Instant>,
}

/// A queued `wait_until_unlocked`.
#[derive(Clone, Debug)]
pub(crate) struct Watcher {
    pub(crate) seq: u64,
    pub(crate) session: SessionId,
    pub(crate) req: ReqId,
    pub(crate) deadline: Option<Instant>,
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
    pub(crate) waiters: VecDeque<Waiter>,
    pub(crate) watchers: Vec<Watcher>,
    pub(crate) blocked_until: Option<Instant>,
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
            .filter_map(move |w| Some(item(w.deadline?, Due::Waiter(w.seq))));
        let watchers = self
            .watchers
            .iter()
            .filter_map(move |w| Some(item(w.deadline?, Due::Watcher(w.seq))));
        holders.chain(block).chain(waiters).chain(watchers)
    }

    /// No holder, no waiter, no watcher, no block: the key must be freed.
    pub(crate) fn is_idle(&self) -> bool {
        self.holders.is_empty()
            && self.waiters.is_empty()
            && self.watchers.is_empty()
            && self.blocked_until.is_none()
    }

    /// The mode family currently in force on the key (first holder, else queue head).
    fn current_mode(&self) -> Option<Mode> {
        self.holders
            .as_slice()
            .first()
            .map(|h| h.mode)
            .or_else(|| self.waiters.front().map(|w| w.mode))
    }

    /// `Err(InvalidMode)` if `mode` cannot coexist with the key's holders/waiters.
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
    pub(crate) fn grantable_now(&self, mode: Mode) -> bool {
        self.blocked_until.is_none() && self.waiters.is_empty() && self.admits(mode)
    }

    pub(crate) fn find_waiter(&self, seq: u64) -> Option<usize> {
        self.waiters.binary_search_by_key(&seq, |w| w.seq).ok()
    }

    pub(crate) fn remove_waiter(&mut self, seq: u64) -> Option<Waiter> {
        let i = self.find_waiter(seq)?;
        self.waiters.remove(i)
    }

    pub(crate) fn find_watcher(&self, seq: u64) -> Option<usize> {
        self.watchers.binary_search_by_key(&seq, |w| w.seq).ok()
    }

    pub(crate) fn remove_watcher(&mut self, seq: u64) -> Option<Watcher> {
        let i = self.find_watcher(seq)?;
        Some(self.watchers.remove(i))
    }

    /// Ends the lease `fence` (released or expired): session index, mirror event, lock delay for
    /// orphans on expiry, then watchers and next grants.
    pub(crate) fn end_lease(
        &mut self,
        fence: Fence,
        outcome: UnlockOutcome,
        cx: &mut Cx<'_>,
    ) -> Option<HolderRec> {
        let h = self.holders.remove(fence)?;
        if !h.orphan {
            cx.sessions.drop_hold(h.session, self.id);
        }
        let ev = match outcome {
            UnlockOutcome::Released => LockEvent::Released {
                key: self.key.clone(),
                session: h.session,
                fence,
            },
            UnlockOutcome::Expired => LockEvent::Expired {
                key: self.key.clone(),
                session: h.session,
                fence,
            },
        };
        cx.out.push(Effect::Event(ev));
        if outcome == UnlockOutcome::Expired && h.orphan && !cx.cfg.lock_delay.is_zero() {
            let until = deadline_after(h.deadline, cx.cfg.lock_delay);
            if self.blocked_until.is_none_or(|b| b < until) {
                self.blocked_until = Some(until);
                cx.deadlines
                    .push(until, self.id, self.generation, Due::Unblock);
            }
        }
        if self.holders.is_empty() {
            self.resolve_watchers(outcome, cx);
        }
        self.grant_waiters(cx);
        Some(h)
    }

    /// Resolves every watcher with `outcome` (the key just lost its last holder).
    fn resolve_watchers(&mut self, outcome: UnlockOutcome, cx: &mut Cx<'_>) {
        for w in self.watchers.drain(..) {
            cx.sessions.drop_pending(w.session, w.req);
            cx.out.push(Effect::Unlocked {
                session: w.session,
                req: w.req,
                outcome,
            });
        }
    }

    /// Grants queued acquires from the head while the head is compatible (FIFO; a run of Shared
    /// waiters is granted together, stopping at the first Exclusive).
    pub(crate) fn grant_waiters(&mut self, cx: &mut Cx<'_>) {
        while self.blocked_until.is_none() {
            match self.waiters.front() {
                Some(w) if self.admits(w.mode) => {}
                _ => break,
            }
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            match self.new_lease(w.session, w.mode, w.ttl, cx) {
                Ok(h) => {
                    // `new_lease` replaced the session's `Waits` role with `Holds`.
                    if let Some(s) = cx.sessions.get_mut(w.session) {
                        s.pending.remove(&w.req);
                    }
                    cx.out.push(Effect::Granted {
                        session: w.session,
                        req: w.req,
                        grant: h.grant(&self.key),
                    });
                    self.holders.push(h);
                }
                Err(error) => {
                    cx.sessions.drop_pending(w.session, w.req);
                    cx.out.push(Effect::AcquireFailed {
                        session: w.session,
                        req: w.req,
                        error,
                    });
                }
            }
        }
    }

    /// Lifts the lock-delay block if it ends at `at`, then grants waiters.
    pub(crate) fn unblock(&mut self, at: Instant, cx: &mut Cx<'_>) {
        if self.blocked_until == Some(at) {
            self.blocked_until = None;
            self.grant_waiters(cx);
        }
    }

    /// Creates a lease on this key for `session` (which must have a session record): checks the
    /// session's lease limit, allocates a fence, indexes it, schedules its expiry and emits
    /// `Acquired`. The caller adds the returned holder to `holders`.
    pub(crate) fn new_lease(
        &self,
        session: SessionId,
        mode: Mode,
        ttl: Duration,
        cx: &mut Cx<'_>,
    ) -> Result<HolderRec, TableError> {
        let Some(s) = cx.sessions.get_mut(session) else {
            return Err(TableError::Cancelled);
        };
        if s.held >= cx.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        let fence = cx.fences.alloc()?;
        s.held += 1;
        s.keys.insert(self.id, Role::Holds(fence));
        let deadline = deadline_after(cx.now, ttl);
        cx.deadlines
            .push(deadline, self.id, self.generation, Due::Lease(fence));
        cx.out.push(Effect::Event(LockEvent::Acquired {
            key: self.key.clone(),
            session,
            fence,
            mode,
            deadline,
        }));
        Ok(HolderRec {
            session,
            fence,
            mode,
            ttl,
            deadline,
            orphan: false,
        })
    }
}
