//! The SDK's one retry policy. Every request that names a key — lock, lock_all, inspect,
//! wait_until_unlocked, and every request about a held lease (extend, unlock, and the guard's
//! background renewals) — runs its attempts through [`retry`], bounded by one deadline.
//!
//! One attempt: pick the connection the route gives for the key now (the shard's owner in
//! cluster mode), send, and wait for the answer — at most the attempt's bound, and for a
//! request about a key no longer than the key's shard stays where it was (a pushed shard map
//! that moves the shard ends the wait at once: that broker is no longer the one to ask; a
//! request about a held lease waits for its answer, which says whether it was done; an
//! acquire given up so whose grant still comes is released where its lease went, `lock.rs`).
//! What then:
//!
//! - an answer: done (a `Moved` answer notes the shard's new owner and tries again there);
//! - a *transient* failure (the broker went away, it is taking the shard over, it did not answer
//!   within the attempt's bound): try again after a short pause, until the deadline; a broker
//!   that did not answer is left (its connection is no longer used for new requests);
//! - anything else (busy, denied, not the owner, …): the caller's answer.
//!
//! Which failures are transient depends on [`Kind`]: for a lease, every failure that does not
//! say the lease is gone (the broker restarting, a mirror outage, a failover); for any other
//! request, only a cluster broker that went away (a single broker that went away, and every
//! answer — `Unavailable` included — is the caller's to hear about).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbroker_core::wire::millis;
use lockbroker_proto::{ErrorCode, Frame, WaitSpec};

use super::Route;
use crate::conn::Conn;
use crate::error::{Error, Result};

/// The pause before the next attempt after a transient failure.
pub(crate) const PAUSE: Duration = Duration::from_millis(100);

/// What an attempt achieved: the caller's result, or the broker's word that the key's shard is
/// served elsewhere (the URL of its owner; empty while it has none).
pub(crate) enum Step<T> {
    Done(T),
    Moved(String),
}

/// The kind of request, for which failures are worth another attempt.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    /// A request about a key (acquire, inspect, wait).
    Request,
    /// A request about a held lease (renew, extend, release, reclaim).
    Lease,
}

/// When [`retry`] stops trying.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deadline {
    /// At this instant.
    At(Instant),
    /// This long after the first failure (a request that may legitimately wait forever, such
    /// as an acquire without a wait bound, gets this long to find the key's broker again).
    AfterFailure(Duration),
}

