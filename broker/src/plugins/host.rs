//! `PluginHost`: the set of configured plugins as the server sees it — load at start, evaluate
//! a request through the key and TTL policies, hot reload with an atomic swap, stats.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use wasmtime::component::{HasSelf, Linker};

use super::bindings::key_policy::KeyPolicy;
use super::bindings::types::LockRequest;
use super::engine::{TickerGuard, engine};
use super::error::PluginError;
use super::fault::Fault;
use super::plugin::LoadedPlugin;
use super::request::{KeyDecision, PolicyOutcome, PolicyRequest, millis, to_wit};
use super::settings::{OnError, PluginKind, PluginSettings};
use super::state::HostState;
use super::stats::{
    CallDuration, CallDurations, Counters, PluginStat, PluginStats, call_duration_histogram,
};

/// The linker shared by every plugin: WASI p2 (locked down per store) + the `host` interface.
pub(crate) fn linker() -> Result<&'static Linker<HostState>, PluginError> {
    static LINKER: OnceLock<Result<Linker<HostState>, String>> = OnceLock::new();
    cached_linker(&LINKER, false, "plugin")
}

/// The linker of mirror plugins: the policy linker's imports plus the `redis` capability.
pub(crate) fn mirror_linker() -> Result<&'static Linker<HostState>, PluginError> {
    static LINKER: OnceLock<Result<Linker<HostState>, String>> = OnceLock::new();
    cached_linker(&LINKER, true, "mirror")
}

fn cached_linker(
    cell: &'static OnceLock<Result<Linker<HostState>, String>>,
    with_redis: bool,
    what: &str,
) -> Result<&'static Linker<HostState>, PluginError> {
    let engine = engine()?;
    cell.get_or_init(|| build_linker(engine, with_redis).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| PluginError::Engine(format!("cannot build the {what} linker: {e}")))
}

fn build_linker(
    engine: &wasmtime::Engine,
    with_redis: bool,
) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    // Adds `lockbroker:plugin/host` (and `types`); the ttl-policy and mirror worlds import the
    // very same interfaces, so this serves every world.
    KeyPolicy::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    if with_redis {
        super::bindings::redis::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    }
    Ok(linker)
}

/// One consistent set of loaded plugins; swapped as a whole by `reload`.
struct Generation {
    /// All plugins, in configuration order.
    all: Vec<Arc<LoadedPlugin>>,
    /// Key policies, in configuration order.
    key: Vec<Arc<LoadedPlugin>>,
    /// TTL policies, in configuration order.
    ttl: Vec<Arc<LoadedPlugin>>,
}

impl Generation {
    fn new(all: Vec<Arc<LoadedPlugin>>) -> Self {
        let of = |kind| {
            all.iter()
                .filter(|p| p.settings.kind == kind)
                .cloned()
                .collect()
        };
        Generation {
            key: of(PluginKind::KeyPolicy),
            ttl: of(PluginKind::TtlPolicy),
            all,
        }
    }
}

/// The plugin host. `Send + Sync`; share it with `Arc`.
pub struct PluginHost {
    current: ArcSwap<Generation>,
    settings: Vec<Arc<PluginSettings>>,
    counters: Vec<Arc<Counters>>,
    /// Every plugin's call-duration histogram (each plugin's counters hold its own entry).
    call_durations: CallDurations,
    cache_dir: PathBuf,
    reload_lock: Mutex<()>,
    empty: bool,
    _ticker: Option<TickerGuard>,
}

/// What `reload` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Plugins whose file changed and were swapped in.
    pub reloaded: Vec<String>,
    /// Plugins whose file did not change.
    pub unchanged: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reloaded.is_empty() {
            write!(f, "no plugin changed")
        } else {
            write!(f, "reloaded: {}", self.reloaded.join(", "))
        }
    }
}

