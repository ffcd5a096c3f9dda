//! Leases: the holders of a key, the one path by which a lease is granted, how a lease ends,
//! and the lease-expiry timer.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::deadlines::Due;
use super::entry::{Cx, Entry};
use super::quotas::Counter;
use super::types::{
    Effect, Fence, Grant, Key, LockEvent, Mode, PrincipalId, SessionId, TableError, UnlockOutcome,
    deadline_after,
};

/// One lease on a key.
#[derive(Clone, Debug)]
pub struct HolderRec {
    pub session: SessionId,
    pub fence: Fence,
    pub mode: Mode,
    /// The lease's TTL in nanoseconds (a `Duration` would take twice the room); see `ttl()`.
    ttl_ns: u64,
    pub deadline: Instant,
    /// Owner session is gone (lost connection) or the lease was restored: in no session index.
    pub orphan: bool,
    /// The principal the lease was granted to (or reclaimed by): `UNNAMED_PRINCIPAL` for a
    /// restored lease. Fits in what was padding.
    pub principal: PrincipalId,
    /// A cacheable lease (`cache.rs`), and whether its holder was told to give it back. Fit in
    /// what was padding too.
    pub cached: bool,
    pub recalled: bool,
}

impl HolderRec {
    pub fn new(
        session: SessionId,
        fence: Fence,
        mode: Mode,
        ttl: Duration,
        deadline: Instant,
        orphan: bool,
        principal: PrincipalId,
    ) -> Self {
        let mut h = Self {
            session,
            fence,
            mode,
            ttl_ns: 0,
            deadline,
            orphan,
            principal,
            cached: false,
            recalled: false,
        };
        h.set_ttl(ttl);
        h
    }

    /// The lease's TTL (saturating at about 584 years, far past `MAX_TTL`).
    #[inline]
    pub fn ttl(&self) -> Duration {
        Duration::from_nanos(self.ttl_ns)
    }

    #[inline]
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    }

    /// A live (non-orphan) lease of `session`: the only leases `release` and `extend` accept.
    #[inline]
    pub fn owned_by(&self, session: SessionId) -> bool {
        self.session == session && !self.orphan
    }

    #[inline]
    pub fn grant(&self, key: Key) -> Grant {
        Grant {
            key,
            fence: self.fence,
            mode: self.mode,
            ttl: self.ttl(),
            deadline: self.deadline,
            fence_block: 1,
        }
    }
}

/// The holders of a key, inline for the common single-holder case.
#[derive(Debug, Default)]
pub enum Holders {
    #[default]
    Empty,
    One(HolderRec),
    Many(Vec<HolderRec>),
}

