//! Client requests: acquire, release, extend, reclaim, wait-until-unlocked, cancel and
//! close-session. Each routes to the key's entry (`entry.rs`, `lease.rs`, `queue.rs`), keeps the
//! session index and the deadline heap in step, and frees the key once it is idle.

use std::time::{Duration, Instant};

use super::entry::{Entry, check_mode};
use super::grace::hold_during_grace;
use super::keys::{EntryId, Keys};
use super::lease::Terms;
use super::queue::{PendingKind, Waiter, Watcher};
use super::quotas::PrincipalCaps;
use super::sessions::Pending;
use super::types::{
    AcquireRequest, Effect, Fence, Grant, Key, Mode, PrincipalId, ReqId, SessionId, TableError,
    UNNAMED_PRINCIPAL, UnlockOutcome, Wait,
};

/// `LimitExceeded` past a principal's cap of live keys (`limits.max_keys_per_principal`, or
/// the anonymous principal's share of `limits.max_keys`).
pub const KEYS_OF_PRINCIPAL: &str = "live keys of this principal";
/// `LimitExceeded` past a principal's cap of held leases.
pub const LEASES_OF_PRINCIPAL: &str = "held leases of this principal";
/// `LimitExceeded` past a principal's cap of queue records.
pub const QUEUED_OF_PRINCIPAL: &str = "queued requests of this principal";
use super::quotas::Counter;
use super::{Table, cx};

/// `key`'s entry if someone holds it, else `NotLocked`.
#[inline]
fn held_entry<'a>(keys: &'a mut Keys, key: &[u8]) -> Result<&'a mut Entry, TableError> {
    keys.find_mut(key)
        .filter(|e| !e.holders.is_empty())
        .ok_or(TableError::NotLocked)
}

/// How many requests are queued already: by the session, on the key (the busiest of a
/// multi-key request's keys), in the whole table (queue records: a multi-key request has one
/// per key); and how many records the new request adds (1, or its key count).
pub(super) struct QueueLoad {
    pub session: usize,
    pub key: usize,
    pub total: usize,
    pub records: usize,
    /// The queue records (and outside retries) of the session's principal, and its cap.
    pub principal: usize,
    pub principal_cap: usize,
}

/// Admits a request to a queue: `Busy` if `wait` does not allow queueing at `now`,
/// `LimitExceeded` if its session already has `waiting >= limit` pending requests, or a key or
/// the table has no room for its queue records. Returns the request's sequence number and
/// timeout (`None`: waits forever).
pub(super) fn admit_to_queue(
    now: Instant,
    wait: Wait,
    load: QueueLoad,
    cfg: &super::TableConfig,
    next_seq: &mut u64,
) -> Result<(u64, Option<Instant>), TableError> {
    let deadline = match wait {
        Wait::No => return Err(TableError::Busy),
        Wait::Until(t) if t <= now => return Err(TableError::Busy),
        Wait::Until(t) => Some(t),
        Wait::Forever => None,
    };
    if load.session >= cfg.max_waiters_per_session {
        return Err(TableError::LimitExceeded("pending waiters"));
    }
    if load.key >= cfg.max_queued_per_key {
        return Err(TableError::LimitExceeded("queued requests on this key"));
    }
    if load.total.saturating_add(load.records) > cfg.max_queued_total {
        return Err(TableError::LimitExceeded("queued requests in total"));
    }
    if load.principal.saturating_add(load.records) > load.principal_cap {
        return Err(TableError::LimitExceeded(QUEUED_OF_PRINCIPAL));
    }
    let seq = *next_seq;
    *next_seq += 1;
    Ok((seq, deadline))
}

impl Table {
    /// Acquires `req.key` for `req.session`.
    ///
    /// `Ok(Some(grant))`: granted now (only `Event(Acquired)` is pushed for it). `Ok(None)`: queued;
    /// a later `Effect::Granted` or `Effect::AcquireFailed` resolves it. Errors: `Busy` (not
    /// grantable and `Wait::No` or a past `Wait::Until`), `LimitExceeded`, `InvalidMode`,
    /// `DuplicateRequest`. Locks are not re-entrant: an acquire of a key the session already
    /// holds queues behind that lease like anyone else's (each grant is its own lease).
    pub fn acquire(
        &mut self,
        now: Instant,
        req: AcquireRequest,
        out: &mut Vec<Effect>,
    ) -> Result<Option<Grant>, TableError> {
        let place = self.take_place(req.ticket, &req.key, now);
        let reopen = place.and_then(|(_, lift)| Some((req.key.clone(), lift?)));
        let result = self.acquire_at(now, req, place.map(|(seq, _)| seq), out);
        // The last acquire a key's block waited for is queued (or failed): the queue goes on.
        if let Some((key, until)) = reopen {
            self.reopen(now, &key, until, out);
        }
        result
    }

