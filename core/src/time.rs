//! Driving time: `next_deadline` tells the driver when to call `expire(now)`, which fires every
//! timer due by then — one `match` on the timer kind, each kind handled by its owner in the
//! entry — and keeps the deadline heap compact.

use std::time::Instant;

use super::Table;
use super::cx;
use super::deadlines::{Due, Item};
use super::entry::Entry;
use super::queue::PendingKind;
use super::types::Effect;

/// Deadlines handled per slice by [`Table::expire`].
#[cfg(test)]
const EXPIRE_SLICE: usize = 1024;

impl Table {
    /// The earliest instant `expire` may have work. May be early (a stale, already-satisfied
    /// deadline), never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek()
    }

    /// Processes everything due at or before `now`, in deadline order: lease expiries
    /// (`Event(Expired)`, watchers `Unlocked{Expired}`, next grants unless lock delay applies),
    /// lock-delay ends (next grants), queue timeouts (`AcquireFailed`/`WaitFailed { Timeout }`).
    #[cfg(test)]
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Effect>) {
        while self.expire_some(now, EXPIRE_SLICE, out) {}
    }

    /// Handles at most `limit` due deadlines (so a driver can let other work take the table
    /// between slices when a storm of timeouts falls due at once). Returns whether more are
    /// due.
    pub fn expire_some(&mut self, now: Instant, limit: usize, out: &mut Vec<Effect>) -> bool {
        for _ in 0..limit {
            let Some(Item {
                at,
                id,
                generation,
                due,
            }) = self.deadlines.pop_due(now)
            else {
                self.maybe_compact();
                return false;
            };
            // A freed (or freed and reused) slot: whatever the item timed has ended.
            let Some(e) = self.keys.get_gen_mut(id, generation) else {
                continue;
            };
            if let Due::Queued(PendingKind::Group, seq) = due {
                // A multi-key acquire times out on all its keys at once.
                self.time_out_group(now, seq, at, out);
            } else {
                let cx = &mut cx!(self, now, out);
                match due {
                    Due::Lease => e.expire_leases(at, cx),
                    Due::Unblock => e.unblock(at, cx),
                    Due::Queued(kind, seq) => e.time_out(kind, seq, at, cx),
                }
                self.keys.free_if_idle(id);
            }
            self.settle_groups(now, out);
        }
        self.maybe_compact();
        self.next_deadline().is_some_and(|t| t <= now)
    }

    /// Rebuilds the deadline heap from live state once stale items may dominate it, and prunes
    /// the entry lists of sessions that have outgrown their leases (`sessions.rs`). Called at
    /// the end of every mutation.
    #[inline]
    pub(super) fn maybe_compact(&mut self) {
        if self.deadlines.needs_rebuild() {
            self.compact();
        }
        if !self.sessions.has_untidy() {
            return;
        }
        for session in self.sessions.take_untidy() {
            let keys = &self.keys;
            self.sessions.prune(session, |id| {
                keys.get(id)
                    .is_some_and(|e| e.holders.as_slice().iter().any(|h| h.owned_by(session)))
            });
        }
    }

    fn compact(&mut self) {
        let live = self.keys.iter().flat_map(Entry::deadline_items);
        self.deadlines.rebuild(live);
    }
}
