//! The embedded backend of [`Client::embedded`](crate::Client::embedded): the lock table of
//! `lockbroker-core` in this process, speaking the same frames a broker does, so every SDK
//! feature (guards, renewals, `lost()`, FIFO queues, fencing tokens, TTLs, lock-delay,
//! semaphores, inspect, waits, cancellation) works unchanged and no code path differs between
//! a monolith and a cluster.
//!
//! [`Engine`] is the in-process broker, on `lockbroker_core::serve`: `handle(session, frame)`
//! applies one request frame to the table under its mutex and collects the answers — to the
//! asking session or, for a grant handed over from a queue, to another — which are delivered
//! with the mutex released through the [`Deliver`] trait that `Conn` implements
//! ([`Conn::route`], the same routing the QUIC reader uses). One timer task sleeps until the
//! table's next deadline and runs `expire`. There is no network, TLS, plugin, mirror or
//! cluster: one principal (`embedded`), one epoch, the table's default limits.
//!
//! Lease secrets are keyed hashes of (key, fence) under two random keys drawn per engine:
//! enough to keep one part of a process from releasing a lease another part holds by a guessed
//! fence (code in the same process could read the guard's memory anyway).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use bytes::Bytes;
use lockbroker_core::serve::{self, Answer, DEFAULT_TTL, Decoded, EXPIRY_SLICE, Outcome, Timer};
use lockbroker_core::wire::{lock_info, millis, owner_label};
use lockbroker_core::{
    AcquireRequest, Effect, Grant, SessionId, Table, TableConfig, TableError, Wait,
};
use lockbroker_proto::{Frame, LeaseSecret, Limits, LockInfo, Mode, Welcome};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// Where a session's answers go: its connection (the SDK's `Conn`), which hands each frame
/// to whoever waits for it.
pub(crate) trait Deliver: Send + Sync {
    fn deliver(&self, frame: Frame);
}

/// The principal every embedded session has.
const PRINCIPAL: &str = "embedded";