    /// [`Table::acquire`] once its ticket was looked up: `place` is the queue place (sequence
    /// number) kept for it across a shard's move, if any.
    fn acquire_at(
        &mut self,
        now: Instant,
        req: AcquireRequest,
        place: Option<u64>,
        out: &mut Vec<Effect>,
    ) -> Result<Option<Grant>, TableError> {
        let AcquireRequest {
            session,
            req,
            key,
            mode,
            ttl,
            wait,
            owner,
            ticket: _,
            fence_block,
        } = req;
        check_mode(mode)?;
        let full = self.keys.len() >= self.cfg.max_keys;
        let s = self.sessions.entry(session);
        if s.pending.contains_key(&req) {
            return Err(TableError::DuplicateRequest);
        }
        if s.lease_count() >= self.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        let waiting = s.pending.len();
        let principal = s.principal();
        let quotas = &self.sessions.quotas;
        let caps = quotas.caps(principal);
        let queued_by_principal = quotas.queued(principal);
        let may_hold = quotas.may_hold(principal, 1);
        let total = self.sessions.pending_total() + self.groups.extra_records();
        let principal_full = self.keys.charged_to(principal) >= caps.keys;
        let e = match self.keys.lookup(&key) {
            Ok(e) => e,
            Err(_) if full => return Err(TableError::LimitExceeded("live keys")),
            Err(_) if principal_full => {
                return Err(TableError::LimitExceeded(KEYS_OF_PRINCIPAL));
            }
            Err(hash) => self
                .keys
                .insert(hash, Entry::new(&key), principal)
                .ok_or(TableError::LimitExceeded("live keys"))?,
        };
        let id = e.id;
        hold_during_grace(&mut self.grace_until, now, e, &mut self.deadlines);
        let mut cx = cx!(self, now, out);
        let result = e.check_family(mode).and_then(|()| {
            if e.grantable_now(mode) {
                if !may_hold {
                    return Err(TableError::LimitExceeded(LEASES_OF_PRINCIPAL));
                }
                let terms = Terms {
                    mode,
                    ttl,
                    owner,
                    fence_block,
                };
                return e.grant_lease(session, terms, Some(key), &mut cx).map(Some);
            }
            // Not grantable now: a cacheable lease in the way is asked back.
            e.recall_cached(&mut cx);
            let load = QueueLoad {
                session: waiting,
                key: e.waiters().len() + e.watchers().len(),
                total,
                records: 1,
                principal: queued_by_principal,
                principal_cap: caps.queued,
            };
            let (seq, deadline) = admit_to_queue(now, wait, load, cx.cfg, &mut self.seq)?;
            let w = Waiter {
                // A place kept across a shard's move: the one it had at the old owner.
                seq: place.unwrap_or(seq),
                session,
                req,
                mode,
                ttl,
                deadline,
                owner,
                group: false,
                fence_block,
            };
            e.enqueue_waiter(w, cx.sessions, cx.deadlines);
            Ok(None)
        });
        if result.is_err() {
            // A key created above for a grant that failed is idle again.
            self.keys.free_if_idle(id);
        }
        self.maybe_compact();
        result
    }

    /// Releases lease `fence` on `key` held by `session`, granting the next waiter(s) at once.
    /// `NotLocked` if nobody holds `key`; `NotOwner` if it is held, but not as (session, fence).
    pub fn release(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &Key,
        fence: Fence,
        out: &mut Vec<Effect>,
    ) -> Result<(), TableError> {
        let e = held_entry(&mut self.keys, key)?;
        if !e.holders.get(fence).is_some_and(|h| h.owned_by(session)) {
            return Err(TableError::NotOwner);
        }
        let id = e.id;
        let cx = &mut cx!(self, now, out);
        e.end_lease_keyed(fence, UnlockOutcome::Released, Some(key), cx);
        self.keys.free_if_idle(id);
        self.settle_groups(now, out);
        self.maybe_compact();
        Ok(())
    }

    /// Ends lease `fence` on `key` although its holder did not release it (the broker revoked
    /// it: its mirror could not keep it). Pushes `Released` (watchers resolve, waiters are
    /// granted). Returns the holder's session, `None` if there is no such lease.
    pub fn revoke(
        &mut self,
        now: Instant,
        key: &[u8],
        fence: Fence,
        out: &mut Vec<Effect>,
    ) -> Option<SessionId> {
        let e = held_entry(&mut self.keys, key).ok()?;
        let session = e.holders.get(fence)?.session;
        let id = e.id;
        e.end_lease(fence, UnlockOutcome::Released, &mut cx!(self, now, out));
        self.keys.free_if_idle(id);
        self.settle_groups(now, out);
        self.maybe_compact();
        Some(session)
    }

