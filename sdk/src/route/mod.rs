//! The route of a client's requests: which connection a request on a key takes, and what
//! happens when it fails. [`Route`] owns the client's links — the embedded engine's one
//! connection, or the connections to brokers ([`brokers`]: the client's own, and in cluster
//! mode one per shard owner, chosen by the pushed shard map of `shards.rs`) — the addresses
//! and their resolution ([`target`]), and the SDK's one retry policy ([`retry`]), which every
//! request that names a key runs through. Locks, guards and the `Client` hold a route; the
//! route knows none of them.

mod brokers;
pub(crate) mod retry;
mod silence;
pub(crate) mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Frame, UnlockOutcome, WaitSpec};

pub(crate) use brokers::{Brokers, Dial};
use retry::{Deadline, Kind, Step, ask, for_wait, remaining, retry, step};

use crate::conn::{Abandon, Conn};
use crate::error::{Error, Result};
use crate::inspect::LockInfo;
use crate::shards::{LeaseEnd, Pushes, Routes};
use crate::watchdogs::Starter;

/// The fraction of a TTL the clocks of client and broker may drift apart by.
pub const CLOCK_DRIFT: f64 = 0.01;

/// How a client reaches its lock table.
pub(crate) enum Links {
    /// An embedded client's one connection to its engine (it never reconnects).
    Embedded(Arc<Conn>),
    /// A networked client's brokers.
    Brokers(Arc<Brokers>),
}

/// The options every request reads.
pub(crate) struct Settings {
    /// The default owner label of the client's locks (empty: none).
    pub(crate) owner: Bytes,
    pub(crate) request_timeout: Duration,
    pub(crate) lease_margin: Duration,
}

/// A client's route: its links, the broker's pushes, the guards' watchdogs.
pub(crate) struct Route {
    links: Links,
    settings: Settings,
    /// Where every connection of this client passes the broker's pushes: `LeaseEnded` (guards'
    /// watchdogs subscribe) and the cluster's shard map.
    pushes: Pushes,
    /// Starts guards' watchdogs when they first have work.
    watchdogs: Arc<Starter>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.links {
            Links::Embedded(_) => f.write_str("embedded"),
            Links::Brokers(b) => b.fmt(f),
        }
    }
}

impl Route {
    pub(crate) fn new(links: Links, settings: Settings, pushes: Pushes) -> Arc<Route> {
        Arc::new(Route {
            links,
            settings,
            watchdogs: Starter::new(pushes.lease_ended.clone()),
            pushes,
        })
    }

    /// The default owner label of this client's locks (empty: none).
    pub(crate) fn default_owner(&self) -> Bytes {
        self.settings.owner.clone()
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.settings.request_timeout
    }

    /// How long before its local deadline a lease of `ttl` is reported lost: the fixed margin
    /// plus the clock drift over the TTL, at most half the TTL.
    pub(crate) fn lease_margin(&self, ttl: Duration) -> Duration {
        (self.settings.lease_margin + ttl.mul_f64(CLOCK_DRIFT)).min(ttl / 2)
    }

    /// The client's watchdog starter (`watchdogs.rs`).
    pub(crate) fn watchdogs(&self) -> &Arc<Starter> {
        &self.watchdogs
    }

    /// Subscribes to the broker's `LeaseEnded` pushes.
    pub(crate) fn lease_ended(&self) -> tokio::sync::broadcast::Receiver<LeaseEnd> {
        self.pushes.lease_ended.subscribe()
    }

    /// The shard map and its changes.
    pub(crate) fn routes(&self) -> &Routes {
        &self.pushes.routes
    }

    /// True once a broker pushed a shard map: this client talks to a cluster.
    pub(crate) fn is_clustered(&self) -> bool {
        self.pushes.routes.is_known()
    }

    /// A broker answered `Moved` for `key`: remember where its shard is served now.
    pub(crate) fn note_moved(&self, key: &[u8], url: &str) {
        self.pushes.routes.moved(key, url);
    }

    /// An embedded client's connection (open or closed: [`Conn::local`] tells).
    pub(crate) fn local_conn(&self) -> Option<&Arc<Conn>> {
        match &self.links {
            Links::Embedded(conn) => Some(conn),
            Links::Brokers(_) => None,
        }
    }

    /// The client's own connection, reconnecting if it is gone.
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>> {
        match &self.links {
            Links::Embedded(c) if c.is_closed() => Err(c.disconnected()),
            Links::Embedded(c) => Ok(c.clone()),
            Links::Brokers(b) => b.conn().await,
        }
    }

