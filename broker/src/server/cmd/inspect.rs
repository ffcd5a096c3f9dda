//! `Inspect`: reports holders (session, fence, mode, remaining TTL), waiter count and any
//! lock-delay block of a key. An idle key answers with no holders.

use bytes::Bytes;
use lockbroker_proto::{Frame, HolderInfo, LockInfo, Mode};

use crate::broker::wire::millis_until;
use crate::server::policy::Op;
use crate::server::session::Session;

pub(super) async fn apply(s: &Session, id: u64, key: Bytes) {
    let Some(decided) = s.decide(id, &key, Mode::Shared, 0, Op::Inspect).await else {
        return;
    };
    let key = decided.key;
    if s.local(id, &key).is_none() {
        return;
    }
    let info = s.broker.read_table(|t, now| {
        let Some(info) = t.inspect(&key) else {
            return LockInfo {
                id,
                key: key.clone(),
                holders: Vec::new(),
                waiters: 0,
                blocked_ms: 0,
            };
        };
        LockInfo {
            id,
            key: info.key,
            holders: info
                .holders
                .iter()
                .map(|h| HolderInfo {
                    session: h.session,
                    fence: h.fence,
                    mode: h.mode.into(),
                    remaining_ms: millis_until(h.deadline, now),
                })
                .collect(),
            waiters: u32::try_from(info.waiters).unwrap_or(u32::MAX),
            blocked_ms: info.blocked_until.map_or(0, |b| millis_until(b, now)),
        }
    });
    s.reply(Frame::LockInfo(info));
}
