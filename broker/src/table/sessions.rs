//! Per-session index: which keys a session holds or queues on, and its pending request ids.
//!
//! Used for `AlreadyHeld` / `DuplicateRequest` checks, per-session limits, `cancel` and
//! `close_session`. Orphaned leases (lost sessions, restored leases) are in no session's index.

use super::keys::EntryId;
use super::queue::PendingKind;
use super::types::{Fence, ReqId, SessionId};

/// hashbrown with its default hasher (foldhash, randomly seeded per process).
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V>;

/// A session's relation to one key. A session holds at most one lease per key, or has at most one
/// acquire queued on it (never both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Holds(Fence),
    Waits(ReqId),
}

/// A pending request: a queued acquire or a `wait_until_unlocked` watcher.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    /// The key's entry (live while the request is pending).
    pub(crate) entry: EntryId,
    /// Sequence number of the queue slot (sorted within each key's queue).
    pub(crate) seq: u64,
    pub(crate) kind: PendingKind,
}

#[derive(Debug, Default)]
pub(crate) struct Session {
    /// Role per key entry.
    pub(crate) keys: Map<EntryId, Role>,
    pub(crate) pending: Map<ReqId, Pending>,
    pub(crate) held: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Map<SessionId, Session>,
}

impl Sessions {
    #[cfg(test)]
    pub(crate) fn get(&self, id: SessionId) -> Option<&Session> {
        self.map.get(&id)
    }

    #[cfg(test)]
    pub(crate) fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.map.get_mut(&id)
    }

    /// The session's record, created on first use. Kept until `remove` (close_session) so that
    /// steady lock/unlock traffic does not reallocate its maps.
    #[inline]
    pub(crate) fn entry(&mut self, id: SessionId) -> &mut Session {
        self.map.entry(id).or_default()
    }

    #[cfg(test)]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.map.iter()
    }

    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Session> {
        self.map.remove(&id)
    }

    /// Forgets that `session` holds a lease on `entry` (after release/expiry/transfer).
    #[inline]
    pub(crate) fn drop_hold(&mut self, session: SessionId, entry: EntryId) {
        if let Some(s) = self.map.get_mut(&session)
            && let Some(Role::Holds(_)) = s.keys.get(&entry)
        {
            s.keys.remove(&entry);
            s.held = s.held.saturating_sub(1);
        }
    }

    /// Indexes a newly queued request; an acquire also takes the `Waits` role on its key.
    #[inline]
    pub(crate) fn add_pending(&mut self, session: SessionId, req: ReqId, p: Pending) {
        let s = self.entry(session);
        if p.kind == PendingKind::Acquire {
            s.keys.insert(p.entry, Role::Waits(req));
        }
        s.pending.insert(req, p);
    }

    /// Takes pending request `req` out of `session`'s index (and its `Waits` role, if it is an
    /// acquire that still has it), returning it.
    #[inline]
    pub(crate) fn take_pending(&mut self, session: SessionId, req: ReqId) -> Option<Pending> {
        let s = self.map.get_mut(&session)?;
        let p = s.pending.remove(&req)?;
        if p.kind == PendingKind::Acquire && s.keys.get(&p.entry) == Some(&Role::Waits(req)) {
            s.keys.remove(&p.entry);
        }
        Some(p)
    }

    /// Forgets a pending request that ended (granted, failed, resolved).
    #[inline]
    pub(crate) fn drop_pending(&mut self, session: SessionId, req: ReqId) {
        self.take_pending(session, req);
    }
}
