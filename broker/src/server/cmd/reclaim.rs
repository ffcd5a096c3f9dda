//! `Reclaim`: a client takes over a lease by (key, fence) — after reconnecting, its old
//! session's lease is still held until its TTL; or a lease restored from the mirror at start.
//! The lease keeps its fence and gets a fresh TTL.

use lockbroker_proto::Reclaim;

use crate::server::policy::clamp_ttl;
use crate::server::session::Session;

pub(super) fn apply(s: &Session, r: Reclaim) {
    let ttl = clamp_ttl(&s.broker.cfg, r.ttl_ms);
    let result = s.broker.with_table(|t, now, out| {
        t.reclaim(now, s.id, &r.key, r.fence, out)?;
        t.extend(now, s.id, &r.key, r.fence, ttl, out)
    });
    match result {
        Ok(_) => s.handle.answer_granted(r.id, r.fence, ttl),
        Err(e) => s.handle.answer_table_error(r.id, &e),
    }
}
