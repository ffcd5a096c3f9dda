//! Mapping of lock-table errors to wire error codes and messages.

use lockbroker_proto::{ErrorCode, Frame};

use crate::table::TableError;

/// The wire code of a table error.
pub fn code_of(e: &TableError) -> ErrorCode {
    match e {
        TableError::Busy => ErrorCode::Busy,
        TableError::Timeout => ErrorCode::Timeout,
        TableError::Cancelled => ErrorCode::Cancelled,
        TableError::AlreadyHeld => ErrorCode::AlreadyHeld,
        TableError::NotOwner => ErrorCode::NotOwner,
        TableError::NotLocked => ErrorCode::NotLocked,
        TableError::LimitExceeded(_) => ErrorCode::LimitExceeded,
        TableError::InvalidMode(_) => ErrorCode::InvalidMode,
        TableError::DuplicateRequest => ErrorCode::DuplicateRequest,
    }
}

/// The error frame answering request `id` with table error `e`.
pub fn error_frame(id: u64, e: &TableError) -> Frame {
    Frame::error(id, code_of(e), e.to_string())
}
