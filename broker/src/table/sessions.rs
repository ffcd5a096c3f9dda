//! Per-session index: the leases a session holds and its pending requests.
//!
//! Ownership is per lease, not per key: a session may hold several leases on one key (shared,
//! semaphore) and queue any number of acquires on a key it holds — each grant is its own lease
//! with its own fence. Used for `DuplicateRequest` checks, per-session limits, `cancel` and
//! `close_session`. Orphaned leases (lost sessions, restored leases) are in no session's index.

use super::keys::EntryId;
use super::queue::PendingKind;
use super::types::{Fence, ReqId, SessionId};

/// hashbrown with its default hasher (foldhash, randomly seeded per process).
pub(crate) type Map<K, V> = hashbrown::HashMap<K, V>;

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
    /// The leases the session holds: fence → the key's entry.
    pub(crate) leases: Map<Fence, EntryId>,
    pub(crate) pending: Map<ReqId, Pending>,
}

#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Map<SessionId, Session>,
    /// Pending requests of all sessions (for the table-wide queue limit).
    pending_total: usize,
}

impl Sessions {
    #[cfg(any(test, fuzzing))]
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

    #[cfg(any(test, fuzzing))]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.map.iter()
    }

    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.map.remove(&id)?;
        self.pending_total -= s.pending.len();
        Some(s)
    }

    /// Pending requests of all sessions.
    pub(crate) fn pending_total(&self) -> usize {
        self.pending_total
    }

    /// Number of pending requests of `session`.
    pub(crate) fn pending_of(&self, session: SessionId) -> usize {
        self.map.get(&session).map_or(0, |s| s.pending.len())
    }

    /// Forgets that `session` holds lease `fence` (after release/expiry/transfer).
    #[inline]
    pub(crate) fn drop_hold(&mut self, session: SessionId, fence: Fence) {
        if let Some(s) = self.map.get_mut(&session) {
            s.leases.remove(&fence);
        }
    }

    /// Indexes a newly queued request.
    #[inline]
    pub(crate) fn add_pending(&mut self, session: SessionId, req: ReqId, p: Pending) {
        if self.entry(session).pending.insert(req, p).is_none() {
            self.pending_total += 1;
        }
    }

    /// Takes pending request `req` out of `session`'s index, returning it.
    #[inline]
    pub(crate) fn take_pending(&mut self, session: SessionId, req: ReqId) -> Option<Pending> {
        let p = self.map.get_mut(&session)?.pending.remove(&req)?;
        self.pending_total -= 1;
        Some(p)
    }

    /// Forgets a pending request that ended (granted, failed, resolved).
    #[inline]
    pub(crate) fn drop_pending(&mut self, session: SessionId, req: ReqId) {
        self.take_pending(session, req);
    }
}
