//! The per-instance store data (`HostState`): the plugin's identity and settings, its memory
//! limiter, its locked-down WASI context, and the implementation of the `host` interface
//! (log, now-ms, config). The `redis` interface of mirror plugins is in `redis_host.rs`.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::host::{self, LogLevel};
use super::budget::CallClock;
use super::engine::clock_start;
use super::settings::PluginSettings;
use super::wasi::{TailPipe, locked_down_ctx};

/// Longest log line accepted from a plugin.
const MAX_LOG: usize = 4096;

/// Data of one `Store`, i.e. of one plugin instance.
pub struct HostState {
    /// The plugin's settings (name for logs, config for `host.config`).
    pub settings: Arc<PluginSettings>,
    /// Caps linear memory; remembers whether the cap was hit.
    pub limiter: MemoryCap,
    /// The instance's stderr (panic messages).
    pub stderr: TailPipe,
    /// The current call's time budget (see `budget`).
    pub clock: CallClock,
    /// The Redis connections this plugin may use (empty for policy plugins).
    pub redis: crate::redis::Connections,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    /// Fresh state for a new instance of `settings`' plugin.
    pub fn new(settings: Arc<PluginSettings>, redis: crate::redis::Connections) -> Self {
        let stderr = TailPipe::new();
        HostState {
            redis,
            limiter: MemoryCap::new(settings.memory_limit),
            wasi: locked_down_ctx(&stderr),
            stderr,
            clock: CallClock::default(),
            settings,
            table: ResourceTable::new(),
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: LogLevel, msg: String) {
        let mut msg = msg;
        if msg.len() > MAX_LOG {
            let mut cut = MAX_LOG;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        let plugin = self.settings.name.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(target: "lockbroker::plugin", plugin, "{msg}"),
            LogLevel::Debug => tracing::debug!(target: "lockbroker::plugin", plugin, "{msg}"),
            LogLevel::Info => tracing::info!(target: "lockbroker::plugin", plugin, "{msg}"),
            LogLevel::Warn => tracing::warn!(target: "lockbroker::plugin", plugin, "{msg}"),
            LogLevel::Error => tracing::error!(target: "lockbroker::plugin", plugin, "{msg}"),
        }
    }

    fn now_ms(&mut self) -> u64 {
        u64::try_from(clock_start().elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn config(&mut self, name: String) -> Option<String> {
        self.settings.config.get(&name).cloned()
    }
}

impl super::bindings::types::Host for HostState {}

/// A `ResourceLimiter` capping linear memory at the plugin's `memory_limit`; a refused grow makes
/// `memory.grow` return -1 (the guest's allocator then aborts, which traps), and is remembered so
/// the failure can be reported as "memory limit exceeded".
#[derive(Debug)]
pub struct MemoryCap {
    limit: usize,
    /// Set when a grow beyond the limit was refused.
    pub hit: bool,
}

impl MemoryCap {
    fn new(limit: usize) -> Self {
        MemoryCap { limit, hit: false }
    }

    /// The cap in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

/// Table elements an instance may grow to (guests use tables for indirect calls only).
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
