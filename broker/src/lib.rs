//! lockbroker: the broker library (lock table, server, plugins) behind the `lockbroker` binary.
pub mod plugins;
pub mod table;
