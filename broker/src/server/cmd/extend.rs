//! `Extend`: renews a lease (deadline = now + ttl, ttl bounded like an acquire's: the TTL
//! policies run on the lease's key, then the broker's bounds). The lease's secret must match
//! (else `NotOwner`). With a sync mirror the answer waits until
//! Redis has the new deadline; if it cannot, the lease ends (`Broker::answer_renewed`).

use lockbroker_proto::{ErrorCode, Extend, Mode};

use crate::broker::Renewed;
use crate::server::session::Session;
use crate::table::deadline_after;
use crate::table::serve::{self, Request};

pub(super) async fn apply(s: &Session, e: Extend) {
    if !s.owns(e.id, &e.key, e.fence, &e.secret, true) || s.local(e.id, &e.key).is_none() {
        return;
    }
    // The TTL policies see the lease's mode (only looked up when a plugin will ask).
    let mode = match s.policy.plugins() {
        None => Mode::Exclusive,
        Some(_) => s
            .broker
            .read_table(|t, _| t.inspect(&e.key))
            .and_then(|info| info.holders.into_iter().find(|h| h.fence == e.fence))
            .map_or(Mode::Exclusive, |h| h.mode.into()),
    };
    let ttl = match s
        .policy
        .renewal_ttl(&s.broker.cfg, &s.handle.principal, &e.key, mode, e.ttl_ms)
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
        Err(err) => s.handle.answer_table_error(e.id, &err),
    }
}
