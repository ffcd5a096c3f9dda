//! Commands: one file per request frame, each applying it to the table for its session and
//! queueing the answer. `apply` routes a decoded frame to its command.

mod acquire;
mod cancel;
mod extend;
mod inspect;
mod reclaim;
mod release;
mod wait_unlocked;

use std::time::{Duration, Instant};

use lockbroker_proto::{ErrorCode, Frame, Mode, UnlockOutcome as WireOutcome, WaitSpec};

use super::session::Session;
use crate::table::{self, UnlockOutcome, Wait};

/// A protocol violation: the session is closed after telling the client this.
pub struct Fatal(pub ErrorCode, pub String);

/// Applies one frame from the client.
pub async fn apply(s: &Session, frame: Frame) -> Result<(), Fatal> {
    match frame {
        Frame::Acquire(a) => acquire::apply(s, a).await,
        Frame::Release(r) => release::apply(s, r),
        Frame::Extend(e) => extend::apply(s, e),
        Frame::Reclaim(r) => reclaim::apply(s, r),
        Frame::Inspect { id, key } => inspect::apply(s, id, key).await,
        Frame::WaitUnlocked { id, key, wait } => wait_unlocked::apply(s, id, key, wait).await,
        Frame::Cancel { id } => cancel::apply(s, id),
        Frame::Ping { id } => s.reply(Frame::Pong { id }),
        Frame::Hello(_) => {
            return Err(Fatal(ErrorCode::ProtocolOrder, "Hello sent twice".into()));
        }
        other => {
            return Err(Fatal(
                ErrorCode::ProtocolOrder,
                format!(
                    "frame for request {} is one only the broker sends",
                    other.id()
                ),
            ));
        }
    }
    Ok(())
}

/// The table's view of a wire mode.
pub(crate) fn table_mode(m: Mode) -> table::Mode {
    match m {
        Mode::Exclusive => table::Mode::Exclusive,
        Mode::Shared => table::Mode::Shared,
        Mode::Semaphore(n) => table::Mode::Semaphore(n),
    }
}

/// The wire view of a table mode.
pub(crate) fn wire_mode(m: table::Mode) -> Mode {
    match m {
        table::Mode::Exclusive => Mode::Exclusive,
        table::Mode::Shared => Mode::Shared,
        table::Mode::Semaphore(n) => Mode::Semaphore(n),
    }
}

/// The table's view of a wait spec, relative to `now`. A deadline past the end of time is forever.
pub(crate) fn table_wait(w: WaitSpec, now: Instant) -> Wait {
    match w {
        WaitSpec::NoWait => Wait::No,
        WaitSpec::Forever => Wait::Forever,
        WaitSpec::Millis(ms) => match now.checked_add(Duration::from_millis(ms)) {
            Some(at) => Wait::Until(at),
            None => Wait::Forever,
        },
    }
}

/// The wire view of an unlock outcome.
pub(crate) fn wire_outcome(o: UnlockOutcome) -> WireOutcome {
    match o {
        UnlockOutcome::Released => WireOutcome::Released,
        UnlockOutcome::Expired => WireOutcome::Expired,
    }
}
