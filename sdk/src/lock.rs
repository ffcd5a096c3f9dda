//! `LockRequest`: the options of one acquire (mode, TTL, how long to wait), awaited through
//! `IntoFuture`. Dropping the future before it resolves cancels the wait on the broker. Its
//! first poll takes the embedded client's direct path when the key is free; everything else
//! sends the frame through the retry policy (`route/retry.rs`).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_core::wire::millis;
use lockbroker_proto::{Acquire, ErrorCode, Frame, Granted, MAX_OWNER_LABEL, Mode, WaitSpec};

use crate::cache::{LockCache, Take, wait_handoff};
use crate::conn::{Abandon, Conn, LateGrant};
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::route::retry::{Kind, Step, for_wait, remaining, retry, step};
use crate::route::{PendingReply, Route, unexpected};

/// An acquire being configured. `.await` it to get a [`Guard`].
#[must_use = "a lock request does nothing until awaited"]
pub struct LockRequest {
    route: Arc<Route>,
    key: Bytes,
    mode: Mode,
    ttl: Option<Duration>,
    wait: WaitSpec,
    renew: bool,
    owner: Bytes,
    /// The place kept in the key's queue at the shard's next owner after a planned move
    /// (the ticket of a `Requeued` answer); 0: none.
    ticket: AtomicU64,
    /// The fence block asked for (1: an ordinary lease; the cache's for a cached lock).
    fence_block: u32,
    /// Whether to go through the client's lock cache (`None`: the client's setting).
    cache: Option<bool>,
    /// The client's lock cache (`None`: it caches none).
    lock_cache: Option<Arc<LockCache>>,
}

impl LockRequest {
    pub(crate) fn new(route: Arc<Route>, key: Bytes, mode: Mode) -> Self {
        LockRequest {
            owner: route.default_owner(),
            route,
            key,
            mode,
            ttl: None,
            wait: WaitSpec::Forever,
            renew: true,
            ticket: AtomicU64::new(0),
            fence_block: 1,
            cache: None,
            lock_cache: None,
        }
    }

    /// Goes through `cache` (the client's lock cache) unless told otherwise.
    pub(crate) fn cached_by(mut self, cache: Option<Arc<LockCache>>) -> Self {
        self.lock_cache = cache;
        self
    }

    /// The owner label the lease is shown with — by `inspect`, the broker's admin API, its
    /// status page and `lockbroker locks` — e.g. `"worker-7@host-3"`: what Redis-lock
    /// libraries call the owner id. At most 128 bytes. Default: the client's
    /// [`ClientBuilder::owner`](crate::ClientBuilder::owner), if set.
    pub fn owner(mut self, label: impl Into<String>) -> Self {
        self.owner = Bytes::from(label.into());
        self
    }

