//! Multi-key acquires ("groups"): one request naming several keys, exclusive on each, granted
//! all in one table step or not at all (lock two accounts for a transfer).
//!
//! # State
//!
//! A queued group is one [`Group`] here (keyed by its `seq`), one member [`Waiter`] with that
//! same `seq` and `group: true` in the waiter queue of every key it names, one pending record
//! (`PendingKind::Group`, naming the entry of its first key) in its session's index, and one
//! `Due::Queued(PendingKind::Group, seq)` deadline item per key when it may time out. Nothing
//! of a group holds anything until it is granted; then every key gets its own lease (own fence,
//! `Acquired` event) and the group is gone from every queue in the same step.
//!
//! # Fairness: strict FIFO per key, across single- and multi-key requests
//!
//! Every queue is ordered by the table's one sequence counter. A request is granted on a key
//! only from the head of that key's queue, so no request ever overtakes an earlier queued
//! request on a key it names:
//! - a single-key acquire is granted when it is at the head and the key admits it (as before);
//! - a group is granted when it is at the head of the queue of *every* key it names, none of
//!   them is blocked (lock delay, grace) and none has a holder;
//! - a free key whose head is a waiting group member stays free: requests queued after the
//!   group on that key wait behind it (they may not overtake it, so the group is not starved
//!   by a stream of single-key requests);
//! - an immediate grant needs every key free with nobody queued on it.
//!
//! No deadlock: holders never wait (a queued request holds nothing), and the queued request with
//! the smallest `seq` is at the head of every queue it is in, so it waits only for holders and
//! blocks, which end (release, TTL, lock delay). Two groups naming keys in opposite orders are
//! ordered by `seq` on every key they share: the earlier one is ahead on all of them.
//!
//! # Granting across entries
//!
//! An entry sees only its own queue. When its head is a group member that the key admits,
//! `Entry::grant_heads` stops there and notes the group in `Cx::ready`; every table operation
//! that may grant calls [`Table::settle_groups`] once its entry borrows end, which checks each
//! noted group on all its keys and grants it (or leaves it waiting), and repeats while grants or
//! failures note further groups. The single-key path pays one `is_empty` check for this when no
//! group is queued.
//!
//! # Limits
//!
//! Checked before anything changes: keys per request ([`MAX_KEYS_PER_REQUEST`]), the
//! session's lease limit for all N leases, live keys for the keys not live yet, fence headroom
//! for an immediate grant, and for queueing: the session's pending requests (a group is one
//! request), each key's queue limit, and the table's queue total (a group adds N records). The
//! lease limit and fences are checked again when a queued group is granted; either refusal ends
//! the whole group with `AcquireFailed`.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::entry::Entry;
use super::grace::hold_during_grace;
use super::keys::EntryId;
use super::mutations::{QueueLoad, admit_to_queue};
use super::queue::{PendingKind, Waiter};
use super::sessions::{Map, Pending};
use super::types::{
    AcquireAllRequest, Effect, Fence, Grant, Key, MAX_KEYS_PER_REQUEST, Mode, ReqId, SessionId,
    TableError,
};
use super::{Table, cx};

/// A queued multi-key acquire.
#[derive(Debug)]
pub struct Group {
    pub session: SessionId,
    pub req: ReqId,
    pub ttl: Duration,
    pub deadline: Option<Instant>,
    /// The label every lease of the group carries.
    pub owner: Option<Bytes>,
    /// The entries of the keys named, in the request's order (distinct; live while queued,
    /// since each holds a member waiter).
    pub members: Vec<EntryId>,
}

/// The queued groups, by sequence number.
#[derive(Debug, Default)]
pub struct Groups {
    map: Map<u64, Group>,
    /// Queue records of all groups beyond the first of each: the session index counts a group
    /// once, the queue limits count each of its keys.
    extra: usize,
    /// Groups noted by `Entry::grant_heads` as possibly grantable; emptied by
    /// `Table::settle_groups` before every operation returns.
    pub ready: Vec<u64>,
}

impl Groups {
    #[inline]
    pub fn get(&self, seq: u64) -> Option<&Group> {
        self.map.get(&seq)
    }

    fn insert(&mut self, seq: u64, g: Group) {
        self.extra += g.members.len().saturating_sub(1);
        self.map.insert(seq, g);
    }

    fn remove(&mut self, seq: u64) -> Option<Group> {
        let g = self.map.remove(&seq)?;
        self.extra = self.extra.saturating_sub(g.members.len().saturating_sub(1));
        Some(g)
    }

    /// Queue records of groups not counted by the session index.
    #[inline]
    pub fn extra_records(&self) -> usize {
        self.extra
    }

    #[cfg(any(test, fuzzing))]
    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Group)> {
        self.map.iter()
    }
}