/// Runs `attempt` on the connection the client's route gives for `key`, again after each
/// transient failure, until `deadline`. Each attempt bounds its own wait (see [`ask`]).
pub(crate) async fn retry<T, F, Fut>(
    route: &Route,
    key: &[u8],
    kind: Kind,
    deadline: Deadline,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(Arc<Conn>) -> Fut,
    Fut: Future<Output = Result<Step<T>>>,
{
    let (mut at, after_failure) = match deadline {
        Deadline::At(at) => (Some(at), Duration::ZERO),
        Deadline::AfterFailure(d) => (None, d),
    };
    loop {
        let routes = route.routes();
        let one = async {
            let conn = route.conn_for(key).await?;
            conn.check_key(key)?;
            attempt(conn).await
        };
        // With a shard map (a cluster), a request about a key also ends when the map moves the
        // key's shard; without one (a single broker, the embedded table) it is just awaited. A
        // request about a held lease is awaited either way (up to its bound): the broker that
        // held the lease answers it for sure — done before it handed the shard over, or
        // `Moved` after — and given up on, one that was done (a release) would leave the
        // retry at the new owner a lease that is not there.
        let outcome = if routes.is_known() && kind == Kind::Request {
            let mut changes = routes.changes();
            let before = routes.owner(key);
            tokio::select! {
                r = one => Some(r),
                () = routes.moved_away(&mut changes, key, before.as_deref()) => None,
            }
        } else {
            Some(one.await)
        };
        let failure = match outcome {
            Some(Ok(Step::Done(v))) => return Ok(v),
            Some(Ok(Step::Moved(url))) => {
                route.note_moved(key, &url);
                // No owner yet, or one that does not answer: ask again after a pause.
                let pause = url.is_empty() || route.is_silent(&url);
                Failure::Transient(
                    Error::Unavailable(format!(
                        "the key's shard is served by another broker ({url:?})"
                    )),
                    pause,
                )
            }
            Some(Err(e)) => classify(route, kind, e),
            None => Failure::Transient(
                Error::Unavailable("the key's shard moved to another broker".into()),
                false,
            ),
        };
        let (error, pause) = match failure {
            Failure::Final(e) => return Err(e),
            Failure::Transient(e, pause) => (e, pause),
        };
        let end = *at.get_or_insert_with(|| Instant::now() + after_failure);
        let next = Instant::now() + if pause { PAUSE } else { Duration::ZERO };
        if next >= end {
            return Err(error);
        }
        tracing::debug!(?kind, "retrying after: {error}");
        tokio::time::sleep_until(next.into()).await;
    }
}

/// A failed attempt: worth another (with a pause first, or not), or the caller's answer.
enum Failure {
    Transient(Error, bool),
    Final(Error),
}

/// Whether `e` is worth another attempt for a request of `kind`.
fn classify(route: &Route, kind: Kind, e: Error) -> Failure {
    let transient = match (&e, kind) {
        // Routing: the broker asked went away (or was left for not answering) before it
        // answered; in a cluster, the key's shard is served elsewhere next.
        (Error::Disconnected(_) | Error::Connect(_), Kind::Request) => route.is_clustered(),
        // A lease outlives a broker restart, a reconnect, a mirror outage and a failover; a
        // broker's `Timeout` answer ends an acquire's wait, which is the caller's.
        (
            Error::Disconnected(_) | Error::Connect(_) | Error::Unavailable(_) | Error::Timeout,
            Kind::Lease,
        ) => true,
        _ => false,
    };
    if transient {
        Failure::Transient(e, true)
    } else {
        Failure::Final(e)
    }
}

/// One request on `conn` and its answer (`Error` frames handed back as frames), bounded by
/// `timeout`. No answer in time: [`Error::Timeout`] from a single broker; in a cluster the
/// connection is left (see `Route::leave`) and the failure is [`Error::Disconnected`], which
/// the policy retries elsewhere.
pub(crate) async fn ask(
    route: &Route,
    conn: &Arc<Conn>,
    timeout: Duration,
    build: impl FnOnce(u64) -> Frame,
) -> Result<Frame> {
    let (id, rx) = conn.request(build)?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(_)) => Err(conn.disconnected()),
        Err(_) => {
            conn.forget(id);
            if route.is_clustered() {
                route.leave(conn);
                Err(Error::Disconnected(format!(
                    "broker {} did not answer within {timeout:?}",
                    conn.addr()
                )))
            } else {
                Err(Error::Timeout)
            }
        }
    }
}

/// An answer as an attempt's step: `Moved` names the shard's owner; other `Error` frames are
/// errors.
pub(crate) fn step(frame: Frame) -> Result<Step<Frame>> {
    match frame {
        Frame::Error {
            code: ErrorCode::Moved,
            message,
            ..
        } => Ok(Step::Moved(message)),
        Frame::Error { code, message, .. } => Err(Error::from_wire(code, message)),
        other => Ok(Step::Done(other)),
    }
}

/// The retry deadline of a request that waits `wait`, and when a bounded wait ends: a
/// bounded wait's end; a request that does not wait gets the request timeout; one that waits
/// forever gets the request timeout after a failure to find the key's broker again.
pub(crate) fn for_wait(wait: WaitSpec, request_timeout: Duration) -> (Deadline, Option<Instant>) {
    let now = Instant::now();
    match wait {
        WaitSpec::Millis(ms) => {
            let end = now + Duration::from_millis(ms);
            (Deadline::At(end), Some(end))
        }
        WaitSpec::NoWait => (Deadline::At(now + request_timeout), None),
        WaitSpec::Forever => (Deadline::AfterFailure(request_timeout), None),
    }
}

/// What is left at this moment of a wait that ends at `end` (`Millis` waits; the others as
/// they are).
pub(crate) fn remaining(wait: WaitSpec, end: Option<Instant>) -> WaitSpec {
    match (wait, end) {
        // Rounded up: the first attempt asks for the whole wait, not a millisecond less.
        (WaitSpec::Millis(_), Some(end)) => {
            let left = end.saturating_duration_since(Instant::now());
            WaitSpec::Millis(millis(left + Duration::from_nanos(999_999)))
        }
        (w, _) => w,
    }
}
