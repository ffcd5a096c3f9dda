//! `Table`: the public operations of the lock table, each a plain function of
//! (state, request, now) that appends its consequences to an `out` vector of [`Effect`]s.
//!
//! This file routes requests to the key entry (`entry.rs`), keeps the session index
//! (`sessions.rs`) and the deadline queue (`deadlines.rs`) in step, and frees idle keys.

use std::time::{Duration, Instant};

use super::deadlines::{Deadlines, Due, Item};
use super::entry::{Cx, Entry, HolderRec, Holders, Waiter, Watcher};
use super::fences::FenceGen;
use super::keys::{EntryId, Keys};
use super::sessions::{Pending, Role, Sessions};
use super::types::{
    AcquireRequest, Effect, Fence, Grant, Holder, Key, LockEvent, LockInfo, Mode, RESTORED_SESSION,
    ReqId, SessionId, TableConfig, TableError, UnlockOutcome, Wait, deadline_after,
};

/// The lock table. Not thread-safe by itself: the server wraps it in a mutex.
#[derive(Debug)]
pub struct Table {
    pub(crate) cfg: TableConfig,
    pub(crate) keys: Keys,
    pub(crate) sessions: Sessions,
    pub(crate) deadlines: Deadlines,
    fences: FenceGen,
    /// Next queue sequence number (waiters and watchers).
    seq: u64,
}

/// Borrows the parts of `Table` an entry transition needs, leaving `keys` free.
macro_rules! cx {
    ($t:ident, $now:expr, $out:expr) => {
        Cx {
            now: $now,
            cfg: &$t.cfg,
            sessions: &mut $t.sessions,
            deadlines: &mut $t.deadlines,
            fences: &mut $t.fences,
            out: $out,
        }
    };
}

/// Where a queued request should stop waiting: `Ok(None)` forever, `Err(Busy)` if it may not queue.
fn queue_deadline(now: Instant, wait: Wait) -> Result<Option<Instant>, TableError> {
    match wait {
        Wait::No => Err(TableError::Busy),
        Wait::Until(t) if t <= now => Err(TableError::Busy),
        Wait::Until(t) => Ok(Some(t)),
        Wait::Forever => Ok(None),
    }
}

fn check_mode(mode: Mode) -> Result<(), TableError> {
    if mode == Mode::Semaphore(0) {
        return Err(TableError::InvalidMode(
            "a semaphore needs at least one permit",
        ));
    }
    Ok(())
}

impl Table {
    pub fn new(cfg: TableConfig) -> Self {
        Self {
            fences: FenceGen::new(cfg.epoch),
            cfg,
            keys: Keys::default(),
            sessions: Sessions::default(),
            deadlines: Deadlines::default(),
            seq: 0,
        }
    }

    /// Acquires `req.key` for `req.session`.
    ///
    /// `Ok(Some(grant))`: granted now (only `Event(Acquired)` is pushed for it). `Ok(None)`: queued;
    /// a later `Effect::Granted` or `Effect::AcquireFailed` resolves it. Errors: `Busy` (not
    /// grantable and `Wait::No` or a past `Wait::Until`), `AlreadyHeld` (the session holds or
    /// queues on this key), `LimitExceeded`, `InvalidMode`, `DuplicateRequest`.
    pub fn acquire(
        &mut self,
        now: Instant,
        req: AcquireRequest,
        out: &mut Vec<Effect>,
    ) -> Result<Option<Grant>, TableError> {
        let AcquireRequest {
            session,
            req,
            key,
            mode,
            ttl,
            wait,
        } = req;
        check_mode(mode)?;
        let (hash, id) = self.keys.find_hashed(&key);
        let s = self.sessions.entry(session);
        if s.pending.contains_key(&req) {
            return Err(TableError::DuplicateRequest);
        }
        if id.is_some_and(|id| s.keys.contains_key(&id)) {
            return Err(TableError::AlreadyHeld);
        }
        if s.held >= self.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        let waiting = s.pending.len();
        let mut cx = cx!(self, now, out);
        let Some(id) = id else {
            // Idle key: granted at once. Allocate the fence before the entry so a failure
            // leaves nothing behind.
            let id = self.keys.insert(hash, Entry::new(key));
            let e = self.keys.get_mut(id).ok_or(TableError::NotLocked)?;
            let lease = e.new_lease(session, mode, ttl, &mut cx);
            let result = match lease {
                Ok(h) => {
                    let grant = h.grant(&e.key);
                    e.holders = Holders::One(h);
                    Ok(Some(grant))
                }
                Err(err) => Err(err),
            };
            self.keys.free_if_idle(id);
            self.maybe_compact();
            return result;
        };
        let e = self.keys.get_mut(id).ok_or(TableError::NotLocked)?;
        e.check_family(mode)?;
        let result = if e.grantable_now(mode) {
            let h = e.new_lease(session, mode, ttl, &mut cx)?;
            let grant = h.grant(&e.key);
            e.holders.push(h);
            Some(grant)
        } else {
            let until = queue_deadline(now, wait)?;
            if waiting >= self.cfg.max_waiters_per_session {
                return Err(TableError::LimitExceeded("pending waiters"));
            }
            let seq = self.seq;
            self.seq += 1;
            e.waiters.push_back(Waiter {
                seq,
                session,
                req,
                mode,
                ttl,
                deadline: until,
            });
            if let Some(t) = until {
                cx.deadlines.push(t, id, e.generation, Due::Waiter(seq));
            }
            let s = cx.sessions.entry(session);
            s.pending.insert(
                req,
                Pending {
                    entry: id,
                    seq,
                    watch: false,
                },
            );
            s.keys.insert(id, Role::Waits(req));
            None
        };
        self.maybe_compact();
        Ok(result)
    }

