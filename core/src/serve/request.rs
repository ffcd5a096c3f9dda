//! What a request asks of the table: [`Request`] (a request frame with its key and TTL as the
//! driver's policy decided them), [`apply`] (the table calls it makes, in one step under the
//! driver's table lock) and [`Outcome`] (the immediate answer: a grant, a renewal, or "queued:
//! an effect answers later"). [`decode`] reads a frame with no policy at all (the embedded
//! engine); the broker builds its requests after its key and TTL policy.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Acquire, AcquireAll, ErrorCode, Frame, LeaseSecret, Mode as WireMode};

use super::ttl_asked;
use crate::wire::{owner_label, wait_from};
use crate::{
    AcquireAllRequest, AcquireRequest, Effect, Fence, Grant, PreviousLease, ReqId, SessionId,
    Table, TableError, UnlockOutcome, Wait,
};

/// One request of a session, ready for the table.
#[derive(Clone, Debug)]
pub enum Request {
    Acquire(AcquireRequest),
    AcquireAll(AcquireAllRequest),
    Release {
        key: Bytes,
        fence: Fence,
    },
    /// Renew a lease for `ttl` from now.
    Extend {
        key: Bytes,
        fence: Fence,
        ttl: Duration,
    },
    /// Take lease (`key`, `fence`) over — from a lost session of the same holder, or (when
    /// `adoptable`, a cluster takeover, or during a restart grace) re-create it in `mode` —
    /// with a fresh TTL of `ttl`.
    Reclaim {
        key: Bytes,
        fence: Fence,
        mode: WireMode,
        ttl: Duration,
        owner: Bytes,
        adoptable: bool,
    },
    WaitUnlocked {
        req: ReqId,
        key: Bytes,
        wait: Wait,
    },
    Cancel {
        req: ReqId,
    },
}

impl Request {
    /// The table request of `Acquire` frame `a` of `session`, for `key` and `ttl` (as the
    /// driver's policy decided them), its wait counted from `now`.
    pub fn acquire(
        session: SessionId,
        a: &Acquire,
        key: Bytes,
        ttl: Duration,
        now: Instant,
    ) -> Self {
        Request::Acquire(AcquireRequest {
            session,
            req: a.id,
            key,
            mode: a.mode.into(),
            ttl,
            wait: wait_from(a.wait, now),
            owner: owner_label(a.owner.clone()),
            ticket: a.ticket,
            fence_block: a.fence_block,
        })
    }

    /// The table request of `AcquireAll` frame `a` of `session`, for `keys` and `ttl`.
    pub fn acquire_all(
        session: SessionId,
        a: &AcquireAll,
        keys: Vec<Bytes>,
        ttl: Duration,
        now: Instant,
    ) -> Self {
        Request::AcquireAll(AcquireAllRequest {
            session,
            req: a.id,
            keys,
            ttl,
            wait: wait_from(a.wait, now),
            owner: owner_label(a.owner.clone()),
        })
    }
}

/// The immediate answer to a request the table accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Granted(Grant),
    GrantedAll(Vec<Grant>),
    /// Queued: an effect answers it later (a grant, a timeout, an unlock).
    Queued,
    Released,
    /// Renewed: the lease now runs `ttl` from the request.
    Extended(Duration),
    /// Taken over: the lease, with its fence, now runs `ttl` from the request.
    Reclaimed(Duration),
    Unlocked(UnlockOutcome),
    /// Nothing to answer (a cancel: the cancelled request is answered by an effect).
    Done,
}

/// Applies request `r` of `session` to the table at `now`; effects for other requests and
/// sessions go to `out`.
pub fn apply(
    t: &mut Table,
    now: Instant,
    session: SessionId,
    r: Request,
    out: &mut Vec<Effect>,
) -> Result<Outcome, TableError> {
    match r {
        Request::Acquire(a) => Ok(t
            .acquire(now, a, out)?
            .map_or(Outcome::Queued, Outcome::Granted)),
        Request::AcquireAll(a) => Ok(t
            .acquire_all(now, a, out)?
            .map_or(Outcome::Queued, Outcome::GrantedAll)),
        Request::Release { key, fence } => {
            t.release(now, session, &key, fence, out)?;
            Ok(Outcome::Released)
        }
        Request::Extend { key, fence, ttl } => {
            t.extend(now, session, &key, fence, ttl, out)?;
            Ok(Outcome::Extended(ttl))
        }
        Request::Reclaim {
            key,
            fence,
            mode,
            ttl,
            owner,
            adoptable,
        } => {
            reclaim(
                t, now, session, &key, fence, mode, ttl, &owner, adoptable, out,
            )?;
            Ok(Outcome::Reclaimed(ttl))
        }
        Request::WaitUnlocked { req, key, wait } => Ok(t
            .wait_until_unlocked(now, session, req, &key, wait, out)?
            .map_or(Outcome::Queued, Outcome::Unlocked)),
        Request::Cancel { req } => {
            t.cancel(now, session, req, out);
            Ok(Outcome::Done)
        }
    }
}

