//! `Guard`: a held lease, and its watchdog task.
//!
//! The guard keeps a *local deadline* for the lease, counted from when the acquire (or the
//! last renewal) was *sent* — never later than the broker's own deadline, whatever the network
//! did. The watchdog renews the lease every third of its TTL (each renewal's send time starts
//! the next deadline), reclaims it on a new connection after a reconnect — only on a broker
//! with the same identity — and resolves [`Guard::lost`] at the local deadline minus a safety
//! margin for clock-rate drift (`ClientBuilder::lease_margin`), whether or not the broker
//! answered. [`Guard::extend`] moves the deadline (shorter or longer). If the watchdog task
//! itself ends, `lost()` resolves too. The watchdog task starts lazily, when it first has work
//! (`watchdogs.rs`). Release, extend and reclaim present the lease's secret. Every request
//! about the lease (renewal, extend, release) goes through one `lease_request`.
//! `unlock().await` releases with an acknowledgement; dropping the guard releases
//! fire-and-forget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{EndReason, ErrorCode, Extend, Frame, LeaseSecret, Mode, Reclaim, Release};
use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};

use lockbroker_core::wire::millis;

use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::route::Route;
use crate::route::retry::{Deadline, Kind, Step, ask, retry, step};
use crate::shards::LeaseEnd;
use crate::watchdogs::{Ticket, Watched};

/// A held lock. Keep it alive while you work; check [`Guard::lost`] if the work must stop
/// when the lease can no longer be guaranteed. Pass [`Guard::fence`] to the resources you
/// write so they can reject a stale holder.
#[must_use = "dropping a guard releases the lock at once"]
pub struct Guard {
    lease: Arc<Lease>,
    /// The lease's place in the client's watchdog starter (`watchdogs.rs`) while its watchdog
    /// waits to start; `None` once the guard stopped it.
    watchdog: Option<Ticket>,
    released: bool,
    /// A lock granted from a cached lease (`cache.rs`): its own fence of the lease's block, and
    /// the cache it goes back to. The lease itself is the cache's.
    local: Option<LocalHold>,
}

/// A local hold of a cached lease.
struct LocalHold {
    fence: u64,
    cache: Arc<dyn Unhold>,
}

/// Where a local hold of a cached lease goes back to: the client's lock cache (`cache.rs`).
pub(crate) trait Unhold: Send + Sync {
    /// A local guard of `key` unlocked or was dropped.
    fn unhold(&self, key: &Bytes);
}

/// The TTL in force and the lease's local deadline.
#[derive(Clone, Copy, Debug)]
struct Timing {
    ttl: Duration,
    /// Send time of the acquire or renewal that set it, plus the TTL granted.
    deadline: Instant,
}

impl Timing {
    /// When the watchdog renews: a third of the TTL after the send that set the deadline.
    fn renew_at(&self) -> Instant {
        self.deadline - (self.ttl - self.ttl / 3)
    }
}

/// What the guard and its watchdog share.
struct Lease {
    route: Arc<Route>,
    key: Bytes,
    fence: u64,
    /// The lease's secret: given with the grant, or — for a direct embedded grant — derived
    /// from the engine when first needed.
    secret: std::sync::OnceLock<LeaseSecret>,
    /// The identity of the broker that granted the lease: it is never carried to another.
    broker_id: u64,
    mode: Mode,
    /// The fencing tokens reserved for the lease (1; more for a cacheable lease, `cache.rs`).
    block: u32,
    /// Everything that changes over the lease's life, under its one lock (`LeaseState`).
    state: Mutex<LeaseState>,
    /// Wakes the watchdog when the timing changed (a renewal, an `extend`): one waiter, so a
    /// change made while it is busy is kept as a permit for its next turn.
    renewed: Notify,
    /// Wakes every [`Guard::lost`] waiting when the lease is declared lost.
    lost_wake: Notify,
    /// The owner label given with the acquire (empty: none), carried along on a reclaim.
    label: Bytes,
    /// Held across one renewal (send and answer): renewals of the lease never cross.
    renewing: tokio::sync::Mutex<()>,
    /// The hold-time clock (`crate::metrics`), started at the grant.
    hold: crate::metrics::Hold,
    /// Called when the lease moves to another broker or connection (a cached lease is given
    /// back then: `cache.rs`).
    on_relocated: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

enum WatchdogState {
    /// Not started; `ended` was subscribed at the grant, so no push is missed meanwhile.
    Scheduled {
        ended: broadcast::Receiver<LeaseEnd>,
        renew: bool,
    },
    Running(tokio::task::JoinHandle<()>),
    Over,
}

impl Watched for Lease {
    fn fence(&self) -> u64 {
        self.fence
    }

