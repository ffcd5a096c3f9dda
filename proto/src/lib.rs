//! wire protocol