/// `InvalidKeys` for an empty list or a key named twice, `LimitExceeded` past
/// [`MAX_KEYS_PER_REQUEST`].
fn check_key_list(keys: &[Key]) -> Result<(), TableError> {
    if keys.is_empty() {
        return Err(TableError::InvalidKeys("no key named"));
    }
    if keys.len() > MAX_KEYS_PER_REQUEST {
        return Err(TableError::LimitExceeded("keys in one request"));
    }
    let mut sorted: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(TableError::InvalidKeys("a key is named twice"));
    }
    Ok(())
}

impl Table {
    /// Acquires every key of `req.keys` exclusively for `req.session`, all or none.
    ///
    /// `Ok(Some(grants))`: every key was free (no holder, no block, nobody queued) and is
    /// granted now, one lease per key in the order given (only their `Event(Acquired)`s are
    /// pushed). `Ok(None)`: queued on every key; a later `Effect::GrantedAll` (all keys in one
    /// batch) or `Effect::AcquireFailed` (timeout, cancel, lease limit at grant time) resolves
    /// it. Until then the request holds nothing. Scheduling is strict FIFO per key (see the
    /// module doc of `groups.rs`). A one-key list behaves as a single exclusive acquire, answered
    /// in this shape.
    ///
    /// Errors, with nothing changed: `InvalidKeys` (no key, a key twice), `LimitExceeded`
    /// ("keys in one request", "held leases" for all N leases, "live keys", "fencing tokens",
    /// and when queueing "pending waiters", "queued requests on this key", "queued requests in
    /// total"), `InvalidMode` (a key held or queued as a semaphore), `Busy` (not grantable now
    /// and `Wait::No` or a past `Wait::Until`), `DuplicateRequest`.
    pub fn acquire_all(
        &mut self,
        now: Instant,
        req: AcquireAllRequest,
        out: &mut Vec<Effect>,
    ) -> Result<Option<Vec<Grant>>, TableError> {
        let AcquireAllRequest {
            session,
            req,
            keys,
            ttl,
            wait,
            owner,
        } = req;
        check_key_list(&keys)?;
        let n = keys.len();
        let s = self.sessions.entry(session);
        if s.pending.contains_key(&req) {
            return Err(TableError::DuplicateRequest);
        }
        if s.lease_count().saturating_add(n) > self.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        let waiting = s.pending.len();
        let principal = s.principal();
        // Every key as it stands; nothing changes until every check has passed.
        let mut found: Vec<Option<EntryId>> = Vec::with_capacity(n);
        let (mut fresh, mut busiest) = (0, 0);
        let mut free = self.grace_until.is_none_or(|g| now >= g);
        for key in &keys {
            match self.keys.find(key) {
                Some(e) => {
                    e.check_family(Mode::Exclusive)?;
                    free &= e.grantable_now(Mode::Exclusive);
                    busiest = busiest.max(e.waiters().len() + e.watchers().len());
                    found.push(Some(e.id));
                }
                None => {
                    fresh += 1;
                    found.push(None);
                }
            }
        }
        if self.keys.len().saturating_add(fresh) > self.cfg.max_keys {
            return Err(TableError::LimitExceeded("live keys"));
        }
        let caps = self.sessions.quotas.caps(principal);
        if fresh > 0 && self.keys.charged_to(principal).saturating_add(fresh) > caps.keys {
            return Err(TableError::LimitExceeded(crate::KEYS_OF_PRINCIPAL));
        }
        if !free {
            // A cacheable lease on any of the keys is in the way: asked back (`cache.rs`),
            // whether the request queues or is refused `Busy`.
            self.recall_cached_on(now, &found, out);
        }
        let queued = if free {
            if self.fences.headroom() < n as u64 {
                return Err(TableError::LimitExceeded("fencing tokens"));
            }
            if !self.sessions.quotas.may_hold(principal, n) {
                return Err(TableError::LimitExceeded(crate::LEASES_OF_PRINCIPAL));
            }
            None
        } else {
            let load = QueueLoad {
                session: waiting,
                key: busiest,
                total: self.queued_total(),
                records: n,
                principal: self.sessions.quotas.queued(principal),
                principal_cap: caps.queued,
            };
            Some(admit_to_queue(now, wait, load, &self.cfg, &mut self.seq)?)
        };
        let ids = self.entries_for(&keys, found, principal)?;
        for &id in &ids {
            if let Some(e) = self.keys.get_mut(id) {
                hold_during_grace(&mut self.grace_until, now, e, &mut self.deadlines);
            }
        }
        let Some((seq, deadline)) = queued else {
            let fences = match self.alloc_fences(n) {
                Ok(f) => f,
                Err(e) => {
                    self.free_idle(&ids);
                    return Err(e);
                }
            };
            let leases = ids
                .iter()
                .zip(fences)
                .zip(keys)
                .map(|((&id, f), k)| (id, f, Some(k)));
            let grants = self.install_group(now, session, ttl, owner.as_ref(), leases, out);
            self.maybe_compact();
            return Ok(Some(grants));
        };
        let Some(&first) = ids.first() else {
            return Err(TableError::InvalidKeys("no key named"));
        };
        for &id in &ids {
            let Some(e) = self.keys.get_mut(id) else {
                self.faults
                    .record("acquire_all: a key just found is not live");
                continue;
            };
            let w = Waiter {
                seq,
                session,
                req,
                mode: Mode::Exclusive,
                ttl,
                deadline,
                owner: None,
                group: true,
                fence_block: 1,
            };
            e.enqueue_group_member(w, &mut self.deadlines);
        }
        let p = Pending {
            entry: first,
            seq,
            kind: PendingKind::Group,
            // At most `MAX_KEYS_PER_REQUEST` (64) keys.
            records: u8::try_from(n).unwrap_or(u8::MAX),
        };
        self.sessions.add_pending(session, req, p);
        let g = Group {
            session,
            req,
            ttl,
            deadline,
            owner,
            members: ids,
        };
        self.groups.insert(seq, g);
        self.maybe_compact();
        Ok(None)
    }

