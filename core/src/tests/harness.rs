//! The one harness the table's tests drive it with: a table, a hand-driven clock and the effects
//! of the last call(s). Every request made through it checks the table's invariants afterwards;
//! tests that corrupt the state by hand call `h.t` directly instead.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::*;

/// The key of tests that need only one.
pub const K: &[u8] = b"k";

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn key(k: &'static [u8]) -> Key {
    Bytes::from_static(k)
}

/// The lock events among `out`, in order.
pub fn events(out: &[Effect]) -> Vec<&LockEvent> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Event(ev) => Some(ev),
            _ => None,
        })
        .collect()
}

/// What the table looks like from outside (for "nothing changed" checks).
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    totals: TableTotals,
    next_deadline: Option<Instant>,
    holds: Vec<(Key, Fence)>,
}

/// A table plus a hand-driven clock and the effects of the last call(s).
pub struct H {
    pub t: Table,
    pub t0: Instant,
    pub now: Instant,
    pub out: Vec<Effect>,
    /// Request ids handed out by `lock` (kept clear of the small ids tests pick by hand).
    next_req: ReqId,
}

impl H {
    pub fn new() -> Self {
        Self::with(TableConfig::default())
    }

    pub fn with(cfg: TableConfig) -> Self {
        let t0 = Instant::now();
        Self {
            t: Table::new(cfg),
            t0,
            now: t0,
            out: Vec::new(),
            next_req: 1_000_000,
        }
    }

