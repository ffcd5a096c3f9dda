//! A key's queues: acquires waiting for a grant (FIFO) and `wait_until_unlocked` watchers; how
//! requests join and leave them, grants from the queue head, and the queue-timeout timer.
//!
//! Both kinds share one sequence-number space (a request's `seq` is unique in the table) and one
//! deadline kind (`Due::Queued`); [`PendingKind`] says which queue a request is in. Each queue is
//! a sequence-ordered map ([`Queue`]), so any request leaves it in O(log n).
//!
//! A multi-key acquire (`groups.rs`) has one [`Waiter`] in the queue of every key it names, all
//! with the request's one `seq` and `group` set. The queues stay strictly FIFO by `seq` across
//! single- and multi-key requests: `grant_heads` never grants past a group member at the head.
//! When that member is admitted on this key, the entry cannot tell whether the group's other
//! keys admit it too, so it stops and notes the group in `Cx::ready`; the table grants the
//! group (all keys at once) or leaves it waiting after the entry is done
//! (`Table::settle_groups`). Group timeouts are `Due::Queued(PendingKind::Group, seq)` items,
//! one per member key, handled by the table as well.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::deadlines::{Deadlines, Due};
use super::entry::{Cx, Entry};
use super::lease::Terms;
use super::sessions::{Pending, Sessions};
use super::types::{Effect, Mode, ReqId, SessionId, TableError, UnlockOutcome};

/// What a pending request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PendingKind {
    /// A queued acquire (in `Entry::waiters`): resolved by `Granted` / `AcquireFailed`.
    Acquire,
    /// A `wait_until_unlocked` (in `Entry::watchers`): resolved by `Unlocked` / `WaitFailed`.
    Watch,
    /// A queued multi-key acquire (a member in `Entry::waiters` of each of its keys, see
    /// `groups.rs`): resolved by `GrantedAll` / `AcquireFailed`. Its session record names the
    /// entry of its first key.
    Group,
}

impl PendingKind {
    /// The effect that ends a pending request of this kind with `error`.
    pub fn failed(self, session: SessionId, req: ReqId, error: TableError) -> Effect {
        match self {
            PendingKind::Acquire | PendingKind::Group => Effect::AcquireFailed {
                session,
                req,
                error,
            },
            PendingKind::Watch => Effect::WaitFailed {
                session,
                req,
                error,
            },
        }
    }
}

/// A queued acquire.
#[derive(Clone, Debug)]
pub struct Waiter {
    pub seq: u64,
    pub session: SessionId,
    pub req: ReqId,
    pub mode: Mode,
    pub ttl: Duration,
    pub deadline: Option<Instant>,
    /// The owner label the lease will carry (`None` for a group member: the group keeps it).
    pub owner: Option<bytes::Bytes>,
    /// A member of a multi-key acquire (`groups.rs`), granted only with the group's other keys.
    pub group: bool,
    /// The fence block it asked for (`cache.rs`; 1: an ordinary lease).
    pub fence_block: u32,
}

impl Waiter {
    /// The kind of pending request this waiter is (part of).
    #[inline]
    pub fn kind(&self) -> PendingKind {
        if self.group {
            PendingKind::Group
        } else {
            PendingKind::Acquire
        }
    }
}

/// A queued `wait_until_unlocked`.
#[derive(Clone, Debug)]
pub struct Watcher {
    pub seq: u64,
    pub session: SessionId,
    pub req: ReqId,
    pub deadline: Option<Instant>,
}

/// Something queued on a key, identified by its sequence number.
pub trait Queued {
    fn seq(&self) -> u64;
}

impl Queued for Waiter {
    fn seq(&self) -> u64 {
        self.seq
    }
}

impl Queued for Watcher {
    fn seq(&self) -> u64 {
        self.seq
    }
}

/// A key's queue in sequence order (FIFO: sequence numbers only grow). Any element leaves in
/// O(log n) — a timeout or cancel deep in a queue of 100k costs no more than at its head, so no
/// single request holds the table for long.
#[derive(Debug)]
pub struct Queue<T>(BTreeMap<u64, T>);

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Queue<T> {
    pub const fn new() -> Self {
        Queue(BTreeMap::new())
    }
}

