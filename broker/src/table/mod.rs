//! The lock table: a pure, sans-I/O state machine over keyed leases.
//!
//! Time is passed in (`Instant`), consequences come out as [`Effect`]s appended to a caller's
//! vector; there are no clocks, no I/O and no locks inside (the server wraps one [`Table`] in a
//! mutex). Layout:
//! - `types.rs`: public vocabulary (ids, modes, requests, grants, effects, errors, config);
//! - `machine.rs`: [`Table`] and its operations;
//! - `entry.rs`: per-key state, mode compatibility and the grant rule;
//! - `sessions.rs`: per-session index (held keys, pending requests, limits);
//! - `deadlines.rs`: deadline min-heap with lazy deletion and compaction;
//! - `fences.rs`: fencing-token allocation.

mod deadlines;
mod entry;
mod fences;
mod keys;
mod machine;
mod sessions;
mod types;

#[cfg(test)]
mod invariants;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use fences::COUNTER_BITS;
pub use machine::Table;
pub use types::{
    AcquireRequest, Effect, Fence, Grant, Holder, Key, LockEvent, LockInfo, MAX_TTL, Mode,
    RESTORED_SESSION, ReqId, SessionId, TableConfig, TableError, UnlockOutcome, Wait,
};
