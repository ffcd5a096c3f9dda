//! `MirrorPlugin`: one loaded `mirror`-world component with the Redis connections it may use,
//! and its three calls (`on-events`, `resync`, `restore`). Calls go through the same guarded
//! path as policy calls (pooled instance, time budget on guest execution, memory cap, trap →
//! instance recycled), but waiting for Redis inside a host call does not count against the
//! budget: Redis time is bounded by the connection's own timeouts.

use std::path::Path;
use std::sync::Arc;

use super::bindings::types::{EventOutcome, HeldLock, LockEvent, RestoreState};
use super::engine::{TickerGuard, engine};
use super::error::PluginError;
use super::fault::Fault;
use super::host::mirror_linker;
use super::plugin::{Call, LoadedPlugin, Ret};
use super::settings::{PluginKind, PluginSettings};
use super::stats::{Counters, PluginStat};

/// Why a mirror call produced no usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MirrorCallError {
    /// The plugin trapped, ran out of time or memory, or returned garbage.
    #[error("mirror plugin failed: {0}")]
    Fault(String),
    /// The plugin returned an error (e.g. Redis unreachable).
    #[error("mirror plugin error: {0}")]
    Plugin(String),
}

/// A loaded mirror plugin.
pub struct MirrorPlugin {
    plugin: LoadedPlugin,
    _ticker: TickerGuard,
}

impl MirrorPlugin {
    /// Loads `settings.path` (kind must be `mirror`) through the artifact cache in `cache_dir`,
    /// giving its instances the connections in `redis`.
    pub fn load(
        settings: PluginSettings,
        cache_dir: &Path,
        redis: crate::redis::Connections,
    ) -> Result<MirrorPlugin, PluginError> {
        settings.validate()?;
        if settings.kind != PluginKind::Mirror {
            return Err(PluginError::Settings {
                name: settings.name.clone(),
                reason: format!("kind is `{}`, expected `mirror`", settings.kind),
            });
        }
        let engine = engine()?;
        let linker = mirror_linker()?;
        let ticker = TickerGuard::acquire(engine)?;
        let bytes = std::fs::read(&settings.path).map_err(|source| PluginError::Read {
            name: settings.name.clone(),
            path: settings.path.clone(),
            source,
        })?;
        let plugin = LoadedPlugin::from_bytes_with(
            engine,
            linker,
            Arc::new(settings),
            &bytes,
            Some(cache_dir),
            Arc::new(Counters::default()),
            redis,
        )?;
        Ok(MirrorPlugin {
            plugin,
            _ticker: ticker,
        })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.plugin.settings.name
    }

    /// Ships one batch; one outcome per event.
    pub async fn on_events(
        &self,
        events: &[LockEvent],
    ) -> Result<Vec<EventOutcome>, MirrorCallError> {
        let n = events.len();
        let ret = self
            .plugin
            .call(Call::OnEvents(events), |r| wrong_length(r, n))
            .await;
        outcomes(ret)
    }

    /// Replaces the mirrored state by `holds`; one outcome per hold.
    pub async fn resync(
        &self,
        holds: &[HeldLock],
        max_fence: u64,
    ) -> Result<Vec<EventOutcome>, MirrorCallError> {
        let n = holds.len();
        let ret = self
            .plugin
            .call(Call::Resync(holds, max_fence), |r| wrong_length(r, n))
            .await;
        outcomes(ret)
    }

    /// The leases to re-install at start and the largest fence handed out.
    pub async fn restore(&self) -> Result<RestoreState, MirrorCallError> {
        match self.plugin.call(Call::Restore, |_| None).await {
            Ok(Ret::Restore(Ok(state))) => Ok(state),
            Ok(Ret::Restore(Err(e))) => Err(MirrorCallError::Plugin(e)),
            Ok(_) => Err(MirrorCallError::Fault("not a mirror".into())),
            Err(fault) => Err(fault_error(&self.plugin, &fault)),
        }
    }

    /// The plugin's counters (calls, traps, timeouts, ...).
    pub fn stat(&self) -> PluginStat {
        let s = &self.plugin.settings;
        PluginStat::read(
            &s.name,
            s.kind,
            s.path.clone(),
            &self.plugin.counters,
            self.plugin.idle_instances(),
            matches!(self.plugin.origin, super::cache::Origin::Cache),
        )
    }
}

fn wrong_length(r: &Ret, n: usize) -> Option<String> {
    match r {
        Ret::Outcomes(Ok(list)) if list.len() != n => {
            Some(format!("{} outcomes for {n} items", list.len()))
        }
        _ => None,
    }
}

fn outcomes(ret: Result<Ret, Fault>) -> Result<Vec<EventOutcome>, MirrorCallError> {
    match ret {
        Ok(Ret::Outcomes(Ok(list))) => Ok(list),
        Ok(Ret::Outcomes(Err(e))) => Err(MirrorCallError::Plugin(e)),
        Ok(_) => Err(MirrorCallError::Fault("not a mirror".into())),
        Err(fault) => Err(MirrorCallError::Fault(fault.to_string())),
    }
}

fn fault_error(_plugin: &LoadedPlugin, fault: &Fault) -> MirrorCallError {
    MirrorCallError::Fault(fault.to_string())
}
