//! The grant gate: how an optional component takes part in the grant path without the
//! server knowing it. In the manner of raft-rs's `Ready`, output is sorted by what must be
//! confirmed before it is sent: a grant is answered at once unless the gate hands back a
//! [`Pending`] confirmation, and then only once that resolves.
//!
//! The sync mirror implements it today (a grant waits until Redis stored the hold); shard
//! ownership in cluster mode is the next. An async mirror implements only `record`.

use std::future::Future;
use std::pin::Pin;

use crate::table::{Effect, Fence, Grant};

/// How a gate answered for one grant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Confirmed: the grant may be answered.
    Ok,
    /// Someone outside the broker holds the key: the lease is released; an acquire that may
    /// still wait tries again, anything else is answered `Busy`.
    Conflict(String),
    /// The gate could not confirm (its backend is down): the lease is released and the client
    /// is answered `Unavailable`.
    Failed(String),
    /// The key's shard stopped being served here before its backup confirmed (cluster
    /// replication: a hand-over, a lost ownership): the client is answered `Moved` to no
    /// owner yet and asks again where the shard is now; a grant's lease is released, a
    /// renewed lease is left to whoever serves the shard now (it moved with the shard).
    Moved(String),
}

/// A confirmation the grant waits for.
pub type Pending = Pin<Box<dyn Future<Output = Confirmation> + Send>>;

/// A component in the grant path.
pub trait GrantGate: Send + Sync {
    /// Sees every batch of table effects, under the table lock, in table order. Must not
    /// block, wait or take the table lock.
    fn record(&self, effects: &[Effect]);

    /// Outside the table lock, for each grant: `None` answers it now; `Some` holds the answer
    /// until the confirmation resolves.
    fn hold(&self, grant: &Grant) -> Option<Pending>;

    /// Outside the table lock, for each renewal (extend, reclaim) of lease `fence`: `None`
    /// answers it now; `Some` holds the answer until the confirmation resolves, and anything
    /// but `Ok` ends the lease.
    fn hold_renewal(&self, fence: Fence) -> Option<Pending> {
        let _ = fence;
        None
    }

    /// Whether a multi-key grant (`AcquireAll`) may be held key by key and answered once all
    /// are confirmed (a replica takes every key or none of a confirmation it never saw); a
    /// gate that may refuse a key as held elsewhere (the sync mirror) cannot: such requests
    /// are refused while it is on.
    fn holds_multi_key(&self) -> bool {
        false
    }
}