    fn start(self: Arc<Self>) {
        let mut state = self.state.lock();
        if let WatchdogState::Scheduled { .. } = &state.watchdog
            && let WatchdogState::Scheduled { ended, renew } =
                std::mem::replace(&mut state.watchdog, WatchdogState::Over)
        {
            state.watchdog =
                WatchdogState::Running(tokio::spawn(watchdog(self.clone(), ended, renew)));
        }
    }
}

impl Lease {
    /// Stops the watchdog (aborted if it runs; never started if it did not).
    fn end_watchdog(&self) {
        let state = std::mem::replace(&mut self.state.lock().watchdog, WatchdogState::Over);
        if let WatchdogState::Running(task) = state {
            task.abort();
        }
    }
}

/// Where a lease is held.
struct Placed {
    conn: Arc<Conn>,
    /// The URL the shard map named for the key when the lease was placed on `conn` (`None`:
    /// no map, or no owner named).
    route: Option<String>,
}

/// What changes over a lease's life, under its one lock (a watch channel per field cost more
/// than the rest of an in-process lock cycle to create and drop). Never held across an
/// `.await`; whoever changes it wakes the waiters (`renewed`, `lost_wake`) after letting go.
struct LeaseState {
    /// The TTL in force and the local deadline.
    timing: Timing,
    /// Why the lease was lost, once it is.
    lost: Option<Error>,
    /// Where the lease is held: the connection whose session holds it, and the shard owner
    /// the route named when it was placed there.
    placed: Placed,
    /// Cluster mode: the broker said the key's shard moved (`LeaseEnded` with `Moved`, or a
    /// `Moved` answer); the lease is reclaimed where the key is served before its next use.
    moved: bool,
    /// The lease was ever moved or reclaimed on another connection (a shard's move, a
    /// failover): a cached lease is given back then (`cache.rs`), as the broker that holds it
    /// now does not know it is cached and would not recall it.
    relocated: bool,
    /// The watchdog task: scheduled (started lazily), running, or over.
    watchdog: WatchdogState,
}

impl Lease {
    /// The connection whose session holds the lease now.
    fn owner_conn(&self) -> Arc<Conn> {
        self.state.lock().placed.conn.clone()
    }

    /// Where the lease is held now, and whether the broker said its shard moved.
    fn placed(&self) -> (Arc<Conn>, Option<String>, bool) {
        let state = self.state.lock();
        (
            state.placed.conn.clone(),
            state.placed.route.clone(),
            state.moved,
        )
    }

    /// The lease was reclaimed on `conn`, where the route names `route`.
    fn place(&self, conn: Arc<Conn>, route: Option<String>) {
        let mut state = self.state.lock();
        state.placed = Placed { conn, route };
        state.moved = false;
        state.relocated = true;
        drop(state);
        self.relocated_now();
    }

    /// The broker said the key's shard moved: reclaim the lease where it is served now.
    fn mark_moved(&self) {
        let mut state = self.state.lock();
        state.moved = true;
        state.relocated = true;
        drop(state);
        self.relocated_now();
    }

