//! `LoadedPlugin`: one compiled, version-checked, pre-linked plugin file with its instance pool,
//! and the guarded call path (time budget, memory cap, result validation, fault handling).

use std::path::Path;
use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Linker;

use super::bindings::key_policy::KeyPolicyPre;
use super::bindings::mirror::MirrorPre;
use super::bindings::ttl_policy::TtlPolicyPre;
use super::bindings::types::{EventOutcome, HeldLock, LockEvent, LockRequest, RestoreState};
use super::bindings::{WIT_PACKAGE, WIT_VERSION};
use super::budget::CallClock;
use super::cache::{self, Origin};
use super::decisions::{Decision, DecisionCache};
use super::error::PluginError;
use super::fault::Fault;
use super::pool::{Exports, Pool, Pre, block_on};
use super::request::{KeyDecision, MAX_KEY_LEN};
use super::settings::{PluginKind, PluginSettings};
use super::state::HostState;
use super::stats::Counters;
use super::world;

/// Pool shards per plugin: two per core (the broker's runtime has one worker per core; threads
/// take shards round-robin, so twice as many shards makes two workers sharing one unlikely).
fn pool_shards() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(4)
        .clamp(1, 64)
        * 2
}

/// Idle instances kept per shard: one for the running call's thread and one spare.
const MAX_IDLE_PER_SHARD: usize = 2;

/// A loaded plugin (one generation of one configured plugin).
pub struct LoadedPlugin {
    /// Its settings.
    pub settings: Arc<PluginSettings>,
    /// SHA-256 of the file it was loaded from (reload compares it).
    pub content_hash: [u8; 32],
    /// Cache hit or compiled.
    pub origin: Origin,
    /// Its counters (shared with other generations of the same plugin).
    pub counters: Arc<Counters>,
    pool: Pool,
    /// One permit per call in flight (`settings.max_instances`).
    permits: tokio::sync::Semaphore,
    /// Remembered decisions (`settings.decision_cache > 0`).
    decisions: Option<DecisionCache>,
}

impl LoadedPlugin {
    /// Reads, compiles (through the cache), checks and pre-links `settings.path`, and creates
    /// one instance (so instantiation problems show at load, and the first call is warm).
    pub fn load(
        engine: &'static Engine,
        linker: &Linker<HostState>,
        settings: Arc<PluginSettings>,
        cache_dir: Option<&Path>,
        counters: Arc<Counters>,
    ) -> Result<Self, PluginError> {
        let bytes = std::fs::read(&settings.path).map_err(|source| PluginError::Read {
            name: settings.name.clone(),
            path: settings.path.clone(),
            source,
        })?;
        Self::from_bytes(engine, linker, settings, &bytes, cache_dir, counters)
    }

    /// Like [`LoadedPlugin::load`], from bytes already read.
    pub fn from_bytes(
        engine: &'static Engine,
        linker: &Linker<HostState>,
        settings: Arc<PluginSettings>,
        bytes: &[u8],
        cache_dir: Option<&Path>,
        counters: Arc<Counters>,
    ) -> Result<Self, PluginError> {
        let redis = crate::redis::Connections::default();
        Self::from_bytes_with(engine, linker, settings, bytes, cache_dir, counters, redis)
    }

    /// Like [`LoadedPlugin::from_bytes`], giving the plugin's instances these Redis
    /// connections (mirror plugins).
    #[allow(clippy::too_many_arguments)]
    pub fn from_bytes_with(
        engine: &'static Engine,
        linker: &Linker<HostState>,
        settings: Arc<PluginSettings>,
        bytes: &[u8],
        cache_dir: Option<&Path>,
        counters: Arc<Counters>,
        redis: crate::redis::Connections,
    ) -> Result<Self, PluginError> {
        let name = &settings.name;
        let path = &settings.path;
        let compiled =
            cache::compile(engine, bytes, cache_dir).map_err(|e| PluginError::Invalid {
                name: name.clone(),
                path: path.clone(),
                reason: format!("{e:#}"),
            })?;
        let shape = world::shape(engine, &compiled.component);
        if let Some(found) = shape.incompatible_version() {
            return Err(PluginError::VersionMismatch {
                name: name.clone(),
                path: path.clone(),
                found: found.to_string(),
                expected: WIT_VERSION.to_string(),
            });
        }
        if let Some(detail) = shape.world_mismatch(settings.kind) {
            return Err(PluginError::WrongWorld {
                name: name.clone(),
                path: path.clone(),
                expected: settings.kind.world(),
                detail,
            });
        }
        if shape.versions.is_empty() {
            return Err(PluginError::WrongWorld {
                name: name.clone(),
                path: path.clone(),
                expected: settings.kind.world(),
                detail: format!("the component uses no {WIT_PACKAGE} interface"),
            });
        }
        let instantiate_err = |e: wasmtime::Error| PluginError::Instantiate {
            name: name.clone(),
            path: path.clone(),
            reason: format!("{e:#}"),
        };
        let pre = linker
            .instantiate_pre(&compiled.component)
            .map_err(instantiate_err)?;
        let pre = match settings.kind {
            PluginKind::KeyPolicy => Pre::Key(KeyPolicyPre::new(pre).map_err(instantiate_err)?),
            PluginKind::TtlPolicy => Pre::Ttl(TtlPolicyPre::new(pre).map_err(instantiate_err)?),
            PluginKind::Mirror => Pre::Mirror(MirrorPre::new(pre).map_err(instantiate_err)?),
        };
        match compiled.origin {
            Origin::Cache => Counters::bump(&counters.cache_hits),
            Origin::Compiled => Counters::bump(&counters.compiles),
        }
        let pool = Pool::new(
            engine,
            pre,
            settings.clone(),
            counters.clone(),
            pool_shards(),
            MAX_IDLE_PER_SHARD,
            redis,
        );
        let first = block_on(pool.instantiate()).map_err(instantiate_err)?;
        pool.checkin(first);
        Ok(LoadedPlugin {
            permits: tokio::sync::Semaphore::new(settings.max_instances),
            decisions: DecisionCache::new(settings.decision_cache, pool_shards()),
            settings,
            content_hash: compiled.content_hash,
            origin: compiled.origin,
            counters,
            pool,
        })
    }