    pub fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }

    /// Moves the clock to t0 + n ms and runs `expire`.
    pub fn advance_to(&mut self, n: u64) {
        self.now = self.at(n);
        self.t.expire(self.now, &mut self.out);
        self.t.check_invariants();
    }

    /// A single-key acquire.
    pub fn acq(
        &mut self,
        session: SessionId,
        req: ReqId,
        key: &'static [u8],
        mode: Mode,
        ttl_ms: u64,
        wait: Wait,
    ) -> Result<Option<Grant>, TableError> {
        let r = self.t.acquire(
            self.now,
            AcquireRequest {
                session,
                req,
                key: Bytes::from_static(key),
                mode,
                ttl: ms(ttl_ms),
                wait,
                owner: None,
                ticket: 0,
                fence_block: 1,
            },
            &mut self.out,
        );
        self.t.check_invariants();
        r
    }

    /// An exclusive single-key acquire of 1 s.
    pub fn one(
        &mut self,
        session: SessionId,
        req: ReqId,
        key: &'static [u8],
        wait: Wait,
    ) -> Result<Option<Grant>, TableError> {
        self.acq(session, req, key, Mode::Exclusive, 1000, wait)
    }

    /// Acquire that must be granted at once (under a fresh request id); returns the fence.
    pub fn lock(
        &mut self,
        session: SessionId,
        key: &'static [u8],
        mode: Mode,
        ttl_ms: u64,
    ) -> Fence {
        let req = self.fresh_req();
        self.granted_at_once(session, req, key, mode, ttl_ms)
    }

    /// An exclusive acquire of 1 s as request `req` that must be granted at once; returns the
    /// fence.
    pub fn lock_one(&mut self, session: SessionId, req: ReqId, key: &'static [u8]) -> Fence {
        self.granted_at_once(session, req, key, Mode::Exclusive, 1000)
    }

    fn granted_at_once(
        &mut self,
        session: SessionId,
        req: ReqId,
        key: &'static [u8],
        mode: Mode,
        ttl_ms: u64,
    ) -> Fence {
        match self.acq(session, req, key, mode, ttl_ms, Wait::No) {
            Ok(Some(g)) => g.fence,
            other => panic!("expected an immediate grant, got {other:?}"),
        }
    }

    /// Acquire of 1 s that must be queued.
    pub fn queue(
        &mut self,
        session: SessionId,
        req: ReqId,
        key: &'static [u8],
        mode: Mode,
        wait: Wait,
    ) {
        let r = self.acq(session, req, key, mode, 1000, wait);
        assert_eq!(r, Ok(None), "expected queued");
    }

    /// An exclusive acquire of 1 s, waiting forever, that must be queued.
    pub fn queue_one(&mut self, session: SessionId, req: ReqId, key: &'static [u8]) {
        self.queue(session, req, key, Mode::Exclusive, Wait::Forever);
    }

    fn fresh_req(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    /// A multi-key acquire of 1 s.
    pub fn all(
        &mut self,
        session: SessionId,
        req: ReqId,
        keys: &[&'static [u8]],
        wait: Wait,
    ) -> Result<Option<Vec<Grant>>, TableError> {
        let r = self.t.acquire_all(
            self.now,
            AcquireAllRequest {
                session,
                req,
                keys: keys.iter().map(|k| key(k)).collect(),
                ttl: ms(1000),
                wait,
                owner: None,
            },
            &mut self.out,
        );
        self.t.check_invariants();
        r
    }

    /// A multi-key acquire that must be granted at once; returns the fences in key order.
    pub fn lock_all(
        &mut self,
        session: SessionId,
        req: ReqId,
        keys: &[&'static [u8]],
    ) -> Vec<Fence> {
        match self.all(session, req, keys, Wait::No) {
            Ok(Some(g)) => g.iter().map(|g| g.fence).collect(),
            other => panic!("expected an immediate grant, got {other:?}"),
        }
    }

    /// A multi-key acquire that must queue.
    pub fn queue_all(
        &mut self,
        session: SessionId,
        req: ReqId,
        keys: &[&'static [u8]],
        wait: Wait,
    ) {
        assert_eq!(
            self.all(session, req, keys, wait),
            Ok(None),
            "expected queued"
        );
    }

    pub fn release(
        &mut self,
        session: SessionId,
        key: &[u8],
        fence: Fence,
    ) -> Result<(), TableError> {
        let key = Key::copy_from_slice(key);
        let r = self
            .t
            .release(self.now, session, &key, fence, &mut self.out);
        self.t.check_invariants();
        r
    }

    pub fn cancel(&mut self, session: SessionId, req: ReqId) -> bool {
        let r = self.t.cancel(self.now, session, req, &mut self.out);
        self.t.check_invariants();
        r
    }

    pub fn close(&mut self, session: SessionId, clean: bool) {
        self.t
            .close_session(self.now, session, clean, &mut self.out);
        self.t.check_invariants();
    }

    pub fn take(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.out)
    }

    /// The (session, req, fence) of every `Granted` effect since the last `take`.
    pub fn granted(&mut self) -> Vec<(SessionId, ReqId, Fence)> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Granted {
                    session,
                    req,
                    grant,
                    ..
                } => Some((session, req, grant.fence)),
                _ => None,
            })
            .collect()
    }

    /// (session, req, keys, fences) of every `Granted` / `GrantedAll` since the last `take`.
    pub fn grants(&mut self) -> Vec<(SessionId, ReqId, Vec<Key>, Vec<Fence>)> {
        self.take()
            .into_iter()
            .filter_map(|e| match e {
                Effect::Granted {
                    session,
                    req,
                    grant,
                    ..
                } => Some((session, req, vec![grant.key], vec![grant.fence])),
                Effect::GrantedAll {
                    session,
                    req,
                    grants,
                } => Some((
                    session,
                    req,
                    grants.iter().map(|g| g.key.clone()).collect(),
                    grants.iter().map(|g| g.fence).collect(),
                )),
                _ => None,
            })
            .collect()
    }

    /// The session holding `k` (an exclusive key).
    pub fn holder(&self, k: &[u8]) -> Option<SessionId> {
        let info = self.t.inspect(k)?;
        assert!(info.holders.len() <= 1, "exclusive keys only here");
        info.holders.first().map(|h| h.session)
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut holds: Vec<(Key, Fence)> = self
            .t
            .holds()
            .into_iter()
            .map(|(k, h)| (k, h.fence))
            .collect();
        holds.sort();
        Snapshot {
            totals: self.t.totals(),
            next_deadline: self.t.next_deadline(),
            holds,
        }
    }
}
