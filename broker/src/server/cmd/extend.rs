//! `Extend`: renews a lease (deadline = now + ttl, ttl bounded like an acquire's). The
//! lease's secret must match (else `NotOwner`). With a sync mirror the answer waits until
//! Redis has the new deadline; if it cannot, the lease ends (`Broker::answer_renewed`).

use lockbroker_proto::Extend;

use crate::broker::Renewed;
use crate::server::policy::clamp_ttl;
use crate::server::session::Session;
use crate::table::deadline_after;
use crate::table::serve::{self, Request};

pub(super) fn apply(s: &Session, e: Extend) {
    if !s.owns(e.id, &e.key, e.fence, &e.secret, true) || s.local(e.id, &e.key).is_none() {
        return;
    }
    let ttl = clamp_ttl(&s.broker.cfg, e.ttl_ms);
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
