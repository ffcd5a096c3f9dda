//! Renewals the grant gate must confirm, and leases the broker ends itself.
//!
//! * [`Broker::answer_renewed`]: after an `Extend` or `Reclaim` changed the table, the answer
//!   leaves only once the gate (the sync mirror) confirmed the new deadline — else the lease
//!   is ended, its holder told, and the request answered `NotLocked`.
//! * [`Broker::revoke`]: ends a lease its holder did not release (the mirror lost it) and
//!   pushes `LeaseEnded` to the holder, so its guard reports `lost` at once.
//! * Table expiry of a lease whose session is still connected is pushed as `LeaseEnded` too
//!   (`dispatch`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{EndReason, ErrorCode, Frame};

use super::Broker;
use super::gate::Confirmation;
use super::session::SessionHandle;
use super::wire::millis;
use crate::table::{Fence, Grant, Mode, ReqId, SessionId};

/// What a confirmed renewal is answered with, and the lease's new deadline.
#[derive(Clone, Copy, Debug)]
pub enum Renewed {
    /// `Extended { ttl }` (an `Extend`).
    Extended(Duration, Instant),
    /// `Granted` for the lease, held in this mode (a `Reclaim`).
    Reclaimed(Duration, Instant, Mode),
}

impl Renewed {
    /// The renewed lease's deadline.
    fn deadline(self) -> Instant {
        match self {
            Renewed::Extended(_, d) | Renewed::Reclaimed(_, d, _) => d,
        }
    }
}

impl Broker {
    /// Answers request `req` of `session`, which renewed lease (`key`, `fence`), once the grant
    /// gate confirmed the renewal (at once without a gate, or when it holds nothing). A new
    /// deadline the lease horizon file does not cover is answered `Unavailable` (the lease
    /// keeps it in the table; its holder counts on the deadline it had).
    pub fn answer_renewed(
        self: &Arc<Self>,
        handle: &Arc<SessionHandle>,
        req: ReqId,
        key: &Bytes,
        fence: Fence,
        renewed: Renewed,
    ) {
        if let Some(why) = self.horizon_refusal(renewed.deadline()) {
            handle.answer_error(req, ErrorCode::Unavailable, why);
            return;
        }
        let Some(pending) = self.gate.get().and_then(|g| g.hold_renewal(fence)) else {
            self.answer_renewal(handle, req, key, fence, renewed);
            return;
        };
        let (broker, handle, key) = (self.clone(), handle.clone(), key.clone());
        tokio::spawn(async move {
            match pending.await {
                Confirmation::Ok => broker.answer_renewal(&handle, req, &key, fence, renewed),
                // The lease moved with its shard: the holder renews it where it is now.
                Confirmation::Moved(why) => {
                    tracing::debug!(fence, "renewal not confirmed: {why}");
                    handle.answer_error(req, ErrorCode::Moved, String::new());
                }
                Confirmation::Conflict(why) | Confirmation::Failed(why) => {
                    let why = format!("the lock mirror did not confirm the renewal: {why}");
                    broker.revoke(&key, fence, EndReason::Mirror, &why);
                    handle.answer_error(req, ErrorCode::NotLocked, format!("{why}; lease ended"));
                }
            }
        });
    }

    fn answer_renewal(
        &self,
        handle: &SessionHandle,
        req: ReqId,
        key: &[u8],
        fence: Fence,
        renewed: Renewed,
    ) {
        match renewed {
            Renewed::Extended(ttl, _) => handle.answer(&Frame::Extended {
                id: req,
                ttl_ms: millis(ttl),
            }),
            Renewed::Reclaimed(ttl, deadline, mode) => {
                let g = Grant {
                    key: Bytes::copy_from_slice(key),
                    fence,
                    mode,
                    ttl,
                    deadline,
                    fence_block: 1,
                };
                self.answer_granted(handle, req, &g);
            }
        }
    }

    /// Ends lease (`key`, `fence`) although its holder did not release it, and tells the
    /// holder (if connected) with `LeaseEnded`. Nothing happens if the lease is gone already.
    /// Returns the session that held it.
    pub fn revoke(
        self: &Arc<Self>,
        key: &[u8],
        fence: Fence,
        reason: EndReason,
        why: &str,
    ) -> Option<SessionId> {
        let session = self.with_table(|t, now, out| t.revoke(now, key, fence, out))?;
        if let Some(m) = &self.metrics {
            m.revocations.inc();
        }
        tracing::warn!(fence, session, "lease ended by the broker: {why}");
        self.tell_lease_ended(session, key, fence, reason, why);
        Some(session)
    }

    /// Pushes `LeaseEnded` to `session`, if it is connected.
    pub fn tell_lease_ended(
        &self,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        reason: EndReason,
        why: &str,
    ) {
        if let Some(h) = self.session_handle(session) {
            h.answer(&Frame::LeaseEnded {
                key: Bytes::copy_from_slice(key),
                fence,
                reason,
                message: why.to_string(),
            });
        }
    }
}
