//! `Release`: gives a lease back; the next waiter(s) are granted in the same step. Answers
//! `Ok` or an error when `ack` is set; fire-and-forget releases are answered with nothing.
//! The lease's secret must match — checked against the lease's mode as the table has it, for
//! this session's principal (else `NotOwner`) — and the table releases only a lease this
//! session holds.

use lockbroker_proto::{Frame, Release};

use crate::server::session::Session;
use crate::table::serve::{self, Request};

pub(super) fn apply(s: &Session, r: Release) {
    if s.local(r.id, &r.key).is_none() {
        return;
    }
    let Some(mode) = s.lease_mode(r.id, &r.key, r.fence, r.ack) else {
        return;
    };
    if !s.owns(r.id, &r.key, r.fence, mode, &r.secret, r.ack) {
        return;
    }
    let request = Request::Release {
        key: r.key.clone(),
        fence: r.fence,
    };
    let result = s
        .broker
        .with_table(|t, now, out| serve::apply(t, now, s.id, request, out));
    match (result, r.ack) {
        (Ok(_), true) => s.reply(Frame::Ok { id: r.id }),
        (Err(e), true) => s.answer_lease_error(r.id, &r.key, &e),
        (Ok(_), false) => {}
        (Err(e), false) => {
            tracing::debug!(
                session = s.id,
                fence = r.fence,
                "fire-and-forget release failed: {e}"
            )
        }
    }
}