    /// The entry ids of `keys` (`found`: those already live), creating the missing entries.
    /// On failure every entry created here is freed again.
    fn entries_for(
        &mut self,
        keys: &[Key],
        found: Vec<Option<EntryId>>,
        principal: crate::PrincipalId,
    ) -> Result<Vec<EntryId>, TableError> {
        let mut ids = Vec::with_capacity(keys.len());
        for (key, id) in keys.iter().zip(found) {
            let id = match id {
                Some(id) => Some(id),
                None => match self.keys.lookup(key) {
                    Ok(e) => Some(e.id),
                    Err(hash) => self
                        .keys
                        .insert(hash, Entry::new(key), principal)
                        .map(|e| e.id),
                },
            };
            match id {
                Some(id) => ids.push(id),
                None => {
                    self.free_idle(&ids);
                    return Err(TableError::LimitExceeded("live keys"));
                }
            }
        }
        Ok(ids)
    }

    fn free_idle(&mut self, ids: &[EntryId]) {
        for &id in ids {
            self.keys.free_if_idle(id);
        }
    }

    /// `n` fences, or the allocator's error with none handed out when it has fewer left.
    fn alloc_fences(&mut self, n: usize) -> Result<Vec<Fence>, TableError> {
        if self.fences.headroom() < n as u64 {
            return Err(TableError::LimitExceeded("fencing tokens"));
        }
        (0..n).map(|_| self.fences.alloc()).collect()
    }

    /// Installs one lease per `(entry, fence, key)` of `leases` (free and admitting: checked by
    /// the caller), in order, each labelled `owner`. `key`: the key as the request carried it
    /// (`None`: copied from the entry).
    fn install_group(
        &mut self,
        now: Instant,
        session: SessionId,
        ttl: Duration,
        owner: Option<&Bytes>,
        leases: impl ExactSizeIterator<Item = (EntryId, Fence, Option<Key>)>,
        out: &mut Vec<Effect>,
    ) -> Vec<Grant> {
        let mut grants = Vec::with_capacity(leases.len());
        for (id, fence, key) in leases {
            let Some(e) = self.keys.get_mut(id) else {
                self.faults.record("a key of a multi-key grant is not live");
                continue;
            };
            let key = key.unwrap_or_else(|| e.key.to_key());
            self.owners.set(fence, owner.cloned());
            let cx = &mut cx!(self, now, out);
            grants.push(e.install_lease(session, fence, Mode::Exclusive, ttl, key, cx));
        }
        grants
    }

    /// Queue records in the table (queued acquires, watchers, every key of a queued group).
    #[inline]
    pub fn queued_total(&self) -> usize {
        self.sessions.pending_total() + self.groups.extra_records()
    }

    /// Grants the groups noted as possibly grantable during the operation that is ending, and
    /// any that become grantable as a result (a group refused at grant time leaves its queues).
    /// Every operation that may grant from a queue calls it once its entry borrows end.
    #[inline]
    pub(super) fn settle_groups(&mut self, now: Instant, out: &mut Vec<Effect>) {
        if !self.groups.ready.is_empty() {
            self.settle_groups_slow(now, out);
        }
    }

    fn settle_groups_slow(&mut self, now: Instant, out: &mut Vec<Effect>) {
        while !self.groups.ready.is_empty() {
            // In sequence order, for deterministic effects (groups granted together share no key).
            let mut batch = std::mem::take(&mut self.groups.ready);
            batch.sort_unstable();
            batch.dedup();
            for seq in batch {
                self.try_grant_group(now, seq, out);
            }
        }
    }