    fn relocated_now(&self) {
        if let Some(hook) = self.on_relocated.get() {
            hook();
        }
    }

    fn secret(&self) -> LeaseSecret {
        *self.secret.get_or_init(|| {
            // Only a direct embedded grant comes without its secret, and its owner is the
            // embedded connection for good (it never reconnects).
            self.owner_conn()
                .engine()
                .map_or(LeaseSecret([0; 16]), |e| e.secret(&self.key, self.fence))
        })
    }

    fn timing(&self) -> Timing {
        self.state.lock().timing
    }

    /// A renewal or `extend` moved the deadline: the watchdog re-arms.
    fn set_timing(&self, timing: Timing) {
        self.state.lock().timing = timing;
        self.renewed.notify_one();
    }

    fn lost_error(&self) -> Option<Error> {
        self.state.lock().lost.clone()
    }

    /// Declares the lease lost (the first reason stays) and wakes `lost()`.
    fn declare_lost(&self, e: Error) {
        {
            let mut state = self.state.lock();
            if state.lost.is_none() {
                state.lost = Some(e);
            }
        }
        self.lost_wake.notify_waiters();
    }
}

/// A granted lease as `LockRequest` hands it to [`Guard::new`].
pub(crate) struct Granted {
    pub key: Bytes,
    pub fence: u64,
    /// `None`: a direct embedded grant (the engine derives it on demand).
    pub secret: Option<LeaseSecret>,
    pub mode: Mode,
    pub ttl: Duration,
    /// When the acquire was sent: the lease's clock starts there.
    pub sent: Instant,
    /// When the grant arrived (the hold time's start).
    pub granted_at: Instant,
    /// The owner label given with the acquire (empty: none).
    pub label: Bytes,
    /// The fencing tokens reserved (`Granted::fence_block`; 1: an ordinary lease).
    pub fence_block: u32,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("key", &self.lease.key)
            .field("fence", &self.fence())
            .field("mode", &self.lease.mode)
            .finish()
    }
}

impl Guard {
    pub(crate) fn new(route: Arc<Route>, owner: Arc<Conn>, g: Granted, renew: bool) -> Guard {
        let mut guard = Guard::unwatched(route, owner, g, renew);
        guard.schedule_watchdog();
        guard
    }

    /// The guard of grant `g` with its watchdog not scheduled yet: [`hand_out`] schedules it.
    pub(crate) fn unwatched(route: Arc<Route>, owner: Arc<Conn>, g: Granted, renew: bool) -> Guard {
        let broker_id = owner.welcome().broker_id;
        // Subscribed now, so no push is missed while the watchdog waits to start.
        let ended = route.lease_ended();
        let owner_url = route.routes().owner(&g.key);
        let lease = Arc::new(Lease {
            route,
            key: g.key,
            fence: g.fence,
            secret: g.secret.map(std::sync::OnceLock::from).unwrap_or_default(),
            broker_id,
            mode: g.mode,
            block: g.fence_block,
            state: Mutex::new(LeaseState {
                timing: Timing {
                    ttl: g.ttl,
                    deadline: g.sent + g.ttl,
                },
                lost: None,
                placed: Placed {
                    route: owner_url,
                    conn: owner,
                },
                moved: false,
                relocated: false,
                watchdog: WatchdogState::Scheduled { ended, renew },
            }),
            renewed: Notify::new(),
            lost_wake: Notify::new(),
            label: g.label,
            renewing: tokio::sync::Mutex::new(()),
            hold: crate::metrics::Hold::start(g.mode, g.granted_at),
            on_relocated: std::sync::OnceLock::new(),
        });
        Guard {
            lease,
            watchdog: None,
            released: false,
            local: None,
        }
    }