impl PluginHost {
    /// Loads every configured plugin: reads, compiles (or takes the precompiled artifact from
    /// `cache_dir`), checks the WIT version and world, pre-links, and creates a first instance.
    /// Any failure refuses the whole set with an error naming the plugin, its file and the
    /// reason. With no settings this is free (no engine is created).
    pub fn load(settings: Vec<PluginSettings>, cache_dir: &Path) -> Result<Self, PluginError> {
        let mut names = HashSet::new();
        // Every plugin's instances come from the engine's one pool; keep half of it free for
        // the instances of a previous generation still draining after a reload.
        let wanted: usize = settings.iter().map(|s| s.max_instances).sum();
        let slots = super::engine::pool_slots();
        if wanted * 2 > slots as usize {
            return Err(PluginError::Settings {
                name: settings.last().map(|s| s.name.clone()).unwrap_or_default(),
                reason: format!(
                    "the plugins' max_instances add up to {wanted}; at most {} fit the \
                     engine's instance pool",
                    slots / 2
                ),
            });
        }
        for s in &settings {
            s.validate()?;
            if !names.insert(s.name.as_str()) {
                return Err(PluginError::Settings {
                    name: s.name.clone(),
                    reason: "two plugins have this name".to_string(),
                });
            }
            if s.kind == PluginKind::Mirror {
                return Err(PluginError::Unsupported {
                    name: s.name.clone(),
                    kind: s.kind.world(),
                });
            }
        }
        let settings: Vec<Arc<PluginSettings>> = settings.into_iter().map(Arc::new).collect();
        let call_durations = CallDurations::new_with_constructor(call_duration_histogram);
        let counters: Vec<Arc<Counters>> = settings
            .iter()
            .map(|s| {
                Arc::new(Counters {
                    call_duration: CallDuration::of(&call_durations, &s.name),
                    ..Counters::default()
                })
            })
            .collect();
        if settings.is_empty() {
            return Ok(PluginHost {
                current: ArcSwap::from_pointee(Generation::new(Vec::new())),
                settings,
                counters,
                call_durations,
                cache_dir: cache_dir.to_path_buf(),
                reload_lock: Mutex::new(()),
                empty: true,
                _ticker: None,
            });
        }
        let engine = engine()?;
        let linker = linker()?;
        let ticker = TickerGuard::acquire(engine)?;
        let mut loaded = Vec::with_capacity(settings.len());
        for (s, c) in settings.iter().zip(&counters) {
            let plugin = LoadedPlugin::load(engine, linker, s.clone(), Some(cache_dir), c.clone())?;
            tracing::info!(
                target: "lockbroker::plugin",
                plugin = %s.name,
                kind = %s.kind,
                path = %s.path.display(),
                cached = matches!(plugin.origin, super::cache::Origin::Cache),
                "plugin loaded"
            );
            loaded.push(Arc::new(plugin));
        }
        Ok(PluginHost {
            current: ArcSwap::from_pointee(Generation::new(loaded)),
            settings,
            counters,
            call_durations,
            cache_dir: cache_dir.to_path_buf(),
            reload_lock: Mutex::new(()),
            empty: false,
            _ticker: Some(ticker),
        })
    }

