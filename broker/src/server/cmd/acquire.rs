//! `Acquire`: policy (key, TTL), then the table. The grant — now, or pushed when a waiter's
//! turn comes — is delivered by the broker core (which holds it for the grant gate, if any).
//! Acquires polling the sync mirror outside the table count toward the session's limit of
//! pending requests, and their ids stay taken.

use std::time::Instant;

use lockbroker_proto::Acquire;

use crate::server::policy::Op;
use crate::server::session::Session;
use crate::table::TableError;
use crate::table::serve::{self, Outcome, Request};

pub(super) async fn apply(s: &Session, a: Acquire) {
    let arrived = Instant::now();
    let Some(decided) = s.decide(a.id, &a.key, a.mode, a.ttl_ms, Op::Acquire).await else {
        return;
    };
    let Some(grace_until) = s.local(a.id, &decided.key) else {
        return;
    };
    if decided.rewritten {
        s.handle.note_rewrite(a.id, decided.key.clone());
    }
    // The request is kept only when a grant gate may refuse the grant and it must retry.
    let gated = s.broker.has_gate();
    let mut request = None;
    let polling = s.handle.polls();
    if polling > 0 && s.handle.is_polling(a.id) {
        s.handle
            .answer_table_error(a.id, &TableError::DuplicateRequest);
        return;
    }
    let limits = &s.broker.cfg.limits;
    // Acquires retrying outside the table (sync mirror) count in both queue limits.
    let pollers = s.broker.pollers();
    let result = s.broker.with_table(|t, now, out| {
        let may_queue = a.wait != lockbroker_proto::WaitSpec::NoWait;
        if polling > 0
            && may_queue
            && t.pending_of(s.id) + polling >= limits.max_waiters_per_session
        {
            return Err(TableError::LimitExceeded("pending waiters"));
        }
        if pollers > 0 && may_queue && t.queued_total() + pollers >= limits.max_queued_total {
            return Err(TableError::LimitExceeded("queued requests in total"));
        }
        // Cluster takeover grace: the key waits like everyone else's in the shard.
        if let Some(until) = grace_until {
            t.hold_key_until(&decided.key, until)?;
        }
        let r = Request::acquire(s.id, &a, decided.key, decided.ttl, now);
        if gated && let Request::Acquire(r) = &r {
            request = Some(r.clone());
        }
        serve::apply(t, now, s.id, r, out)
    });
    let metrics = s.broker.metrics.as_deref();
    match result {
        Ok(Outcome::Granted(grant)) => {
            if let Some(m) = metrics {
                crate::broker::Metrics::observe(&m.acquire_wait, arrived.elapsed());
            }
            s.broker.deliver_grant(s.id, a.id, grant, request)
        }
        Ok(_) => {
            if metrics.is_some() {
                s.handle.note_queued(a.id, arrived);
            }
        }
        Err(e) => {
            if let Some(m) = metrics {
                m.table_error(&e);
            }
            s.handle.answer_table_error(a.id, &e)
        }
    }
}