    /// Grants group `seq` if it is at the head of every one of its keys' queues and each key
    /// admits it; else leaves it waiting (it is noted again when its last obstacle goes).
    fn try_grant_group(&mut self, now: Instant, seq: u64, out: &mut Vec<Effect>) {
        let Some(g) = self.groups.get(seq) else {
            return; // resolved since it was noted
        };
        let keys = &self.keys;
        if !g
            .members
            .iter()
            .all(|&id| keys.get(id).is_some_and(|e| e.admits_group(seq)))
        {
            return;
        }
        let Some(g) = self.groups.remove(seq) else {
            return;
        };
        if self.sessions.take_pending(g.session, g.req).is_none() {
            self.faults
                .record("a queued multi-key acquire is not pending in its session");
            self.unqueue_group(seq, &g.members, None);
            self.grant_behind(now, &g.members, out);
            return;
        }
        let n = g.members.len();
        let fences = if self.sessions.lease_count(g.session).saturating_add(n)
            > self.cfg.max_leases_per_session
        {
            Err(TableError::LimitExceeded("held leases"))
        } else if !self
            .sessions
            .quotas
            .may_hold(self.sessions.principal_of(g.session), n)
        {
            Err(TableError::LimitExceeded(crate::LEASES_OF_PRINCIPAL))
        } else {
            self.alloc_fences(n)
        };
        let fences = match fences {
            Ok(f) => f,
            Err(error) => {
                out.push(PendingKind::Group.failed(g.session, g.req, error));
                self.unqueue_group(seq, &g.members, None);
                self.grant_behind(now, &g.members, out);
                return;
            }
        };
        self.unqueue_group(seq, &g.members, None);
        let leases = g.members.iter().zip(fences).map(|(&id, f)| (id, f, None));
        let grants = self.install_group(now, g.session, g.ttl, g.owner.as_ref(), leases, out);
        out.push(Effect::GrantedAll {
            session: g.session,
            req: g.req,
            grants,
        });
    }

    /// Takes group `seq` out of the index and of every queue it is in but `except`'s (already
    /// emptied by `evict`), granting nobody: returns those entries for the caller to grant from
    /// once it is done. Records a fault if the group is not queued.
    pub(super) fn take_group_out(&mut self, seq: u64, except: Option<EntryId>) -> Vec<EntryId> {
        let Some(g) = self.groups.remove(seq) else {
            self.faults
                .record("a pending multi-key acquire is not in the group index");
            return Vec::new();
        };
        self.unqueue_group(seq, &g.members, except);
        let mut members = g.members;
        members.retain(|&id| Some(id) != except);
        members
    }

    /// A queued group leaves all its queues (cancel, timeout; already out of its session's
    /// index); whoever is now at the head of those queues is granted.
    pub(super) fn leave_group(&mut self, now: Instant, seq: u64, out: &mut Vec<Effect>) {
        let members = self.take_group_out(seq, None);
        self.grant_behind(now, &members, out);
    }

    /// Queue-timeout timer of group `seq`: fails it with `Timeout` if its deadline is `at` (else
    /// the item is stale: the group was granted, failed, or timed out through another key).
    pub(super) fn time_out_group(
        &mut self,
        now: Instant,
        seq: u64,
        at: Instant,
        out: &mut Vec<Effect>,
    ) {
        let Some(g) = self.groups.get(seq) else {
            return;
        };
        if g.deadline != Some(at) {
            return;
        }
        let (session, req) = (g.session, g.req);
        self.sessions.drop_pending(session, req);
        out.push(PendingKind::Group.failed(session, req, TableError::Timeout));
        self.leave_group(now, seq, out);
    }

    /// Takes group `seq`'s member out of the queue of each of `members` but `except`.
    fn unqueue_group(&mut self, seq: u64, members: &[EntryId], except: Option<EntryId>) {
        for &id in members.iter().filter(|&&id| Some(id) != except) {
            match self
                .keys
                .get_mut(id)
                .map(|e| e.unqueue(PendingKind::Group, seq))
            {
                Some(true) => {}
                Some(false) => self
                    .faults
                    .record("a multi-key acquire is not in the queue of a key it names"),
                None => self
                    .faults
                    .record("a key a multi-key acquire names is not live"),
            }
        }
    }

    /// Grants whoever is at the head of each of `ids`' queues now and frees the keys left idle.
    /// Groups found ready are noted for `settle_groups`.
    pub(super) fn grant_behind(&mut self, now: Instant, ids: &[EntryId], out: &mut Vec<Effect>) {
        for &id in ids {
            if let Some(e) = self.keys.get_mut(id) {
                e.grant_waiters(&mut cx!(self, now, out));
            }
            self.keys.free_if_idle(id);
        }
    }
}
