//! `Cancel`: withdraws a pending acquire or wait. The cancelled request is answered with a
//! `Cancelled` error; cancelling something no longer pending is not an error (the answer
//! it already got stands).

use crate::server::session::Session;
use crate::table::serve::{self, Request};

pub(super) fn apply(s: &Session, id: u64) {
    // An acquire the grant gate refused as busy elsewhere retries outside the table.
    if s.handle.cancel_poll(id) {
        return;
    }
    let request = Request::Cancel { req: id };
    // Always `Done`: the cancelled request is answered by an effect, if it was pending.
    let _ = s
        .broker
        .with_table(|t, now, out| serve::apply(t, now, s.id, request, out));
}
