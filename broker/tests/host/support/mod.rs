//! Helpers shared by the host-level tests: `plugins` builds the real plugins once per test
//! process and makes settings and requests for them; `mirror` adds a real `redis-server` and an
//! in-process broker with the redis-mirror plugin.

pub mod mirror;
pub mod plugins;