    /// Releases lease `fence` on `key` held by `session`, granting the next waiter(s) at once.
    /// `NotLocked` if nobody holds `key`; `NotOwner` if it is held, but not as (session, fence).
    pub fn release(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        out: &mut Vec<Effect>,
    ) -> Result<(), TableError> {
        let id = self.keys.find(key).ok_or(TableError::NotLocked)?;
        let e = self.keys.get_mut(id).ok_or(TableError::NotLocked)?;
        if e.holders.is_empty() {
            return Err(TableError::NotLocked);
        }
        match e.holders.get(fence) {
            Some(h) if h.session == session && !h.orphan => {}
            _ => return Err(TableError::NotOwner),
        }
        let mut cx = cx!(self, now, out);
        e.end_lease(fence, UnlockOutcome::Released, &mut cx);
        self.keys.free_if_idle(id);
        self.maybe_compact();
        Ok(())
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
        let id = self.keys.find(key).ok_or(TableError::NotLocked)?;
        let e = self.keys.get_mut(id).ok_or(TableError::NotLocked)?;
        if e.holders.is_empty() {
            return Err(TableError::NotLocked);
        }
        let generation = e.generation;
        let h = match e.holders.get_mut(fence) {
            Some(h) if h.session == session && !h.orphan => h,
            _ => return Err(TableError::NotOwner),
        };
        let deadline = deadline_after(now, ttl);
        h.deadline = deadline;
        h.ttl = ttl;
        self.deadlines
            .push(deadline, id, generation, Due::Lease(fence));
        out.push(Effect::Event(LockEvent::Extended {
            key: e.key.clone(),
            session,
            fence,
            deadline,
        }));
        self.maybe_compact();
        Ok(deadline)
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
        let Some(s) = self.sessions.get_mut(session) else {
            return false;
        };
        let Some(p) = s.pending.remove(&req) else {
            return false;
        };
        self.detach(now, session, req, p, Some(TableError::Cancelled), out);
        true
    }

    /// Removes a pending request (already taken out of the session's `pending`) from its key's
    /// queue, reports `error` to its owner if given, and grants whoever is now at the head.
    fn detach(
        &mut self,
        now: Instant,
        session: SessionId,
        req: ReqId,
        p: Pending,
        error: Option<TableError>,
        out: &mut Vec<Effect>,
    ) {
        if let Some(s) = self.sessions.get_mut(session)
            && !p.watch
            && s.keys.get(&p.entry) == Some(&Role::Waits(req))
        {
            s.keys.remove(&p.entry);
        }
        if let Some(error) = error {
            out.push(if p.watch {
                Effect::WaitFailed {
                    session,
                    req,
                    error,
                }
            } else {
                Effect::AcquireFailed {
                    session,
                    req,
                    error,
                }
            });
        }
        let Some(e) = self.keys.get_mut(p.entry) else {
            return;
        };
        if p.watch {
            e.remove_watcher(p.seq);
        } else {
            e.remove_waiter(p.seq);
            let mut cx = cx!(self, now, out);
            e.grant_waiters(&mut cx);
        }
        self.keys.free_if_idle(p.entry);
    }

    /// Snapshot of `key`, or `None` when the key is idle. Reports state as stored: call
    /// [`Table::expire`] first for leases past their deadline to be gone.
    pub fn inspect(&self, _now: Instant, key: &[u8]) -> Option<LockInfo> {
        let e = self.keys.get(self.keys.find(key)?)?;
        Some(LockInfo {
            key: e.key.clone(),
            holders: e
                .holders
                .as_slice()
                .iter()
                .map(|h| Holder {
                    session: h.session,
                    fence: h.fence,
                    mode: h.mode,
                    deadline: h.deadline,
                })
                .collect(),
            waiters: e.waiters.len(),
            blocked_until: e.blocked_until,
        })
    }

