//! The embedded backend of [`Client::embedded`](crate::Client::embedded): the lock table of
//! `lockbroker-core` in this process, speaking the same frames a broker does, so every SDK
//! feature (guards, renewals, `lost()`, FIFO queues, fencing tokens, TTLs, lock-delay,
//! semaphores, inspect, waits, cancellation) works unchanged and no code path differs between
//! a monolith and a cluster.
//!
//! [`Engine`] is the in-process broker: `handle(session, frame)` applies one request frame to
//! the table under its mutex and collects the answers — to the asking session or, for a grant
//! handed over from a queue, to another — which are delivered with the mutex released
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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_core::wire::{lock_info, owner_label, wait_from};
use lockbroker_core::{
    AcquireAllRequest, AcquireRequest, Effect, Grant, LockEvent, SessionId, Table, TableConfig,
    TableError, Wait,
};
use lockbroker_proto::{
    EndReason, ErrorCode, Frame, Granted, GrantedAll, GrantedLease, LeaseSecret, Limits, LockInfo,
    Mode, Welcome,
};
use tokio::sync::Notify;

use crate::conn::Conn;
use lockbroker_core::wire::millis;

/// The TTL of an acquire that asks for none (as a broker's default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);

/// Deadlines handled per table lock by the timer.
const EXPIRE_SLICE: usize = 1024;

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
    sessions: Mutex<HashMap<SessionId, Weak<Conn>>>,
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
    /// The deadline the timer task is armed for (`None`: it sleeps until woken).
    armed: Option<Instant>,
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
                armed: None,
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
    pub(crate) fn attach(&self, session: SessionId, conn: &Arc<Conn>) {
        lock(&self.sessions).insert(session, Arc::downgrade(conn));
    }

    /// Ends `session` cleanly: its leases are released and its queued requests dropped.
    pub(crate) fn close_session(self: &Arc<Self>, session: SessionId) {
        lock(&self.sessions).remove(&session);
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
                    ttl: ttl_asked(ttl_ms),
                    wait: Wait::No,
                    owner: owner_label(owner.clone()),
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

    /// Applies one request frame of `session`.
    pub(crate) fn handle(self: &Arc<Self>, session: SessionId, frame: Frame) {
        self.start_timer();
        let mut out = Outgoing::new();
        match frame {
            Frame::Acquire(a) => {
                let id = a.id;
                let ttl = ttl_asked(a.ttl_ms);
                let key = a.key.clone();
                let granted = self.with_table(&mut out, |t, now, effects| {
                    t.acquire(
                        now,
                        AcquireRequest {
                            session,
                            req: id,
                            key: a.key,
                            mode: a.mode.into(),
                            ttl,
                            wait: wait_from(a.wait, now),
                            owner: owner_label(a.owner),
                        },
                        effects,
                    )
                });
                match granted {
                    Ok(Some(g)) => out.push((session, Frame::Granted(self.granted(id, &key, g)))),
                    Ok(None) => {} // queued: a later effect answers
                    Err(e) => out.push((session, error(id, &e))),
                }
            }
            Frame::AcquireAll(a) => {
                let id = a.id;
                let ttl = ttl_asked(a.ttl_ms);
                let granted = self.with_table(&mut out, |t, now, effects| {
                    t.acquire_all(
                        now,
                        AcquireAllRequest {
                            session,
                            req: id,
                            keys: a.keys,
                            ttl,
                            wait: wait_from(a.wait, now),
                            owner: owner_label(a.owner),
                        },
                        effects,
                    )
                });
                match granted {
                    Ok(Some(grants)) => out.push((session, self.granted_all(id, grants))),
                    Ok(None) => {}
                    Err(e) => out.push((session, error(id, &e))),
                }
            }
            Frame::Release(r) => {
                let result = self.check_secret(&r.key, r.fence, r.secret).and_then(|()| {
                    self.with_table(&mut out, |t, now, effects| {
                        t.release(now, session, &r.key, r.fence, effects)
                    })
                });
                if r.ack {
                    out.push((
                        session,
                        match result {
                            Ok(()) => Frame::Ok { id: r.id },
                            Err(e) => error(r.id, &e),
                        },
                    ));
                }
            }
            Frame::Extend(x) => {
                let ttl = Duration::from_millis(x.ttl_ms);
                let result = self.check_secret(&x.key, x.fence, x.secret).and_then(|()| {
                    self.with_table(&mut out, |t, now, effects| {
                        t.extend(now, session, &x.key, x.fence, ttl, effects)
                    })
                });
                out.push((
                    session,
                    match result {
                        Ok(_) => Frame::Extended {
                            id: x.id,
                            ttl_ms: x.ttl_ms,
                        },
                        Err(e) => error(x.id, &e),
                    },
                ));
            }
            Frame::Reclaim(r) => {
                // One process, one principal: the lease moves to this session if its secret
                // matches (a guard reclaims only after its connection was replaced).
                let result = self.check_secret(&r.key, r.fence, r.secret).and_then(|()| {
                    self.with_table(&mut out, |t, _, _| t.reclaim(session, &r.key, r.fence))
                });
                out.push((
                    session,
                    match result {
                        Ok(g) => Frame::Granted(self.granted(r.id, &r.key, g)),
                        Err(e) => error(r.id, &e),
                    },
                ));
            }
            Frame::Inspect { id, key } => {
                let info = self.inspect(session, id, key);
                out.push((session, Frame::LockInfo(info)));
            }
            Frame::WaitUnlocked { id, key, wait } => {
                let result = self.with_table(&mut out, |t, now, _| {
                    t.wait_until_unlocked(now, session, id, &key, wait_from(wait, now))
                });
                match result {
                    Ok(Some(outcome)) => out.push((
                        session,
                        Frame::Unlocked {
                            id,
                            outcome: outcome.into(),
                        },
                    )),
                    Ok(None) => {}
                    Err(e) => out.push((session, error(id, &e))),
                }
            }
            Frame::Cancel { id } => {
                self.with_table(&mut out, |t, now, effects| {
                    t.cancel(now, session, id, effects)
                });
            }
            Frame::Ping { id } => out.push((session, Frame::Pong { id })),
            other => {
                let id = other.id();
                if id != 0 {
                    out.push((
                        session,
                        Frame::error(id, ErrorCode::ProtocolOrder, "not a request"),
                    ));
                }
            }
        }
        self.deliver(out);
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
            let mut l = lock(&self.table);
            let result = op(&mut l.table, Instant::now(), &mut effects);
            let next = l.table.next_deadline();
            // Wake the timer only when it would sleep past the new next deadline.
            let rearm = matches!((next, l.armed), (Some(n), Some(a)) if n < a)
                || (next.is_some() && l.armed.is_none());
            if rearm {
                l.armed = next;
            }
            (result, rearm)
        };
        self.answers(&mut effects, out);
        SPARE_EFFECTS.set(effects);
        if rearm {
            self.timer.notify_one();
        }
        result
    }

    /// The answers carried by table effects.
    fn answers(&self, effects: &mut Vec<Effect>, out: &mut Outgoing) {
        for effect in effects.drain(..) {
            match effect {
                Effect::Granted {
                    session,
                    req,
                    grant,
                } => {
                    let key = grant.key.clone();
                    out.push((session, Frame::Granted(self.granted(req, &key, grant))));
                }
                Effect::GrantedAll {
                    session,
                    req,
                    grants,
                } => out.push((session, self.granted_all(req, grants))),
                Effect::AcquireFailed {
                    session,
                    req,
                    error: e,
                }
                | Effect::WaitFailed {
                    session,
                    req,
                    error: e,
                } => out.push((session, error(req, &e))),
                Effect::Unlocked {
                    session,
                    req,
                    outcome,
                } => out.push((
                    session,
                    Frame::Unlocked {
                        id: req,
                        outcome: outcome.into(),
                    },
                )),
                Effect::Event(LockEvent::Expired {
                    key,
                    session,
                    fence,
                }) => out.push((
                    session,
                    Frame::LeaseEnded {
                        key,
                        fence,
                        reason: EndReason::Expired,
                        message: "the lease expired before a renewal reached the table".into(),
                    },
                )),
                Effect::Event(_) => {}
            }
        }
    }

    /// Hands every answer to its session's connection (table unlocked).
    fn deliver(&self, out: Outgoing) {
        if out.is_empty() {
            return;
        }
        for (session, frame) in out {
            let conn = lock(&self.sessions).get(&session).and_then(Weak::upgrade);
            if let Some(conn) = conn {
                conn.route(frame);
            }
        }
    }

    fn granted(&self, id: u64, asked: &Bytes, g: Grant) -> Granted {
        Granted {
            id,
            fence: g.fence,
            ttl_ms: millis(g.ttl),
            rewritten: (g.key != *asked).then(|| g.key.clone()),
            secret: self.secret(&g.key, g.fence),
        }
    }

    fn granted_all(&self, id: u64, grants: Vec<Grant>) -> Frame {
        Frame::GrantedAll(GrantedAll {
            id,
            leases: grants
                .into_iter()
                .map(|g| GrantedLease {
                    secret: self.secret(&g.key, g.fence),
                    fence: g.fence,
                    ttl_ms: millis(g.ttl),
                    key: g.key,
                })
                .collect(),
        })
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
            let l = lock(&self.table);
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
            let mut l = lock(&e.table);
            let next = l.table.next_deadline();
            l.armed = next;
            next
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
            let more = e.apply(|t, _, effects| t.expire_some(now, EXPIRE_SLICE, effects));
            if !more {
                break;
            }
        }
    }
}

fn error(id: u64, e: &TableError) -> Frame {
    Frame::error(id, ErrorCode::from(e), e.to_string())
}

/// The TTL of a wire acquire's `ttl_ms` (0: the default, as at a broker).
fn ttl_asked(ttl_ms: u64) -> Duration {
    if ttl_ms == 0 {
        DEFAULT_TTL
    } else {
        Duration::from_millis(ttl_ms)
    }
}

/// A lock of the engine (poisoning is recovered: the table is valid between calls).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