/// A reclaim: the lease moves to `session` and gets a fresh TTL; a lease the table does not
/// know is re-created when the driver says it may be adopted (cluster takeover) or during a
/// restart grace (a lease of the previous run).
#[allow(clippy::too_many_arguments)]
fn reclaim(
    t: &mut Table,
    now: Instant,
    session: SessionId,
    key: &[u8],
    fence: Fence,
    mode: WireMode,
    ttl: Duration,
    owner: &[u8],
    adoptable: bool,
    out: &mut Vec<Effect>,
) -> Result<Instant, TableError> {
    let lease = PreviousLease {
        key,
        fence,
        mode: mode.into(),
        ttl,
        owner,
    };
    match t.reclaim(session, key, fence, mode.into()) {
        Ok(_) => t.extend(now, session, key, fence, ttl, out),
        Err(TableError::NotLocked | TableError::NotOwner) if adoptable => {
            t.adopt(now, session, lease, out).map(|g| g.deadline)
        }
        Err(TableError::NotLocked | TableError::NotOwner) if t.grace_until(now).is_some() => t
            .reclaim_from_previous_run(now, session, lease, out)
            .map(|g| g.deadline),
        Err(e) => Err(e),
    }
}

/// A request frame read with no policy (keys as sent, TTLs as asked, `default_ttl` for none).
#[derive(Debug)]
pub enum Decoded {
    /// A request of the table. `proof` is the lease secret the driver checks before applying
    /// it (release, extend, reclaim); `ack` is false for a fire-and-forget release.
    Table {
        id: ReqId,
        request: Request,
        proof: Option<LeaseSecret>,
        ack: bool,
    },
    /// A read of one key (answered from the table without changing it).
    Inspect { id: ReqId, key: Bytes },
    /// Answered without the table (`Pong`, or the error for a frame only a broker sends);
    /// `None`: nothing to answer.
    Answer(Option<Frame>),
}

/// Reads request frame `frame` of `session` at `now`.
pub fn decode(session: SessionId, frame: Frame, now: Instant, default_ttl: Duration) -> Decoded {
    let table = |id, request, proof, ack| Decoded::Table {
        id,
        request,
        proof,
        ack,
    };
    match frame {
        Frame::Acquire(a) => {
            let ttl = ttl_asked(a.ttl_ms, default_ttl);
            let request = Request::acquire(session, &a, a.key.clone(), ttl, now);
            table(a.id, request, None, true)
        }
        Frame::AcquireAll(a) => {
            let ttl = ttl_asked(a.ttl_ms, default_ttl);
            let request = Request::acquire_all(session, &a, a.keys.clone(), ttl, now);
            table(a.id, request, None, true)
        }
        Frame::Release(r) => {
            let request = Request::Release {
                key: r.key,
                fence: r.fence,
            };
            table(r.id, request, Some(r.secret), r.ack)
        }
        Frame::Extend(x) => {
            let request = Request::Extend {
                key: x.key,
                fence: x.fence,
                ttl: ttl_asked(x.ttl_ms, default_ttl),
            };
            table(x.id, request, Some(x.secret), true)
        }
        Frame::Reclaim(r) => {
            let request = Request::Reclaim {
                key: r.key,
                fence: r.fence,
                mode: r.mode,
                ttl: ttl_asked(r.ttl_ms, default_ttl),
                owner: r.owner,
                adoptable: false,
            };
            table(r.id, request, Some(r.secret), true)
        }
        Frame::WaitUnlocked { id, key, wait } => {
            let request = Request::WaitUnlocked {
                req: id,
                key,
                wait: wait_from(wait, now),
            };
            table(id, request, None, true)
        }
        Frame::Cancel { id } => table(id, Request::Cancel { req: id }, None, false),
        Frame::Inspect { id, key } => Decoded::Inspect { id, key },
        Frame::Ping { id } => Decoded::Answer(Some(Frame::Pong { id })),
        other => {
            let id = other.id();
            Decoded::Answer(
                (id != 0).then(|| Frame::error(id, ErrorCode::ProtocolOrder, "not a request")),
            )
        }
    }
}