    /// Renews lease `fence`: new deadline = `now + ttl`. Same errors as [`Table::release`].
    pub fn extend(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        ttl: Duration,
        out: &mut Vec<Effect>,
    ) -> Result<Instant, TableError> {
        let e = held_entry(&mut self.keys, key)?;
        let deadline = e.renew_lease(session, fence, ttl, &mut cx!(self, now, out))?;
        self.maybe_compact();
        Ok(deadline)
    }

    /// Transfers lease (key, fence) to `session`, keeping its fence and deadline (reclaim after
    /// reconnect, or of a restored lease). Idempotent for the current owner. The lease must be
    /// held in `mode` and, unless it was restored (no principal recorded), by `session`'s
    /// principal — whichever session holds it now, live or lost: a lease never moves to another
    /// principal, nor changes its mode. Errors: `NotLocked`, `NotOwner` (no such lease, another
    /// mode or principal), `LimitExceeded("held leases")`. Pushes no effect: the mirrored state
    /// (key, fence, deadline) does not change.
    pub fn reclaim(
        &mut self,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        mode: Mode,
    ) -> Result<Grant, TableError> {
        let caller = self.sessions.principal_of(session);
        let e = held_entry(&mut self.keys, key)?;
        let id = e.id;
        let h = e.holders.get_mut(fence).ok_or(TableError::NotOwner)?;
        if h.mode != mode || (h.principal != UNNAMED_PRINCIPAL && h.principal != caller) {
            return Err(TableError::NotOwner);
        }
        if h.owned_by(session) {
            return Ok(h.grant(e.key.to_key()));
        }
        if self.sessions.entry(session).lease_count() >= self.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        let before = h.principal;
        h.principal = self.sessions.note_hold(session, id);
        self.sessions.quotas.sub(before, Counter::Leases, 1);
        let (prev, was_orphan) = (h.session, h.orphan);
        h.session = session;
        h.orphan = false;
        if !was_orphan {
            self.sessions.drop_hold(prev);
        }
        let grant = h.grant(e.key.to_key());
        self.maybe_compact();
        Ok(grant)
    }

    /// Names the principal `session` acts for (the identity its connection authenticated as):
    /// every lease it is granted or adopts from now on records it, and [`Table::reclaim`]
    /// moves no lease to another principal. Call it before the session's first request;
    /// sessions never named share one unnamed principal (the embedded engine's).
    pub fn set_principal(&mut self, session: SessionId, principal: &[u8]) {
        self.sessions
            .set_principal(session, principal, self.cfg.principal_caps);
    }

    /// Gives principal `name` its own caps instead of `TableConfig::principal_caps` (a broker
    /// gives the anonymous principal a share of the global limits).
    pub fn set_principal_caps(&mut self, name: &[u8], caps: PrincipalCaps) {
        self.sessions.set_caps(name, caps);
    }

    /// Counts an acquire of `session` retrying outside the table (a grant gate refused its
    /// grant) in its principal's queue records, unless that would pass the principal's cap
    /// (`LimitExceeded`). Returns the principal, for [`Table::end_outside_retry`].
    pub fn begin_outside_retry(&mut self, session: SessionId) -> Result<PrincipalId, TableError> {
        let principal = self.sessions.principal_of(session);
        let q = &mut self.sessions.quotas;
        if q.queued(principal) >= q.caps(principal).queued {
            return Err(TableError::LimitExceeded(QUEUED_OF_PRINCIPAL));
        }
        q.add(principal, Counter::Queued, 1);
        Ok(principal)
    }

    /// The retry counted by [`Table::begin_outside_retry`] ended.
    pub fn end_outside_retry(&mut self, principal: PrincipalId) {
        self.sessions.quotas.sub(principal, Counter::Queued, 1);
    }

    /// Resolves when `key` has no holder: `Ok(Some(Released))` at once if it has none now; else
    /// queued and resolved by `Effect::Unlocked` (Released / Expired, by how the last holder
    /// left) or `Effect::WaitFailed { Timeout }`. `Wait::No` (or a past `Until`) on a locked key:
    /// `Err(Busy)`. Also `DuplicateRequest`, `LimitExceeded("pending waiters")`. Pushes only
    /// the recall of a cacheable lease on the key (`cache.rs`).
    pub fn wait_until_unlocked(
        &mut self,
        now: Instant,
        session: SessionId,
        req: ReqId,
        key: &[u8],
        wait: Wait,
        out: &mut Vec<Effect>,
    ) -> Result<Option<UnlockOutcome>, TableError> {
        let s = self.sessions.entry(session);
        if s.pending.contains_key(&req) {
            return Err(TableError::DuplicateRequest);
        }
        let waiting = s.pending.len();
        let principal = s.principal();
        let total = self.queued_total();
        let (queued_by_principal, cap) = (
            self.sessions.quotas.queued(principal),
            self.sessions.quotas.caps(principal).queued,
        );
        let Ok(e) = held_entry(&mut self.keys, key) else {
            return Ok(Some(UnlockOutcome::Released));
        };
        // Whoever waits for the key to come free waits for a cached lease too (`cache.rs`).
        e.recall_cached(&mut cx!(self, now, out));
        let load = QueueLoad {
            session: waiting,
            key: e.waiters().len() + e.watchers().len(),
            total,
            records: 1,
            principal: queued_by_principal,
            principal_cap: cap,
        };
        let (seq, deadline) = admit_to_queue(now, wait, load, &self.cfg, &mut self.seq)?;
        let w = Watcher {
            seq,
            session,
            req,
            deadline,
        };
        e.enqueue_watcher(w, &mut self.sessions, &mut self.deadlines);
        self.maybe_compact();
        Ok(None)
    }

