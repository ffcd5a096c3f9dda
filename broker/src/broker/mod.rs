//! The broker core: the state every layer above shares, and the one place a table effect
//! becomes an answer to a client.
//!
//! * [`Broker`] — the lock table behind one mutex ([`Broker::with_table`]: clock read once,
//!   expiry task woken when the next deadline moved earlier, effects delivered outside the
//!   lock), the registry of live sessions, the expiry driver (`expiry.rs`).
//! * `session.rs` — [`SessionHandle`]: a live session as others see it (its outbox, the keys
//!   a policy rewrote for its pending acquires).
//! * `answer.rs` — the *only* builders of `Granted` and error answers (they own the rewrite
//!   bookkeeping) and `dispatch`, which routes table effects to sessions.
//! * `gate.rs` — [`GrantGate`]: an optional component (the sync mirror today, shard ownership
//!   in cluster mode tomorrow) that sees every effect batch in table order and may hold a
//!   grant until it confirms it. Like raft-rs's `Ready`, a grant is answered at once unless
//!   the gate handed back a pending confirmation; `confirm.rs` waits for it.
//! * `router.rs` — [`KeyRouter`]: an optional component (cluster mode) that says which broker
//!   serves a key; commands ask it first, and `deliver_grant` asks again before a grant leaves.
//! * `renewal.rs` — renewals the gate confirms before they are answered, and leases the
//!   broker ends itself (`revoke`, pushed to the holder as `LeaseEnded`).
//! * `outbox.rs` — a session's outbound frames; `wire.rs` — table ↔ wire conversions.
//! * `guests.rs` — the turn and request rate anonymous sessions share when authenticated
//!   principals exist.
//! * `metrics.rs` — the lock metrics; `listing.rs` — what the admin API shows, and the forced
//!   release of a key (`revoke_key`).
//! * The lease-horizon file (`crate::horizon`) is kept up to date under the table lock.
//!
//! Layering: this module imports `table`, `config` and `proto` only. `server` (sessions,
//! commands) and `mirror` (a gate) are built on it and never import each other.

mod answer;
mod confirm;
mod expiry;
mod gate;
mod guests;
mod listing;
pub mod metrics;
mod outbox;
mod renewal;
mod router;
mod session;
pub mod wire;

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

pub use gate::{Confirmation, GrantGate, Pending};
pub use guests::Guests;
pub use listing::{HolderView, LockPage, LockView, Revoked, SessionPage, SessionView, Totals};
pub use metrics::{Denial, Metrics};
pub use outbox::{Outbox, OutboxBudget};
pub use renewal::Renewed;
pub use router::{KeyRouter, Route};
pub use session::SessionHandle;

use crate::config::Config;
use crate::horizon::{Coverage, HorizonWriter, Previous};
use crate::identity::Identity;
use crate::table::serve::Timer;
use crate::table::{Effect, LockEvent, SessionId, Table, TableConfig};

/// The table, the instant the expiry task is armed for, and the lease horizon file, under one
/// mutex (the horizon covers a deadline before its lease is answered).
struct Core {
    table: Table,
    /// When the expiry task must be woken.
    timer: Timer,
    horizon: HorizonWriter,
}

/// Shared state of one running broker.
pub struct Broker {
    pub cfg: Config,
    pub epoch: u64,
    /// Persistent identity: the broker id and the key of lease secrets.
    pub identity: Identity,
    /// What the previous run of the data dir left (for the restart grace).
    previous_run: Previous,
    /// What the lease horizon file covers: a lease is answered only if its deadline is.
    pub horizon: Arc<Coverage>,
    core: Mutex<Core>,
    timer: Notify,
    sessions: DashMap<SessionId, Arc<SessionHandle>>,
    next_session: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// The grant gate, once attached (before serving): it sees effects under the table lock,
    /// so in table order.
    gate: OnceLock<Arc<dyn GrantGate>>,
    /// The key router, once attached (cluster mode).
    router: OnceLock<Arc<dyn KeyRouter>>,
    /// Lock metrics (None when `admin.metrics` is off).
    pub metrics: Option<Arc<Metrics>>,
    /// Acquires retrying outside the table (a grant gate refused their grant: `confirm.rs`);
    /// they count in the queue limits as queued requests do.
    pollers: AtomicUsize,
    /// Answers queued over all sessions (`limits.max_outbox_total_bytes`).
    pub outbox_budget: Arc<OutboxBudget>,
    /// The last table totals counted for a large table, and when (`listing.rs`).
    totals_cache: Mutex<Option<(Instant, crate::table::TableTotals)>>,
    /// On a broker with authenticated principals, anonymous sessions handle their requests
    /// one session at a time and at a bounded rate (`guests.rs`, `server/session.rs`):
    /// authenticated sessions are never queued behind them.
    pub guests: Guests,
}

