//! The broker side of the protocol without I/O, in the manner of quinn-proto: what a request
//! frame asks of the table ([`Request`], [`apply`]), the answers a batch of table effects
//! carries ([`Answer`]), the one builder of each answer frame (`Granted`, `GrantedAll`,
//! errors, `LeaseEnded`), when the expiry timer must be woken ([`Timer`]), how much it expires
//! per table lock ([`EXPIRY_SLICE`]) and the TTL of an acquire that names none.
//!
//! Two drivers run it: the broker's core (`broker/src/broker/`, which adds policy, the grant
//! gate, cluster routing, lease secrets bound to a principal and metrics around it) and the
//! SDK's embedded engine (`sdk/src/embedded.rs`, one process, no network). Neither decides
//! what a request does to the table or what an effect answers: that is here, once, so the
//! two cannot drift.

mod answer;
mod request;
mod timer;

use std::time::Duration;

pub use answer::{
    Answer, error_frame, extended_frame, granted, granted_all, lease_expired_frame, unlocked_frame,
};
pub use request::{Decoded, Outcome, Request, apply, decode};
pub use timer::Timer;

/// The TTL of an acquire that asks for none (`ttl_ms = 0`), unless a broker's config sets
/// another.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Deadlines the expiry timer handles per hold of the table lock: a storm of timeouts due at
/// once is expired in slices, other requests taking the table in between.
pub const EXPIRY_SLICE: usize = 1024;

/// The TTL a wire `ttl_ms` asks for: `default` when it names none (0).
pub fn ttl_asked(ttl_ms: u64, default: Duration) -> Duration {
    if ttl_ms == 0 {
        default
    } else {
        Duration::from_millis(ttl_ms)
    }
}
