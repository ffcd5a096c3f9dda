//! The admin listener's connections: an accept loop serving HTTP/1.1 with hyper, within
//! `[admin] max_connections` and `[admin] header_timeout_ms`.
//!
//! * **Header timeout** — a connection must send a whole request head within the timeout, and
//!   after an answer the next one within the timeout again (hyper's `header_read_timeout`
//!   restarts when it waits for the next head), so half-sent requests and idle keep-alive
//!   connections are closed after it.
//! * **Cap** — at most `max_connections` are open. Over it, the oldest connection that is
//!   between requests (still sending its head, idle, or still being written to) is closed to
//!   make room: a flood of half-sent requests cannot lock out `/healthz` from a fresh
//!   connection, whose head arrives at once. Only when every connection is inside a handler
//!   is the new one closed at accept.
//! * **Request timeout** — a handler (reading a body included) gets [`REQUEST_TIMEOUT`].
//!
//! Each request carries its TCP peer as axum's `ConnectInfo<SocketAddr>`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// Longest a handler may run, its body read included.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How often at most a shed connection is logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Connection counts, read by `/metrics`.
#[derive(Debug, Default)]
pub(super) struct ConnStats {
    /// Connections open now.
    pub(super) open: AtomicUsize,
    /// Connections closed to stay within the cap (an idle one evicted, or a new one refused).
    pub(super) shed: AtomicU64,
}

/// The limits of [`serve`].
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) max_connections: usize,
    pub(super) header_timeout: Duration,
}

/// One open connection.
#[derive(Default)]
struct Slot {
    /// Requests inside a handler now.
    busy: AtomicUsize,
    /// Told to close (evicted).
    evict: Notify,
}

#[derive(Default)]
struct Open {
    next: u64,
    /// By accept order: the first idle one is the oldest.
    slots: BTreeMap<u64, Arc<Slot>>,
    last_log: Option<Instant>,
    unlogged: u64,
}

/// The open connections.
struct Registry {
    open: Mutex<Open>,
    stats: Arc<ConnStats>,
    max: usize,
}

impl Registry {
    /// Room for a new connection: its id and slot, or `None` when every open one is busy.
    fn admit(&self) -> Option<(u64, Arc<Slot>)> {
        let mut open = self.open.lock();
        if open.slots.len() >= self.max {
            let victim = open
                .slots
                .iter()
                .find(|(_, s)| s.busy.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id);
            if let Some(slot) = victim.and_then(|id| open.slots.remove(&id)) {
                slot.evict.notify_one();
            }
            self.shed(&mut open, victim.is_some());
            victim?;
        }
        let id = open.next;
        open.next += 1;
        let slot = Arc::new(Slot::default());
        open.slots.insert(id, slot.clone());
        self.stats.open.store(open.slots.len(), Ordering::Relaxed);
        Some((id, slot))
    }

    fn shed(&self, open: &mut Open, evicted: bool) {
        self.stats.shed.fetch_add(1, Ordering::Relaxed);
        open.unlogged += 1;
        if open.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                max = self.max,
                "admin listener at its connection cap: {} connection(s) closed since the last \
                 report ({})",
                open.unlogged,
                if evicted {
                    "the oldest idle one makes room"
                } else {
                    "every connection busy: the new one refused"
                }
            );
            open.last_log = Some(Instant::now());
            open.unlogged = 0;
        }
    }

    fn remove(&self, id: u64) {
        let mut open = self.open.lock();
        open.slots.remove(&id);
        self.stats.open.store(open.slots.len(), Ordering::Relaxed);
    }
}

/// Takes a connection out of the registry when its task ends.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.remove(self.id);
    }
}

/// Marks a connection busy while a handler runs.
struct Busy(Arc<Slot>);

impl Busy {
    fn enter(slot: &Arc<Slot>) -> Busy {
        slot.busy.fetch_add(1, Ordering::AcqRel);
        Busy(slot.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish
/// their request (the caller bounds how long).
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    shutdown: impl Future<Output = ()>,
) {
    let registry = Arc::new(Registry {
        open: Mutex::new(Open::default()),
        stats,
        max: limits.max_connections.max(1),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: retry soon, without spinning.
                    tracing::warn!("admin listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some((id, slot)) = registry.admit() else {
            drop(stream);
            continue;
        };
        let registered = Registered {
            registry: registry.clone(),
            id,
        };
        tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            slot,
            registered,
            limits.header_timeout,
            stop_rx.clone(),
        ));
    }
    let _ = stop_tx.send(true);
    drop(stop_rx);
    // Every connection task holds a receiver: this waits until all have ended.
    stop_tx.closed().await;
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    slot: Arc<Slot>,
    _registered: Registered,
    header_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let tower = TowerToHyperService::new(app);
    let busy_slot = slot.clone();
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let busy = Busy::enter(&busy_slot);
        let answer = hyper::service::Service::call(&tower, req);
        async move {
            let _busy = busy;
            match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
                Ok(answer) => answer,
                Err(_) => Ok((
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "error": format!("no answer within {REQUEST_TIMEOUT:?}")
                    })),
                )
                    .into_response()),
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut stopping = false;
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(%peer, "admin connection ended: {e}");
                }
                return;
            }
            // Dropping the connection closes it.
            () = slot.evict.notified() => return,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}
