//! `Inspect`: reports holders (session, fence, mode, remaining TTL), waiter count and any
//! lock-delay block of a key. An idle key answers with no holders.
//!
//! The answer never exceeds the frame limit the broker announced in `Welcome` (a client
//! refuses a larger frame): holders are listed in fence order, oldest lease first, and a list
//! that would not fit is cut to the longest prefix that does; `holders_total` always counts
//! them all. The same key and table state thus always list the same holders.

use bytes::Bytes;
use lockbroker_proto::{ErrorCode, Frame, LockInfo, Mode};

use crate::broker::wire::millis_until;
use crate::server::policy::Op;
use crate::server::session::Session;
use crate::table::wire::holder_info;

pub(super) async fn apply(s: &Session, id: u64, key: Bytes) {
    let Some(decided) = s.decide(id, &key, Mode::Shared, 0, Op::Inspect).await else {
        return;
    };
    let key = decided.key;
    if s.local(id, &key).is_none() {
        return;
    }
    let mut info = s.broker.read_table(|t, now| {
        let Some(info) = t.inspect(&key) else {
            return LockInfo {
                id,
                key: key.clone(),
                holders: Vec::new(),
                holders_total: 0,
                waiters: 0,
                blocked_ms: 0,
                position: 0,
            };
        };
        LockInfo {
            id,
            key: info.key,
            holders: info.holders.iter().map(|h| holder_info(h, now)).collect(),
            holders_total: 0,
            waiters: u32::try_from(info.waiters).unwrap_or(u32::MAX),
            blocked_ms: info.blocked_until.map_or(0, |b| millis_until(b, now)),
            position: t
                .queue_position(&key, s.id)
                .map_or(0, |p| u32::try_from(p).unwrap_or(u32::MAX)),
        }
    });
    // Outside the table lock: order, count and cut to the frame limit.
    info.holders.sort_unstable_by_key(|h| h.fence);
    info.holders_total = u32::try_from(info.holders.len()).unwrap_or(u32::MAX);
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
