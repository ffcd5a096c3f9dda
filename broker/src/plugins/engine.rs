//! The process-wide wasmtime `Engine` (one for all plugin hosts, so compiled code, the pooling
//! allocator and the epoch ticker are shared) and the epoch ticker thread that enforces
//! per-call time budgets.
//!
//! Each store's deadline is one tick ahead; on every tick its callback (`on_epoch_tick`) asks
//! the call's clock (`budget`: the CPU time its thread used) whether to go on, and extends the
//! deadline by one tick, until the budget is spent and the call is interrupted.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use super::error::PluginError;
use super::settings::MAX_MEMORY_LIMIT;

/// Epoch tick period: how often a running call looks at its clock.
pub const TICK: Duration = Duration::from_micros(500);

/// Component instances the pooling allocator has slots for, across all plugin hosts of the
/// process (idle pooled instances + calls in flight + instances of older generations still
/// draining after a reload).
pub(super) const POOL_COMPONENT_INSTANCES: u32 = 512;

/// Environment variable that shrinks the pool (8 to 512 component instances) for tools that
/// cannot reserve the default pool's address space (about 2 TiB of memory slots): valgrind
/// (`BENCHMARKS.md`, callgrind). Not a configuration setting: production keeps the default.
const POOL_SLOTS_ENV: &str = "LOCKBROKER_PLUGIN_POOL_SLOTS";

/// Component instance slots of the engine's pool: `POOL_COMPONENT_INSTANCES` unless
/// [`POOL_SLOTS_ENV`] says otherwise.
pub(super) fn pool_slots() -> u32 {
    static SLOTS: OnceLock<u32> = OnceLock::new();
    *SLOTS.get_or_init(|| {
        std::env::var(POOL_SLOTS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .map_or(POOL_COMPONENT_INSTANCES, |n| {
                n.clamp(8, POOL_COMPONENT_INSTANCES)
            })
    })
}

/// Number of live `PluginHost`s; the ticker sleeps while there are none.
static LIVE_HOSTS: AtomicUsize = AtomicUsize::new(0);

/// The shared engine, built on first use.
pub fn engine() -> Result<&'static Engine, PluginError> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| PluginError::Engine(e.clone()))
}

fn build() -> wasmtime::Result<Engine> {
    let slots = pool_slots();
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // a wasip2 component is a handful of core instances (main module + adapter shims)
        .total_core_instances(slots * 8)
        .total_memories(slots)
        .total_tables(slots * 4)
        .total_stacks(slots)
        .max_memory_size(MAX_MEMORY_LIMIT)
        // keep a few idle slots warm so recycling an instance is cheap
        .max_unused_warm_slots(64);

    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&config)
}

/// The epoch-deadline callback of every plugin store: charge one tick to the running call and
/// interrupt it (a `Trap::Interrupt`) once its allowance is spent.
pub fn on_epoch_tick(
    mut cx: wasmtime::StoreContextMut<'_, super::state::HostState>,
) -> wasmtime::Result<wasmtime::UpdateDeadline> {
    if cx.data_mut().clock.tick() {
        Ok(wasmtime::UpdateDeadline::Continue(1))
    } else {
        Ok(wasmtime::UpdateDeadline::Interrupt)
    }
}

/// Allowance, in epoch ticks observed, for a call with the given time budget.
pub fn deadline_ticks(budget: Duration) -> u64 {
    let tick = TICK.as_nanos();
    let ticks = budget.as_nanos().div_ceil(tick);
    u64::try_from(ticks)
        .unwrap_or(u64::MAX / 2)
        .saturating_add(1)
}

/// Keeps the epoch ticker running while alive; held by each `PluginHost`.
#[derive(Debug)]
pub struct TickerGuard(());

impl TickerGuard {
    /// Registers a live host and makes sure the ticker thread runs.
    pub fn acquire(engine: &'static Engine) -> Result<Self, PluginError> {
        static TICKER: OnceLock<Result<std::thread::Thread, String>> = OnceLock::new();
        LIVE_HOSTS.fetch_add(1, Ordering::SeqCst);
        let guard = TickerGuard(());
        let thread = TICKER
            .get_or_init(|| {
                std::thread::Builder::new()
                    .name("lockbroker-plugin-epoch".into())
                    .spawn(move || ticker(engine))
                    .map(|handle| handle.thread().clone())
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                PluginError::Engine(format!("cannot start the epoch ticker thread: {e}"))
            })?;
        // wake it up if it is parked because no host was alive
        thread.unpark();
        Ok(guard)
    }
}

impl Drop for TickerGuard {
    fn drop(&mut self) {
        LIVE_HOSTS.fetch_sub(1, Ordering::SeqCst);
    }
}

fn ticker(engine: &'static Engine) {
    loop {
        if LIVE_HOSTS.load(Ordering::SeqCst) == 0 {
            // parked until a host is created (`TickerGuard::acquire` unparks us)
            std::thread::park_timeout(Duration::from_secs(1));
            continue;
        }
        std::thread::sleep(TICK);
        engine.increment_epoch();
    }
}

/// Start of the plugin clock served by `host.now-ms`.
pub fn clock_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_covers_the_budget() {
        assert_eq!(deadline_ticks(Duration::from_millis(1)), 3);
        assert_eq!(deadline_ticks(Duration::from_micros(1)), 2);
        assert_eq!(deadline_ticks(Duration::from_micros(750)), 3);
    }
}
