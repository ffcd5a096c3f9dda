//! `Reclaim`: a client takes over a lease by (key, fence, secret) — after reconnecting, its old
//! session's lease is still held until its TTL; or a lease restored from the mirror at start.
//! The secret must match this session's principal (so only the principal the lease was granted
//! to can take it over), and the key and TTL policies run as for an acquire. The lease keeps its
//! fence and gets a fresh TTL.

use lockbroker_proto::{Mode, Reclaim};

use crate::server::policy::Op;
use crate::server::session::Session;

pub(super) async fn apply(s: &Session, r: Reclaim) {
    if !s.owns(r.id, &r.key, r.fence, &r.secret, true) {
        return;
    }
    let Some(decided) = s
        .decide(r.id, &r.key, Mode::Exclusive, r.ttl_ms, Op::Acquire)
        .await
    else {
        return;
    };
    let ttl = decided.ttl;
    let result = s.broker.with_table(|t, now, out| {
        t.reclaim(s.id, &r.key, r.fence)?;
        t.extend(now, s.id, &r.key, r.fence, ttl, out)
    });
    match result {
        Ok(_) => s
            .broker
            .answer_granted(&s.handle, r.id, &r.key, r.fence, ttl),
        Err(e) => s.handle.answer_table_error(r.id, &e),
    }
}