    /// Lease TTL (default: the broker's, 30 s unless configured). The guard renews the lease
    /// in the background, so the TTL bounds how long a crashed holder blocks others.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Wait up to `d` for the lock, then fail with [`Error::Timeout`].
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = WaitSpec::Millis(millis(d));
        self
    }

    /// Wait until granted (the default).
    pub fn wait_forever(mut self) -> Self {
        self.wait = WaitSpec::Forever;
        self
    }

    /// Do not wait: fail with [`Error::Busy`] if the lock is held.
    pub fn no_wait(mut self) -> Self {
        self.wait = WaitSpec::NoWait;
        self
    }

    /// Do not renew the lease in the background: it ends at its TTL unless extended by hand.
    /// Such a lock is never cached.
    pub fn no_renew(mut self) -> Self {
        self.renew = false;
        self
    }

    /// Whether this lock goes through the client's lock cache
    /// ([`ClientBuilder::cache_locks`](crate::ClientBuilder::cache_locks)): `false` asks the
    /// broker for an ordinary lease even when the client caches. Default: the client's setting.
    pub fn cache(mut self, on: bool) -> Self {
        self.cache = Some(on);
        self
    }

    /// The client's lock cache, if this lock goes through it: an exclusive, renewed lock of a
    /// client that caches, not told otherwise.
    fn lock_cache(&self) -> Option<Arc<LockCache>> {
        let cache = self.lock_cache.as_ref()?;
        (self.mode == Mode::Exclusive && self.renew && self.cache != Some(false))
            .then(|| cache.clone())
    }

    /// A lock through the client's cache (`cache.rs`): granted in the process from a cached
    /// lease when this client holds one and no local guard does; behind the local holder (or
    /// this client's own ask of the key) otherwise; else asked of the broker with a fence
    /// block, and the lease cached.
    async fn run_cached(mut self, cache: Arc<LockCache>) -> Result<Guard> {
        let until = match self.wait {
            WaitSpec::Millis(ms) => Some(Instant::now() + Duration::from_millis(ms)),
            WaitSpec::NoWait => Some(Instant::now()),
            WaitSpec::Forever => None,
        };
        loop {
            match cache.take(&self.key) {
                Take::Local(guard) => return Ok(guard),
                Take::Plain => return self.run_frames().await,
                Take::Wait(_) if self.wait == WaitSpec::NoWait => return Err(Error::Busy),
                Take::Wait(rx) => match wait_handoff(rx, until).await {
                    Ok(Some(guard)) => return Ok(guard),
                    Ok(None) => continue,
                    Err(()) => return Err(Error::Timeout),
                },
                Take::Ask(asking, spent) => {
                    if let Some(lease) = spent {
                        // Its answer does not matter: a lease that ended has nothing to give.
                        let _ = lease.unlock().await;
                    }
                    if let (Some(end), WaitSpec::Millis(_)) = (until, self.wait) {
                        self.wait =
                            WaitSpec::Millis(millis(end.saturating_duration_since(Instant::now())));
                    }
                    self.fence_block = cache.block;
                    let asked = self.run_frames().await;
                    return asking.done(asked);
                }
            }
        }
    }

    /// What the client can refuse before asking anyone.
    fn check(&self) -> Result<()> {
        if let Mode::Semaphore(0) = self.mode {
            return Err(Error::Invalid(
                "a semaphore needs at least one permit".into(),
            ));
        }
        check_owner_label(&self.owner)
    }

    /// The direct path of an embedded client (`Engine::grant_now`): the guard, if the key is
    /// free now; its lease clock starts at `sent`, taken before the table was asked. `None`
    /// sends the acquire as a frame, which answers every other case.
    fn grant_now(&self, sent: Instant) -> Option<Guard> {
        let conn = self.route.local_conn()?;
        conn.check_key(&self.key).ok()?;
        let (engine, session) = conn.local()?;
        let ttl_ms = self.ttl.map_or(0, millis);
        let g = engine.grant_now(session, &self.key, self.mode, ttl_ms, &self.owner)?;
        Some(Guard::new(
            self.route.clone(),
            conn.clone(),
            crate::guard::Granted {
                key: g.key,
                fence: g.fence,
                // Derived from the engine when first asked for (most guards never are).
                secret: None,
                mode: self.mode,
                ttl: g.ttl,
                sent,
                // Granted in the call: `sent` is also when it was granted.
                granted_at: sent,
                label: self.owner.clone(),
                fence_block: 1,
            },
            self.renew,
        ))
    }

    /// The acquire as a request frame (a broker's client, or a key that is not free now),
    /// through the retry policy: at the broker that serves the key, following `Moved`
    /// answers and a failover of the key's shard until the wait's deadline (an acquire that
    /// waits forever gets the request timeout to find the key's broker again after a failure).
    async fn run_frames(self) -> Result<Guard> {
        let (deadline, wait_end) = for_wait(self.wait, self.route.request_timeout());
        let this = &self;
        retry(&self.route, &self.key, Kind::Request, deadline, |conn| {
            this.attempt(conn, remaining(this.wait, wait_end))
        })
        .await
    }

    /// One acquire on `conn`, waiting `wait`.
    async fn attempt(&self, conn: Arc<Conn>, wait: WaitSpec) -> Result<Step<Guard>> {
        let ttl_ms = self.ttl.map_or(0, millis);
        // The lease's clock starts here: the broker cannot have granted it earlier.
        let sent = Instant::now();
        let (id, rx) = conn.request(|id| {
            Frame::Acquire(Acquire {
                id,
                key: self.key.clone(),
                mode: self.mode,
                ttl_ms,
                wait,
                owner: self.owner.clone(),
                ticket: self.ticket.load(Ordering::Relaxed),
                fence_block: self.fence_block,
            })
        })?;
        let abandon = Abandon {
            key: self.key.clone(),
            late: self.late_grant(&conn, sent),
        };
        let mut pending = PendingReply::new(&conn, id, Some(abandon), rx);
        let reply = await_grant(&mut pending, wait, self.route.request_timeout()).await?;
        if let Some(ticket) = requeued(&reply) {
            // The key's shard moved while this acquire waited: ask its next owner, keeping
            // the place this ticket holds there (no owner is known yet: after a pause).
            self.ticket.store(ticket, Ordering::Relaxed);
            return Ok(Step::Moved(String::new()));
        }
        match step(reply)? {
            Step::Moved(url) => Ok(Step::Moved(url)),
            Step::Done(Frame::Granted(g)) => {
                let guard = crate::guard::hand_out(self.guard(conn, g, sent), sent).await?;
                Ok(Step::Done(guard))
            }
            Step::Done(other) => Err(unexpected(other)),
        }
    }

    /// The guard of grant `g` on `conn`, its lease clock started at `sent` (for [`hand_out`]).
    ///
    /// [`hand_out`]: crate::guard::hand_out
    fn guard(&self, conn: Arc<Conn>, g: Granted, sent: Instant) -> Guard {
        let terms = terms(&self.key, self.mode, &self.owner, g, sent);
        Guard::unwatched(self.route.clone(), conn, terms, self.renew)
    }

    /// Cluster mode: what becomes of a grant on `conn` that arrives after this attempt was
    /// given up (the key's shard moved meanwhile, or the caller stopped waiting): it is
    /// unlocked like a guard, through the lease path, which follows the key's shard — the
    /// lease of a grant answered as its shard moved lives at the new owner, where a
    /// release sent here would not reach it and it would block the key until its TTL.
    /// `None` (a release on `conn` itself) for a single broker or the embedded table.
    fn late_grant(&self, conn: &Arc<Conn>, sent: Instant) -> Option<LateGrant> {
        if !self.route.is_clustered() {
            return None;
        }
        let (route, conn) = (self.route.clone(), conn.clone());
        let (key, mode, label) = (self.key.clone(), self.mode, self.owner.clone());
        Some(Box::new(move |g: Granted| {
            let fence = g.fence;
            let guard = Guard::unwatched(route, conn, terms(&key, mode, &label, g, sent), false);
            Box::pin(async move {
                match guard.unlock().await {
                    Ok(()) => tracing::debug!(fence, "released a grant nobody waited for"),
                    Err(e) => tracing::debug!(fence, "a grant nobody waited for: {e}"),
                }
            })
        }))
    }
}

