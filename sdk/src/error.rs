//! The SDK's one error type.

use lockbroker_proto::ErrorCode;

/// Everything an SDK call can fail with.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// The lock is held and the request did not wait (try-lock).
    #[error("lock is busy")]
    Busy,
    /// The wait deadline passed before the lock was granted.
    #[error("timed out waiting")]
    Timeout,
    /// The lease is held by someone else.
    #[error("lease is not held by this client")]
    NotOwner,
    /// Nobody holds the key.
    #[error("key is not locked")]
    NotLocked,
    /// A broker policy refused the request.
    #[error("denied by policy: {0}")]
    Denied(String),
    /// The lease could not be renewed before its deadline: the lock may be held by another now.
    #[error("lease lost: {0}")]
    Lost(String),
    /// The connection to the broker is gone (the SDK reconnects on the next call).
    #[error("disconnected from broker: {0}")]
    Disconnected(String),
    /// The broker or the peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The broker cannot serve the request now (e.g. its sync mirror is down, or it is shutting down).
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// A per-session limit was hit (held leases, pending waiters).
    #[error("limit exceeded: {0}")]
    LimitExceeded(String),
    /// The request itself is invalid (key too long, mode mismatch, bad URL, bad certificate file, …).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Could not connect to any broker address.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The broker took the queued request out of its queue (an operator's `lockbroker cancel`
    /// or `POST /api/cancel`): not retried.
    #[error("request cancelled by the broker: {0}")]
    Cancelled(String),
    /// The TLS handshake with a broker failed (its certificate is not trusted, say): a
    /// configuration error, named with the broker, never taken for an outage.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
}

impl Error {
    /// Maps an `Error` frame from the broker.
    pub(crate) fn from_wire(code: ErrorCode, message: String) -> Error {
        match code {
            ErrorCode::Busy => Error::Busy,
            ErrorCode::Timeout => Error::Timeout,
            ErrorCode::NotOwner => Error::NotOwner,
            ErrorCode::NotLocked => Error::NotLocked,
            ErrorCode::Denied => Error::Denied(message),
            ErrorCode::LimitExceeded => Error::LimitExceeded(message),
            ErrorCode::InvalidMode | ErrorCode::KeyTooLarge => Error::Invalid(message),
            ErrorCode::Unavailable | ErrorCode::ShuttingDown => Error::Unavailable(message),
            ErrorCode::Cancelled => Error::Cancelled(message),
            ErrorCode::Unauthenticated => Error::Denied(message),
            ErrorCode::Moved => Error::Unavailable(format!(
                "the key's shard is served by another broker of the cluster ({message})"
            )),
            ErrorCode::Requeued => Error::Unavailable(
                "the key's shard moved to another broker while this acquire waited".into(),
            ),
            other => Error::Protocol(format!("{other:?}: {message}")),
        }
    }
}

/// Result alias of the SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;