    /// Idle pooled instances.
    pub fn idle_instances(&self) -> usize {
        self.pool.idle()
    }

    /// Runs the key policy on `req` (whose key is the client's or a previous policy's rewrite).
    pub async fn check(&self, req: &LockRequest) -> Result<KeyDecision, Fault> {
        if let Some(Decision::Key(decision)) = self.remembered(req) {
            return Ok(decision);
        }
        let result = self
            .call(Call::Check(req), |ret| match ret {
                Ret::Decision(KeyDecision::Rewrite(new)) if new.is_empty() => {
                    Some("rewrite to an empty key".to_string())
                }
                Ret::Decision(KeyDecision::Rewrite(new)) if new.len() > MAX_KEY_LEN => {
                    Some(format!(
                        "rewrite to a {}-byte key (the limit is {MAX_KEY_LEN})",
                        new.len()
                    ))
                }
                _ => None,
            })
            .await?;
        match result {
            Ret::Decision(decision) => {
                if let Some(cache) = &self.decisions {
                    cache.put(req, Decision::Key(decision.clone()));
                }
                Ok(decision)
            }
            _ => Err(Fault::Invalid("not a key policy".to_string())),
        }
    }

    /// Runs the TTL policy on `req` (whose `ttl_ms` is the client's or the previous TTL
    /// policy's grant). `Ok(Err(reason))` is the plugin's own refusal.
    pub async fn grant_ttl(&self, req: &LockRequest) -> Result<Result<u64, String>, Fault> {
        if let Some(Decision::Ttl(granted)) = self.remembered(req) {
            return Ok(granted);
        }
        let result = self
            .call(Call::GrantTtl(req), |ret| {
                matches!(ret, Ret::Ttl(Ok(0))).then(|| "a TTL of 0 ms".to_string())
            })
            .await?;
        match result {
            Ret::Ttl(granted) => {
                if let Some(cache) = &self.decisions {
                    cache.put(req, Decision::Ttl(granted.clone()));
                }
                Ok(granted)
            }
            _ => Err(Fault::Invalid("not a TTL policy".to_string())),
        }
    }

    /// The decision cache's answer for `req`, counted as a hit.
    fn remembered(&self, req: &LockRequest) -> Option<Decision> {
        let decision = self.decisions.as_ref()?.get(req)?;
        Counters::bump(&self.counters.decision_cache_hits);
        Some(decision)
    }