/// The terms of grant `g` of an acquire of `key` in `mode` labelled `label`, sent at `sent`.
fn terms(
    key: &Bytes,
    mode: Mode,
    label: &Bytes,
    g: Granted,
    sent: Instant,
) -> crate::guard::Granted {
    crate::guard::Granted {
        key: g.rewritten.unwrap_or_else(|| key.clone()),
        fence: g.fence,
        secret: Some(g.secret),
        mode,
        ttl: Duration::from_millis(g.ttl_ms),
        sent,
        granted_at: Instant::now(),
        label: label.clone(),
        fence_block: g.fence_block,
    }
}

/// The answer to an acquire (single or multi-key) waiting `wait`. The broker times the wait;
/// the client adds `request_timeout` for a broker that stopped answering.
pub(crate) async fn await_grant(
    pending: &mut PendingReply,
    wait: WaitSpec,
    request_timeout: Duration,
) -> Result<Frame> {
    let limit = match wait {
        WaitSpec::Forever => return pending.recv().await,
        WaitSpec::Millis(ms) => Duration::from_millis(ms),
        WaitSpec::NoWait => Duration::ZERO,
    } + request_timeout;
    match tokio::time::timeout(limit, pending.recv()).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout),
    }
}

impl IntoFuture for LockRequest {
    type Output = Result<Guard>;
    type IntoFuture = LockFuture;

    fn into_future(self) -> LockFuture {
        LockFuture {
            state: LockState::Start(self),
        }
    }
}

/// An awaited [`LockRequest`]. Its first poll checks the request and, for an embedded client
/// whose key is free, grants it right there — no allocation, no task switch. Anything else
/// (a broker, a key that is held) runs the frame path, boxed. Dropping it before it resolves
/// cancels the wait.
#[must_use = "a lock future does nothing unless awaited"]
pub struct LockFuture {
    state: LockState,
}

enum LockState {
    Start(LockRequest),
    Frames(Pin<Box<dyn Future<Output = Result<Guard>> + Send>>),
    Done,
}

impl Future for LockFuture {
    type Output = Result<Guard>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Guard>> {
        let this = &mut *self;
        if let LockState::Start(_) = &this.state
            && let LockState::Start(req) = std::mem::replace(&mut this.state, LockState::Done)
        {
            let mut timer = crate::metrics::AcquireTimer::start(req.mode);
            let direct = match req.check() {
                Err(e) => Some(Err(e)),
                Ok(()) => req.grant_now(timer.started()).map(Ok),
            };
            if let Some(result) = direct {
                timer.finish(&result);
                return Poll::Ready(result);
            }
            this.state = LockState::Frames(match req.lock_cache() {
                Some(cache) => Box::pin(crate::metrics::timed(timer, req.run_cached(cache))),
                None => Box::pin(crate::metrics::timed(timer, req.run_frames())),
            });
        }
        match &mut this.state {
            LockState::Frames(f) => {
                let result = std::task::ready!(f.as_mut().poll(cx));
                this.state = LockState::Done;
                Poll::Ready(result)
            }
            _ => Poll::Ready(Err(Error::Invalid(
                "a lock future was polled after it resolved".into(),
            ))),
        }
    }
}

/// Refuses an owner label the broker would refuse: longer than [`MAX_OWNER_LABEL`] bytes, or
/// holding a control or bidi-override character (labels are shown on terminals).
pub(crate) fn check_owner_label(label: &[u8]) -> Result<()> {
    if label.len() > MAX_OWNER_LABEL {
        return Err(Error::Invalid(format!(
            "an owner label is at most {MAX_OWNER_LABEL} bytes (this one has {})",
            label.len()
        )));
    }
    let text = String::from_utf8_lossy(label);
    match lockbroker_proto::text::label_problem(&text) {
        Some(problem) => Err(Error::Invalid(format!("{problem}: {text:?}"))),
        None => Ok(()),
    }
}

/// The ticket of a `Requeued` answer (its message: 16 hex digits).
fn requeued(reply: &Frame) -> Option<u64> {
    match reply {
        Frame::Error {
            code: ErrorCode::Requeued,
            message,
            ..
        } => u64::from_str_radix(message, 16).ok(),
        _ => None,
    }
}
