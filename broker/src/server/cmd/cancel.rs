//! `Cancel`: withdraws a pending acquire or wait. The cancelled request is answered with a
//! `Cancelled` error; cancelling something no longer pending is not an error (the answer
//! it already got stands).

use crate::server::session::Session;

pub(super) fn apply(s: &Session, id: u64) {
    // An acquire the grant gate refused as busy elsewhere retries outside the table.
    if s.handle.cancel_poll(id) {
        return;
    }
    s.broker
        .with_table(|t, now, out| t.cancel(now, s.id, id, out));
}