    /// True when no plugin is configured: the server can skip `evaluate` entirely.
    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// Runs the key policies in configuration order (a rewrite feeds the next policy), then the
    /// TTL policies in order (each gets the previous result as requested TTL, in ms). Returns the
    /// final key (borrowed unless rewritten), whether it was rewritten, and the granted TTL; or
    /// the deny reason.
    ///
    /// A plugin that traps, runs out of its time budget or memory, or returns an invalid result
    /// (empty or oversize rewrite, TTL 0) denies the request with a reason naming the plugin
    /// (or, with `on_error = "allow"`, is skipped for this request). Plugin calls run on wasmtime
    /// fibers and, as no host function the policy worlds import ever waits, each completes within
    /// one poll, taking at most the plugin's time budget.
    pub async fn evaluate<'a>(&self, req: PolicyRequest<'a>) -> Result<PolicyOutcome<'a>, String> {
        if self.empty {
            return Ok(PolicyOutcome {
                key: Cow::Borrowed(req.key),
                rewritten: false,
                ttl: req.ttl,
            });
        }
        // In-flight calls keep their generation alive across a concurrent reload.
        let generation = self.current.load_full();
        // One WIT request for the whole chain: its key follows rewrites, its TTL the grants.
        let mut wit = to_wit(&req, req.key, millis(req.ttl));
        let mut rewritten = false;
        for plugin in &generation.key {
            match plugin.check(&wit).await {
                Ok(KeyDecision::Allow) => {}
                Ok(KeyDecision::Rewrite(new)) => {
                    wit.key = new;
                    rewritten = true;
                }
                Ok(KeyDecision::Deny(reason)) => return Err(reason),
                Err(fault) => fail(plugin, &fault)?,
            }
        }
        ttl_chain(&generation, &mut wit).await?;
        Ok(PolicyOutcome {
            key: if rewritten {
                Cow::Owned(wit.key)
            } else {
                Cow::Borrowed(req.key)
            },
            rewritten,
            ttl: Duration::from_millis(wit.ttl_ms),
        })
    }

    /// The TTL policies alone, for a renewal (`Extend`) of a lease on `req.key` — the key as
    /// granted: key policies ran (and rewrote it) at the grant, and must not rewrite it twice.
    pub async fn evaluate_ttl(&self, req: PolicyRequest<'_>) -> Result<Duration, String> {
        if self.empty {
            return Ok(req.ttl);
        }
        let generation = self.current.load_full();
        let mut wit = to_wit(&req, req.key, millis(req.ttl));
        ttl_chain(&generation, &mut wit).await?;
        Ok(Duration::from_millis(wit.ttl_ms))
    }

    /// Re-reads every plugin file; files whose content changed are compiled (through the cache),
    /// checked and pre-linked, then the whole set is swapped in atomically. If any changed file
    /// is bad, nothing is swapped: the running versions keep serving and the error names the
    /// file. Calls in flight finish on the generation they started on.
    pub fn reload(&self) -> Result<ReloadReport, PluginError> {
        let _serialized = self.reload_lock.lock();
        if self.empty {
            return Ok(ReloadReport::default());
        }
        let engine = engine()?;
        let linker = linker()?;
        let old = self.current.load_full();
        let mut next = Vec::with_capacity(old.all.len());
        let mut report = ReloadReport::default();
        for ((settings, counters), running) in
            self.settings.iter().zip(&self.counters).zip(&old.all)
        {
            let result = std::fs::read(&settings.path)
                .map_err(|source| PluginError::Read {
                    name: settings.name.clone(),
                    path: settings.path.clone(),
                    source,
                })
                .and_then(|bytes| {
                    if super::cache::content_hash(&bytes) == running.content_hash {
                        return Ok(None);
                    }
                    LoadedPlugin::from_bytes(
                        engine,
                        linker,
                        settings.clone(),
                        &bytes,
                        Some(&self.cache_dir),
                        counters.clone(),
                    )
                    .map(Some)
                });
            match result {
                Ok(None) => {
                    report.unchanged.push(settings.name.clone());
                    next.push(running.clone());
                }
                Ok(Some(plugin)) => {
                    report.reloaded.push(settings.name.clone());
                    next.push(Arc::new(plugin));
                }
                Err(e) => {
                    Counters::bump(&counters.rejected_reloads);
                    tracing::error!(
                        target: "lockbroker::plugin",
                        "reload rejected, previous plugins keep running: {e}"
                    );
                    return Err(e);
                }
            }
        }
        if !report.reloaded.is_empty() {
            for (plugin, counters) in report.reloaded.iter().filter_map(|name| {
                let i = self.settings.iter().position(|s| &s.name == name)?;
                Some((name, &self.counters[i]))
            }) {
                Counters::bump(&counters.reloads);
                tracing::info!(target: "lockbroker::plugin", plugin = %plugin, "plugin reloaded");
            }
            self.current.store(Arc::new(Generation::new(next)));
        }
        Ok(report)
    }

    /// Counters of every plugin, in configuration order.
    pub fn stats(&self) -> PluginStats {
        let generation = self.current.load();
        PluginStats {
            plugins: self
                .settings
                .iter()
                .zip(&self.counters)
                .enumerate()
                .map(|(i, (s, c))| {
                    let running = generation.all.get(i);
                    PluginStat::read(
                        &s.name,
                        s.kind,
                        s.path.clone(),
                        c,
                        running.map_or(0, |p| p.idle_instances()),
                        running.is_some_and(|p| matches!(p.origin, super::cache::Origin::Cache)),
                    )
                })
                .collect(),
        }
    }

    /// The wall time of each plugin call, labelled `plugin` (for `/metrics`; clones share it).
    pub fn call_durations(&self) -> &CallDurations {
        &self.call_durations
    }

    /// The configured plugins.
    pub fn settings(&self) -> impl Iterator<Item = &PluginSettings> {
        self.settings.iter().map(|s| s.as_ref())
    }

    /// Modification time and length of every plugin file (`None` if unreadable), for watchers.
    pub fn file_stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        self.settings
            .iter()
            .map(|s| {
                let meta = std::fs::metadata(&s.path).ok()?;
                Some((meta.modified().ok()?, meta.len()))
            })
            .collect()
    }
}

/// Handles a plugin fault: `Err(reason)` (deny) unless the plugin fails open.
fn fail(plugin: &LoadedPlugin, fault: &Fault) -> Result<(), String> {
    // `on_error = "allow"` lets requests past a broken plugin, never past a busy one: overload
    // must not turn an ACL off.
    if matches!(fault, Fault::Overloaded(_)) {
        return Err(fault.reason(&plugin.settings.name));
    }
    match plugin.settings.on_error {
        OnError::Deny => Err(fault.reason(&plugin.settings.name)),
        OnError::Allow => {
            Counters::bump(&plugin.counters.failed_open);
            Ok(())
        }
    }
}

/// `PluginHost` is shared across the server's tasks.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PluginHost>();
};

/// Runs the TTL policies of `generation` in order on `wit`, each seeing the TTL the one
/// before granted (left in `wit.ttl_ms`); `Err` is the reason one denied.
async fn ttl_chain(generation: &Generation, wit: &mut LockRequest) -> Result<(), String> {
    for plugin in &generation.ttl {
        match plugin.grant_ttl(wit).await {
            Ok(Ok(granted)) => wit.ttl_ms = granted,
            Ok(Err(reason)) => return Err(reason),
            Err(fault) => fail(plugin, &fault)?,
        }
    }
    Ok(())
}