    /// A lock granted from cached lease `cached` with `fence` of its block (`cache.rs`): it
    /// shares the lease (clock, `lost()`, `extend`); unlocking it gives the key back to the
    /// cache, not to the broker.
    pub(crate) fn local(cached: &Guard, fence: u64, cache: Arc<dyn Unhold>) -> Guard {
        Guard {
            lease: cached.lease.clone(),
            watchdog: None,
            released: false,
            local: Some(LocalHold { fence, cache }),
        }
    }

    /// The broker lease's own fence (its id; a local guard's fence is another of its block).
    pub(crate) fn lease_fence(&self) -> u64 {
        self.lease.fence
    }

    /// The fencing tokens reserved for the lease (1: an ordinary lease).
    pub(crate) fn fence_block(&self) -> u32 {
        self.lease.block
    }

    /// The lease moved to another broker (or connection) since its grant.
    pub(crate) fn relocated(&self) -> bool {
        self.lease.state.lock().relocated
    }

    /// Calls `hook` whenever the lease moves to another broker or connection (set once).
    pub(crate) fn on_relocated(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.lease.on_relocated.set(Box::new(hook));
    }

    /// Leaves the watchdog with the client's starter, due at the lease's first renewal.
    fn schedule_watchdog(&mut self) {
        let first_renewal = self.lease.timing().renew_at();
        let watched: Arc<dyn Watched> = self.lease.clone();
        let ticket = self
            .lease
            .route
            .watchdogs()
            .schedule(first_renewal, Arc::downgrade(&watched));
        self.watchdog = Some(ticket);
    }

    /// The fencing token: strictly increasing per key across the broker's life.
    pub fn fence(&self) -> u64 {
        self.local.as_ref().map_or(self.lease.fence, |l| l.fence)
    }

    /// The lease's secret. Whoever has it — and is the same principal — can release, extend or
    /// reclaim the lease (e.g. after a restart of the holding process), so keep it secret.
    pub fn secret(&self) -> LeaseSecret {
        self.lease.secret()
    }

    /// Stops the watchdog (or takes it out of the starter if it never started).
    fn stop_watchdog(&mut self) {
        if let Some(ticket) = self.watchdog.take() {
            self.lease.end_watchdog();
            self.lease.route.watchdogs().cancel(ticket);
        }
    }

    /// Whether the broker (or the embedded table) still has this lease — asked now, unlike
    /// [`Guard::is_lost`], which reads the guard's own clock and pushes. With a key of
    /// thousands of shared holders the broker may list only the oldest; a lease past that list
    /// is reported not held.
    pub async fn is_held(&self) -> Result<bool> {
        let key = Bytes::copy_from_slice(self.key());
        let info = self.lease.route.inspect(key).await?;
        Ok(info.holders.iter().any(|h| h.fence == self.lease.fence))
    }

    /// The key held (after any policy rewrite).
    pub fn key(&self) -> &[u8] {
        &self.lease.key
    }

