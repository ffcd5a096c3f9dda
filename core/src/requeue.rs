//! Waiting acquires that keep their place in a key's queue when the key's shard moves in a
//! planned hand-over (cluster mode).
//!
//! The old owner takes each waiting single-key acquire out of the key's queue with a ticket
//! ([`Table::evict_keeping_places`]; the client is answered `Requeued` with it) and passes the
//! tickets, in queue order, to the new owner with the shard's leases. The new owner reserves a
//! queue place per ticket, in that order, before it serves the shard
//! ([`Table::reserve_places`]), and blocks the key until every ticket came back or the window
//! ends. An acquire sent again with its ticket takes its reserved place (its queue sequence
//! number), ahead of anyone who asked the new owner first; when the last ticket is back the key
//! opens at once and the queue is granted in its old order. A ticket not back within the window
//! loses its place (the acquire queues as a new one), and the key waits no longer for it.
//!
//! Multi-key acquires and `wait_until_unlocked` watchers are answered `Moved` as before: they
//! start over at the new owner.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashMap;

use super::handover::Evicted;
use super::types::{Effect, TableError};
use super::{Table, cx};

/// How long a new owner keeps the places of the acquires that waited at the old owner.
pub const REQUEUE_WINDOW: Duration = Duration::from_secs(1);

/// A reserved queue place.
#[derive(Debug)]
struct Place {
    key: Bytes,
    seq: u64,
    until: Instant,
}

/// The places reserved for tickets not back yet, and per key how many are out and when the
/// key's block for them ends.
#[derive(Debug, Default)]
pub(crate) struct Places {
    by_ticket: HashMap<u64, Place>,
    open: HashMap<Bytes, (usize, Instant)>,
}

impl Places {
    /// Forgets the places whose window ended.
    fn purge(&mut self, now: Instant) {
        self.by_ticket.retain(|_, p| p.until > now);
        self.open.retain(|_, (_, until)| *until > now);
    }

    /// Takes `ticket`'s place if it is one for `key` still in its window: its sequence number,
    /// and — when it was the key's last ticket out — the end of the key's block to lift.
    fn take(&mut self, ticket: u64, key: &[u8], now: Instant) -> Option<(u64, Option<Instant>)> {
        if self.by_ticket.get(&ticket)?.key.as_ref() != key {
            return None;
        }
        let place = self.by_ticket.remove(&ticket)?;
        if place.until <= now {
            return None;
        }
        let mut reopen = None;
        if let Some((out, until)) = self.open.get_mut(key) {
            *out = out.saturating_sub(1);
            if *out == 0 {
                reopen = Some(*until);
                self.open.remove(key);
            }
        }
        Some((place.seq, reopen))
    }
}

impl Table {
    /// [`Table::evict`] for a planned hand-over: each waiting single-key acquire is answered
    /// `Requeued` with a ticket from `mint` (non-zero, unguessable: the driver's), and the
    /// tickets are returned in queue order for the key's next owner
    /// ([`Table::reserve_places`]).
    pub fn evict_keeping_places(
        &mut self,
        now: Instant,
        key: &[u8],
        out: &mut Vec<Effect>,
        mint: &mut dyn FnMut() -> u64,
    ) -> (Vec<Evicted>, Vec<u64>) {
        let mut tickets = Vec::new();
        let leases = self.evict_with(now, key, out, &mut |_| {
            let ticket = mint();
            tickets.push(ticket);
            TableError::Requeued(ticket)
        });
        (leases, tickets)
    }

    /// Reserves, in order, a queue place on `key` for each of `tickets` (the old owner's
    /// waiting acquires), and blocks the key until they are back or `REQUEUE_WINDOW` ends.
    /// Called before the key's shard is served here, so nobody queued on it yet.
    pub fn reserve_places(
        &mut self,
        now: Instant,
        key: &[u8],
        tickets: &[u64],
    ) -> Result<(), TableError> {
        if tickets.is_empty() {
            return Ok(());
        }
        self.places.purge(now);
        let until = now + REQUEUE_WINDOW;
        let id = self.entry_or_insert(key)?;
        let Some(e) = self.keys.get_mut(id) else {
            return Err(TableError::NotLocked);
        };
        e.block_until(until, &mut self.deadlines);
        let key = e.key.to_key();
        for &ticket in tickets.iter().filter(|&&t| t != 0) {
            let seq = self.seq;
            self.seq += 1;
            self.places.by_ticket.insert(
                ticket,
                Place {
                    key: key.clone(),
                    seq,
                    until,
                },
            );
        }
        self.places.open.insert(key, (tickets.len(), until));
        Ok(())
    }

    /// The reserved place of an acquire of `key` sent again with `ticket`: its sequence
    /// number, and the key's block to lift once it is queued (the last ticket came back).
    pub(crate) fn take_place(
        &mut self,
        ticket: u64,
        key: &[u8],
        now: Instant,
    ) -> Option<(u64, Option<Instant>)> {
        if ticket == 0 {
            return None;
        }
        self.places.take(ticket, key, now)
    }

    /// Lifts `key`'s block for returning tickets (if no later block replaced it) and grants
    /// its queue in order.
    pub(crate) fn reopen(
        &mut self,
        now: Instant,
        key: &[u8],
        until: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(e) = self.keys.find_mut(key) else {
            return;
        };
        let id = e.id;
        e.unblock(until, &mut cx!(self, now, out));
        self.keys.free_if_idle(id);
        self.settle_groups(now, out);
    }
}
