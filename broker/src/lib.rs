//! lockbroker: the broker library behind the `lockbroker` binary — the lock table (pure
//! state machine), the QUIC server, the WASM plugin host, configuration, TLS material and the
//! epoch file.

pub mod admin;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod epoch;
pub mod horizon;
pub mod identity;
pub mod mirror;
pub mod plugins;
pub mod private_files;
pub mod redis;
pub mod server;
/// The lock table lives in its own crate (`lockbroker-core`), shared with the SDK's embedded
/// client; `lockbroker::table` keeps naming it.
pub use lockbroker_core as table;
pub mod tls;
