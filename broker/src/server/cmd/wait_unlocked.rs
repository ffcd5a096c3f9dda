//! `WaitUnlocked`: resolves when a key has no holder — `Released` or `Expired` — at once if
//! it is free, or pushed later; fails with `Timeout` at the wait deadline.

use bytes::Bytes;
use lockbroker_proto::{Mode, WaitSpec};

use crate::broker::wire::wait_from;
use crate::server::policy::Op;
use crate::server::session::Session;
use crate::table::serve::{self, Outcome, Request};

pub(super) async fn apply(s: &Session, id: u64, key: Bytes, wait: WaitSpec) {
    let Some(decided) = s.decide(id, &key, Mode::Shared, 0, Op::Wait).await else {
        return;
    };
    let key = decided.key;
    if s.local(id, &key).is_none() {
        return;
    }
    let result = s.broker.with_table(|t, now, out| {
        let request = Request::WaitUnlocked {
            req: id,
            key,
            wait: wait_from(wait, now),
        };
        serve::apply(t, now, s.id, request, out)
    });
    match result {
        Ok(Outcome::Unlocked(outcome)) => s.reply(serve::unlocked_frame(id, outcome)),
        Ok(_) => {}
        Err(e) => s.handle.answer_table_error(id, &e),
    }
}
