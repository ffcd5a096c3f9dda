//! Per-session index: the leases a session holds, its pending requests (and the table-wide
//! count of pending requests), and the principal it acts for (interned: each lease records the
//! 4-byte id, so a reclaim can refuse to move a lease to another principal).
//!
//! Ownership is per lease, not per key: a session may hold several leases on one key (shared,
//! semaphore) and queue any number of acquires on a key it holds — each grant is its own lease
//! with its own fence. Used for `DuplicateRequest` checks, per-session limits, `cancel` and
//! `close_session`. Orphaned leases (lost sessions, restored leases) are in no session's index.
//!
//! Held leases are indexed by the entries they are on, not by fence: a session keeps a count
//! and a list of entry ids that may name entries it no longer holds on (or one twice). Ending a
//! lease only decrements the count; the list is pruned against the entries once it has grown
//! past twice the count (`Table::prune_sessions`, amortised O(1) per grant). That is 4 bytes per
//! lease instead of a hash-map slot.

use super::keys::EntryId;
use super::queue::PendingKind;
use super::quotas::{Counter, PrincipalCaps, Quotas};
use super::types::{PrincipalId, ReqId, SessionId, UNNAMED_PRINCIPAL};

/// hashbrown with its default hasher (foldhash, randomly seeded per process).
pub type Map<K, V> = hashbrown::HashMap<K, V>;

/// A pending request: a queued acquire, a `wait_until_unlocked` watcher, or a queued multi-key
/// acquire (one record for all its keys, see `groups.rs`).
#[derive(Clone, Debug)]
pub struct Pending {
    /// The key's entry (live while the request is pending); a multi-key acquire's first key.
    pub entry: EntryId,
    /// Sequence number of the queue slot (sorted within each key's queue).
    pub seq: u64,
    pub kind: PendingKind,
    /// Queue records it takes (1; a multi-key acquire's key count), charged to its principal.
    pub records: u8,
}

#[derive(Debug, Default)]
pub struct Session {
    /// Entries the session holds leases on, a superset (see the module doc).
    held_on: Vec<EntryId>,
    /// Leases the session holds (exact).
    leases: usize,
    /// Already listed for pruning.
    untidy: bool,
    /// Who the session acts for (`UNNAMED_PRINCIPAL` unless the driver named it).
    principal: PrincipalId,
    pub pending: Map<ReqId, Pending>,
}

/// A session's list may grow to `2 * leases + PRUNE_SLACK` entries before it is pruned.
const PRUNE_SLACK: usize = 16;

impl Session {
    /// Leases the session holds.
    #[inline]
    pub fn lease_count(&self) -> usize {
        self.leases
    }

    /// Entries the session may hold leases on (each at least once; some may be stale).
    pub fn held_on(&self) -> &[EntryId] {
        &self.held_on
    }

    /// Who the session acts for.
    #[inline]
    pub fn principal(&self) -> PrincipalId {
        self.principal
    }

    /// Takes the entry list out (for `close_session`): sorted, without repeats.
    pub fn take_held_on(&mut self) -> Vec<EntryId> {
        let mut v = std::mem::take(&mut self.held_on);
        v.sort_unstable();
        v.dedup();
        v
    }
}

#[derive(Debug, Default)]
pub struct Sessions {
    map: Map<SessionId, Session>,
    /// Pending requests of all sessions (for the table-wide queue limit).
    pending_total: usize,
    /// Sessions whose entry lists want pruning.
    untidy: Vec<SessionId>,
    /// Principal names seen, by id (ids from 1; 0 is `UNNAMED_PRINCIPAL`). Never shrinks: one
    /// entry per distinct principal that ever opened a session.
    principals: Map<Box<[u8]>, PrincipalId>,
    /// What each principal uses and may use (`quotas.rs`).
    pub quotas: Quotas,
}

impl Sessions {
    pub fn get(&self, id: SessionId) -> Option<&Session> {
        self.map.get(&id)
    }

