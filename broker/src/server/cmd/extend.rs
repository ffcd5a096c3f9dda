//! `Extend`: renews a lease (deadline = now + ttl, ttl bounded like an acquire's: the TTL
//! policies run on the lease's key, then the broker's bounds). The lease's secret must match —
//! checked against the lease's mode as the table has it, for this session's principal (else
//! `NotOwner`) — and the table renews only a lease this session holds. With a sync mirror the answer waits until
//! Redis has the new deadline; if it cannot, the lease ends (`Broker::answer_renewed`).

use lockbroker_proto::{ErrorCode, Extend};

use crate::broker::Renewed;
use crate::server::session::Session;
use crate::table::deadline_after;
use crate::table::serve::{self, Request};

pub(super) async fn apply(s: &Session, e: Extend) {
    if s.local(e.id, &e.key).is_none() {
        return;
    }
    // The secret binds the lease's mode, which the TTL policies see too.
    let Some(mode) = s.lease_mode(e.id, &e.key, e.fence, true) else {
        return;
    };
    if !s.owns(e.id, &e.key, e.fence, mode, &e.secret, true) {
        return;
    }
    let ttl = match s
        .policy
        .renewal_ttl(
            &s.broker.cfg,
            &s.handle.principal,
            &e.key,
            mode.into(),
            e.ttl_ms,
        )
        .await
    {
        Ok(ttl) => ttl,
        Err(reason) => {
            s.fail(e.id, ErrorCode::Denied, reason);
            return;
        }
    };
    let request = Request::Extend {
        key: e.key.clone(),
        fence: e.fence,
        ttl,
    };
    let result = s.broker.with_table(|t, now, out| {
        serve::apply(t, now, s.id, request, out).map(|_| deadline_after(now, ttl))
    });
    match result {
        Ok(deadline) => s.broker.answer_renewed(
            &s.handle,
            e.id,
            &e.key,
            e.fence,
            Renewed::Extended(ttl, deadline),
        ),
        Err(err) => s.answer_lease_error(e.id, &e.key, &err),
    }
}