thread_local! {
    /// Reused effect buffer, so a request allocates no effect vector.
    static SCRATCH: RefCell<Vec<Effect>> = const { RefCell::new(Vec::new()) };
}

impl Broker {
    /// A broker with an empty table for `epoch`; `previous_run` is what the data dir's last
    /// run left (see [`Broker::begin_grace`]).
    pub fn new(cfg: Config, epoch: u64, identity: Identity, previous_run: Previous) -> Arc<Broker> {
        // Cluster mode: fences come from etcd revisions (raised per shard claim), not the epoch.
        let table = Table::new(TableConfig {
            epoch: if cfg.cluster.enabled() { 0 } else { epoch },
            lock_delay: Duration::from_millis(cfg.locks.lock_delay_ms),
            max_leases_per_session: cfg.limits.max_leases_per_session,
            max_waiters_per_session: cfg.limits.max_waiters_per_session,
            max_keys: cfg.limits.max_keys,
            max_queued_per_key: cfg.limits.max_queued_per_key,
            max_queued_total: cfg.limits.max_queued_total,
            lease_events: true,
            ordered_keys: true,
            principal_caps: cfg.limits.principal_caps(),
        });
        let mut table = table;
        // Authenticated principals keep room whatever anonymous clients do.
        table.set_principal_caps(
            crate::config::ANONYMOUS.as_bytes(),
            cfg.limits
                .anonymous_caps(cfg.has_authenticated_principals()),
        );
        let horizon = HorizonWriter::new(&cfg.data_dir);
        let coverage = horizon.coverage();
        let metrics = cfg.admin.metrics.then(|| Arc::new(Metrics::default()));
        let guests = Guests::new(cfg.limits.anonymous_requests_per_sec);
        Arc::new(Broker {
            metrics,
            cfg,
            epoch,
            identity,
            previous_run,
            horizon: coverage,
            core: Mutex::new(Core {
                table,
                timer: Timer::default(),
                horizon,
            }),
            timer: Notify::new(),
            sessions: DashMap::new(),
            next_session: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            gate: OnceLock::new(),
            router: OnceLock::new(),
            pollers: AtomicUsize::new(0),
            outbox_budget: Arc::default(),
            totals_cache: Mutex::new(None),
            guests,
        })
    }

    /// Attaches the grant gate (once, at start, before serving). A second gate is refused.
    pub fn attach_gate(&self, gate: Arc<dyn GrantGate>) -> Result<(), Arc<dyn GrantGate>> {
        self.gate.set(gate)
    }

    /// Attaches the key router (once, at start, before serving).
    pub fn attach_router(&self, router: Arc<dyn KeyRouter>) -> Result<(), Arc<dyn KeyRouter>> {
        self.router.set(router)
    }

    /// Where a request for `key` goes (always here without a router).
    pub fn route(&self, key: &[u8]) -> Route {
        match self.router.get() {
            Some(r) => r.route(key),
            None => Route::Local { grace_until: None },
        }
    }

