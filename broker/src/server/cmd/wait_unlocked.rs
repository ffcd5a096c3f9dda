//! `WaitUnlocked`: resolves when a key has no holder — `Released` or `Expired` — at once if
//! it is free, or pushed later; fails with `Timeout` at the wait deadline.

use bytes::Bytes;
use lockbroker_proto::{Frame, Mode, WaitSpec};

use crate::broker::wire::wait_from;
use crate::server::policy::Op;
use crate::server::session::Session;

pub(super) async fn apply(s: &Session, id: u64, key: Bytes, wait: WaitSpec) {
    let Some(decided) = s.decide(id, &key, Mode::Shared, 0, Op::Wait).await else {
        return;
    };
    let key = decided.key;
    if s.local(id, &key).is_none() {
        return;
    }
    let result = s.broker.with_table(|t, now, _out| {
        t.wait_until_unlocked(now, s.id, id, &key, wait_from(wait, now))
    });
    match result {
        Ok(Some(outcome)) => s.reply(Frame::Unlocked {
            id,
            outcome: outcome.into(),
        }),
        Ok(None) => {}
        Err(e) => s.handle.answer_table_error(id, &e),
    }
}
