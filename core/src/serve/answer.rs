//! What a batch of table effects answers ([`Answer`]), and the one builder of each answer
//! frame. A driver adds what only it knows — the lease secret, the key a policy rewrote, a
//! grant gate that may hold a grant — and sends the frame to the session it addresses.

use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::{
    EndReason, ErrorCode, Frame, Granted, GrantedAll, GrantedLease, LeaseSecret,
};

use crate::wire::millis;
use crate::{
    Effect, Fence, Grant, Key, LockEvent, ReqId, SessionId, TableError, UnlockOutcome, Wait,
};

/// The answer one table effect carries.
#[derive(Debug)]
pub enum Answer {
    /// A queued acquire's turn came: `grant` answers request `req` of `session`, which asked
    /// to wait as `wait` with owner label `owner` (for a driver that may retry it).
    Grant {
        session: SessionId,
        req: ReqId,
        grant: Grant,
        wait: Wait,
        owner: Option<Key>,
    },
    /// A queued multi-key acquire's turn came: every key's lease, in request order.
    Grants {
        session: SessionId,
        req: ReqId,
        grants: Vec<Grant>,
    },
    /// A queued acquire failed (its wait ran out, it was cancelled, ...).
    AcquireFailed {
        session: SessionId,
        req: ReqId,
        error: TableError,
    },
    /// A frame ready for `session` (a failed wait, a key unlocked).
    Frame { session: SessionId, frame: Frame },
    /// Lease (`key`, `fence`) of `session` expired while its session may still be there: tell
    /// it now rather than at its next renewal ([`lease_expired_frame`]).
    Expired {
        session: SessionId,
        key: Key,
        fence: Fence,
    },
    /// A lock event that answers no one (for metrics and mirrors).
    Event(LockEvent),
}

impl From<Effect> for Answer {
    fn from(effect: Effect) -> Answer {
        match effect {
            Effect::Granted {
                session,
                req,
                grant,
                wait,
                owner,
            } => Answer::Grant {
                session,
                req,
                grant,
                wait,
                owner,
            },
            Effect::GrantedAll {
                session,
                req,
                grants,
            } => Answer::Grants {
                session,
                req,
                grants,
            },
            Effect::AcquireFailed {
                session,
                req,
                error,
            } => Answer::AcquireFailed {
                session,
                req,
                error,
            },
            Effect::WaitFailed {
                session,
                req,
                error,
            } => Answer::Frame {
                session,
                frame: error_frame(req, &error),
            },
            Effect::Unlocked {
                session,
                req,
                outcome,
            } => Answer::Frame {
                session,
                frame: unlocked_frame(req, outcome),
            },
            Effect::Event(LockEvent::Expired {
                key,
                session,
                fence,
            }) => Answer::Expired {
                session,
                key,
                fence,
            },
            Effect::Event(e) => Answer::Event(e),
            Effect::Recall {
                session,
                key,
                fence,
            } => Answer::Frame {
                session,
                frame: Frame::Recall { key, fence },
            },
        }
    }
}

/// The `Granted` answer to request `id`: lease `fence` for `ttl`, its `secret`, the key it
/// got when a policy rewrote the one asked for, and its fence block (1: an ordinary lease).
pub fn granted(
    id: ReqId,
    fence: Fence,
    ttl: Duration,
    rewritten: Option<Bytes>,
    secret: LeaseSecret,
    fence_block: u32,
) -> Frame {
    Frame::Granted(Granted {
        id,
        fence,
        ttl_ms: millis(ttl),
        rewritten,
        secret,
        fence_block,
    })
}

/// The `GrantedAll` answer to request `id`: every lease, in request order, with its secret.
pub fn granted_all(id: ReqId, grants: &[Grant], secret: impl Fn(&Grant) -> LeaseSecret) -> Frame {
    Frame::GrantedAll(GrantedAll {
        id,
        leases: grants
            .iter()
            .map(|g| GrantedLease {
                key: g.key.clone(),
                fence: g.fence,
                ttl_ms: millis(g.ttl),
                secret: secret(g),
            })
            .collect(),
    })
}

/// The error answer to request `id` for a table error.
pub fn error_frame(id: ReqId, e: &TableError) -> Frame {
    match e {
        // The message is the ticket itself (`ErrorCode::Requeued`).
        TableError::Requeued(ticket) => {
            Frame::error(id, ErrorCode::Requeued, format!("{ticket:016x}"))
        }
        _ => Frame::error(id, ErrorCode::from(e), e.to_string()),
    }
}

/// The answer to an `Extend`: the lease runs `ttl` from now.
pub fn extended_frame(id: ReqId, ttl: Duration) -> Frame {
    Frame::Extended {
        id,
        ttl_ms: millis(ttl),
    }
}

/// The answer to a `WaitUnlocked`: how the key came free.
pub fn unlocked_frame(id: ReqId, outcome: UnlockOutcome) -> Frame {
    Frame::Unlocked {
        id,
        outcome: outcome.into(),
    }
}

/// Tells a holder its lease (`key`, `fence`) expired.
pub fn lease_expired_frame(key: Key, fence: Fence) -> Frame {
    Frame::LeaseEnded {
        key,
        fence,
        reason: EndReason::Expired,
        message: "the lease expired before a renewal reached the broker".into(),
    }
}
