//! The broker's shared state: the lock table behind one mutex, the registry of live sessions
//! (session id → outbox), and the routing of table effects to the sessions they address.
//!
//! Every table operation goes through [`Broker::with_table`], which reads the clock once,
//! applies the operation, wakes the expiry task when the next deadline moved earlier, and then
//! (outside the lock) turns effects into frames on the right outboxes.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use lockbroker_proto::{Frame, Granted};
use tokio::sync::{Notify, watch};

use super::errors::error_frame;
use super::outbox::Outbox;
use crate::config::Config;
use crate::table::{Effect, ReqId, SessionId, Table, TableConfig};

/// A live session as seen by other sessions' tasks: where to push its frames.
#[derive(Default)]
pub struct SessionHandle {
    pub outbox: Outbox,
    /// Pending acquires whose key a policy rewrote: the grant must tell the client the new key.
    rewritten: Mutex<HashMap<ReqId, Bytes>>,
}

impl SessionHandle {
    pub fn note_rewrite(&self, req: ReqId, key: Bytes) {
        self.rewritten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req, key);
    }

    pub fn take_rewrite(&self, req: ReqId) -> Option<Bytes> {
        let mut map = self.rewritten.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            None
        } else {
            map.remove(&req)
        }
    }
}

struct Core {
    table: Table,
    /// When the expiry task is currently set to wake (None: not armed).
    timer_at: Option<Instant>,
}

/// Shared state of one running broker.
pub struct Broker {
    pub cfg: Config,
    pub epoch: u64,
    core: Mutex<Core>,
    timer: Notify,
    sessions: DashMap<SessionId, Arc<SessionHandle>>,
    next_session: AtomicU64,
    shutdown: watch::Sender<bool>,
    pub(crate) policy: super::policy::Policy,
    /// The mirror, once started (`crate::mirror`): lock events are queued to it under the
    /// table lock, so it sees them in table order.
    mirror: OnceLock<Arc<crate::mirror::Mirror>>,
    /// This broker, for tasks spawned from `dispatch` (sync-mode grants).
    me: Weak<Broker>,
}

thread_local! {
    /// Reused effect buffer, so a request allocates no effect vector.
    static SCRATCH: RefCell<Vec<Effect>> = const { RefCell::new(Vec::new()) };
}

impl Broker {
    pub fn new(cfg: Config, epoch: u64, policy: super::policy::Policy) -> Arc<Broker> {
        let table = Table::new(TableConfig {
            epoch,
            lock_delay: Duration::from_millis(cfg.locks.lock_delay_ms),
            max_leases_per_session: cfg.limits.max_leases_per_session,
            max_waiters_per_session: cfg.limits.max_waiters_per_session,
        });
        Arc::new_cyclic(|me| Broker {
            cfg,
            epoch,
            core: Mutex::new(Core {
                table,
                timer_at: None,
            }),
            timer: Notify::new(),
            sessions: DashMap::new(),
            next_session: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            policy,
            mirror: OnceLock::new(),
            me: me.clone(),
        })
    }

    /// Attaches the mirror (once, at start, before serving).
    pub fn attach_mirror(&self, mirror: Arc<crate::mirror::Mirror>) {
        let _ = self.mirror.set(mirror);
    }

    /// The mirror, if one runs.
    pub fn mirror(&self) -> Option<&Arc<crate::mirror::Mirror>> {
        self.mirror.get()
    }

    /// A live session's handle.
    pub(crate) fn session_handle(&self, id: SessionId) -> Option<Arc<SessionHandle>> {
        self.sessions.get(&id).map(|h| h.clone())
    }

    /// Registers a new session and returns its id and handle.
    pub fn open_session(&self) -> (SessionId, Arc<SessionHandle>) {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(SessionHandle::default());
        self.sessions.insert(id, handle.clone());
        (id, handle)
    }

    /// Ends a session: `clean` releases its leases now, otherwise they run to their TTL.
    pub fn close_session(&self, id: SessionId, clean: bool) {
        self.sessions.remove(&id);
        self.with_table(|t, now, out| t.close_session(now, id, clean, out));
    }