    /// Whether `key` has at least one holder (a key only blocked by lock delay is not locked).
    pub fn is_locked(&self, key: &[u8]) -> bool {
        self.keys
            .find(key)
            .and_then(|id| self.keys.get(id))
            .is_some_and(|e| !e.holders.is_empty())
    }

    /// Resolves when `key` has no holder: `Ok(Some(Released))` at once if it has none now; else
    /// queued and resolved by `Effect::Unlocked` (Released / Expired, by how the last holder
    /// left) or `Effect::WaitFailed { Timeout }`. `Wait::No` (or a past `Until`) on a locked key:
    /// `Err(Busy)`. Also `DuplicateRequest`, `LimitExceeded("pending waiters")`.
    pub fn wait_until_unlocked(
        &mut self,
        now: Instant,
        session: SessionId,
        req: ReqId,
        key: Key,
        wait: Wait,
        out: &mut Vec<Effect>,
    ) -> Result<Option<UnlockOutcome>, TableError> {
        let _ = out;
        let s = self.sessions.entry(session);
        if s.pending.contains_key(&req) {
            return Err(TableError::DuplicateRequest);
        }
        let waiting = s.pending.len();
        let Some(id) = self.keys.find(&key) else {
            return Ok(Some(UnlockOutcome::Released));
        };
        let e = match self.keys.get_mut(id) {
            Some(e) if !e.holders.is_empty() => e,
            _ => return Ok(Some(UnlockOutcome::Released)),
        };
        let until = queue_deadline(now, wait)?;
        if waiting >= self.cfg.max_waiters_per_session {
            return Err(TableError::LimitExceeded("pending waiters"));
        }
        let seq = self.seq;
        self.seq += 1;
        e.watchers.push(Watcher {
            seq,
            session,
            req,
            deadline: until,
        });
        if let Some(t) = until {
            self.deadlines.push(t, id, e.generation, Due::Watcher(seq));
        }
        self.sessions.entry(session).pending.insert(
            req,
            Pending {
                entry: id,
                seq,
                watch: true,
            },
        );
        self.maybe_compact();
        Ok(None)
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
        let Some(s) = self.sessions.remove(session) else {
            return;
        };
        let mut pending: Vec<(ReqId, Pending)> = s.pending.into_iter().collect();
        pending.sort_unstable_by_key(|(_, p)| p.seq);
        for (req, p) in pending {
            self.detach(now, session, req, p, None, out);
        }
        let mut held: Vec<(Fence, EntryId)> = s
            .keys
            .into_iter()
            .filter_map(|(id, r)| match r {
                Role::Holds(f) => Some((f, id)),
                Role::Waits(_) => None,
            })
            .collect();
        held.sort_unstable_by_key(|(f, _)| *f);
        for (fence, id) in held {
            let Some(e) = self.keys.get_mut(id) else {
                continue;
            };
            if clean {
                let mut cx = cx!(self, now, out);
                e.end_lease(fence, UnlockOutcome::Released, &mut cx);
            } else if let Some(h) = e.holders.get_mut(fence) {
                h.orphan = true;
            }
            self.keys.free_if_idle(id);
        }
        self.maybe_compact();
    }

    /// Transfers lease (key, fence) to `session`, keeping its fence and deadline (reclaim after
    /// reconnect, or of a restored lease). Idempotent for the current owner. Errors: `NotLocked`,
    /// `NotOwner` (no such lease), `AlreadyHeld` (the session holds another lease on, or queues
    /// on, this key), `LimitExceeded("held leases")`. Pushes no event: the mirrored state
    /// (key, fence, deadline) does not change.
    pub fn reclaim(
        &mut self,
        _now: Instant,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        out: &mut Vec<Effect>,
    ) -> Result<Grant, TableError> {
        let _ = out;
        let id = self.keys.find(key).ok_or(TableError::NotLocked)?;
        let e = self.keys.get_mut(id).ok_or(TableError::NotLocked)?;
        if e.holders.is_empty() {
            return Err(TableError::NotLocked);
        }
        let k = &e.key;
        let Some(h) = e.holders.get_mut(fence) else {
            return Err(TableError::NotOwner);
        };
        if h.session == session && !h.orphan {
            return Ok(h.grant(k));
        }
        let s = self.sessions.entry(session);
        if s.keys.contains_key(&id) {
            return Err(TableError::AlreadyHeld);
        }
        if s.held >= self.cfg.max_leases_per_session {
            return Err(TableError::LimitExceeded("held leases"));
        }
        s.keys.insert(id, Role::Holds(fence));
        s.held += 1;
        let (prev, was_orphan) = (h.session, h.orphan);
        h.session = session;
        h.orphan = false;
        let grant = h.grant(k);
        if !was_orphan {
            self.sessions.drop_hold(prev, id);
        }
        Ok(grant)
    }