impl<T: Queued> Queue<T> {
    /// Adds `t` in `seq` order (the largest yet, or a place kept across a move: `requeue.rs`).
    pub fn push_back(&mut self, t: T) {
        self.0.insert(t.seq(), t);
    }

    pub fn front(&self) -> Option<&T> {
        self.0.first_key_value().map(|(_, t)| t)
    }

    pub fn pop_front(&mut self) -> Option<T> {
        self.0.pop_first().map(|(_, t)| t)
    }

    pub fn get(&self, seq: u64) -> Option<&T> {
        self.0.get(&seq)
    }

    pub fn remove(&mut self, seq: u64) -> Option<T> {
        self.0.remove(&seq)
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.values()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Empties the queue, yielding everything in order.
    pub fn take_all(&mut self) -> impl Iterator<Item = T> + use<T> {
        std::mem::take(&mut self.0).into_values()
    }

    #[cfg(test)]
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl<'a, T> IntoIterator for &'a Queue<T> {
    type Item = &'a T;
    type IntoIter = std::collections::btree_map::Values<'a, u64, T>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.values()
    }
}

impl Entry {
    /// Queues an acquire (its `seq` is the largest yet): schedules its timeout and indexes it in
    /// its session.
    pub fn enqueue_waiter(
        &mut self,
        w: Waiter,
        sessions: &mut Sessions,
        deadlines: &mut Deadlines,
    ) {
        let (session, req) = (w.session, w.req);
        let p = self.track(PendingKind::Acquire, w.seq, w.deadline, deadlines);
        sessions.add_pending(session, req, p);
        self.waiters_mut().push_back(w);
    }

    /// Queues one member of multi-key acquire `w.seq` (the largest seq yet) and schedules its
    /// timeout on this key. The table indexes the request in its session once, for all keys.
    pub fn enqueue_group_member(&mut self, w: Waiter, deadlines: &mut Deadlines) {
        self.track(PendingKind::Group, w.seq, w.deadline, deadlines);
        self.waiters_mut().push_back(w);
    }

    /// Queues a watcher (its `seq` is the largest yet): schedules its timeout and indexes it in
    /// its session.
    pub fn enqueue_watcher(
        &mut self,
        w: Watcher,
        sessions: &mut Sessions,
        deadlines: &mut Deadlines,
    ) {
        let (session, req) = (w.session, w.req);
        let p = self.track(PendingKind::Watch, w.seq, w.deadline, deadlines);
        sessions.add_pending(session, req, p);
        self.watchers_mut().push_back(w);
    }

    /// Schedules the timeout of queued request `seq` and returns its session-index record.
    fn track(
        &self,
        kind: PendingKind,
        seq: u64,
        deadline: Option<Instant>,
        deadlines: &mut Deadlines,
    ) -> Pending {
        if let Some(t) = deadline {
            deadlines.push(t, self.id, self.generation, Due::Queued(kind, seq));
        }
        Pending {
            entry: self.id,
            seq,
            kind,
            records: 1,
        }
    }

    /// (session, request, deadline) of queued request `seq`.
    fn queued(&self, kind: PendingKind, seq: u64) -> Option<(SessionId, ReqId, Option<Instant>)> {
        match kind {
            PendingKind::Acquire | PendingKind::Group => {
                let w = self.waiters().get(seq)?;
                Some((w.session, w.req, w.deadline))
            }
            PendingKind::Watch => {
                let w = self.watchers().get(seq)?;
                Some((w.session, w.req, w.deadline))
            }
        }
    }

    /// Takes queued request `seq` out of its queue; when an acquire leaves, grants whoever is now
    /// at the head. The caller reports the request's end and updates its session. `false` if no
    /// such request is queued.
    pub fn leave_queue(&mut self, kind: PendingKind, seq: u64, cx: &mut Cx<'_>) -> bool {
        if !self.unqueue(kind, seq) {
            return false;
        }
        if kind != PendingKind::Watch {
            self.grant_waiters(cx);
        }
        true
    }