    /// The policy chain (plugins) of this broker.
    pub fn policy(&self) -> &super::policy::Policy {
        &self.policy
    }

    /// Number of live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
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

    /// Runs one table operation at the current time and routes its effects.
    pub fn with_table<R>(&self, op: impl FnOnce(&mut Table, Instant, &mut Vec<Effect>) -> R) -> R {
        let mut effects = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let (result, wake) = {
            let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let result = op(&mut core.table, now, &mut effects);
            if let Some(m) = self.mirror.get() {
                m.push(&effects);
            }
            let next = core.table.next_deadline();
            let wake = match (next, core.timer_at) {
                (Some(n), Some(t)) => n < t,
                (Some(_), None) => true,
                (None, _) => false,
            };
            if wake {
                core.timer_at = next;
            }
            (result, wake)
        };
        if wake {
            self.timer.notify_one();
        }
        self.dispatch(&mut effects);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            if s.capacity() < effects.capacity() {
                *s = effects;
            }
        });
        result
    }

    /// Reads the table without changing it.
    pub fn read_table<R>(&self, op: impl FnOnce(&Table, Instant) -> R) -> R {
        let core = self.core.lock().unwrap_or_else(|e| e.into_inner());
        op(&core.table, Instant::now())
    }

    fn dispatch(&self, effects: &mut Vec<Effect>) {
        let mut orphans = Vec::new();
        for effect in effects.drain(..) {
            match effect {
                Effect::Granted {
                    session,
                    req,
                    grant,
                } if self.mirror.get().is_some_and(|m| m.is_sync()) => {
                    if let Some(me) = self.me.upgrade() {
                        crate::mirror::sync::confirm_grant(&me, session, req, grant, None);
                    }
                }
                Effect::Granted {
                    session,
                    req,
                    grant,
                } => match self.sessions.get(&session) {
                    Some(h) => h.outbox.push(&Frame::Granted(Granted {
                        id: req,
                        fence: grant.fence,
                        ttl_ms: duration_ms(grant.ttl),
                        rewritten: h.take_rewrite(req),
                    })),
                    // The session closed between the grant and now: give the lease back.
                    None => orphans.push((session, grant.key, grant.fence)),
                },
                Effect::AcquireFailed {
                    session,
                    req,
                    error,
                }
                | Effect::WaitFailed {
                    session,
                    req,
                    error,
                } => {
                    if let Some(h) = self.sessions.get(&session) {
                        h.take_rewrite(req);
                        h.outbox.push(&error_frame(req, &error));
                    }
                }
                Effect::Unlocked {
                    session,
                    req,
                    outcome,
                } => {
                    if let Some(h) = self.sessions.get(&session) {
                        h.outbox.push(&Frame::Unlocked {
                            id: req,
                            outcome: super::cmd::wire_outcome(outcome),
                        });
                    }
                }
                // Lock events were queued to the mirror (if any) under the table lock.
                Effect::Event(_) => {}
            }
        }
        for (session, key, fence) in orphans {
            self.with_table(|t, now, out| {
                let _ = t.release(now, session, &key, fence, out);
            });
        }
    }

    /// The expiry driver: sleeps until the table's next deadline, expires what is due,
    /// and re-arms; woken early when an operation adds an earlier deadline.
    pub async fn run_expiry(self: Arc<Self>) {
        let mut shutdown = self.shutdown_signal();
        loop {
            let next = {
                let mut core = self.core.lock().unwrap_or_else(|e| e.into_inner());
                core.timer_at = core.table.next_deadline();
                core.timer_at
            };
            let sleep = match next {
                Some(at) => tokio::time::sleep_until(at.into()),
                None => tokio::time::sleep(Duration::from_secs(3600)),
            };
            tokio::select! {
                () = sleep => self.with_table(|t, now, out| t.expire(now, out)),
                () = self.timer.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Milliseconds of a duration, saturating.
pub fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
