//! Decode errors and the error codes carried by `Error` frames.

use thiserror::Error;

/// Why a byte sequence is not a valid frame. From a client, any of these makes the broker close
/// the connection after an `Error` frame with [`DecodeError::code`]; the SDK steps over a bad
/// frame from the broker (see [`crate::frame_head`]) and fails only the request it answered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge { size: usize, limit: usize },
    #[error("key of {size} bytes exceeds the limit of {limit} bytes")]
    KeyTooLarge { size: usize, limit: usize },
    #[error("unsupported protocol version {got} (this side speaks {supported})")]
    UnsupportedVersion { got: u8, supported: u8 },
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

impl DecodeError {
    /// The error code sent to the peer for this decode error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            DecodeError::KeyTooLarge { .. } => ErrorCode::KeyTooLarge,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownKind(_) | DecodeError::Malformed(_) => ErrorCode::Malformed,
        }
    }
}

/// The code of an `Error` frame. Request-level codes (Busy, NotOwner, …) answer one request;
/// connection-level codes (Malformed, FrameTooLarge, …) are followed by the connection closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Malformed,
    FrameTooLarge,
    KeyTooLarge,
    UnsupportedVersion,
    /// A frame other than `Hello` arrived first, or `Hello` arrived twice.
    ProtocolOrder,
    Busy,
    Timeout,
    Cancelled,
    NotOwner,
    NotLocked,
    /// Protocol v1 only (a session already held or waited for the key). Since v2 ownership is
    /// per lease and a broker no longer sends it; the code stays reserved.
    AlreadyHeld,
    Denied,
    LimitExceeded,
    InvalidMode,
    Unavailable,
    ShuttingDown,
    DuplicateRequest,
    Unauthenticated,
    /// Cluster mode: the key's shard is owned by another broker. The message is that broker's
    /// URL (`quic://host:port`), or empty while the shard has no owner (retry shortly).
    Moved,
    /// Cluster mode: a waiting `Acquire` left its key's queue because the key's shard moved
    /// to another broker in a planned hand-over. The message is a ticket (16 hex digits):
    /// sent again with it in `Acquire::ticket`, the acquire gets its place in the key's queue
    /// back at the shard's next owner (for a short while after the move).
    Requeued,
    Internal,
    /// A code this version does not know (sent by a newer peer).
    Unknown(u16),
}

impl ErrorCode {
    /// The numeric value on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::KeyTooLarge => 3,
            ErrorCode::UnsupportedVersion => 4,
            ErrorCode::ProtocolOrder => 5,
            ErrorCode::Busy => 10,
            ErrorCode::Timeout => 11,
            ErrorCode::Cancelled => 12,
            ErrorCode::NotOwner => 13,
            ErrorCode::NotLocked => 14,
            ErrorCode::AlreadyHeld => 15,
            ErrorCode::Denied => 16,
            ErrorCode::LimitExceeded => 17,
            ErrorCode::InvalidMode => 18,
            ErrorCode::Unavailable => 19,
            ErrorCode::ShuttingDown => 20,
            ErrorCode::DuplicateRequest => 21,
            ErrorCode::Unauthenticated => 22,
            ErrorCode::Moved => 23,
            ErrorCode::Requeued => 24,
            ErrorCode::Internal => 99,
            ErrorCode::Unknown(v) => v,
        }
    }

    /// Decodes a numeric code; unknown values are kept as [`ErrorCode::Unknown`].
    pub fn from_u16(v: u16) -> Self {
        match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::KeyTooLarge,
            4 => ErrorCode::UnsupportedVersion,
            5 => ErrorCode::ProtocolOrder,
            10 => ErrorCode::Busy,
            11 => ErrorCode::Timeout,
            12 => ErrorCode::Cancelled,
            13 => ErrorCode::NotOwner,
            14 => ErrorCode::NotLocked,
            15 => ErrorCode::AlreadyHeld,
            16 => ErrorCode::Denied,
            17 => ErrorCode::LimitExceeded,
            18 => ErrorCode::InvalidMode,
            19 => ErrorCode::Unavailable,
            20 => ErrorCode::ShuttingDown,
            21 => ErrorCode::DuplicateRequest,
            22 => ErrorCode::Unauthenticated,
            23 => ErrorCode::Moved,
            24 => ErrorCode::Requeued,
            99 => ErrorCode::Internal,
            other => ErrorCode::Unknown(other),
        }
    }

    /// True for codes after which the sender closes the connection.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::Malformed
                | ErrorCode::FrameTooLarge
                | ErrorCode::KeyTooLarge
                | ErrorCode::UnsupportedVersion
                | ErrorCode::ProtocolOrder
                | ErrorCode::Unauthenticated
        )
    }
}
