//! Restart grace (Chubby's grace period): a broker that started without restoring the leases
//! of its previous run grants nothing new until every lease that run may have handed out has
//! ended, while holders that come back with a lease of that run get it again at once.
//!
//! `begin_grace(until)` sets the window. During it every key an acquire touches is blocked
//! until `until` (the lock-delay block, so waiters queue and are granted when it lifts);
//! `reclaim_from_previous_run` re-creates a lease of an earlier epoch for its holder (the
//! caller has verified the lease secret) if the key admits it (`handover.rs`: `adopt`).

use std::time::Instant;

use super::Table;
use super::deadlines::Deadlines;
use super::entry::Entry;
use super::handover::PreviousLease;
use super::types::{Effect, Grant, SessionId, TableError};

/// Bits of a fence below its epoch.
const COUNTER_BITS: u32 = 40;

/// Called with a key's entry before an acquire decides: during the grace the key is blocked
/// until it ends (so the acquire queues, or is `Busy` if it may not wait). Clears the grace
/// once it is over.
pub(super) fn hold_during_grace(
    grace_until: &mut Option<Instant>,
    now: Instant,
    e: &mut Entry,
    deadlines: &mut Deadlines,
) {
    let Some(until) = *grace_until else {
        return;
    };
    if now >= until {
        *grace_until = None;
        return;
    }
    e.block_until(until, deadlines);
}

impl Table {
    /// Starts the restart grace: no new grant before `until`.
    pub fn begin_grace(&mut self, until: Instant) {
        self.grace_until = Some(until);
    }

    /// The end of the restart grace if it is still running at `now`.
    pub fn grace_until(&self, now: Instant) -> Option<Instant> {
        self.grace_until.filter(|g| now < *g)
    }

    /// Re-creates lease `l` of a previous run of this broker for `session` during the restart
    /// grace, with a fresh deadline of `l.ttl`. Errors: `NotLocked` outside the grace or for a
    /// fence of this run; otherwise those of [`Table::adopt`].
    pub fn reclaim_from_previous_run(
        &mut self,
        now: Instant,
        session: SessionId,
        l: PreviousLease<'_>,
        out: &mut Vec<Effect>,
    ) -> Result<Grant, TableError> {
        if self.grace_until(now).is_none() || l.fence >> COUNTER_BITS >= self.cfg.epoch {
            return Err(TableError::NotLocked);
        }
        self.adopt(now, session, l, out)
    }
}