impl Holders {
    #[inline]
    pub fn as_slice(&self) -> &[HolderRec] {
        match self {
            Holders::Empty => &[],
            Holders::One(h) => std::slice::from_ref(h),
            Holders::Many(v) => v,
        }
    }

    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [HolderRec] {
        match self {
            Holders::Empty => &mut [],
            Holders::One(h) => std::slice::from_mut(h),
            Holders::Many(v) => v,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    pub fn push(&mut self, h: HolderRec) {
        match self {
            Holders::Empty => *self = Holders::One(h),
            Holders::Many(v) => v.push(h),
            Holders::One(_) => {
                if let Holders::One(first) = std::mem::take(self) {
                    *self = Holders::Many(vec![first, h]);
                }
            }
        }
    }

    #[inline]
    pub fn remove(&mut self, fence: Fence) -> Option<HolderRec> {
        match self {
            Holders::Empty => None,
            Holders::One(h) if h.fence == fence => match std::mem::take(self) {
                Holders::One(h) => Some(h),
                _ => None,
            },
            Holders::One(_) => None,
            Holders::Many(v) => {
                let i = v.iter().position(|h| h.fence == fence)?;
                let h = v.swap_remove(i);
                if v.is_empty() {
                    *self = Holders::Empty;
                }
                Some(h)
            }
        }
    }

    #[inline]
    pub fn get(&self, fence: Fence) -> Option<&HolderRec> {
        self.as_slice().iter().find(|h| h.fence == fence)
    }

    #[inline]
    pub fn get_mut(&mut self, fence: Fence) -> Option<&mut HolderRec> {
        self.as_mut_slice().iter_mut().find(|h| h.fence == fence)
    }
}

/// What a new lease is granted as: mode, TTL, owner label (`None`: none) and fence block (1:
/// an ordinary lease; more: a cacheable one, `cache.rs`).
#[derive(Debug)]
pub struct Terms {
    pub mode: Mode,
    pub ttl: Duration,
    pub owner: Option<Bytes>,
    pub fence_block: u32,
}

impl Entry {
    /// Grants a new lease on this key to `session` — the one grant path, for immediate acquires
    /// and queue heads alike. The caller checked the mode rules and the session's lease limit
    /// (`acquire` before deciding, `grant_heads` for a queued request); this allocates a fence,
    /// indexes the lease in the session, schedules its expiry, emits `Acquired` and adds the
    /// holder. `session` must be live: `acquire` creates its record and
    /// `grant_waiters` checks it first. `key` is this entry's key as the request carried it
    /// (`None`: copied from the entry), for the grant and the event.
    pub fn grant_lease(
        &mut self,
        session: SessionId,
        terms: Terms,
        key: Option<Key>,
        cx: &mut Cx<'_>,
    ) -> Result<Grant, TableError> {
        let Terms {
            mode,
            ttl,
            owner,
            fence_block,
        } = terms;
        let block = fence_block.clamp(1, crate::MAX_FENCE_BLOCK);
        let fence = cx.fences.alloc_block(block)?;
        let key = key.unwrap_or_else(|| self.key.to_key());
        cx.owners.set(fence, owner);
        let mut grant = self.install_lease(session, fence, mode, ttl, key, cx);
        if block > 1 {
            grant.fence_block = block;
            if let Some(h) = self.holders.get_mut(fence) {
                h.cached = true;
            }
        }
        Ok(grant)
    }

    /// Adds lease `fence` of `session` (live) with a deadline of `now + ttl`: indexes it in the
    /// session, schedules its expiry, emits `Acquired`. The caller checked the mode rules and
    /// the session's lease limit. Shared by new grants and adopted leases (`handover.rs`).
    /// `key` (this entry's key) goes into the event and the grant. The caller labels the lease
    /// (`cx.owners`) when it has an owner label.
    pub fn install_lease(
        &mut self,
        session: SessionId,
        fence: Fence,
        mode: Mode,
        ttl: Duration,
        key: Key,
        cx: &mut Cx<'_>,
    ) -> Grant {
        let principal = cx.sessions.note_hold(session, self.id);
        let deadline = deadline_after(cx.now, ttl);
        cx.deadlines
            .push(deadline, self.id, self.generation, Due::Lease);
        if cx.cfg.lease_events {
            cx.out.push(Effect::Event(LockEvent::Acquired {
                key: key.clone(),
                session,
                fence,
                mode,
                deadline,
            }));
        }
        let h = HolderRec::new(session, fence, mode, ttl, deadline, false, principal);
        let grant = h.grant(key);
        self.holders.push(h);
        grant
    }

    /// Ends the lease `fence` (released or expired): session index, mirror event, lock delay for
    /// orphans on expiry, then watchers and next grants. `false` if there is no such lease.
    pub fn end_lease(&mut self, fence: Fence, outcome: UnlockOutcome, cx: &mut Cx<'_>) -> bool {
        self.end_lease_keyed(fence, outcome, None, cx)
    }

    /// [`Entry::end_lease`], with this entry's key as a request carried it for the event
    /// (`None`: copied from the entry).
    pub fn end_lease_keyed(
        &mut self,
        fence: Fence,
        outcome: UnlockOutcome,
        key: Option<&Key>,
        cx: &mut Cx<'_>,
    ) -> bool {
        let Some(h) = self.holders.remove(fence) else {
            return false;
        };
        if !h.orphan {
            cx.sessions.drop_hold(h.session);
        }
        cx.sessions.quotas.sub(h.principal, Counter::Leases, 1);
        cx.owners.forget(fence);
        if cx.cfg.lease_events || outcome == UnlockOutcome::Expired {
            let key = key.cloned().unwrap_or_else(|| self.key.to_key());
            let session = h.session;
            cx.out.push(Effect::Event(match outcome {
                UnlockOutcome::Released => LockEvent::Released {
                    key,
                    session,
                    fence,
                },
                UnlockOutcome::Expired => LockEvent::Expired {
                    key,
                    session,
                    fence,
                },
            }));
        }
        if outcome == UnlockOutcome::Expired && h.orphan {
            self.block_after(h.deadline, cx);
        }
        if self.holders.is_empty() {
            self.resolve_watchers(outcome, cx);
        }
        self.grant_waiters(cx);
        true
    }

    /// Lease-expiry timer: ends, as expired and in fence order, every lease whose deadline is
    /// `at` (none if the item is stale: those leases were renewed or have ended). Bounded: each
    /// round ends a lease, and a lease granted meanwhile is due at `at` only with a zero TTL
    /// taken from the key's queue.
    pub fn expire_leases(&mut self, at: Instant, cx: &mut Cx<'_>) {
        while let Some(fence) = self
            .holders
            .as_slice()
            .iter()
            .filter(|h| h.deadline == at)
            .map(|h| h.fence)
            .min()
        {
            self.end_lease(fence, UnlockOutcome::Expired, cx);
        }
    }

    /// Renews lease `fence` of `session` to `now + ttl`, emitting `Extended`. `NotOwner` unless
    /// `session` owns that lease.
    pub fn renew_lease(
        &mut self,
        session: SessionId,
        fence: Fence,
        ttl: Duration,
        cx: &mut Cx<'_>,
    ) -> Result<Instant, TableError> {
        let h = match self.holders.get_mut(fence) {
            Some(h) if h.owned_by(session) => h,
            _ => return Err(TableError::NotOwner),
        };
        let deadline = deadline_after(cx.now, ttl);
        h.deadline = deadline;
        h.set_ttl(ttl);
        cx.deadlines
            .push(deadline, self.id, self.generation, Due::Lease);
        if cx.cfg.lease_events {
            cx.out.push(Effect::Event(LockEvent::Extended {
                key: self.key.to_key(),
                session,
                fence,
                deadline,
            }));
        }
        Ok(deadline)
    }
}