    /// Checks out an instance, makes the call under the time budget, checks the result with
    /// `invalid` (which names what is wrong with it, if anything), and checks the instance back
    /// in — or discards it (recycles) if the call failed in any way.
    pub(super) async fn call(
        &self,
        call: Call<'_>,
        invalid: impl FnOnce(&Ret) -> Option<String>,
    ) -> Result<Ret, Fault> {
        Counters::bump(&self.counters.calls);
        // Observed when the call ends, whichever way it ends.
        let _timer = self.counters.call_duration.start();
        let budget = self.settings.time_budget;
        // Outside a tokio runtime (`plugin check`'s smoke call runs on `block_on`) there are
        // no timers: no wait for an instance, no wall-clock bound (the epoch budget stays).
        let timers = tokio::runtime::Handle::try_current().is_ok();
        // Wait for a free instance within the budget; then refuse (overload, never fail open).
        // A free permit is taken at once; only a call that has to wait sets up a timer.
        let permit = match self.permits.try_acquire() {
            Ok(permit) => Some(permit),
            Err(_) if timers => tokio::time::timeout(budget, self.permits.acquire())
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        let Some(_permit) = permit else {
            Counters::bump(&self.counters.overloads);
            let fault = Fault::Overloaded(self.settings.max_instances);
            tracing::warn!(target: "lockbroker::plugin", plugin = %self.settings.name, "{fault}");
            return Err(fault);
        };
        // Policy calls are bounded in wall-clock time too: the epoch budget counts only guest
        // execution, not waits inside WASI (a guest sleeping on a clock). Mirror calls are not:
        // their Redis I/O is bounded by the connections' own timeouts.
        let wall_limit = match call {
            Call::Check(_) | Call::GrantTtl(_) if timers => Some(budget + 2 * super::engine::TICK),
            _ => None,
        };
        let mut instance = match self.pool.checkout().await {
            Ok(instance) => instance,
            Err(e) => {
                Counters::bump(&self.counters.instantiate_failures);
                let fault = Fault::Instantiate(format!("{}", e.root_cause()));
                self.log_fault(&fault, &e);
                return Err(fault);
            }
        };
        instance.store.data_mut().limiter.hit = false;
        let stderr_mark = instance.store.data().stderr.mark();
        instance.store.data_mut().clock = CallClock::start(self.settings.time_budget);
        instance.store.set_epoch_deadline(1);
        let result = {
            let store = &mut instance.store;
            let guest = async {
                match (&instance.exports, call) {
                    (Exports::Key(p), Call::Check(req)) => p
                        .call_check(store, req)
                        .await
                        .map(|d| Ret::Decision(d.into())),
                    (Exports::Ttl(p), Call::GrantTtl(req)) => {
                        p.call_grant_ttl(store, req).await.map(Ret::Ttl)
                    }
                    (Exports::Mirror(p), Call::OnEvents(events)) => {
                        p.call_on_events(store, events).await.map(Ret::Outcomes)
                    }
                    (Exports::Mirror(p), Call::Resync(holds, max_fence)) => p
                        .call_resync(store, holds, max_fence)
                        .await
                        .map(Ret::Outcomes),
                    (Exports::Mirror(p), Call::Restore) => {
                        p.call_restore(store).await.map(Ret::Restore)
                    }
                    _ => Err(wasmtime::format_err!(
                        "the plugin does not export this function"
                    )),
                }
            };
            // The policy worlds import no host function that waits, so a call normally completes
            // in its first poll: poll it once before arming the wall-clock timer (which then only
            // guards a call that waits inside WASI), measured from the start of the call.
            let started = wall_limit.map(|_| tokio::time::Instant::now());
            let mut guest = std::pin::pin!(guest);
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(guest.as_mut().poll(cx))).await;
            match (first, wall_limit.zip(started)) {
                (std::task::Poll::Ready(r), _) => r,
                (std::task::Poll::Pending, None) => guest.await,
                (std::task::Poll::Pending, Some((limit, started))) => {
                    match tokio::time::timeout_at(started + limit, guest).await {
                        Ok(r) => r,
                        Err(_) => {
                            // Cut while waiting in the host: the instance is dropped mid-call.
                            Counters::bump(&self.counters.timeouts);
                            Counters::bump(&self.counters.recycled);
                            let fault = Fault::Timeout(budget);
                            tracing::warn!(
                                target: "lockbroker::plugin",
                                plugin = %self.settings.name,
                                "{fault} (waiting in WASI)"
                            );
                            return Err(fault);
                        }
                    }
                }
            }
        };
        let fault = match result {
            Ok(ret) => match invalid(&ret) {
                None => {
                    self.pool.checkin(instance);
                    return Ok(ret);
                }
                Some(detail) => {
                    Counters::bump(&self.counters.invalid_results);
                    let fault = Fault::Invalid(detail);
                    tracing::warn!(
                        target: "lockbroker::plugin",
                        plugin = %self.settings.name,
                        "{fault}; instance recycled"
                    );
                    fault
                }
            },
            Err(e) => {
                let fault = Fault::classify(
                    &e,
                    instance.store.data(),
                    self.settings.time_budget,
                    stderr_mark,
                );
                Counters::bump(match &fault {
                    Fault::Timeout(_) => &self.counters.timeouts,
                    Fault::Memory(_) => &self.counters.memory_exceeded,
                    _ => &self.counters.traps,
                });
                self.log_fault(&fault, &e);
                fault
            }
        };
        Counters::bump(&self.counters.recycled);
        drop(instance);
        Err(fault)
    }

    fn log_fault(&self, fault: &Fault, error: &wasmtime::Error) {
        tracing::warn!(
            target: "lockbroker::plugin",
            plugin = %self.settings.name,
            "{fault} ({error:?})"
        );
    }
}

/// The export to call.
#[derive(Clone, Copy)]
pub(super) enum Call<'r> {
    /// `key-policy.check`.
    Check(&'r LockRequest),
    /// `ttl-policy.grant-ttl`.
    GrantTtl(&'r LockRequest),
    /// `mirror.on-events`.
    OnEvents(&'r [LockEvent]),
    /// `mirror.resync`.
    Resync(&'r [HeldLock], u64),
    /// `mirror.restore`.
    Restore,
}

/// What an export returned.
pub(super) enum Ret {
    /// From `check`.
    Decision(KeyDecision),
    /// From `grant-ttl`.
    Ttl(Result<u64, String>),
    /// From `on-events` and `resync`.
    Outcomes(Result<Vec<EventOutcome>, String>),
    /// From `restore`.
    Restore(Result<RestoreState, String>),
}