    #[cfg(test)]
    pub fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.map.get_mut(&id)
    }

    /// The session's record, created on first use. Kept until `remove` (close_session) so that
    /// steady lock/unlock traffic does not reallocate its maps.
    #[inline]
    pub fn entry(&mut self, id: SessionId) -> &mut Session {
        self.map.entry(id).or_default()
    }

    #[cfg(any(test, fuzzing))]
    pub fn iter(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.map.iter()
    }

    pub fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.map.remove(&id)?;
        self.pending_total -= s.pending.len();
        let records = s.pending.values().map(|p| usize::from(p.records)).sum();
        self.quotas.sub(s.principal, Counter::Queued, records);
        Some(s)
    }

    /// Pending requests of all sessions.
    pub fn pending_total(&self) -> usize {
        self.pending_total
    }

    /// Number of pending requests of `session`.
    pub fn pending_of(&self, session: SessionId) -> usize {
        self.map.get(&session).map_or(0, |s| s.pending.len())
    }

    /// Leases `session` holds.
    #[inline]
    pub fn lease_count(&self, session: SessionId) -> usize {
        self.map.get(&session).map_or(0, Session::lease_count)
    }

    /// Records that `session` (live) now holds one more lease, on entry `id`. Returns the
    /// session's principal, which the lease records.
    #[inline]
    pub fn note_hold(&mut self, session: SessionId, id: EntryId) -> PrincipalId {
        let s = match self.map.get_mut(&session) {
            Some(s) => s,
            None => self.map.entry(session).or_default(),
        };
        s.held_on.push(id);
        s.leases += 1;
        if !s.untidy && s.held_on.len() > 2 * s.leases + PRUNE_SLACK {
            s.untidy = true;
            self.untidy.push(session);
        }
        let principal = s.principal;
        self.quotas.add(principal, Counter::Leases, 1);
        principal
    }

    /// Names the principal `session` acts for (interned; a new name gets `caps`, unless
    /// [`Sessions::set_caps`] named it).
    pub fn set_principal(&mut self, session: SessionId, name: &[u8], caps: PrincipalCaps) {
        let next = self.principals.len().saturating_add(1);
        let id = match self.principals.get(name) {
            Some(&id) => id,
            None => {
                // Past 2^32 - 1 distinct names (more than memory holds) the last id is shared.
                let id = PrincipalId::try_from(next).unwrap_or(PrincipalId::MAX);
                self.principals.insert(name.into(), id);
                self.quotas.interned(name, id, caps);
                id
            }
        };
        let s = self.entry(session);
        let before = std::mem::replace(&mut s.principal, id);
        if before != id {
            // Named after it queued (drivers name sessions first): its records move along.
            let records = s.pending.values().map(|p| usize::from(p.records)).sum();
            self.quotas.sub(before, Counter::Queued, records);
            self.quotas.add(id, Counter::Queued, records);
        }
    }

    /// Gives principal `name` its own caps.
    pub fn set_caps(&mut self, name: &[u8], caps: PrincipalCaps) {
        let id = self.principals.get(name).copied();
        self.quotas.set_caps(name, id, caps);
    }

    /// The principal `session` acts for (`UNNAMED_PRINCIPAL` for a session never named).
    #[inline]
    pub fn principal_of(&self, session: SessionId) -> PrincipalId {
        self.map
            .get(&session)
            .map_or(UNNAMED_PRINCIPAL, |s| s.principal)
    }

    /// Forgets one lease of `session` (released, expired, transferred).
    #[inline]
    pub fn drop_hold(&mut self, session: SessionId) {
        if let Some(s) = self.map.get_mut(&session) {
            s.leases = s.leases.saturating_sub(1);
        }
    }

    /// Whether some session's entry list should be pruned.
    #[inline]
    pub fn has_untidy(&self) -> bool {
        !self.untidy.is_empty()
    }

    /// Takes the sessions whose entry lists should be pruned.
    pub fn take_untidy(&mut self) -> Vec<SessionId> {
        std::mem::take(&mut self.untidy)
    }

    /// Keeps, in `session`'s entry list, the ids `holds` says it still holds a lease on.
    pub fn prune(&mut self, session: SessionId, mut holds: impl FnMut(EntryId) -> bool) {
        if let Some(s) = self.map.get_mut(&session) {
            s.untidy = false;
            s.held_on.sort_unstable();
            s.held_on.dedup();
            s.held_on.retain(|&id| holds(id));
        }
    }

    /// Indexes a newly queued request.
    #[inline]
    pub fn add_pending(&mut self, session: SessionId, req: ReqId, p: Pending) {
        let records = usize::from(p.records);
        let s = self.entry(session);
        let principal = s.principal;
        if let Some(old) = s.pending.insert(req, p) {
            self.quotas
                .sub(principal, Counter::Queued, usize::from(old.records));
        } else {
            self.pending_total += 1;
        }
        self.quotas.add(principal, Counter::Queued, records);
    }

    /// Takes pending request `req` out of `session`'s index, returning it.
    #[inline]
    pub fn take_pending(&mut self, session: SessionId, req: ReqId) -> Option<Pending> {
        let s = self.map.get_mut(&session)?;
        let p = s.pending.remove(&req)?;
        self.pending_total -= 1;
        self.quotas
            .sub(s.principal, Counter::Queued, usize::from(p.records));
        Some(p)
    }

    /// Forgets a pending request that ended (granted, failed, resolved).
    #[inline]
    pub fn drop_pending(&mut self, session: SessionId, req: ReqId) {
        self.take_pending(session, req);
    }
}