    /// Takes queued request `seq` out of its queue and grants nobody (the caller does, once
    /// every request of a closing session is out). `false` if no such request is queued.
    pub fn unqueue(&mut self, kind: PendingKind, seq: u64) -> bool {
        match kind {
            PendingKind::Acquire | PendingKind::Group => self
                .queued_waiters()
                .is_some_and(|q| q.remove(seq).is_some()),
            PendingKind::Watch => self
                .queued_watchers()
                .is_some_and(|q| q.remove(seq).is_some()),
        }
    }

    /// Queue-timeout timer: fails queued request `seq` with `Timeout` if its deadline is `at`
    /// (else the item is stale: the request was granted, resolved or cancelled).
    pub fn time_out(&mut self, kind: PendingKind, seq: u64, at: Instant, cx: &mut Cx<'_>) {
        if kind == PendingKind::Group {
            // A group's timeout ends it on every key: `Table::time_out_group` handles it.
            cx.faults
                .record("a multi-key acquire's timeout reached a single key");
            return;
        }
        let Some((session, req, deadline)) = self.queued(kind, seq) else {
            return;
        };
        if deadline != Some(at) {
            return;
        }
        cx.sessions.drop_pending(session, req);
        cx.out.push(kind.failed(session, req, TableError::Timeout));
        self.leave_queue(kind, seq, cx);
    }

    /// Resolves every watcher with `outcome` (the key just lost its last holder).
    #[inline]
    pub fn resolve_watchers(&mut self, outcome: UnlockOutcome, cx: &mut Cx<'_>) {
        let Some(watchers) = self.queued_watchers() else {
            return;
        };
        for w in watchers.take_all() {
            cx.sessions.drop_pending(w.session, w.req);
            cx.out.push(Effect::Unlocked {
                session: w.session,
                req: w.req,
                outcome,
            });
        }
    }

    /// Grants queued acquires from the head while the head is compatible (FIFO; a run of Shared
    /// waiters is granted together, stopping at the first Exclusive). A head whose grant fails
    /// (lease limit, fences exhausted) gets `AcquireFailed` and the next one is tried. A head
    /// that is a multi-key acquire's member stops the run: if this key admits it, it is noted
    /// in `cx.ready` for the table to grant on all its keys (or leave waiting).
    #[inline]
    pub fn grant_waiters(&mut self, cx: &mut Cx<'_>) {
        if !self.waiters().is_empty() {
            self.grant_heads(cx);
        }
    }

    fn grant_heads(&mut self, cx: &mut Cx<'_>) {
        while self.blocked_until().is_none() {
            match self.waiters().front() {
                Some(w) if self.admits(w.mode) => {
                    if w.group {
                        cx.ready.push(w.seq);
                        break;
                    }
                }
                _ => break,
            }
            let Some(w) = self.queued_waiters().and_then(Queue::pop_front) else {
                break;
            };
            // The request leaves its session's index whatever the grant's outcome. A queued
            // acquire is always pending there (`close_session` takes its waiters out of their
            // queues before forgetting the session).
            if cx.sessions.take_pending(w.session, w.req).is_none() {
                cx.faults
                    .record("a queued acquire is not pending in its session");
                continue;
            }
            // The session may have reached its lease limit while this request waited (`acquire`
            // checked it for an immediate grant).
            let granted = if cx.sessions.lease_count(w.session) >= cx.cfg.max_leases_per_session {
                Err(TableError::LimitExceeded("held leases"))
            } else if !cx
                .sessions
                .quotas
                .may_hold(cx.sessions.principal_of(w.session), 1)
            {
                Err(TableError::LimitExceeded(crate::LEASES_OF_PRINCIPAL))
            } else {
                let terms = Terms {
                    mode: w.mode,
                    ttl: w.ttl,
                    owner: w.owner.clone(),
                    fence_block: w.fence_block,
                };
                self.grant_lease(w.session, terms, None, cx)
            };
            let effect = match granted {
                Ok(grant) => Effect::Granted {
                    session: w.session,
                    req: w.req,
                    grant,
                    wait: w.deadline.map_or(crate::Wait::Forever, crate::Wait::Until),
                    owner: w.owner.clone(),
                },
                Err(error) => PendingKind::Acquire.failed(w.session, w.req, error),
            };
            cx.out.push(effect);
        }
    }
}