    /// Inserts an already-held lease at startup (restore from the mirror). Owner is session 0
    /// (an orphan: lock delay applies when it expires); the fence is kept and the fence floor
    /// raised past it. Errors: `InvalidMode`; `AlreadyHeld` if the key is held in a way that
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
        let h = HolderRec {
            session: RESTORED_SESSION,
            fence,
            mode,
            ttl: deadline.saturating_duration_since(now),
            deadline,
            orphan: true,
        };
        let id = match self.keys.find_hashed(&key) {
            (hash, None) => self.keys.insert(hash, Entry::new(key)),
            (_, Some(id)) => {
                let e = self.keys.get_mut(id).ok_or(TableError::NotLocked)?;
                e.check_family(mode)?;
                if e.holders.is_empty() || e.holders.get(fence).is_some() || !e.grantable_now(mode)
                {
                    return Err(TableError::AlreadyHeld);
                }
                id
            }
        };
        let Some(e) = self.keys.get_mut(id) else {
            return Err(TableError::NotLocked);
        };
        e.holders.push(h);
        let generation = e.generation;
        self.fences.raise_floor(fence);
        self.deadlines
            .push(deadline, id, generation, Due::Lease(fence));
        Ok(())
    }

    /// Makes every future fence `> fence`.
    pub fn raise_fence_floor(&mut self, fence: Fence) {
        self.fences.raise_floor(fence);
    }

    /// The earliest instant `expire` may have work. May be early (a stale, already-satisfied
    /// deadline), never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.peek()
    }

    /// Processes everything due at or before `now`, in deadline order: lease expiries
    /// (`Event(Expired)`, watchers `Unlocked{Expired}`, next grants unless lock delay applies),
    /// waiter timeouts (`AcquireFailed`/`WaitFailed { Timeout }`), lock-delay ends.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Effect>) {
        while let Some(Item {
            at,
            id,
            generation,
            due,
        }) = self.deadlines.pop_due(now)
        {
            let Some(e) = self.keys.get_gen_mut(id, generation) else {
                continue;
            };
            let mut cx = cx!(self, now, out);
            match due {
                Due::Lease(fence) => {
                    if e.holders.get(fence).is_some_and(|h| h.deadline == at) {
                        e.end_lease(fence, UnlockOutcome::Expired, &mut cx);
                    }
                }
                Due::Unblock => e.unblock(at, &mut cx),
                Due::Waiter(seq) => {
                    if let Some(i) = e.find_waiter(seq)
                        && e.waiters.get(i).is_some_and(|w| w.deadline == Some(at))
                        && let Some(w) = e.waiters.remove(i)
                    {
                        cx.sessions.drop_pending(w.session, w.req);
                        cx.out.push(Effect::AcquireFailed {
                            session: w.session,
                            req: w.req,
                            error: TableError::Timeout,
                        });
                        e.grant_waiters(&mut cx);
                    }
                }
                Due::Watcher(seq) => {
                    if let Some(i) = e.find_watcher(seq)
                        && e.watchers.get(i).is_some_and(|w| w.deadline == Some(at))
                    {
                        let w = e.watchers.remove(i);
                        cx.sessions.drop_pending(w.session, w.req);
                        cx.out.push(Effect::WaitFailed {
                            session: w.session,
                            req: w.req,
                            error: TableError::Timeout,
                        });
                    }
                }
            }
            self.keys.free_if_idle(id);
        }
        self.maybe_compact();
    }

    /// Every current lease as (key, holder), in no particular order: the snapshot a mirror
    /// resynchronizes from. Leases past their deadline that `expire` has not processed yet are
    /// included. O(live keys).
    pub fn holds(&self) -> Vec<(Key, Holder)> {
        self.keys
            .iter()
            .flat_map(|e| {
                e.holders.as_slice().iter().map(|h| {
                    (
                        e.key.clone(),
                        Holder {
                            session: h.session,
                            fence: h.fence,
                            mode: h.mode,
                            deadline: h.deadline,
                        },
                    )
                })
            })
            .collect()
    }

    /// Number of live keys (held, queued on, or blocked by lock delay).
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// (held leases, pending requests) of a live session; orphaned leases count for nobody.
    pub fn session_counts(&self, session: SessionId) -> (usize, usize) {
        self.sessions
            .get(session)
            .map_or((0, 0), |s| (s.held, s.pending.len()))
    }

    /// Rebuilds the deadline heap from live state once stale items may dominate it.
    fn maybe_compact(&mut self) {
        if !self.deadlines.needs_rebuild() {
            return;
        }
        let live = self.keys.iter().flat_map(Entry::deadline_items);
        self.deadlines.rebuild(live);
    }
}
