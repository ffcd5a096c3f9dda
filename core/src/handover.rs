//! Leases changing hands between broker runs or cluster members: `adopt` re-creates a lease a
//! previous run (or a previous owner of the key's shard) granted, for the holder that presents
//! it; `hold_key_until` blocks a key while such leases may still be out there; `evict` clears
//! a key whose shard this broker no longer owns.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::entry::{Entry, check_mode};
use super::keys::EntryId;
use super::queue::PendingKind;
use super::types::{
    Effect, Fence, Grant, Mode, ReqId, SessionId, TableError, UNNAMED_PRINCIPAL, UnlockOutcome,
};
use super::{Table, cx};

/// A lease [`Table::evict`] ended: whose it was, and what the key's next owner needs to keep
/// it (a planned hand-over carries it there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evicted {
    pub session: SessionId,
    pub fence: Fence,
    pub mode: Mode,
    pub deadline: Instant,
    /// Its owner label (empty: none).
    pub owner: Bytes,
}

/// A lease of a previous run or owner, as its holder presents it again.
#[derive(Clone, Copy, Debug)]
pub struct PreviousLease<'a> {
    pub key: &'a [u8],
    pub fence: Fence,
    pub mode: Mode,
    /// The fresh TTL it gets.
    pub ttl: Duration,
    /// Its owner label, as the client had it (empty: none).
    pub owner: &'a [u8],
}

impl Table {
    /// Re-creates lease `l` for `session` with a fresh deadline of `l.ttl`, ahead of anyone
    /// queued and regardless of a block on the key. The caller decided it may (grace, secret).
    /// Errors: `NotOwner` if the key is held in a way that does not admit it (the fence is
    /// already there, or another holder excludes it); `InvalidMode`; `LimitExceeded`.
    pub fn adopt(
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
            owner,
        } = l;
        check_mode(mode)?;
        if self.sessions.entry(session).lease_count() >= self.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        let id = self.entry_or_insert(key)?;
        let Some(e) = self.keys.get_mut(id) else {
            return Err(TableError::NotLocked);
        };
        let admitted =
            e.check_family(mode).is_ok() && e.holders.get(fence).is_none() && e.admits(mode);
        if !admitted {
            self.keys.free_if_idle(id);
            return Err(TableError::NotOwner);
        }
        let Some(e) = self.keys.get_mut(id) else {
            return Err(TableError::NotLocked);
        };
        let key = e.key.to_key();
        let grant = e.install_lease(session, fence, mode, ttl, key, &mut cx!(self, now, out));
        // An empty label is none (`Owners::set` keeps no empty label).
        self.owners.set(fence, Some(Bytes::copy_from_slice(owner)));
        self.maybe_compact();
        Ok(grant)
    }

    /// The id of `key`'s entry, created (idle) if there is none. `LimitExceeded("live keys")`
    /// when the table is full.
    pub(crate) fn entry_or_insert(&mut self, key: &[u8]) -> Result<EntryId, TableError> {
        let full = self.keys.len() >= self.cfg.max_keys;
        match self.keys.lookup(key) {
            Ok(e) => Ok(e.id),
            Err(_) if full => Err(TableError::LimitExceeded("live keys")),
            Err(hash) => self
                .keys
                .insert(hash, Entry::new(key), UNNAMED_PRINCIPAL)
                .map(|e| e.id)
                .ok_or(TableError::LimitExceeded("live keys")),
        }
    }

    /// Blocks `key` until `until` (a takeover grace): acquires queue (or are `Busy`), leases
    /// may still be adopted.
    pub fn hold_key_until(&mut self, key: &[u8], until: Instant) -> Result<(), TableError> {
        let id = self.entry_or_insert(key)?;
        if let Some(e) = self.keys.get_mut(id) {
            e.block_until(until, &mut self.deadlines);
        }
        Ok(())
    }

    /// Every live key `pick` selects (e.g. the keys of one shard).
    pub fn keys_where(&self, mut pick: impl FnMut(&[u8]) -> bool) -> Vec<Bytes> {
        self.keys
            .iter()
            .filter(|e| pick(&e.key))
            .map(|e| e.key.to_key())
            .collect()
    }

    /// Clears `key` because another broker serves it now: every queued acquire and watcher
    /// fails with `Moved`, then every lease ends (`Released` events). Returns the leases that
    /// ended, so their holders can be told and the key's next owner given them.
    pub fn evict(&mut self, now: Instant, key: &[u8], out: &mut Vec<Effect>) -> Vec<Evicted> {
        self.evict_with(now, key, out, &mut |_| TableError::Moved)
    }

    /// [`Table::evict`], answering each waiting single-key acquire with `single`'s error for
    /// it (`Moved`, or `Requeued` with a ticket: `requeue.rs`), in queue order.
    pub(crate) fn evict_with(
        &mut self,
        now: Instant,
        key: &[u8],
        out: &mut Vec<Effect>,
        single: &mut dyn FnMut(ReqId) -> TableError,
    ) -> Vec<Evicted> {
        let Some(e) = self.keys.find_mut(key) else {
            return Vec::new();
        };
        let id = e.id;
        let waiters: Vec<_> = e
            .queued_waiters()
            .map(|q| {
                q.take_all()
                    .map(|w| (w.session, w.req, w.group.then_some(w.seq)))
                    .collect()
            })
            .unwrap_or_default();
        let watchers: Vec<_> = e
            .queued_watchers()
            .map(|q| q.take_all().map(|w| (w.session, w.req)).collect())
            .unwrap_or_default();
        e.set_blocked_until(None);
        let leases: Vec<Evicted> = e
            .holders
            .as_slice()
            .iter()
            .map(|h| Evicted {
                session: h.session,
                fence: h.fence,
                mode: h.mode,
                deadline: h.deadline,
                owner: self.owners.get(h.fence).cloned().unwrap_or_default(),
            })
            .collect();
        // A multi-key acquire queued here fails as a whole: it leaves its other keys' queues
        // too, and whoever is behind it there may be granted.
        let mut behind = Vec::new();
        for (session, req, group) in waiters {
            self.sessions.drop_pending(session, req);
            let error = match group {
                Some(_) => TableError::Moved,
                None => single(req),
            };
            out.push(PendingKind::Acquire.failed(session, req, error));
            if let Some(seq) = group {
                behind.extend(self.take_group_out(seq, Some(id)));
            }
        }
        for (session, req) in watchers {
            self.sessions.drop_pending(session, req);
            out.push(PendingKind::Watch.failed(session, req, TableError::Moved));
        }
        if let Some(e) = self.keys.get_mut(id) {
            for l in &leases {
                e.end_lease(l.fence, UnlockOutcome::Released, &mut cx!(self, now, out));
            }
        }
        self.keys.free_if_idle(id);
        self.grant_behind(now, &behind, out);
        self.settle_groups(now, out);
        self.maybe_compact();
        leases
    }
}