    /// The connection for requests on `key`: in cluster mode, to the broker the shard map says
    /// serves it (connected on first use); otherwise — or if that broker cannot be reached —
    /// the client's own connection.
    pub(crate) async fn conn_for(&self, key: &[u8]) -> Result<Arc<Conn>> {
        match &self.links {
            Links::Brokers(b) => match self.pushes.routes.owner(key) {
                Some(url) => b.conn_to(key, url).await,
                None => b.conn().await,
            },
            Links::Embedded(_) => self.conn().await,
        }
    }

    /// Stops sending new requests on `conn` (it did not answer in time): the next request for
    /// its keys connects again. Leases held there move with their next request.
    pub(crate) fn leave(&self, conn: &Arc<Conn>) {
        conn.leave();
        tracing::debug!(
            broker = conn.addr(),
            "no answer in time: leaving the connection"
        );
        if let Links::Brokers(b) = &self.links {
            b.left_silent(conn);
        }
    }

    /// Whether the broker at `url` was left for not answering and has not answered since (a
    /// `Moved` naming it is no owner to go to yet).
    pub(crate) fn is_silent(&self, url: &str) -> bool {
        match &self.links {
            Links::Brokers(b) => b.is_silent(url),
            Links::Embedded(_) => false,
        }
    }

    /// Closes the client's connections cleanly (to every broker it talked to).
    pub(crate) async fn close(&self) {
        match &self.links {
            Links::Embedded(c) => c.close(),
            Links::Brokers(b) => b.close().await,
        }
    }

    /// Sends one request on `key` that answers at once and waits (bounded) for the answer, at
    /// the broker that serves the key (following `Moved` answers: the retry policy, bounded by
    /// the request timeout).
    pub(crate) async fn round_trip(
        &self,
        key: &[u8],
        build: impl Fn(u64) -> Frame,
    ) -> Result<Frame> {
        let timeout = self.settings.request_timeout;
        let deadline = Deadline::At(Instant::now() + timeout);
        retry(self, key, Kind::Request, deadline, |conn| {
            let build = &build;
            async move { step(ask(self, &conn, timeout, build).await?) }
        })
        .await
    }

    /// Holders, fencing tokens, remaining TTLs and waiters of `key`.
    pub(crate) async fn inspect(&self, key: Bytes) -> Result<LockInfo> {
        let reply = self
            .round_trip(&key, |id| Frame::Inspect {
                id,
                key: key.clone(),
            })
            .await?;
        match reply {
            Frame::LockInfo(info) => Ok(LockInfo::from_wire(info)),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until nobody holds `key` (at most `wait`), following the key's broker.
    pub(crate) async fn wait_unlocked(&self, key: Bytes, wait: WaitSpec) -> Result<UnlockOutcome> {
        let (deadline, wait_end) = for_wait(wait, self.settings.request_timeout);
        retry(self, &key, Kind::Request, deadline, |conn| {
            let key = key.clone();
            async move {
                let wait = remaining(wait, wait_end);
                let (id, rx) = conn.request(|id| Frame::WaitUnlocked { id, key, wait })?;
                match step(PendingReply::new(&conn, id, None, rx).recv().await?)? {
                    Step::Done(Frame::Unlocked { outcome, .. }) => Ok(Step::Done(outcome)),
                    Step::Done(other) => Err(unexpected(other)),
                    Step::Moved(url) => Ok(Step::Moved(url)),
                }
            }
        })
        .await
    }
}

/// The answer to one waiting request (acquire or wait-for-unlock). Dropped before the answer
/// was taken — a timeout, a `select!`, the key's shard moving — it gives the request up:
/// cancelled on the broker if still pending, and a grant that already arrived (or crosses the
/// cancel) is released as its [`Abandon`] says.
pub(crate) struct PendingReply {
    conn: Arc<Conn>,
    id: u64,
    /// What becomes of a grant to an acquire given up; `None` for a wait.
    abandon: Option<Abandon>,
    rx: Option<tokio::sync::oneshot::Receiver<Frame>>,
}

impl PendingReply {
    pub(crate) fn new(
        conn: &Arc<Conn>,
        id: u64,
        abandon: Option<Abandon>,
        rx: tokio::sync::oneshot::Receiver<Frame>,
    ) -> Self {
        PendingReply {
            conn: conn.clone(),
            id,
            abandon,
            rx: Some(rx),
        }
    }

    /// Waits for the answer.
    pub(crate) async fn recv(&mut self) -> Result<Frame> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(Error::Protocol("answer already taken".into()));
        };
        let reply = rx.await.map_err(|_| self.conn.disconnected());
        self.rx = None;
        reply
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        if let Some(rx) = self.rx.take() {
            self.conn.give_up(self.id, self.abandon.take(), rx);
        }
    }
}

/// The error an answer that is not the one asked for stands for.
pub(crate) fn unexpected(frame: Frame) -> Error {
    match frame {
        Frame::Error { code, message, .. } => Error::from_wire(code, message),
        other => Error::Protocol(format!("unexpected answer {other:?}")),
    }
}
