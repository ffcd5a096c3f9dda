//! A plugin's pool of idle instances, sharded by thread. A call checks an instance
//! out of its thread's shard (taking one from another shard, and creating one from the
//! `InstancePre` only when every shard is empty), uses it, and checks it back into its thread's
//! shard; an instance whose call failed is dropped instead (recycled), so a trap never poisons
//! later calls. In steady state no request instantiates anything, and a worker thread keeps
//! reusing the instances it last ran (warm caches, no contention on one lock).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use wasmtime::{Engine, Store};

use super::bindings::key_policy::{KeyPolicy, KeyPolicyPre};
use super::bindings::mirror::{Mirror, MirrorPre};
use super::bindings::ttl_policy::{TtlPolicy, TtlPolicyPre};
use super::budget::CallClock;
use super::engine::on_epoch_tick;
use super::settings::PluginSettings;
use super::state::HostState;
use super::stats::Counters;

/// Time budget for creating an instance (runs the guest's initializers).
const INSTANTIATE_BUDGET: Duration = Duration::from_millis(200);

/// A pre-linked component of one world.
pub enum Pre {
    /// A key policy.
    Key(KeyPolicyPre<HostState>),
    /// A TTL policy.
    Ttl(TtlPolicyPre<HostState>),
    /// A mirror.
    Mirror(MirrorPre<HostState>),
}

/// The exports of one instance.
pub enum Exports {
    /// A key policy.
    Key(KeyPolicy),
    /// A TTL policy.
    Ttl(TtlPolicy),
    /// A mirror.
    Mirror(Mirror),
}

/// One instance with its store.
pub struct Instance {
    /// The store (one per instance).
    pub store: Store<HostState>,
    /// The typed exports.
    pub exports: Exports,
}

/// Idle instances of one plugin.
pub struct Pool {
    engine: &'static Engine,
    pre: Pre,
    settings: Arc<PluginSettings>,
    counters: Arc<Counters>,
    /// Idle instances, sharded by thread (see [`shard_index`]).
    shards: Box<[Mutex<Vec<Instance>>]>,
    /// Idle instances kept per shard.
    max_idle: usize,
    redis: crate::redis::Connections,
}

impl Pool {
    /// An empty pool keeping at most `max_idle` idle instances in each of `shards` shards.
    pub fn new(
        engine: &'static Engine,
        pre: Pre,
        settings: Arc<PluginSettings>,
        counters: Arc<Counters>,
        shards: usize,
        max_idle: usize,
        redis: crate::redis::Connections,
    ) -> Self {
        Pool {
            engine,
            pre,
            settings,
            counters,
            shards: (0..shards.max(1)).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle,
            redis,
        }
    }

    /// Creates a new instance.
    pub async fn instantiate(&self) -> wasmtime::Result<Instance> {
        let mut store = Store::new(
            self.engine,
            HostState::new(self.settings.clone(), self.redis.clone()),
        );
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_callback(on_epoch_tick);
        store.data_mut().clock =
            CallClock::start(INSTANTIATE_BUDGET.max(self.settings.time_budget));
        store.set_epoch_deadline(1);
        let exports = match &self.pre {
            Pre::Key(p) => Exports::Key(p.instantiate_async(&mut store).await?),
            Pre::Ttl(p) => Exports::Ttl(p.instantiate_async(&mut store).await?),
            Pre::Mirror(p) => Exports::Mirror(p.instantiate_async(&mut store).await?),
        };
        Counters::bump(&self.counters.instances_created);
        Ok(Instance { store, exports })
    }

    /// An idle instance (this thread's shard first, then the others), or a new one.
    pub async fn checkout(&self) -> wasmtime::Result<Instance> {
        let home = shard_index(self.shards.len());
        let n = self.shards.len();
        let idle = (0..n).find_map(|i| self.shards[(home + i) % n].lock().pop());
        match idle {
            Some(instance) => Ok(instance),
            None => self.instantiate().await,
        }
    }

    /// Returns a healthy instance to this thread's shard (dropped if the shard is full).
    pub fn checkin(&self, instance: Instance) {
        let mut idle = self.shards[shard_index(self.shards.len())].lock();
        if idle.len() < self.max_idle {
            idle.push(instance);
        }
    }

    /// Number of idle instances.
    pub fn idle(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

/// The shard of the calling thread: each thread gets the next index the first time it asks,
/// so the runtime's worker threads spread over the shards.
pub(super) fn shard_index(shards: usize) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|i| *i) % shards.max(1)
}

/// Drives `future` to completion on the current thread (parking between polls). Used by the
/// synchronous entry points (`PluginHost::load`, `check_file`) for instantiation and smoke
/// calls, which never wait on I/O in the policy worlds.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    struct ThreadWaker(std::thread::Thread);
    impl std::task::Wake for ThreadWaker {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = std::task::Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