    /// Serves a replication link from another member (`KeyRouter::serve_peer`); `None`
    /// when this broker keeps no replicas.
    pub fn serve_peer(
        &self,
        conn: quinn::Connection,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>> {
        self.router.get()?.serve_peer(conn)
    }

    /// The cluster's shard map (cluster mode only).
    pub fn shard_map(&self) -> Option<lockbroker_proto::ShardMap> {
        self.router.get().and_then(|r| r.shard_map())
    }

    /// Pushes `frame` to every live session (e.g. a changed shard map).
    pub fn broadcast(&self, frame: &lockbroker_proto::Frame) {
        for s in self.sessions.iter() {
            s.answer(frame);
        }
    }

    /// Whether the holder of lease (`key`, `fence`) from an earlier owner of the key's shard
    /// may have it back here now (cluster takeover grace).
    pub fn may_adopt(&self, key: &[u8], fence: u64) -> bool {
        self.router.get().is_some_and(|r| r.may_adopt(key, fence))
    }

    /// True when a grant gate is attached (grants may wait for its confirmation).
    pub fn has_gate(&self) -> bool {
        self.gate.get().is_some()
    }

    /// Whether multi-key requests are refused: a grant gate that cannot hold them is on.
    pub fn refuses_multi_key(&self) -> bool {
        self.gate.get().is_some_and(|g| !g.holds_multi_key())
    }

    /// A live session's handle.
    pub fn session_handle(&self, id: SessionId) -> Option<Arc<SessionHandle>> {
        self.sessions.get(&id).map(|h| h.clone())
    }

    /// Registers a new session of `principal` and returns its id and handle.
    pub fn open_session(&self, principal: &str) -> (SessionId, Arc<SessionHandle>) {
        self.register_session(SessionHandle::new(principal))
    }

    /// Registers a new session of `principal` connected from `peer`.
    pub fn open_session_from(
        &self,
        principal: &str,
        peer: std::net::SocketAddr,
    ) -> (SessionId, Arc<SessionHandle>) {
        self.register_session(SessionHandle::from_peer(principal, peer))
    }

    fn register_session(&self, handle: SessionHandle) -> (SessionId, Arc<SessionHandle>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        handle.outbox.count_in(self.outbox_budget.clone());
        let handle = Arc::new(handle);
        self.sessions.insert(id, handle.clone());
        (id, handle)
    }

    /// Ends a session: `clean` releases its leases now, otherwise they run to their TTL.
    pub fn close_session(self: &Arc<Self>, id: SessionId, clean: bool) {
        self.sessions.remove(&id);
        if let (false, Some(m)) = (clean, &self.metrics) {
            m.lost_sessions.inc();
        }
        self.with_table(|t, now, out| t.close_session(now, id, clean, out));
    }

    /// Acquires retrying outside the table now (they count as queued requests).
    pub fn pollers(&self) -> usize {
        self.pollers.load(Ordering::Acquire)
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Answers queued over all sessions, and how many sessions' queues have not moved for
    /// `stalled` or longer (`/metrics`).
    pub fn outbox_totals(&self, stalled: Duration) -> OutboxTotals {
        let mut totals = OutboxTotals::default();
        for s in self.sessions.iter() {
            totals.queued += s.outbox.queued();
            totals.stalled += usize::from(s.outbox.stalled_for().is_some_and(|d| d >= stalled));
        }
        totals
    }

    /// How many bytes a session's outbox may hold before its requests stop being read:
    /// `limits.max_outbox_bytes`; once all sessions together hold more than half of
    /// `limits.max_outbox_total_bytes`, the smaller fair share of that half (sessions over it
    /// stop being read); and past the whole budget, nothing — only sessions whose answers have
    /// all left are read, one answer at a time — so the sum stays within the budget plus one
    /// answer a session. O(1) but for the session count, read only past half the budget.
    pub fn outbox_cap(&self) -> usize {
        let limits = &self.cfg.limits;
        let total = self.outbox_budget.queued();
        let half = limits.max_outbox_total_bytes / 2;
        if total <= half {
            return limits.max_outbox_bytes;
        }
        if total > limits.max_outbox_total_bytes {
            return 0;
        }
        let share = half / self.sessions.len().max(1);
        limits.max_outbox_bytes.min(share)
    }

    /// Subscribes to the shutdown signal.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Starts a graceful shutdown: sessions see it and end cleanly.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        self.timer.notify_one();
    }

    /// Runs one table operation at the current time and delivers its effects.
    pub fn with_table<R>(
        self: &Arc<Self>,
        op: impl FnOnce(&mut Table, Instant, &mut Vec<Effect>) -> R,
    ) -> R {
        let mut effects = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let (result, wake, now) = {
            let mut core = self.core.lock();
            let now = Instant::now();
            let result = op(&mut core.table, now, &mut effects);
            // A deadline the file cannot cover is refused on the answer path (`Coverage`).
            if let Some(latest) = latest_deadline(&effects) {
                core.horizon.cover(now, latest);
            }
            if let Some(gate) = self.gate.get() {
                gate.record(&effects);
            }
            let core = &mut *core;
            let wake = core.timer.after_op(&core.table);
            (result, wake, now)
        };
        if wake {
            self.timer.notify_one();
        }
        self.dispatch(&mut effects, now);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.capacity() < effects.capacity() {
                *s = effects;
            }
        });
        result
    }

    /// Starts serving after a restart: unless every lease of the previous run was restored
    /// (`restored_all`: the sync mirror answered), grants nothing new until the previous run's
    /// leases may have ended (see `horizon.rs`), while reclaims of them are honoured. Rewrites
    /// the horizon file for this run (covering restored leases and the grace itself). Returns
    /// the grace (zero: none).
    pub fn begin_grace(self: &Arc<Self>, restored_all: bool) -> Duration {
        let longest = Duration::from_millis(
            self.cfg
                .locks
                .max_ttl_ms
                .saturating_add(self.cfg.locks.lock_delay_ms),
        );
        let lock_delay = Duration::from_millis(self.cfg.locks.lock_delay_ms);
        let grace = if restored_all {
            Duration::ZERO
        } else {
            self.previous_run
                .grace(std::time::SystemTime::now(), lock_delay, longest)
        };
        let mut core = self.core.lock();
        let now = Instant::now();
        let mut latest = core.table.latest_deadline();
        if !grace.is_zero() {
            core.table.begin_grace(now + grace);
            // Should this run crash during the grace, the next one still waits it out.
            latest = latest.max(Some(now + grace));
        }
        // From here the file speaks for this run: `clean` until its first lease.
        core.horizon.close(now, latest);
        grace
    }

    /// Why new grants wait now, if a restart grace is running: its time left and what the
    /// previous run left behind (for `/readyz`).
    pub fn restart_grace(&self) -> Option<String> {
        let now = Instant::now();
        let until = self.read_table(|t, now| t.grace_until(now))?;
        let why = match &self.previous_run {
            Previous::Unknown(why) => format!("{why}; assuming the longest lease"),
            _ => "leases of the previous run may still be held".to_string(),
        };
        Some(format!(
            "restart grace: no new grants for {:.1}s more ({why})",
            until.saturating_duration_since(now).as_secs_f64()
        ))
    }

    /// Time left of the restart grace (zero when none is running).
    pub fn restart_grace_left(&self) -> Duration {
        self.read_table(|t, now| {
            t.grace_until(now)
                .map_or(Duration::ZERO, |g| g.saturating_duration_since(now))
        })
    }

    /// What the previous run of the data dir left.
    pub fn previous_run(&self) -> &Previous {
        &self.previous_run
    }

    /// At a clean shutdown (after the sessions ended): records in the horizon file that no
    /// lease is left, or until when the remaining ones (lost sessions') may run.
    pub fn close_horizon(&self) {
        let mut core = self.core.lock();
        let now = Instant::now();
        let latest = core.table.latest_deadline().filter(|d| *d > now);
        core.horizon.close(now, latest);
    }

    /// Reads the table without changing it.
    pub fn read_table<R>(&self, op: impl FnOnce(&Table, Instant) -> R) -> R {
        let core = self.core.lock();
        op(&core.table, Instant::now())
    }
}

/// The sessions' outbound queues in sum ([`Broker::outbox_totals`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct OutboxTotals {
    pub queued: usize,
    pub stalled: usize,
}

/// The latest lease deadline a batch of effects sets (grants and renewals), if any.
fn latest_deadline(effects: &[Effect]) -> Option<Instant> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Event(
                LockEvent::Acquired { deadline, .. } | LockEvent::Extended { deadline, .. },
            ) => Some(*deadline),
            _ => None,
        })
        .max()
}
