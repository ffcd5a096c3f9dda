//! lockbroker-proto: the wire protocol between lockbroker clients and the broker.
//!
//! Sans-I/O: this crate only turns [`Frame`]s into bytes and bytes back into frames, under
//! hard [`Limits`]. It knows nothing about QUIC, tokio or the lock table.
//!
//! Every frame on the control stream is `len: u32 LE | version: u8 | kind: u8 | body`, where
//! `len` counts everything after itself. See [`codec`] for the exact layout of each body.
//!
//! Modules: `frame` (every [`Frame`]), `codec` (the hand-written little-endian layout),
//! `wire` (the bounds-checked reader), `limits`, `error` (decode errors and wire error
//! codes), `shard` (key → shard). The protocol is a public contract: changes are versioned
//! (`Hello` carries the version).

pub mod codec;
pub mod error;
pub mod frame;
pub mod limits;
pub mod shard;
pub mod text;
mod wire;

pub use codec::{FRAME_HEAD_LEN, FrameHead, decode, encode, frame_head};
pub use error::{DecodeError, ErrorCode};
pub use frame::*;
pub use limits::Limits;
pub use shard::{hash_tag, shard_of};

/// The protocol version this crate speaks. A frame carrying another version is refused.
/// Version 2: lease secrets in `Granted`, `Release`, `Extend`, `Reclaim`; broker id in `Welcome`.
/// Version 3: `LockInfo` carries `holders_total` (its holders list may be truncated to fit
/// the frame limit).
/// Version 4: owner labels in `Acquire`, `Reclaim` and `LockInfo` holders; `Revoked` end reason;
/// the asker's queue position in `LockInfo`; `AcquireAll` / `GrantedAll` (atomic multi-key locks).
/// Version 5: `Acquire::ticket` and the `Requeued` error code (waiting acquires keep their
/// place in the queue across a planned move of their key's shard); lock caching:
/// `Acquire::fence_block`, `Granted::fence_block` and the `Recall` push.
/// Version 6: `LockInfo` holders say whether the lease is cached (`HolderInfo::cached`).
pub const PROTOCOL_VERSION: u8 = 6;

/// The default UDP port of the broker.
pub const DEFAULT_PORT: u16 = 7420;

/// ALPN protocol id negotiated by clients and the broker.
pub const ALPN: &[u8] = b"lockbroker/1";

/// ALPN protocol id of the broker-to-broker replication link (cluster mode, `replicas = 2`).
pub const PEER_ALPN: &[u8] = b"lockbroker-peer/1";
