//! `Reclaim`: a client takes over a lease by (key, fence, secret) — after reconnecting, its old
//! session's lease is still held until its TTL; or a lease restored from the mirror at start.
//! The secret must match this session's principal and the mode the reclaim names (so only the
//! principal the lease was granted to can take it over, and only in the mode it was granted
//! in); the table also refuses a lease it holds for another principal or in another mode,
//! whatever the secret. The key and TTL policies run as for an acquire. The lease keeps its
//! fence and gets a fresh TTL.
//!
//! A lease held by a *live* session of the same principal is taken over too: the SDK reclaims
//! on a new connection when its old one stopped answering (a single broker's connection that
//! timed out, a cluster broker it left after a request went unanswered), which the broker may
//! not have noticed yet. The secret proves the reclaimer is that holder, or was handed the
//! lease by it.
//!
//! During a restarted broker's grace period a lease of its previous run that the table does
//! not know (nothing was restored) is re-created for its holder in the mode the reclaim names,
//! if the key admits it (`Table::reclaim_from_previous_run`).

use lockbroker_proto::Reclaim;

use crate::broker::Renewed;
use crate::server::policy::Op;
use crate::server::session::Session;
use crate::table::deadline_after;
use crate::table::serve::{self, Request};

pub(super) async fn apply(s: &Session, r: Reclaim) {
    if !s.owns(r.id, &r.key, r.fence, r.mode.into(), &r.secret, true) {
        return;
    }
    let Some(decided) = s.decide(r.id, &r.key, r.mode, r.ttl_ms, Op::Acquire).await else {
        return;
    };
    if s.local(r.id, &r.key).is_none() {
        return;
    }
    let ttl = decided.ttl;
    let adoptable = s.broker.may_adopt(&r.key, r.fence);
    let request = Request::Reclaim {
        key: r.key.clone(),
        fence: r.fence,
        mode: r.mode,
        ttl,
        owner: r.owner,
        adoptable,
    };
    let result = s.broker.with_table(|t, now, out| {
        serve::apply(t, now, s.id, request, out).map(|_| deadline_after(now, ttl))
    });
    match result {
        Ok(deadline) => s.broker.answer_renewed(
            &s.handle,
            r.id,
            &r.key,
            r.fence,
            Renewed::Reclaimed(ttl, deadline, r.mode.into()),
        ),
        Err(e) => s.handle.answer_table_error(r.id, &e),
    }
}
