//! Restart grace (Chubby's grace period): a broker that started without restoring the leases
//! of its previous run grants nothing new until every lease that run may have handed out has
//! ended, while holders that come back with a lease of that run get it again at once.
//!
//! `begin_grace(until)` sets the window. During it every key an acquire touches is blocked
//! until `until` (the lock-delay block, so waiters queue and are granted when it lifts);
//! `reclaim_from_previous_run` re-creates a lease of an earlier epoch for its holder (the
//! caller has verified the lease secret) if the key admits it.

use std::time::{Duration, Instant};

use super::deadlines::{Deadlines, Due};
use super::entry::{Entry, check_mode};
use super::lease::HolderRec;
use super::types::{Effect, Fence, Grant, LockEvent, Mode, SessionId, TableError, deadline_after};
use super::{Table, cx};

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

/// A lease of a previous run, as its holder presents it again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreviousLease<'a> {
    pub(crate) key: &'a [u8],
    pub(crate) fence: Fence,
    pub(crate) mode: Mode,
    /// The fresh TTL it gets.
    pub(crate) ttl: Duration,
}

impl Table {
    /// Starts the restart grace: no new grant before `until`.
    pub(crate) fn begin_grace(&mut self, until: Instant) {
        self.grace_until = Some(until);
    }

    /// The end of the restart grace if it is still running at `now`.
    pub(crate) fn grace_until(&self, now: Instant) -> Option<Instant> {
        self.grace_until.filter(|g| now < *g)
    }

    /// Re-creates lease `l` of a previous run of this broker for `session` during the restart
    /// grace, with a fresh deadline of `l.ttl`. Errors: `NotLocked` outside the grace or
    /// for a fence of this run; `NotOwner` if the key is held in a way that does not admit it
    /// (the fence is already there, or another holder excludes it); `InvalidMode`;
    /// `LimitExceeded`.
    pub(crate) fn reclaim_from_previous_run(
        &mut self,
        now: Instant,
        session: SessionId,
        l: PreviousLease<'_>,
        out: &mut Vec<Effect>,
    ) -> Result<Grant, TableError> {
        let PreviousLease {
            key,
            fence,
            mode,
            ttl,
        } = l;
        check_mode(mode)?;
        if self.grace_until(now).is_none() || fence >> COUNTER_BITS >= self.cfg.epoch {
            return Err(TableError::NotLocked);
        }
        if self.sessions.entry(session).leases.len() >= self.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        let e = match self.keys.lookup(key) {
            Ok(e) => e,
            Err(hash) => self
                .keys
                .insert(hash, Entry::new(bytes::Bytes::copy_from_slice(key)))
                .ok_or(TableError::LimitExceeded("live keys"))?,
        };
        let id = e.id;
        let admitted =
            e.check_family(mode).is_ok() && e.holders.get(fence).is_none() && e.admits(mode);
        if !admitted {
            self.keys.free_if_idle(id);
            return Err(TableError::NotOwner);
        }
        let cx = cx!(self, now, out);
        let deadline = deadline_after(now, ttl);
        cx.sessions.entry(session).leases.insert(fence, id);
        cx.deadlines
            .push(deadline, id, e.generation, Due::Lease(fence));
        cx.out.push(Effect::Event(LockEvent::Acquired {
            key: e.key.clone(),
            session,
            fence,
            mode,
            deadline,
        }));
        let h = HolderRec {
            session,
            fence,
            mode,
            ttl,
            deadline,
            orphan: false,
        };
        let grant = h.grant(&e.key);
        e.holders.push(h);
        Ok(grant)
    }
}
