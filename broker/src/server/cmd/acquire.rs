//! `Acquire`: policy (key, TTL), then the table; answers `Granted` now, later (pushed when a
//! waiter's turn comes), or an error.

use lockbroker_proto::{Acquire, ErrorCode, Frame, Granted};

use super::{table_mode, table_wait};
use crate::server::errors::error_frame;
use crate::server::policy::Op;
use crate::server::session::Session;
use crate::server::state::duration_ms;
use crate::table::AcquireRequest;

pub(super) async fn apply(s: &Session, a: Acquire) {
    let decided = match s
        .broker
        .policy
        .decide(
            &s.broker.cfg,
            &s.principal,
            &a.key,
            a.mode,
            a.ttl_ms,
            Op::Acquire,
        )
        .await
    {
        Ok(d) => d,
        Err(reason) => return s.reply(Frame::error(a.id, ErrorCode::Denied, reason)),
    };
    if decided.rewritten {
        s.handle.note_rewrite(a.id, decided.key.clone());
    }
    let result = s.broker.with_table(|t, now, out| {
        let request = AcquireRequest {
            session: s.id,
            req: a.id,
            key: decided.key.clone(),
            mode: table_mode(a.mode),
            ttl: decided.ttl,
            wait: table_wait(a.wait, now),
        };
        t.acquire(now, request, out)
    });
    match result {
        // Sync mirror: answered once the mirror (Redis) has the hold (crate::mirror::sync).
        Ok(Some(grant)) if s.broker.mirror().is_some_and(|m| m.is_sync()) => {
            let retry = crate::mirror::sync::Retry {
                key: decided.key.clone(),
                mode: table_mode(a.mode),
                ttl: decided.ttl,
                wait: table_wait(a.wait, std::time::Instant::now()),
            };
            crate::mirror::sync::confirm_grant(&s.broker, s.id, a.id, grant, Some(retry));
        }
        Ok(Some(grant)) => s.reply(Frame::Granted(Granted {
            id: a.id,
            fence: grant.fence,
            ttl_ms: duration_ms(grant.ttl),
            rewritten: s.handle.take_rewrite(a.id),
        })),
        Ok(None) => {}
        Err(e) => {
            s.handle.take_rewrite(a.id);
            s.reply(error_frame(a.id, &e));
        }
    }
}
