//! The request/decision types of the public API (`PolicyRequest`, `KeyDecision`,
//! `PolicyOutcome`, ...) and their conversion to the WIT types.

use std::borrow::Cow;
use std::time::Duration;

use super::bindings::types as wit;

/// Largest key a plugin may rewrite to (the lock table's default key limit).
pub const MAX_KEY_LEN: usize = 1024;

/// What the client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Take a lease.
    Acquire,
    /// Read-only query.
    Inspect,
    /// Wait until unlocked.
    Wait,
}

/// How a lock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    /// One holder.
    Exclusive,
    /// Many readers.
    Shared,
    /// Up to N holders.
    Semaphore(u32),
}

impl From<lockbroker_proto::Mode> for LockMode {
    fn from(m: lockbroker_proto::Mode) -> LockMode {
        match m {
            lockbroker_proto::Mode::Exclusive => LockMode::Exclusive,
            lockbroker_proto::Mode::Shared => LockMode::Shared,
            lockbroker_proto::Mode::Semaphore(n) => LockMode::Semaphore(n),
        }
    }
}

/// A request submitted to the policy plugins.
#[derive(Clone, Copy, Debug)]
pub struct PolicyRequest<'a> {
    /// The key as the client sent it.
    pub key: &'a [u8],
    /// Requested mode (`Shared` for inspect/wait).
    pub mode: LockMode,
    /// Requested TTL; zero means "the default".
    pub ttl: Duration,
    /// Authenticated principal.
    pub principal: &'a str,
    /// Requested operation.
    pub op: Operation,
}

/// The verdict of one key policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyDecision {
    /// Unchanged.
    Allow,
    /// Use this key instead.
    Rewrite(Vec<u8>),
    /// Refused, with the reason for the client.
    Deny(String),
}

/// The result of all policies for an allowed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyOutcome<'a> {
    /// The final key: borrowed from the request unless a policy rewrote it.
    pub key: Cow<'a, [u8]>,
    /// Whether a key policy rewrote the key.
    pub rewritten: bool,
    /// The granted TTL (the request's TTL when no TTL policy is configured; zero then still
    /// means "the broker default").
    pub ttl: Duration,
}

pub use lockbroker_core::wire::millis;

/// The WIT view of a request on `key` (which may be a rewritten key).
pub fn to_wit(req: &PolicyRequest<'_>, key: &[u8], ttl_ms: u64) -> wit::LockRequest {
    wit::LockRequest {
        key: key.to_vec(),
        mode: match req.mode {
            LockMode::Exclusive => wit::LockMode::Exclusive,
            LockMode::Shared => wit::LockMode::Shared,
            LockMode::Semaphore(n) => wit::LockMode::Semaphore(n),
        },
        ttl_ms,
        principal: req.principal.to_string(),
        operation: match req.op {
            Operation::Acquire => wit::Operation::Acquire,
            Operation::Inspect => wit::Operation::Inspect,
            Operation::Wait => wit::Operation::Wait,
        },
    }
}

impl From<wit::KeyDecision> for KeyDecision {
    fn from(d: wit::KeyDecision) -> Self {
        match d {
            wit::KeyDecision::Allow => KeyDecision::Allow,
            wit::KeyDecision::Rewrite(k) => KeyDecision::Rewrite(k),
            wit::KeyDecision::Deny(r) => KeyDecision::Deny(r),
        }
    }
}
