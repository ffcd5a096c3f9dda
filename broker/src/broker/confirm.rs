//! Grants held by the [`GrantGate`](super::GrantGate): one small task per held grant waits for
//! its confirmation, then answers:
//! * `Ok` → `Granted` (or, if the session is gone, the lease is released);
//! * `Conflict` (the key is held outside the broker) → the lease is released; an acquire that
//!   may still wait (it came with its request) tries again every [`POLL`] until its wait
//!   deadline — a `Cancel` from the client stops it at the next turn (answered `Cancelled`);
//!   otherwise it is answered `Busy`;
//! * `Failed` → the lease is released and the client gets `Unavailable`;
//! * `Moved` → the lease is released and the client gets `Moved` (no owner yet: it asks again).
//!
//! Nothing is answered `Granted` that the gate did not confirm. A retrying acquire counts in
//! the queue limits (`limits.max_queued_total`, with the table's queued requests, and its
//! principal's queue records, `limits.max_queued_per_principal` or the anonymous share): one
//! that would pass one is answered `LimitExceeded` instead of retrying.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lockbroker_proto::ErrorCode;

use super::Broker;
use super::gate::{Confirmation, Pending};
use crate::table::{AcquireRequest, Grant, PrincipalId, ReqId, SessionId, TableError, Wait};

/// How often an acquire whose key is held outside the broker re-checks.
pub const POLL: Duration = Duration::from_millis(50);

/// Spawns the task answering `grant` once `pending` resolves.
pub(super) fn spawn(
    broker: Arc<Broker>,
    session: SessionId,
    req: ReqId,
    grant: Grant,
    pending: Pending,
    retry: Option<AcquireRequest>,
) {
    tokio::spawn(async move {
        answer_when_confirmed(&broker, session, req, grant, pending, retry).await;
        if let Some(handle) = broker.session_handle(session) {
            handle.end_poll(req);
        }
    });
}

async fn answer_when_confirmed(
    broker: &Arc<Broker>,
    session: SessionId,
    req: ReqId,
    mut grant: Grant,
    mut pending: Pending,
    retry: Option<AcquireRequest>,
) {
    // Counted as a retrying acquire from its first refusal until it is answered.
    let mut poll: Option<Poll<'_>> = None;
    loop {
        let confirmation = pending.await;
        let Some(handle) = broker.session_handle(session) else {
            broker.release_lease(session, &grant);
            return;
        };
        let why = match confirmation {
            Confirmation::Ok => {
                broker.answer_granted(&handle, req, &grant);
                return;
            }
            Confirmation::Failed(why) => {
                broker.release_lease(session, &grant);
                handle.answer_error(
                    req,
                    ErrorCode::Unavailable,
                    format!("the lock mirror (Redis) is unavailable: {why}"),
                );
                return;
            }
            Confirmation::Moved(why) => {
                tracing::debug!(fence = grant.fence, "grant not confirmed: {why}");
                broker.release_lease(session, &grant);
                // A `Moved` answer's message is the new owner's URL; empty: not known yet.
                handle.answer_error(req, ErrorCode::Moved, String::new());
                return;
            }
            Confirmation::Conflict(why) => why,
        };
        broker.release_lease(session, &grant);
        let may_wait = match retry.as_ref().map(|r| r.wait) {
            Some(Wait::Forever) => true,
            Some(Wait::Until(t)) => Instant::now() + POLL < t,
            _ => false,
        };
        let Some(request) = retry.clone().filter(|_| may_wait) else {
            handle.answer_error(req, ErrorCode::Busy, format!("lock is busy: {why}"));
            return;
        };
        // Retrying outside the table: a `Cancel` finds it here.
        if poll.is_none() {
            match Poll::begin(broker, session) {
                Ok(p) => poll = Some(p),
                Err(e) => {
                    handle.answer_table_error(req, &e);
                    return;
                }
            }
        }
        handle.begin_poll(req);
        tokio::time::sleep(POLL).await;
        if broker.session_handle(session).is_none() {
            return;
        }
        if handle.poll_cancelled(req) {
            handle.answer_table_error(req, &TableError::Cancelled);
            return;
        }
        match broker.with_table(|t, now, out| t.acquire(now, request, out)) {
            Ok(Some(g)) => match broker.gate.get().and_then(|gate| gate.hold(&g)) {
                Some(p) => {
                    grant = g;
                    pending = p;
                }
                None => {
                    broker.answer_granted(&handle, req, &g);
                    return;
                }
            },
            // Queued behind a broker holder: the later grant is delivered by `dispatch`. A
            // cancel that came in meanwhile found the poll mark: hand it to the table.
            Ok(None) => {
                if handle.end_poll(req) {
                    broker.with_table(|t, now, out| t.cancel(now, session, req, out));
                }
                return;
            }
            Err(e) => {
                handle.answer_table_error(req, &e);
                return;
            }
        }
    }
}

/// One acquire retrying outside the table, counted in [`Broker::pollers`] and in its
/// principal's queue records while it lives (from its first refusal by the gate until it is
/// answered).
struct Poll<'a> {
    broker: &'a Arc<Broker>,
    principal: Option<PrincipalId>,
}

impl<'a> Poll<'a> {
    /// Counts a new retrying acquire of `session`, unless the table's queued requests and the
    /// retrying acquires together have reached `limits.max_queued_total`, or its principal's
    /// queue records their cap (`limits.max_queued_per_principal`, the anonymous share).
    fn begin(broker: &'a Arc<Broker>, session: SessionId) -> Result<Poll<'a>, TableError> {
        let limit = broker.cfg.limits.max_queued_total;
        let pollers = broker.pollers.fetch_add(1, Ordering::AcqRel);
        let mut poll = Poll {
            broker,
            principal: None,
        };
        let principal = broker.with_table(|t, _, _| {
            if t.queued_total() + pollers >= limit {
                return Err(TableError::LimitExceeded("queued requests in total"));
            }
            t.begin_outside_retry(session)
        })?;
        poll.principal = Some(principal);
        Ok(poll)
    }
}

impl Drop for Poll<'_> {
    fn drop(&mut self) {
        self.broker.pollers.fetch_sub(1, Ordering::AcqRel);
        if let Some(p) = self.principal {
            self.broker.with_table(|t, _, _| t.end_outside_retry(p));
        }
    }
}
