//! Per-plugin counters (lock-free, shared by every generation of a plugin across reloads), the
//! per-plugin call-duration histogram, and the `PluginStats` snapshot returned by
//! `PluginHost::stats`.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use super::settings::PluginKind;

/// The call-duration histograms of a host's plugins, labelled `plugin` (a configured name).
pub type CallDurations = Family<Vec<(&'static str, String)>, Histogram>;

/// A call-duration histogram: 1 µs … ~4 s.
pub(super) fn call_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1e-6, 4.0, 12))
}

/// The wall time of each call into one plugin, seconds. A handle: clones share the histogram
/// (the host's is the plugin's entry of its [`CallDurations`], created once at load, so a call
/// neither allocates nor looks a label set up).
#[derive(Clone, Debug)]
pub struct CallDuration(Histogram);

impl Default for CallDuration {
    fn default() -> Self {
        CallDuration(call_duration_histogram())
    }
}

impl CallDuration {
    /// The entry of `plugin` in `family`.
    pub(super) fn of(family: &CallDurations, plugin: &str) -> Self {
        CallDuration(family.get_or_create_owned(&vec![("plugin", plugin.to_string())]))
    }

    /// Starts timing one call; it is observed when the returned timer drops, however the call
    /// ended (answer, fault, budget, overload, or the caller giving up).
    pub(super) fn start(&self) -> CallTimer<'_> {
        CallTimer {
            histogram: &self.0,
            started: Instant::now(),
        }
    }
}

/// One call being timed (see [`CallDuration::start`]).
pub(super) struct CallTimer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

/// Live counters of one configured plugin.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls into the plugin (excluding the smoke calls of `check_file`).
    pub calls: AtomicU64,
    /// Requests answered from the decision cache, without a call.
    pub decision_cache_hits: AtomicU64,
    /// Calls that trapped (other than timeouts and memory exhaustion).
    pub traps: AtomicU64,
    /// Calls interrupted at their time budget.
    pub timeouts: AtomicU64,
    /// Calls that hit the memory limit.
    pub memory_exceeded: AtomicU64,
    /// Calls that returned an invalid result (bad rewrite, TTL 0).
    pub invalid_results: AtomicU64,
    /// Failures to create an instance.
    pub instantiate_failures: AtomicU64,
    /// Instances discarded after a failure.
    pub recycled: AtomicU64,
    /// Instances created.
    pub instances_created: AtomicU64,
    /// Failures let through because of `on_error = "allow"`.
    pub failed_open: AtomicU64,
    /// Calls refused because every instance stayed busy for the time budget.
    pub overloads: AtomicU64,
    /// Successful reloads of a changed file.
    pub reloads: AtomicU64,
    /// Reloads refused (bad new file); the previous version kept running.
    pub rejected_reloads: AtomicU64,
    /// Loads satisfied from the precompiled cache.
    pub cache_hits: AtomicU64,
    /// Loads that ran the compiler.
    pub compiles: AtomicU64,
    /// Wall time of each call (`calls` counts them too).
    pub call_duration: CallDuration,
}

impl Counters {
    /// `+1` on a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of every plugin's counters, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PluginStats {
    /// One entry per configured plugin.
    pub plugins: Vec<PluginStat>,
}

impl PluginStats {
    /// The entry of the plugin called `name`.
    pub fn get(&self, name: &str) -> Option<&PluginStat> {
        self.plugins.iter().find(|p| p.name == name)
    }
}

/// The counters of one plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginStat {
    /// Plugin name.
    pub name: String,
    /// Its kind.
    pub kind: PluginKind,
    /// Its file.
    pub path: PathBuf,
    /// Calls made.
    pub calls: u64,
    /// Requests answered from the decision cache (no call made).
    pub decision_cache_hits: u64,
    /// All failed calls: `traps + timeouts + memory_exceeded + invalid_results +
    /// instantiate_failures`.
    pub errors: u64,
    /// Calls that trapped.
    pub traps: u64,
    /// Calls that ran out of time.
    pub timeouts: u64,
    /// Calls that ran out of memory.
    pub memory_exceeded: u64,
    /// Calls that returned garbage.
    pub invalid_results: u64,
    /// Instances that could not be created.
    pub instantiate_failures: u64,
    /// Instances discarded and replaced after a failure.
    pub recycled: u64,
    /// Instances created in total.
    pub instances_created: u64,
    /// Idle instances currently pooled.
    pub idle_instances: usize,
    /// Failures let through (`on_error = "allow"`).
    pub failed_open: u64,
    /// Successful reloads.
    pub reloads: u64,
    /// Rejected reloads.
    pub rejected_reloads: u64,
    /// Loads from the precompiled cache.
    pub cache_hits: u64,
    /// Loads that compiled.
    pub compiles: u64,
    /// Whether the running version came from the precompiled cache.
    pub from_cache: bool,
}

impl PluginStat {
    /// Reads `counters`.
    pub fn read(
        name: &str,
        kind: PluginKind,
        path: PathBuf,
        c: &Counters,
        idle_instances: usize,
        from_cache: bool,
    ) -> Self {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (traps, timeouts, memory, invalid, inst) = (
            get(&c.traps),
            get(&c.timeouts),
            get(&c.memory_exceeded),
            get(&c.invalid_results),
            get(&c.instantiate_failures),
        );
        PluginStat {
            name: name.to_string(),
            kind,
            path,
            calls: get(&c.calls),
            decision_cache_hits: get(&c.decision_cache_hits),
            errors: traps + timeouts + memory + invalid + inst,
            traps,
            timeouts,
            memory_exceeded: memory,
            invalid_results: invalid,
            instantiate_failures: inst,
            recycled: get(&c.recycled),
            instances_created: get(&c.instances_created),
            idle_instances,
            failed_open: get(&c.failed_open),
            reloads: get(&c.reloads),
            rejected_reloads: get(&c.rejected_reloads),
            cache_hits: get(&c.cache_hits),
            compiles: get(&c.compiles),
            from_cache,
        }
    }
}

impl fmt::Display for PluginStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.plugins {
            writeln!(
                f,
                "{} ({}, {}): calls={} decision_cache_hits={} errors={} (traps={} timeouts={} memory={} invalid={} \
                 instantiate={}) recycled={} instances={} idle={} failed_open={} reloads={} \
                 rejected_reloads={} cache_hits={} compiles={}",
                p.name,
                p.kind,
                p.path.display(),
                p.calls,
                p.decision_cache_hits,
                p.errors,
                p.traps,
                p.timeouts,
                p.memory_exceeded,
                p.invalid_results,
                p.instantiate_failures,
                p.recycled,
                p.instances_created,
                p.idle_instances,
                p.failed_open,
                p.reloads,
                p.rejected_reloads,
                p.cache_hits,
                p.compiles
            )?;
        }
        Ok(())
    }
}