impl Request {
    /// The lease a release, extend or reclaim names (what its `proof` must be the secret of).
    pub fn lease(&self) -> Option<(&[u8], Fence)> {
        match self {
            Request::Release { key, fence }
            | Request::Extend { key, fence, .. }
            | Request::Reclaim { key, fence, .. } => Some((key, *fence)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TableConfig;
    use lockbroker_proto::{Extend, Reclaim, WaitSpec};

    fn acquire(t: &mut Table, now: Instant, session: SessionId, ttl: Duration) -> Grant {
        let a = Acquire {
            id: 1,
            key: Bytes::from_static(b"k"),
            mode: WireMode::Exclusive,
            ttl_ms: 0,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        };
        let r = Request::acquire(session, &a, a.key.clone(), ttl, now);
        match apply(t, now, session, r, &mut Vec::new()) {
            Ok(Outcome::Granted(g)) => g,
            other => panic!("not granted: {other:?}"),
        }
    }

    fn deadline(t: &Table) -> Instant {
        t.inspect(b"k").expect("held").holders[0].deadline
    }

    /// The drift the embedded engine had: a reclaim kept the lease's old deadline there while
    /// the broker gave it a fresh TTL. Both drive this code now.
    #[test]
    fn a_reclaim_gets_a_fresh_ttl_from_the_request() {
        let mut t = Table::new(TableConfig::default());
        let start = Instant::now();
        let g = acquire(&mut t, start, 1, Duration::from_secs(10));
        let later = start + Duration::from_secs(8);
        let r = Request::Reclaim {
            key: g.key.clone(),
            fence: g.fence,
            mode: WireMode::Exclusive,
            ttl: Duration::from_secs(10),
            owner: Bytes::new(),
            adoptable: false,
        };
        let outcome = apply(&mut t, later, 2, r, &mut Vec::new());
        assert_eq!(outcome, Ok(Outcome::Reclaimed(Duration::from_secs(10))));
        assert_eq!(deadline(&t), later + Duration::from_secs(10));
        assert_eq!(t.inspect(b"k").expect("held").holders[0].session, 2);
    }

    #[test]
    fn decoded_frames_ask_the_default_ttl_for_none() {
        let now = Instant::now();
        let default = Duration::from_secs(7);
        let extend = Frame::Extend(Extend {
            id: 3,
            key: Bytes::from_static(b"k"),
            fence: 9,
            ttl_ms: 0,
            secret: LeaseSecret([1; 16]),
        });
        match decode(1, extend, now, default) {
            Decoded::Table {
                id: 3,
                request: Request::Extend { ttl, .. },
                proof: Some(proof),
                ack: true,
            } => {
                assert_eq!(ttl, default);
                assert_eq!(proof, LeaseSecret([1; 16]));
            }
            other => panic!("{other:?}"),
        }
        let reclaim = Frame::Reclaim(Reclaim {
            id: 4,
            key: Bytes::from_static(b"k"),
            fence: 9,
            mode: WireMode::Shared,
            ttl_ms: 1500,
            secret: LeaseSecret([2; 16]),
            owner: Bytes::new(),
        });
        match decode(1, reclaim, now, default) {
            Decoded::Table {
                request: Request::Reclaim { ttl, adoptable, .. },
                ..
            } => {
                assert_eq!(ttl, Duration::from_millis(1500));
                assert!(!adoptable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_frame_only_a_broker_sends_is_refused_and_ping_is_answered() {
        let now = Instant::now();
        match decode(1, Frame::Ok { id: 5 }, now, Duration::from_secs(1)) {
            Decoded::Answer(Some(Frame::Error { id: 5, code, .. })) => {
                assert_eq!(code, ErrorCode::ProtocolOrder)
            }
            other => panic!("{other:?}"),
        }
        match decode(1, Frame::Ping { id: 6 }, now, Duration::from_secs(1)) {
            Decoded::Answer(Some(Frame::Pong { id: 6 })) => {}
            other => panic!("{other:?}"),
        }
    }
}
