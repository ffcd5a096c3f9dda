//! `Reclaim`: a client takes over a lease by (key, fence) — after reconnecting, its old
//! session's lease is still held until its TTL; or a lease restored from the mirror at start.
//! The lease keeps its fence and gets a fresh TTL.

use lockbroker_proto::{Frame, Granted, Reclaim};

use crate::server::errors::error_frame;
use crate::server::policy::clamp_ttl;
use crate::server::session::Session;
use crate::server::state::duration_ms;

pub(super) fn apply(s: &Session, r: Reclaim) {
    let ttl = clamp_ttl(&s.broker.cfg, r.ttl_ms);
    let result = s.broker.with_table(|t, now, out| {
        t.reclaim(s.id, &r.key, r.fence)?;
        t.extend(now, s.id, &r.key, r.fence, ttl, out)
    });
    s.reply(match result {
        Ok(_) => Frame::Granted(Granted {
            id: r.id,
            fence: r.fence,
            ttl_ms: duration_ms(ttl),
            rewritten: None,
        }),
        Err(e) => error_frame(r.id, &e),
    });
}
