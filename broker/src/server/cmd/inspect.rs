//! `Inspect`: reports holders (session, fence, mode, remaining TTL), waiter count and any
//! lock-delay block of a key. An idle key answers with no holders.
//!
//! The answer never exceeds the frame limit the broker announced in `Welcome` (a client
//! refuses a larger frame): holders are listed in fence order, oldest lease first, and a list
//! that would not fit is cut to the longest prefix that does; `holders_total` always counts
//! them all. The same key and table state thus always list the same holders.

use bytes::Bytes;
use lockbroker_proto::{ErrorCode, Frame, Mode};

use crate::server::policy::Op;
use crate::server::session::Session;
use crate::table::wire::lock_info;

pub(super) async fn apply(s: &Session, id: u64, key: Bytes) {
    let Some(decided) = s.decide(id, &key, Mode::Shared, 0, Op::Inspect).await else {
        return;
    };
    let key = decided.key;
    if s.local(id, &key).is_none() {
        return;
    }
    let mut info = s
        .broker
        .read_table(|t, now| lock_info(t, id, key, s.id, now));
    // Outside the table lock: order, count and cut to the frame limit.
    info.order_holders();
    let max_frame = s.broker.cfg.limits.max_frame_bytes;
    if !info.truncate_to(max_frame) {
        // Cannot happen with a key within `max_key` (the config keeps `max_frame` above it).
        s.fail(
            id,
            ErrorCode::Internal,
            format!("the answer for this key does not fit in {max_frame} bytes"),
        );
        return;
    }
    if info.holders_total as usize > info.holders.len() {
        tracing::debug!(
            session = s.id,
            listed = info.holders.len(),
            total = info.holders_total,
            "inspect: holders list truncated to the frame limit"
        );
    }
    s.reply(Frame::LockInfo(info));
}
