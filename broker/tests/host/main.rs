//! Host-level integration tests of the `lockbroker` library: the plugin host and the Redis
//! mirror driven in process with the real compiled plugins (and real `redis-server`s), no QUIC.
//! One test binary (`cargo test -p lockbroker --test host`) with a module per area:
//!
//! - [`mirror_host`]: the `redis` capability, the redis-mirror plugin's calls, and the mirror
//!   pipeline while Redis is down.
//! - [`plugins_faults`]: faulting plugins are contained (denied, recycled, counted).
//! - [`plugins_policy`]: policy behaviour of the example plugins, and refusals at load.
//! - [`plugins_reload`]: hot reload, the file watcher and the precompiled-artifact cache.
//! - [`support`]: shared helpers (building the plugins, a Redis server, a mirrored broker).

mod mirror_host;
mod plugins_faults;
mod plugins_policy;
mod plugins_reload;
mod support;
