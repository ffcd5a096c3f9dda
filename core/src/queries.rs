//! Read-only queries: a key's snapshot for `Inspect`, and every lease for the mirror's resync.
//! None of them expires anything: they report state as stored (call `expire` first).

use super::Table;
use super::lease::HolderRec;
use super::owners::Owners;
use super::types::{Holder, Key, LockInfo, Mode, TableError};

impl HolderRec {
    /// This lease as reported, with its owner label from `owners`.
    pub fn holder(&self, owners: &Owners) -> Holder {
        Holder {
            session: self.session,
            fence: self.fence,
            mode: self.mode,
            deadline: self.deadline,
            owner: owners.get(self.fence).cloned(),
            cached: self.cached,
        }
    }
}

impl Table {
    /// Snapshot of `key`, or `None` when the key is idle (and no restart grace may run).
    pub fn inspect(&self, key: &[u8]) -> Option<LockInfo> {
        let Some(e) = self.keys.find(key) else {
            // An idle key during the restart grace: blocked until it ends.
            return self.grace_until.map(|g| LockInfo {
                key: bytes::Bytes::copy_from_slice(key),
                holders: Vec::new(),
                waiters: 0,
                blocked_until: Some(g),
            });
        };
        Some(LockInfo {
            key: e.key.to_key(),
            holders: self.holders_of(e),
            waiters: e.waiters().len(),
            blocked_until: e.blocked_until(),
        })
    }

    /// The leases of entry `e` as reported, with their owner labels.
    pub(super) fn holders_of(&self, e: &super::entry::Entry) -> Vec<Holder> {
        e.holders
            .as_slice()
            .iter()
            .map(|h| h.holder(&self.owners))
            .collect()
    }

    /// The mode of lease `fence` on `key` (what a driver checks the lease's secret against
    /// before a release or extend). `NotLocked` if nobody holds `key`, `NotOwner` if it is held
    /// but not as `fence` — the errors the release or extend itself would give.
    pub fn lease_mode(&self, key: &[u8], fence: super::Fence) -> Result<Mode, TableError> {
        let e = self
            .keys
            .find(key)
            .filter(|e| !e.holders.is_empty())
            .ok_or(TableError::NotLocked)?;
        e.holders
            .get(fence)
            .map(|h| h.mode)
            .ok_or(TableError::NotOwner)
    }

    /// Where `session`'s first queued acquire of `key` stands in the key's queue (1: next),
    /// or `None` when it has none queued there. O(queue length), bounded by the per-key limit.
    pub fn queue_position(&self, key: &[u8], session: super::SessionId) -> Option<usize> {
        let e = self.keys.find(key)?;
        e.waiters()
            .iter()
            .position(|w| w.session == session)
            .map(|i| i + 1)
    }

    /// Every current lease as (key, holder), in no particular order: the snapshot a mirror
    /// resynchronizes from. Leases past their deadline that `expire` has not processed yet are
    /// included. O(live keys).
    pub fn holds(&self) -> Vec<(Key, Holder)> {
        self.keys
            .iter()
            .flat_map(|e| {
                e.holders
                    .as_slice()
                    .iter()
                    .map(|h| (e.key.to_key(), h.holder(&self.owners)))
            })
            .collect()
    }

    /// The latest deadline of any current lease (the lease horizon's input at start and
    /// shutdown). O(live keys), clones nothing.
    pub fn latest_deadline(&self) -> Option<std::time::Instant> {
        self.keys
            .iter()
            .flat_map(|e| e.holders.as_slice().iter().map(|h| h.deadline))
            .max()
    }

    /// Whether `key` has at least one holder (a key only blocked by lock delay is not locked).
    #[cfg(test)]
    pub fn is_locked(&self, key: &[u8]) -> bool {
        self.keys.find(key).is_some_and(|e| !e.holders.is_empty())
    }

    /// Number of live keys (held, queued on, or blocked by lock delay).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Pending requests (queued acquires and watchers) of a session.
    pub fn pending_of(&self, session: super::SessionId) -> usize {
        self.sessions.pending_of(session)
    }

    /// The (key, fence) of every lease a live session holds, by the session's own index:
    /// O(its leases), never the table.
    pub fn session_leases(&self, session: super::SessionId) -> Vec<(Key, super::Fence)> {
        let Some(s) = self.sessions.get(session) else {
            return Vec::new();
        };
        let mut ids = s.held_on().to_vec();
        ids.sort_unstable();
        ids.dedup();
        ids.iter()
            .filter_map(|&id| self.keys.get(id))
            .flat_map(|e| {
                e.holders
                    .as_slice()
                    .iter()
                    .filter(|h| h.owned_by(session))
                    .map(|h| (e.key.to_key(), h.fence))
            })
            .collect()
    }

    /// (held leases, pending requests) of a live session; orphaned leases count for nobody.
    pub fn session_counts(&self, session: super::SessionId) -> (usize, usize) {
        self.sessions
            .get(session)
            .map_or((0, 0), |s| (s.lease_count(), s.pending.len()))
    }
}
