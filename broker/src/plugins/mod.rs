//! The WebAssembly plugin host.
//!
//! Operators extend the broker with components implementing a world of the
//! `lockbroker:plugin@0.1.0` WIT package (`wit/` at the repository root): `key-policy` (allow,
//! rewrite or deny each request), `ttl-policy` (decide the granted TTL) and `mirror` (ship lock
//! events to Redis through the host's `redis` capability; [`MirrorPlugin`], driven by
//! `crate::mirror`). The server builds one [`PluginHost`] from the `[[plugin]]` tables of its configuration
//! ([`PluginSettings`]) and calls [`PluginHost::evaluate`] for each request.
//!
//! How it runs (see the module files, one job each):
//! * one process-wide wasmtime `Engine` with the pooling allocator and epoch interruption;
//!   an epoch ticker thread enforces each plugin's per-call time budget (`engine`), counted in
//!   the CPU time of the call's thread (`budget`);
//! * compiled components are cached on disk, keyed by content + engine (`cache`);
//! * at load the component's WIT version and world are checked (`world`);
//! * each plugin keeps a pool of idle instances, each with its own `Store`, memory cap and
//!   locked-down WASI context (`pool`, `state`, `wasi`);
//! * a call that traps, times out, exceeds memory or returns garbage denies the request and
//!   recycles the instance (`plugin`, `fault`); counters in `stats`;
//! * calls run on wasmtime fibers (`call_async`: the WASI p2 host is linked in its async
//!   flavour, so wasmtime 48 requires async entry points, `bindings`) and normally complete in
//!   their first poll; timers are armed only when a call has to wait (`plugin`);
//! * an opt-in per-plugin decision cache replays successful answers (`decisions`);
//! * [`PluginHost::reload`] swaps a new generation in atomically (`ArcSwap`); [`watch`] calls
//!   it when a file changes; [`check_file`] backs `lockbroker plugin check`.

mod bindings;
mod budget;
mod cache;
mod check;
mod decisions;
mod engine;
mod error;
mod fault;
mod host;
mod mirror_plugin;
mod plugin;
mod pool;
mod redis_host;
mod request;
mod settings;
mod state;
mod stats;
mod wasi;
mod watch;
mod world;

pub use bindings::{WIT_PACKAGE, WIT_VERSION};
pub use check::{CheckReport, check_file};
pub use error::PluginError;
pub use host::{PluginHost, ReloadReport};
pub use mirror_plugin::{MirrorCallError, MirrorPlugin};

/// The WIT types a mirror plugin exchanges with the host (generated from `wit/plugin.wit`).
pub mod wit {
    pub use super::bindings::types::{
        EventOutcome, HeldLock, LockEvent, LockEventKind, LockMode, RestoreState,
    };
}
pub use request::{KeyDecision, LockMode, MAX_KEY_LEN, Operation, PolicyOutcome, PolicyRequest};
pub use settings::{
    DEFAULT_MEMORY_LIMIT, DEFAULT_TIME_BUDGET, MAX_DECISION_CACHE, MAX_MEMORY_LIMIT, OnError,
    PluginKind, PluginSettings, parse_plugin_tables,
};
pub use stats::{PluginStat, PluginStats};
pub use watch::{watch, watch_every};

/// The file name of the precompiled artifact `PluginHost::load` caches for `wasm_bytes` (in the
/// `cache_dir` it was given). For tests and operators inspecting the cache.
pub fn cache_file_name(wasm_bytes: &[u8]) -> Result<String, PluginError> {
    Ok(cache::cache_key(
        engine::engine()?,
        &cache::content_hash(wasm_bytes),
    ))
}