    /// The key as text (lossy for non-UTF-8 keys).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.lease.key)
    }

    /// The lock mode held.
    pub fn mode(&self) -> Mode {
        self.lease.mode
    }

    /// The lease TTL granted by the broker (after TTL policy); renewals use it.
    pub fn ttl(&self) -> Duration {
        self.lease.timing().ttl
    }

    /// The lease's local deadline: the send time of the acquire or last renewal plus the TTL.
    /// [`Guard::lost`] fires a safety margin before it.
    pub fn deadline(&self) -> Instant {
        self.lease.timing().deadline
    }

    /// True once the lease is lost — also read from the clock, so a process that was paused
    /// (SIGSTOP, a long GC-like stall) past the local deadline minus the safety margin sees
    /// `true` at once, before its watchdog task has had a chance to run.
    pub fn is_lost(&self) -> bool {
        Instant::now() >= self.lost_at() || self.lease.lost_error().is_some()
    }

    /// When [`Guard::lost`] fires by the clock: the local deadline minus the safety margin.
    pub fn lost_at(&self) -> Instant {
        lost_at(&self.lease, self.lease.timing())
    }

    /// Resolves with [`Error::Lost`] when the lease can no longer be guaranteed: it was not
    /// renewed before its local deadline minus the safety margin, the broker no longer has it,
    /// the client reconnected to a broker with another identity, or the watchdog task ended.
    /// Never resolves while the lease is safe.
    pub async fn lost(&self) -> Error {
        lost_of(&self.lease).await
    }

    /// [`Guard::lost`] as a future that owns what it needs, so it outlives this borrow of the
    /// guard: a task (or a language binding) can watch the lease while the guard is used, or
    /// unlocked, elsewhere. After an unlock it never resolves.
    pub fn lost_watch(&self) -> impl std::future::Future<Output = Error> + Send + 'static {
        let lease = self.lease.clone();
        async move { lost_of(&lease).await }
    }

    /// Renews the lease now with a new TTL (shorter or longer): the local deadline becomes
    /// the send time of this renewal plus the TTL granted, and renewals follow the new TTL.
    ///
    /// In cluster mode, while the key's shard moves to another broker (the lease is being
    /// adopted there), it tries again until the lease's local deadline (the retry policy).
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        // A shorter TTL may bring the first renewal forward: the watchdog runs from now.
        if let Some(ticket) = &self.watchdog {
            self.lease.clone().start();
            self.lease.route.watchdogs().cancel(*ticket);
        }
        renew_now(&self.lease, Some(ttl)).await.map(|_| ())
    }

    /// Releases the lock and waits for the broker to confirm.
    ///
    /// In cluster mode, while the key's shard moves to another broker, it tries again (at the
    /// new owner) until the lease's local deadline.
    pub async fn unlock(mut self) -> Result<()> {
        self.released = true;
        if let Some(local) = &self.local {
            // A cached lease's local hold: the key goes back to the cache (`cache.rs`); the
            // drop that follows does nothing more. A lease lost under the hold is reported:
            // the holder's work may have overlapped another's.
            let lost = self.is_lost().then(|| {
                self.lease.lost_error().unwrap_or_else(|| {
                    Error::Lost("the cached lease ran out before the unlock".into())
                })
            });
            local.cache.unhold(&self.lease.key);
            return lost.map_or(Ok(()), Err);
        }
        self.stop_watchdog();
        self.lease.hold.end();
        // Even a lease the guard reported lost is released: the broker may still have it (the
        // guard's deadline is conservative), and its answer says what became of it
        // (`NotLocked`: it ended; `NotOwner`: someone else holds the key now).
        if let Some(released) = release_local(&self.lease, &self.lease.owner_conn()) {
            return released;
        }
        // Boxed: the frame path's state (reclaim, reply, moves) is large, and an unlock future
        // that carried it inline would be copied whole on every embedded unlock.
        Box::pin(release_now(&self.lease)).await
    }
}

/// Resolves with the error that declared `lease` lost.
async fn lost_of(lease: &Lease) -> Error {
    loop {
        // Registered before the check, so a loss declared in between still wakes it.
        let woken = lease.lost_wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if let Some(e) = lease.lost_error() {
            return e;
        }
        woken.await;
    }
}

/// The direct release of an embedded lease (`Engine::release_now`) held on `owner`,
/// acknowledged by the call itself; `None` when `owner` is not an open embedded connection.
fn release_local(lease: &Lease, owner: &Conn) -> Option<Result<()>> {
    let (engine, session) = owner.local()?;
    Some(
        engine
            .release_now(session, &lease.key, lease.fence)
            .map_err(|e| Error::from_wire(ErrorCode::from(&e), e.to_string())),
    )
}

