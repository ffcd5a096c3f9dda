//! Commands: one file per request frame (mini-redis style), each applying it to the table for
//! its session and queueing the answer. `apply` routes a decoded frame to its command.

mod acquire;
mod acquire_all;
mod cancel;
mod extend;
mod inspect;
mod reclaim;
mod release;
mod wait_unlocked;

use lockbroker_proto::{ErrorCode, Frame};

use super::session::Session;

/// A protocol violation: the session is closed after telling the client this.
pub struct Fatal(pub ErrorCode, pub String);

/// Applies one frame from the client.
pub async fn apply(s: &Session, frame: Frame) -> Result<(), Fatal> {
    match frame {
        Frame::Acquire(a) => acquire::apply(s, a).await,
        Frame::AcquireAll(a) => acquire_all::apply(s, a).await,
        Frame::Release(r) => release::apply(s, r),
        Frame::Extend(e) => extend::apply(s, e).await,
        Frame::Reclaim(r) => reclaim::apply(s, r).await,
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
