//! `Extend`: renews a lease (deadline = now + ttl, ttl bounded like an acquire's).

use lockbroker_proto::{Extend, Frame};

use crate::server::errors::error_frame;
use crate::server::policy::clamp_ttl;
use crate::server::session::Session;
use crate::server::state::duration_ms;

pub(super) fn apply(s: &Session, e: Extend) {
    let ttl = clamp_ttl(&s.broker.cfg, e.ttl_ms);
    let result = s
        .broker
        .with_table(|t, now, out| t.extend(now, s.id, &e.key, e.fence, ttl, out));
    s.reply(match result {
        Ok(_) => Frame::Extended {
            id: e.id,
            ttl_ms: duration_ms(ttl),
        },
        Err(err) => error_frame(e.id, &err),
    });
}