/// One acknowledged release of the lease where it lives.
///
/// A release whose answer never came (the broker stopped, or handed the key's shard over,
/// right after it released the lease) may have been done; the next attempt then finds no
/// lease (`NotLocked`). Before the lease's local deadline nothing else ends it unseen, so
/// that is the release's own outcome: `Ok`.
async fn release_now(lease: &Lease) -> Result<()> {
    let unanswered = AtomicU32::new(0);
    let result = lease_request(lease, &unanswered, |id| {
        Frame::Release(Release {
            id,
            key: lease.key.clone(),
            fence: lease.fence,
            ack: true,
            secret: lease.secret(),
        })
    })
    .await;
    match result {
        Ok((Frame::Ok { .. }, _)) => Ok(()),
        Ok((other, _)) => Err(crate::route::unexpected(other)),
        Err(Error::NotLocked)
            if unanswered.load(Ordering::Relaxed) > 0
                && Instant::now() < lost_at(lease, lease.timing()) =>
        {
            tracing::debug!(fence = lease.fence, "released by an earlier attempt");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Every request about the lease (renew, extend, release) takes this one path: the retry
/// policy until the lease's lost-at deadline, each attempt at the broker that serves the key
/// now — the lease reclaimed there first when it is not held there — and bounded by
/// [`attempt_bound`], so a broker that went silent is left while the lease still has time.
/// Returns the answer and when the request that got it was sent; `unanswered` counts the
/// attempts whose request was sent and never answered (it may have been done).
async fn lease_request(
    lease: &Lease,
    unanswered: &AtomicU32,
    build: impl Fn(u64) -> Frame,
) -> Result<(Frame, Instant)> {
    let route = &lease.route;
    let timing = lease.timing();
    let deadline = Deadline::At(lost_at(lease, timing));
    let bound = attempt_bound(route.request_timeout(), timing.ttl);
    retry(route, &lease.key, Kind::Lease, deadline, |conn| {
        let build = &build;
        async move {
            let conn = match placed_at(lease, conn, bound).await? {
                Step::Done(conn) => conn,
                Step::Moved(url) => return Ok(Step::Moved(url)),
            };
            let sent = Instant::now();
            let answer = ask(route, &conn, bound, build).await;
            if answer.is_err() {
                unanswered.fetch_add(1, Ordering::Relaxed);
            }
            match step(answer?)? {
                Step::Done(frame) => Ok(Step::Done((frame, sent))),
                Step::Moved(url) => {
                    // The shard moved before its broker could tell us: adopt the lease there.
                    lease.mark_moved();
                    Ok(Step::Moved(url))
                }
            }
        }
    })
    .await
}

/// How long one request about a lease of `ttl` waits for its answer: an eighth of the TTL
/// (at least 200 ms, at most the request timeout), so that after a renewal a third into the
/// TTL went unanswered, a reclaim elsewhere still fits before the lease's deadline.
fn attempt_bound(request_timeout: Duration, ttl: Duration) -> Duration {
    (ttl / 8)
        .max(Duration::from_millis(200))
        .min(request_timeout)
}

/// The connection to send a request about the lease on: where it is held, if that is still
/// where the key is served; otherwise `conn` (the route's choice now), the lease reclaimed
/// there first — only on a broker with the lease's identity.
async fn placed_at(lease: &Lease, conn: Arc<Conn>, bound: Duration) -> Result<Step<Arc<Conn>>> {
    let (owner, route, moved) = lease.placed();
    let route_now = lease.route.routes().owner(&lease.key);
    let same_route = route_now.is_none() || route_now == route;
    if !moved && (Arc::ptr_eq(&owner, &conn) || (owner.is_usable() && same_route)) {
        return Ok(Step::Done(owner));
    }
    if conn.welcome().broker_id != lease.broker_id {
        // Another broker (an independent lock table): the lease does not exist there, and
        // the broker that has it may hand the key to someone else once it expires.
        return Err(Error::Lost(format!(
            "reconnected to another broker (id {:016x}, the lease is on {:016x})",
            conn.welcome().broker_id,
            lease.broker_id
        )));
    }
    let ttl = lease.timing().ttl;
    let reply = ask(&lease.route, &conn, bound, |id| {
        Frame::Reclaim(Reclaim {
            id,
            key: lease.key.clone(),
            fence: lease.fence,
            mode: lease.mode,
            ttl_ms: millis(ttl),
            secret: lease.secret(),
            owner: lease.label.clone(),
        })
    })
    .await?;
    match step(reply)? {
        Step::Done(Frame::Granted(_)) => {
            tracing::debug!(fence = lease.fence, broker = conn.addr(), "lease reclaimed");
            lease.place(conn.clone(), route_now);
            Ok(Step::Done(conn))
        }
        Step::Moved(url) => Ok(Step::Moved(url)),
        Step::Done(other) => Err(crate::route::unexpected(other)),
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(local) = self.local.take() {
            if !self.released {
                local.cache.unhold(&self.lease.key);
            }
            return;
        }
        self.stop_watchdog();
        self.lease.hold.end();
        if self.released {
            return;
        }
        let conn = self.lease.owner_conn();
        // Fire-and-forget: a lease that already ended has nothing to release.
        if release_local(&self.lease, &conn).is_some() {
            return;
        }
        conn.post(|id| {
            Frame::Release(Release {
                id,
                key: self.lease.key.clone(),
                fence: self.lease.fence,
                ack: false,
                secret: self.lease.secret(),
            })
        });
    }
}

/// One renewal with `ttl` (`None`: the TTL in force when its turn comes): on success the
/// local deadline becomes the send time plus the TTL granted (the watchdog sees the change).
/// Returns the TTL granted. Renewals of a lease run one at a time, so a watchdog renewal in
/// flight cannot overwrite an `extend` to another TTL with its older one.
async fn renew_now(lease: &Lease, ttl: Option<Duration>) -> Result<Duration> {
    let _one_at_a_time = lease.renewing.lock().await;
    let ttl = ttl.unwrap_or_else(|| lease.timing().ttl);
    let (reply, sent) = lease_request(lease, &AtomicU32::new(0), |id| {
        Frame::Extend(Extend {
            id,
            key: lease.key.clone(),
            fence: lease.fence,
            ttl_ms: millis(ttl),
            secret: lease.secret(),
        })
    })
    .await?;
    match reply {
        Frame::Extended { ttl_ms, .. } => {
            let granted = Duration::from_millis(ttl_ms);
            lease.set_timing(Timing {
                ttl: granted,
                deadline: sent + granted,
            });
            Ok(granted)
        }
        other => Err(crate::route::unexpected(other)),
    }
}

/// Hands out a guard made by [`Guard::unwatched`]. A lease that waited in a queue (more than a
/// quarter of its TTL since the acquire was `sent`, when its clock started) is renewed first,
/// so the caller's work starts on a full, safely bounded lease; then the watchdog is scheduled.
/// It waits for that renewal: scheduled with the grant, it found the local deadline — counted
/// from the acquire's send — already past and declared lost a lease the broker had just
/// granted (the cluster checker saw whole queues of waiters lose their grants one after another
/// when a dead holder's lease expired). A lease that ran out before this renewal reached the
/// broker (e.g. this process was paused between the grant and now) was granted, then lost:
/// that is [`Error::Lost`], rather than a puzzling `NotOwner`/`NotLocked`.
pub(crate) async fn hand_out(mut guard: Guard, sent: Instant) -> Result<Guard> {
    if sent.elapsed() > guard.ttl() / 4 {
        // Boxed: rare, and the renewal's state (a reclaim, a round trip) would otherwise sit
        // inline in every acquire's future.
        match Box::pin(renew_now(&guard.lease, None)).await {
            Ok(_) => {}
            Err(Error::NotOwner | Error::NotLocked) => {
                return Err(Error::Lost(
                    "the lease ended before its first renewal reached the broker".into(),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    guard.schedule_watchdog();
    Ok(guard)
}

/// The local deadline of `t` minus the client's safety margin for its TTL.
fn lost_at(lease: &Lease, t: Timing) -> Instant {
    let margin = lease.route.lease_margin(t.ttl);
    t.deadline.checked_sub(margin).unwrap_or(t.deadline)
}

/// The lease's watchdog: renews every third of the TTL (when `renew`) — at once when the
/// shard map moves the key's shard — through the retry policy (`lease_request`), and declares
/// the lease lost at its local deadline minus the safety margin — by its own clock, whether or
/// not the broker answers — or when the broker that holds it says it ended.
async fn watchdog(lease: Arc<Lease>, mut ended: broadcast::Receiver<LeaseEnd>, renew: bool) {
    /// However the watchdog ends (declared the loss, or its task was aborted or panicked),
    /// `lost()` resolves: nobody renews the lease any more.
    struct Over<'a>(&'a Lease);
    impl Drop for Over<'_> {
        fn drop(&mut self) {
            self.0.declare_lost(Error::Lost(
                "the lease watchdog stopped; the lease is not renewed".into(),
            ));
        }
    }
    let _over = Over(&lease);
    let declare = |why: String| {
        lease.hold.lost();
        lease.declare_lost(Error::Lost(why));
    };
    let mut next_renew = lease.timing().renew_at();
    let mut ended_open = true;
    let mut changes = lease.route.routes().changes();
    loop {
        let t = lease.timing();
        let margin = lease.route.lease_margin(t.ttl);
        let lost_at = lost_at(&lease, t);
        let (_, route, _) = lease.placed();
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(lost_at.into()) => {
                declare(format!(
                    "the lease was not renewed before its local deadline minus the {margin:?} \
                     safety margin"
                ));
                return;
            }
            () = lease.renewed.notified() => {
                next_renew = lease.timing().renew_at();
            }
            // The broker that holds the lease says it ended (expired, revoked, or its mirror
            // lost it): lost at once. Another broker's word is not about this lease any more.
            pushed = ended.recv(), if ended_open => match pushed {
                Ok(end) if end.fence == lease.fence && end.conn == lease.owner_conn().id() => {
                    match end.reason {
                        // Cluster mode: the shard moved. Reclaim at its new owner now; the
                        // lease is lost only if that fails until the local deadline.
                        EndReason::Moved => {
                            lease.mark_moved();
                            next_renew = Instant::now();
                        }
                        EndReason::Revoked => {
                            declare(format!("the lease was revoked: {}", end.why));
                            return;
                        }
                        _ => {
                            declare(end.why);
                            return;
                        }
                    }
                }
                Ok(_) => {}
                // Missed pushes: ask the broker now, by renewing.
                Err(broadcast::error::RecvError::Lagged(_)) => next_renew = Instant::now(),
                Err(broadcast::error::RecvError::Closed) => ended_open = false,
            },
            // The shard map moved the key's shard: renew (and so reclaim) where it is now.
            () = lease.route.routes().moved_away(&mut changes, &lease.key, route.as_deref()),
                if renew => next_renew = Instant::now(),
            () = tokio::time::sleep_until(next_renew.into()), if renew => {
                match tokio::time::timeout_at(lost_at.into(), renew_now(&lease, None)).await {
                    Ok(Ok(_)) => {} // the timing changed: the next turn re-arms
                    Ok(Err(Error::Lost(why))) => {
                        declare(why);
                        return;
                    }
                    Ok(Err(e @ (Error::NotOwner | Error::NotLocked | Error::Denied(_)))) => {
                        declare(format!("the broker no longer holds the lease: {e}"));
                        return;
                    }
                    // The retry policy gave up at the lease's deadline.
                    Ok(Err(e)) => {
                        declare(format!("the lease could not be renewed before its local \
                                         deadline minus the {margin:?} safety margin: {e}"));
                        return;
                    }
                    Err(_) => {} // past the margin: the next turn declares it lost
                }
            }
        }
    }
}
