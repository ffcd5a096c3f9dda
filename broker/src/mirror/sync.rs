//! Sync mode on the grant path: a grant is answered only once the mirror reported its outcome.
//!
//! `confirm_grant` is called (outside the table lock) for every grant — immediate ones from the
//! `Acquire` command and queued ones from `Broker::dispatch` — and spawns a small task that
//! waits for the outcome of the grant's `Acquired` event:
//! * `Ok` → the `Granted` frame is pushed (or, if the session is gone, the lease is released);
//! * `Conflict` (the key is held in Redis by another client) → the lease is released; an
//!   acquire that may still wait (it came with a `Retry`) polls: it re-acquires every
//!   `POLL` until its wait deadline; otherwise it is answered `Busy`;
//! * `Failed` (Redis unreachable, queue full) → the lease is released and the client gets
//!   `Unavailable`. Nothing is granted that is not in the mirror.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{ErrorCode, Frame, Granted};

use super::queue::Outcome;
use crate::server::Broker;
use crate::server::error_frame;
use crate::table::{AcquireRequest, Grant, Mode, ReqId, SessionId, Wait};

/// How often an acquire whose key is held in Redis re-checks.
pub const POLL: Duration = Duration::from_millis(50);

/// What a refused acquire needs to try again.
#[derive(Clone, Debug)]
pub struct Retry {
    pub key: Bytes,
    pub mode: Mode,
    pub ttl: Duration,
    pub wait: Wait,
}

/// Answers grant `grant` of request `req` of `session` once the mirror stored it.
pub fn confirm_grant(
    broker: &Arc<Broker>,
    session: SessionId,
    req: ReqId,
    grant: Grant,
    retry: Option<Retry>,
) {
    let Some(mirror) = broker.mirror() else {
        return;
    };
    let rx = mirror.queue.take_confirmation(grant.fence);
    let broker = broker.clone();
    let stats = mirror.stats.clone();
    tokio::spawn(async move {
        let mut grant = grant;
        let mut rx = rx;
        loop {
            let outcome = match rx.take() {
                Some(rx) => rx
                    .await
                    .unwrap_or_else(|_| Outcome::Failed("the mirror stopped".into())),
                None => Outcome::Failed("the grant was not queued for the mirror".into()),
            };
            let Some(handle) = broker.session_handle(session) else {
                release(&broker, session, &grant);
                return;
            };
            match outcome {
                Outcome::Ok => {
                    super::stats::Counters::add(&stats.confirmed, 1);
                    handle.outbox.push(&Frame::Granted(Granted {
                        id: req,
                        fence: grant.fence,
                        ttl_ms: crate::server::duration_ms(grant.ttl),
                        rewritten: handle.take_rewrite(req),
                    }));
                    return;
                }
                Outcome::Failed(why) => {
                    super::stats::Counters::add(&stats.unavailable, 1);
                    release(&broker, session, &grant);
                    handle.take_rewrite(req);
                    handle.outbox.push(&Frame::error(
                        req,
                        ErrorCode::Unavailable,
                        format!("the lock mirror (Redis) is unavailable: {why}"),
                    ));
                    return;
                }
                Outcome::Conflict(why) => {
                    super::stats::Counters::add(&stats.refused, 1);
                    release(&broker, session, &grant);
                    let deadline = match retry.as_ref().map(|r| r.wait) {
                        Some(Wait::Forever) => None,
                        Some(Wait::Until(t)) if Instant::now() + POLL < t => Some(t),
                        _ => {
                            handle.take_rewrite(req);
                            handle.outbox.push(&Frame::error(
                                req,
                                ErrorCode::Busy,
                                format!("lock is busy: {why}"),
                            ));
                            return;
                        }
                    };
                    let Some(r) = retry.clone() else { return };
                    tokio::time::sleep(POLL).await;
                    if broker.session_handle(session).is_none() {
                        return;
                    }
                    let result = broker.with_table(|t, now, out| {
                        let wait = match deadline {
                            None => Wait::Forever,
                            Some(d) => Wait::Until(d),
                        };
                        let _ = now;
                        t.acquire(
                            now,
                            AcquireRequest {
                                session,
                                req,
                                key: r.key.clone(),
                                mode: r.mode,
                                ttl: r.ttl,
                                wait,
                            },
                            out,
                        )
                    });
                    match result {
                        Ok(Some(g)) => {
                            rx = broker
                                .mirror()
                                .and_then(|m| m.queue.take_confirmation(g.fence));
                            grant = g;
                        }
                        // Queued behind a broker holder: the later grant is confirmed by
                        // `dispatch` (without polling).
                        Ok(None) => return,
                        Err(e) => {
                            handle.take_rewrite(req);
                            handle.outbox.push(&error_frame(req, &e));
                            return;
                        }
                    }
                }
            }
        }
    });
}

fn release(broker: &Broker, session: SessionId, grant: &Grant) {
    broker.with_table(|t, now, out| {
        let _ = t.release(now, session, &grant.key, grant.fence, out);
    });
}
