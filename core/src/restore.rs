//! Start-up: loading the leases the mirror still holds, and the fence floor.

use std::time::Instant;

use bytes::Bytes;

use super::Table;
use super::deadlines::Due;
use super::entry::{Entry, check_mode};
use super::lease::HolderRec;
use super::quotas::Counter;
use super::types::{Fence, Key, Mode, RESTORED_SESSION, TableError, UNNAMED_PRINCIPAL};

impl Table {
    /// Inserts an already-held lease at startup (restore from the mirror). Owner is session 0
    /// (an orphan: lock delay applies when it expires); the fence is kept and the fence floor
    /// raised past it. Errors: `InvalidMode`; `RestoreConflict` if the key is held in a way that
    /// does not admit this lease (another Shared / same-size Semaphore holder is admitted, so
    /// multi-holder keys can be restored) or the fence is already there.
    pub fn restore(
        &mut self,
        now: Instant,
        key: Key,
        fence: Fence,
        mode: Mode,
        deadline: Instant,
    ) -> Result<(), TableError> {
        check_mode(mode)?;
        let e = match self.keys.lookup(&key) {
            Ok(e) => {
                e.check_family(mode)?;
                if e.holders.is_empty() || e.holders.get(fence).is_some() || !e.grantable_now(mode)
                {
                    return Err(TableError::RestoreConflict);
                }
                e
            }
            Err(hash) => self
                .keys
                .insert(hash, Entry::new(&key), UNNAMED_PRINCIPAL)
                .ok_or(TableError::LimitExceeded("live keys"))?,
        };
        self.sessions
            .quotas
            .add(UNNAMED_PRINCIPAL, Counter::Leases, 1);
        e.holders.push(HolderRec::new(
            RESTORED_SESSION,
            fence,
            mode,
            deadline.saturating_duration_since(now),
            deadline,
            true,
            UNNAMED_PRINCIPAL,
        ));
        self.fences.raise_floor(fence);
        self.deadlines
            .push(deadline, e.id, e.generation, Due::Lease);
        Ok(())
    }

    /// Gives restored lease `fence` the owner label it had (a planned hand-over carries it).
    pub fn label_restored(&mut self, fence: Fence, owner: Bytes) {
        self.owners.set(fence, Some(owner));
    }

    /// Makes every future fence `> fence`.
    pub fn raise_fence_floor(&mut self, fence: Fence) {
        self.fences.raise_floor(fence);
    }

    /// Cluster mode: no fence is handed out (`LimitExceeded("fencing tokens")`) above a
    /// ceiling, zero until [`Table::raise_fence_ceiling`].
    pub fn bound_fences(&mut self) {
        self.fences.bound();
    }

    /// Raises the fence ceiling (never lowers it).
    pub fn raise_fence_ceiling(&mut self, ceiling: Fence) {
        self.fences.raise_ceiling(ceiling);
    }

    /// Fences left below the ceiling.
    pub fn fence_headroom(&self) -> u64 {
        self.fences.headroom()
    }
}