    /// Cancels a pending acquire or `wait_until_unlocked` with this request id, pushing
    /// `AcquireFailed`/`WaitFailed { Cancelled }`. `false` if nothing is pending under `req`.
    pub fn cancel(
        &mut self,
        now: Instant,
        session: SessionId,
        req: ReqId,
        out: &mut Vec<Effect>,
    ) -> bool {
        let Some(p) = self.sessions.take_pending(session, req) else {
            return false;
        };
        out.push(p.kind.failed(session, req, TableError::Cancelled));
        if p.kind == PendingKind::Group {
            self.leave_group(now, p.seq, out);
        } else {
            self.detach(now, p, out);
        }
        self.settle_groups(now, out);
        self.maybe_compact();
        true
    }

    /// Ends a session. Its pending requests are dropped silently. `clean`: its leases are
    /// released now (events pushed, waiters granted). Not clean (connection lost): its leases
    /// become orphans that live until their deadline; when one expires the key stays blocked
    /// for `lock_delay`.
    pub fn close_session(
        &mut self,
        now: Instant,
        session: SessionId,
        clean: bool,
        out: &mut Vec<Effect>,
    ) {
        let Some(mut s) = self.sessions.remove(session) else {
            return;
        };
        // All of the session's requests leave their queues before anyone is granted: it may
        // queue several acquires on one key, and must not be granted one of them as it goes.
        let mut pending: Vec<Pending> = std::mem::take(&mut s.pending).into_values().collect();
        pending.sort_unstable_by_key(|p| p.seq);
        let mut touched: Vec<EntryId> = Vec::with_capacity(pending.len());
        for p in pending {
            if p.kind == PendingKind::Group {
                touched.extend(self.take_group_out(p.seq, None));
                continue;
            }
            match self.keys.get_mut(p.entry).map(|e| e.unqueue(p.kind, p.seq)) {
                Some(true) => touched.push(p.entry),
                Some(false) => self
                    .faults
                    .record("a pending request is not in its key's queue"),
                None => self.faults.record("a pending request's key is not live"),
            }
        }
        for id in touched {
            if let Some(e) = self.keys.get_mut(id) {
                e.grant_waiters(&mut cx!(self, now, out));
            }
            self.keys.free_if_idle(id);
        }
        let mut held: Vec<(Fence, EntryId)> = Vec::with_capacity(s.lease_count());
        for id in s.take_held_on() {
            if let Some(e) = self.keys.get(id) {
                held.extend(
                    e.holders
                        .as_slice()
                        .iter()
                        .filter(|h| h.owned_by(session))
                        .map(|h| (h.fence, id)),
                );
            }
        }
        if held.len() != s.lease_count() {
            self.faults
                .record("close_session: the session's lease count is off");
        }
        held.sort_unstable_by_key(|(f, _)| *f);
        for (fence, id) in held {
            let Some(e) = self.keys.get_mut(id) else {
                self.faults.record("close_session: a held key is not live");
                continue;
            };
            let found = if clean {
                e.end_lease(fence, UnlockOutcome::Released, &mut cx!(self, now, out))
            } else if let Some(h) = e.holders.get_mut(fence) {
                h.orphan = true;
                true
            } else {
                false
            };
            if !found {
                self.faults
                    .record("close_session: a held lease is not on its key");
            }
            self.keys.free_if_idle(id);
        }
        self.settle_groups(now, out);
        self.maybe_compact();
    }

    /// Takes a pending request, already out of its session's index, out of its key's queue
    /// (granting whoever is now at the head) and frees the key if that left it idle.
    fn detach(&mut self, now: Instant, p: Pending, out: &mut Vec<Effect>) {
        let Some(e) = self.keys.get_mut(p.entry) else {
            self.faults.record("a pending request's key is not live");
            return;
        };
        if !e.leave_queue(p.kind, p.seq, &mut cx!(self, now, out)) {
            self.faults
                .record("a pending request is not in its key's queue");
        }
        self.keys.free_if_idle(p.entry);
    }
}