thread_local! {
    /// `Engine::with_table`'s effect buffer, reused (empty between calls).
    static SPARE_EFFECTS: std::cell::Cell<Vec<Effect>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The in-process broker behind embedded clients.
pub(crate) struct Engine {
    table: Mutex<Locked>,
    /// Live sessions, by id: where their answers go.
    sessions: Mutex<HashMap<SessionId, Weak<dyn Deliver>>>,
    next_session: AtomicU64,
    /// Wakes the timer task: a call moved the next deadline before the one it sleeps until,
    /// or the engine is gone.
    timer: Arc<Notify>,
    timer_started: OnceLock<()>,
    secrets: (RandomState, RandomState),
    /// Stands in for a broker id: guards never carry a lease to another engine.
    id: u64,
}

/// The table and the deadline the timer task sleeps until, under one mutex.
struct Locked {
    table: Table,
    /// When the timer task must be woken.
    timer: Timer,
}

impl Drop for Engine {
    fn drop(&mut self) {
        // The timer task sees the engine gone and ends.
        self.timer.notify_one();
    }
}

/// An answer to deliver once the table is unlocked.
type Outgoing = Vec<(SessionId, Frame)>;

impl Engine {
    pub(crate) fn new() -> Arc<Engine> {
        let secrets = (RandomState::new(), RandomState::new());
        let id = secrets.0.hash_one(0xe1bedu64) | 1;
        Arc::new(Engine {
            table: Mutex::new(Locked {
                table: Table::new(TableConfig {
                    epoch: 1,
                    // Only `Expired` is read here (`answers`).
                    lease_events: false,
                    ..TableConfig::default()
                }),
                timer: Timer::default(),
            }),
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            timer: Arc::new(Notify::new()),
            timer_started: OnceLock::new(),
            secrets,
            id,
        })
    }

    /// A new session: its id and the `Welcome` a broker would send.
    pub(crate) fn open_session(&self) -> Welcome {
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let limits = Limits::default();
        Welcome {
            session,
            broker_id: self.id,
            epoch: 1,
            max_frame: u32::try_from(limits.max_frame).unwrap_or(u32::MAX),
            max_key: u32::try_from(limits.max_key).unwrap_or(u32::MAX),
            default_ttl_ms: millis(DEFAULT_TTL),
            principal: PRINCIPAL.to_owned(),
        }
    }

    /// Routes the answers of `session` to `conn` from now on.
    pub(crate) fn attach(&self, session: SessionId, conn: Weak<dyn Deliver>) {
        self.sessions.lock().insert(session, conn);
    }

    /// Ends `session` cleanly: its leases are released and its queued requests dropped.
    pub(crate) fn close_session(self: &Arc<Self>, session: SessionId) {
        self.sessions.lock().remove(&session);
        self.apply(|t, now, effects| t.close_session(now, session, true, effects));
    }

    /// The direct path of an acquire (no frame, no reply channel): grants `key` to `session`
    /// in this call if it is free for `mode` now. `None` when it would wait or fail; the
    /// caller then sends the acquire as a frame, whose answer covers both (a refused immediate
    /// acquire changes nothing in the table). The lease's secret is not derived here: the
    /// guard asks [`Engine::secret`] if it ever needs it.
    pub(crate) fn grant_now(
        self: &Arc<Self>,
        session: SessionId,
        key: &Bytes,
        mode: Mode,
        ttl_ms: u64,
        owner: &Bytes,
    ) -> Option<Grant> {
        self.start_timer();
        let granted = self.apply(|t, now, effects| {
            t.acquire(
                now,
                AcquireRequest {
                    session,
                    // Never queued, so never answered by id: 0 is no request's id.
                    req: 0,
                    key: key.clone(),
                    mode: mode.into(),
                    ttl: serve::ttl_asked(ttl_ms, DEFAULT_TTL),
                    wait: Wait::No,
                    owner: owner_label(owner.clone()),
                    ticket: 0,
                    fence_block: 1,
                },
                effects,
            )
        });
        granted.ok().flatten()
    }

    /// The direct path of a release by the guard that holds the lease (the guard is the
    /// proof of ownership: no secret to check). Grants it hands over are delivered.
    pub(crate) fn release_now(
        self: &Arc<Self>,
        session: SessionId,
        key: &Bytes,
        fence: u64,
    ) -> Result<(), TableError> {
        self.apply(|t, now, effects| t.release(now, session, key, fence, effects))
    }

    /// Applies one request frame of `session`: `core::serve` reads it and applies it; the
    /// engine adds only the lease secret.
    pub(crate) fn handle(self: &Arc<Self>, session: SessionId, frame: Frame) {
        self.start_timer();
        let mut out = Outgoing::new();
        match serve::decode(session, frame, Instant::now(), DEFAULT_TTL) {
            Decoded::Answer(frame) => out.extend(frame.map(|f| (session, f))),
            Decoded::Inspect { id, key } => {
                out.push((session, Frame::LockInfo(self.inspect(session, id, key))));
            }
            Decoded::Table {
                id,
                request,
                proof,
                ack,
            } => {
                let lease = request.lease().map(|(k, f)| (Bytes::copy_from_slice(k), f));
                let checked = match (&lease, proof) {
                    (Some((key, fence)), Some(proof)) => self.check_secret(key, *fence, proof),
                    _ => Ok(()),
                };
                let result = checked.and_then(|()| {
                    self.with_table(&mut out, |t, now, effects| {
                        serve::apply(t, now, session, request, effects)
                    })
                });
                if let Some(frame) = self.reply(id, lease, result, ack) {
                    out.push((session, frame));
                }
            }
        }
        self.deliver(out);
    }

    /// The immediate answer to request `id` (on lease `lease`, for a release, an extend or a
    /// reclaim); `None` when there is none (queued, or not asked for).
    fn reply(
        &self,
        id: u64,
        lease: Option<(Bytes, u64)>,
        result: Result<Outcome, TableError>,
        ack: bool,
    ) -> Option<Frame> {
        Some(match result {
            Ok(Outcome::Granted(g)) => self.granted(id, &g),
            Ok(Outcome::GrantedAll(grants)) => {
                serve::granted_all(id, &grants, |g| self.secret(&g.key, g.fence))
            }
            Ok(Outcome::Released) if ack => Frame::Ok { id },
            Ok(Outcome::Extended(ttl)) => serve::extended_frame(id, ttl),
            Ok(Outcome::Reclaimed(ttl)) => {
                let (key, fence) = lease?;
                serve::granted(id, fence, ttl, None, self.secret(&key, fence), 1)
            }
            Ok(Outcome::Unlocked(outcome)) => serve::unlocked_frame(id, outcome),
            Ok(Outcome::Released | Outcome::Queued | Outcome::Done) => return None,
            Err(e) if ack => serve::error_frame(id, &e),
            Err(_) => return None,
        })
    }

    /// [`Engine::with_table`] for one operation, its answers delivered at once.
    fn apply<T>(&self, op: impl FnOnce(&mut Table, Instant, &mut Vec<Effect>) -> T) -> T {
        let mut out = Outgoing::new();
        let result = self.with_table(&mut out, op);
        self.deliver(out);
        result
    }

    /// Runs `op` on the table with the current time, turns the effects it pushed into
    /// answers (into `out`), and wakes the timer: the next deadline may have moved.
    fn with_table<T>(
        &self,
        out: &mut Outgoing,
        op: impl FnOnce(&mut Table, Instant, &mut Vec<Effect>) -> T,
    ) -> T {
        // A buffer kept per thread: most calls push an event or two, and a fresh vector for
        // each was an allocation per lock and per release.
        let mut effects = SPARE_EFFECTS.take();
        let (result, rearm) = {
            let mut l = self.table.lock();
            let l = &mut *l;
            let result = op(&mut l.table, Instant::now(), &mut effects);
            let rearm = l.timer.after_op(&l.table);
            (result, rearm)
        };
        self.answers(&mut effects, out);
        SPARE_EFFECTS.set(effects);
        if rearm {
            self.timer.notify_one();
        }
        result
    }

    /// The answers carried by table effects (`core::serve` says which; the engine adds the
    /// lease secret).
    fn answers(&self, effects: &mut Vec<Effect>, out: &mut Outgoing) {
        for effect in effects.drain(..) {
            match Answer::from(effect) {
                Answer::Grant {
                    session,
                    req,
                    grant,
                    ..
                } => out.push((session, self.granted(req, &grant))),
                Answer::Grants {
                    session,
                    req,
                    grants,
                } => out.push((
                    session,
                    serve::granted_all(req, &grants, |g| self.secret(&g.key, g.fence)),
                )),
                Answer::AcquireFailed {
                    session,
                    req,
                    error,
                } => out.push((session, serve::error_frame(req, &error))),
                Answer::Frame { session, frame } => out.push((session, frame)),
                Answer::Expired {
                    session,
                    key,
                    fence,
                } => out.push((session, serve::lease_expired_frame(key, fence))),
                Answer::Event(_) => {}
            }
        }
    }

    /// Hands every answer to its session's connection (table unlocked).
    fn deliver(&self, out: Outgoing) {
        if out.is_empty() {
            return;
        }
        for (session, frame) in out {
            let conn = self.sessions.lock().get(&session).and_then(Weak::upgrade);
            if let Some(conn) = conn {
                conn.deliver(frame);
            }
        }
    }

    /// The `Granted` answer to request `id` (the engine rewrites no key).
    fn granted(&self, id: u64, g: &Grant) -> Frame {
        serve::granted(
            id,
            g.fence,
            g.ttl,
            None,
            self.secret(&g.key, g.fence),
            g.fence_block,
        )
    }

    /// `NotOwner` unless `secret` is the secret of lease (`key`, `fence`).
    fn check_secret(&self, key: &[u8], fence: u64, secret: LeaseSecret) -> Result<(), TableError> {
        if self.secret(key, fence) == secret {
            Ok(())
        } else {
            Err(TableError::NotOwner)
        }
    }

    /// The secret of lease (`key`, `fence`).
    pub(crate) fn secret(&self, key: &[u8], fence: u64) -> LeaseSecret {
        let half = |s: &RandomState| {
            let mut h = s.build_hasher();
            h.write(key);
            h.write_u64(fence);
            h.finish().to_le_bytes()
        };
        let mut secret = [0u8; 16];
        secret[..8].copy_from_slice(&half(&self.secrets.0));
        secret[8..].copy_from_slice(&half(&self.secrets.1));
        LeaseSecret(secret)
    }

    fn inspect(&self, session: SessionId, id: u64, key: Bytes) -> LockInfo {
        let mut info = {
            let l = self.table.lock();
            lock_info(&l.table, id, key, session, Instant::now())
        };
        info.order_holders();
        info
    }

    /// Starts the timer task on first use (an embedded client may be built outside a runtime).
    fn start_timer(self: &Arc<Self>) {
        self.timer_started.get_or_init(|| {
            tokio::spawn(run_timer(Arc::downgrade(self), self.timer.clone()));
        });
    }
}

/// Sleeps until the table's next deadline (woken earlier when a call moves it), runs
/// `expire`, delivers what it produced; ends when the engine is gone.
async fn run_timer(engine: Weak<Engine>, wake: Arc<Notify>) {
    loop {
        let next = {
            let Some(e) = engine.upgrade() else { return };
            let mut l = e.table.lock();
            let l = &mut *l;
            l.timer.arm(&l.table)
        };
        match next {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at.into()) => {}
                    () = wake.notified() => continue,
                }
            }
            None => {
                wake.notified().await;
                continue;
            }
        }
        let Some(e) = engine.upgrade() else { return };
        // In slices, the table let go between them (a storm of timeouts stalls no one).
        let now = Instant::now();
        loop {
            let more = e.apply(|t, _, effects| t.expire_some(now, EXPIRY_SLICE, effects));
            if !more {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockbroker_proto::{Acquire, Reclaim, WaitSpec};

    /// Collects the frames the engine answers a session with.
    #[derive(Default)]
    struct Answers(Mutex<Vec<Frame>>);

    impl Deliver for Answers {
        fn deliver(&self, frame: Frame) {
            self.0.lock().push(frame);
        }
    }

    fn session(engine: &Engine) -> (SessionId, Arc<Answers>) {
        let id = engine.open_session().session;
        let answers = Arc::new(Answers::default());
        let weak: Weak<dyn Deliver> = Arc::downgrade(&answers) as _;
        engine.attach(id, weak);
        (id, answers)
    }

    /// A reclaimed lease runs its fresh TTL from the reclaim, as at a broker (the engine kept
    /// the old deadline and answered the old TTL).
    #[tokio::test]
    async fn a_reclaim_renews_the_lease_as_at_a_broker() {
        let engine = Engine::new();
        let (first, first_answers) = session(&engine);
        let key = Bytes::from_static(b"k");
        engine.handle(
            first,
            Frame::Acquire(Acquire {
                id: 1,
                key: key.clone(),
                mode: Mode::Exclusive,
                ttl_ms: 1_000,
                wait: WaitSpec::NoWait,
                owner: Bytes::new(),
                ticket: 0,
                fence_block: 1,
            }),
        );
        let granted = match first_answers.0.lock().pop() {
            Some(Frame::Granted(g)) => g,
            other => panic!("not granted: {other:?}"),
        };
        let (second, second_answers) = session(&engine);
        engine.handle(
            second,
            Frame::Reclaim(Reclaim {
                id: 2,
                key: key.clone(),
                fence: granted.fence,
                mode: Mode::Exclusive,
                ttl_ms: 60_000,
                secret: granted.secret,
                owner: Bytes::new(),
            }),
        );
        match second_answers.0.lock().pop() {
            Some(Frame::Granted(g)) => {
                assert_eq!((g.fence, g.ttl_ms), (granted.fence, 60_000));
            }
            other => panic!("not reclaimed: {other:?}"),
        }
        let info = engine.inspect(second, 3, key);
        assert!(
            info.holders[0].remaining_ms > 50_000,
            "the lease kept its old deadline: {} ms left",
            info.holders[0].remaining_ms
        );
    }
}
