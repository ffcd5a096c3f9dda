//! `Client` and `ClientBuilder`: configuration, connecting (to the first reachable of a list
//! of broker addresses) and reconnecting lazily when the connection is gone.
//!
//! Broker addresses are kept as host and port, not as socket addresses: every connect and
//! every reconnect resolves them again with `tokio::net::lookup_host` (never a blocking call
//! on the runtime), so a broker that moved to another address is found after a reconnect.
//! Each address a host resolves to is tried in order. The UDP endpoint of an address family is
//! opened the first time an address of that family is tried. The live connection itself is
//! [`Conn`] (one mutex for all its state, see `conn.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Frame, WaitSpec};

use crate::conn::Conn;
use crate::embedded::Engine;
use crate::inspect::LockInfo;
use crate::lock::LockRequest;
use crate::retry::{Deadline, Kind, Step, ask, for_wait, remaining, retry, step};
use crate::routing::{Pushes, Routes};
use crate::tls::{ClientIdentity, Trust, client_config, read_file};
use crate::watchdogs::Starter;
use crate::{Error, Result, UnlockOutcome};
use lockbroker_core::wire::millis;

/// Builds a [`Client`].
///
/// ```no_run
/// # async fn demo() -> lockbroker_sdk::Result<()> {
/// use std::time::Duration;
/// let client = lockbroker_sdk::Client::builder()
///     .broker("quic://127.0.0.1:7420")
///     .ca_file(".lockbroker/dev-cert.pem")
///     .connect_timeout(Duration::from_secs(2))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    urls: Vec<String>,
    trust: Option<Trust>,
    ca_error: Option<String>,
    identity: Option<ClientIdentity>,
    token: Option<String>,
    name: String,
    owner: Bytes,
    embedded: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    keep_alive: Duration,
    idle_timeout: Duration,
    lease_margin: Duration,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            urls: Vec::new(),
            trust: None,
            ca_error: None,
            identity: None,
            token: None,
            name: format!("lockbroker-sdk/{}", env!("CARGO_PKG_VERSION")),
            owner: Bytes::new(),
            embedded: false,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            lease_margin: DEFAULT_LEASE_MARGIN,
        }
    }
}

/// Default fixed part of a guard's safety margin (see [`ClientBuilder::lease_margin`]).
pub const DEFAULT_LEASE_MARGIN: Duration = Duration::from_millis(100);

/// The clock-rate drift a guard allows for: its clocks may run this much slower than the
/// broker's (1 %, far above the drift of real quartz clocks, ~0.01 %).
pub const CLOCK_DRIFT: f64 = 0.01;

impl ClientBuilder {
    /// Adds a broker address (`quic://host:port`). Several may be given: the client connects
    /// to the first that answers, in order, and moves on when one fails.
    pub fn broker(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Trusts the CA certificate(s) in this PEM file (e.g. the broker's dev certificate).
    /// Call it once per file to trust several — the dev certificates of every broker of a
    /// cluster, say.
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        match read_file(path.as_ref(), "CA file") {
            Ok(pem) => self.trust_pem(pem),
            Err(e) => self.ca_error = Some(e.to_string()),
        }
        self
    }

    /// Trusts the CA certificate(s) in this PEM text (added to those already trusted).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trust_pem(pem.into());
        self
    }

    /// Adds `pem` to the trusted certificates.
    fn trust_pem(&mut self, pem: Vec<u8>) {
        match &mut self.trust {
            Some(Trust::Pem(trusted)) => {
                trusted.push(b'\n');
                trusted.extend(pem);
            }
            _ => self.trust = Some(Trust::Pem(pem)),
        }
    }

    /// Accepts any broker certificate. For development against a local broker only: anyone
    /// on the path can impersonate the broker. Must be asked for explicitly.
    pub fn insecure_dev_mode(mut self) -> Self {
        self.trust = Some(Trust::Insecure);
        self
    }

    /// Presents a client certificate (mTLS); the broker names the session by its subject.
    pub fn client_cert(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some(ClientIdentity {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
        });
        self
    }

    /// Sends an auth token; the broker names the session by the principal bound to it.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// A name for this client in the broker's logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The owner label every lock of this client is shown with unless the request gives its
    /// own ([`LockRequest::owner`](crate::LockRequest::owner)), e.g. `"billing@host-3:4711"`.
    /// Default: none.
    pub fn owner(mut self, label: impl Into<String>) -> Self {
        self.owner = Bytes::from(label.into());
        self
    }

    /// Build an embedded client ([`Client::embedded`]) with this builder's options (owner
    /// label, lease margin, request timeout) instead of connecting to a broker.
    pub fn embedded(mut self) -> Self {
        self.embedded = true;
        self
    }

    /// The embedded client this builder describes: a table of its own in this process.
    fn build_embedded(self) -> Client {
        let pushes = Pushes::new();
        let conn = Conn::open_local(Engine::new(), pushes.clone());
        self.into_client(None, Vec::new(), pushes, Some(conn))
    }

    /// The client of these options, talking over `quic_config` to `targets` (none: embedded),
    /// with `current` as its connection if it already has one.
    fn into_client(
        self,
        quic_config: Option<quinn::ClientConfig>,
        targets: Vec<Target>,
        pushes: Pushes,
        current: Option<Arc<Conn>>,
    ) -> Client {
        let local = if quic_config.is_none() {
            current.clone()
        } else {
            None
        };
        Client {
            inner: Arc::new(Inner {
                quic_config,
                endpoints: Mutex::new(Endpoints::default()),
                targets,
                token: self.token,
                name: self.name,
                owner: self.owner,
                connect_timeout: self.connect_timeout,
                request_timeout: self.request_timeout,
                lease_margin: self.lease_margin,
                watchdogs: Starter::new(pushes.lease_ended.clone()),
                pushes,
                local,
                current: Mutex::new(current),
                routed: Mutex::new(HashMap::new()),
                reconnect: tokio::sync::Mutex::new(()),
                routed_connect: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// How long connecting to one address may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long a request that does not wait for a lock may take (default 10 s).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// The fixed part of a guard's safety margin (default 100 ms): [`crate::Guard::lost`]
    /// fires this long, plus 1 % of the TTL for clock-rate drift, *before* the lease's local
    /// deadline (counted from when the acquire or renewal was sent), whether or not the broker
    /// said anything. Keep it above the time your work needs to stop after `lost()` fires.
    pub fn lease_margin(mut self, d: Duration) -> Self {
        self.lease_margin = d;
        self
    }

    /// QUIC idle timeout (default 10 s) — a connection silent this long is considered lost.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// How often the client pings a quiet connection (default 2 s), so the broker does not
    /// time it out; keep it well under the idle timeouts. `Duration::ZERO` sends no pings.
    pub fn keep_alive(mut self, d: Duration) -> Self {
        self.keep_alive = d;
        self
    }

    /// Connects to the first reachable broker.
    pub async fn connect(mut self) -> Result<Client> {
        if self.embedded {
            if !self.urls.is_empty() {
                return Err(Error::Invalid(
                    "an embedded client takes no broker address".into(),
                ));
            }
            return Ok(self.build_embedded());
        }
        if let Some(e) = self.ca_error.take() {
            return Err(Error::Invalid(e));
        }
        if self.urls.is_empty() {
            return Err(Error::Invalid("no broker address given".into()));
        }
        let mut targets = Vec::new();
        for url in &self.urls {
            targets.push(parse_url(url)?);
        }
        let trust = match self.trust.take() {
            Some(t) => t,
            None => match std::env::var("LOCKBROKER_CA") {
                // Several files, comma-separated (every broker of a cluster).
                Ok(paths) => {
                    let mut pem = Vec::new();
                    for path in paths.split(',').filter(|p| !p.is_empty()) {
                        pem.extend(read_file(Path::new(path), "CA file")?);
                        pem.push(b'\n');
                    }
                    Trust::Pem(pem)
                }
                Err(_) => {
                    return Err(Error::Invalid(
                        "no CA configured: use ca_file(..) (e.g. the broker's .lockbroker/dev-cert.pem), set LOCKBROKER_CA, or opt into insecure_dev_mode()".into(),
                    ));
                }
            },
        };
        let tls = client_config(&trust, self.identity.as_ref())?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut quic_config = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval((!self.keep_alive.is_zero()).then_some(self.keep_alive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(self.idle_timeout)
                    .map_err(|e| Error::Invalid(e.to_string()))?,
            ));
        quic_config.transport_config(Arc::new(transport));
        let client = self.into_client(Some(quic_config), targets, Pushes::new(), None);
        client.conn().await?;
        Ok(client)
    }
}

/// A broker address as configured: a host (name or IP literal, also the TLS server name) and
/// a port. Resolved on every connect.
#[derive(Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// The socket addresses the host resolves to now, in the resolver's order, without
    /// duplicates (IP literals resolve to themselves without a lookup).
    async fn resolve(&self) -> Result<Vec<SocketAddr>> {
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Error::Connect(format!("cannot resolve {}: {e}", self.host)))?;
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for a in found {
            if !addrs.contains(&a) {
                addrs.push(a);
            }
        }
        if addrs.is_empty() {
            return Err(Error::Connect(format!("{} has no address", self.host)));
        }
        Ok(addrs)
    }

    /// [`Target::resolve`], failing after `limit`.
    async fn resolve_within(&self, limit: Duration) -> Result<Vec<SocketAddr>> {
        tokio::time::timeout(limit, self.resolve())
            .await
            .map_err(|_| Error::Connect(format!("{self:?}: resolving timed out")))?
    }
}

/// Parses `quic://host:port` (the scheme and the port are optional) into a [`Target`]. Does
/// not resolve the host.
fn parse_url(url: &str) -> Result<Target> {
    let rest = url.strip_prefix("quic://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !p.contains(']') => (
            h,
            p.parse::<u16>()
                .map_err(|_| Error::Invalid(format!("bad port in broker URL {url:?}")))?,
        ),
        _ => (rest, lockbroker_proto::DEFAULT_PORT),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(Error::Invalid(format!("no host in broker URL {url:?}")));
    }
    Ok(Target {
        host: host.to_owned(),
        port,
    })
}

/// The client's UDP endpoints, one per address family, opened on first use.
#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

struct Inner {
    /// QUIC settings (`None` for an embedded client).
    quic_config: Option<quinn::ClientConfig>,
    endpoints: Mutex<Endpoints>,
    targets: Vec<Target>,
    token: Option<String>,
    name: String,
    /// The default owner label of this client's locks.
    owner: Bytes,
    connect_timeout: Duration,
    request_timeout: Duration,
    lease_margin: Duration,
    /// Where every connection of this client passes the broker's pushes: `LeaseEnded` (guards'
    /// watchdogs subscribe) and the cluster's shard map.
    pushes: Pushes,
    /// Starts guards' watchdogs when they first have work.
    watchdogs: Arc<Starter>,
    current: Mutex<Option<Arc<Conn>>>,
    /// An embedded client's one connection to its engine (it never reconnects; `None` for a
    /// broker's client).
    local: Option<Arc<Conn>>,
    /// Cluster mode: connections to the brokers that own the shards of the keys used, by URL.
    routed: Mutex<HashMap<String, Arc<Conn>>>,
    /// One reconnect of the client's own connection at a time.
    reconnect: tokio::sync::Mutex<()>,
    /// One connect to a shard's owner at a time.
    routed_connect: tokio::sync::Mutex<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(conn) = self.current.get_mut().ok().and_then(|c| c.take()) {
            conn.close();
        }
        if let Ok(routed) = self.routed.get_mut() {
            for (_, conn) in routed.drain() {
                conn.close();
            }
        }
    }
}

/// A connection to a lockbroker (cheap to clone; clones share the connection).
///
/// ```no_run
/// # async fn demo() -> lockbroker_sdk::Result<()> {
/// use std::time::Duration;
/// let client = lockbroker_sdk::Client::builder()
///     .broker("quic://127.0.0.1:7420")
///     .ca_file(".lockbroker/dev-cert.pem")
///     .connect()
///     .await?;
/// let guard = client
///     .lock("jobs/nightly")
///     .ttl(Duration::from_secs(30))
///     .wait(Duration::from_secs(5))
///     .await?;
/// println!("holding {} with fencing token {}", guard.key_str(), guard.fence());
/// guard.unlock().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("brokers", &self.inner.targets)
            .finish()
    }
}

impl Client {
    /// Connects to one broker URL, trusting the CA named by `LOCKBROKER_CA`.
    pub async fn connect(url: &str) -> Result<Client> {
        Client::builder().broker(url).connect().await
    }

    /// A client with its own lock table in this process: the same `Client` — `lock`,
    /// `try_lock`, `read_lock`, `semaphore`, `inspect`, `wait_until_unlocked`, guards with
    /// fences, TTLs, renewals and `lost()`, FIFO queues, lock-delay — with no broker, network
    /// or TLS. Clones share the table; another `Client::embedded()` has a table of its own.
    /// For a monolith, tests and tools; code written against `Client` moves to a broker by
    /// changing only how the client is built. Needs a tokio runtime when used (its timer runs
    /// as a task).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> lockbroker_sdk::Result<()> {
    /// let client = lockbroker_sdk::Client::embedded();
    /// let guard = client.lock("accounts/42").await?;
    /// assert!(client.try_lock("accounts/42").await.is_err());
    /// guard.unlock().await?;
    /// # Ok(()) }
    /// ```
    pub fn embedded() -> Client {
        ClientBuilder::default().build_embedded()
    }

    /// A builder for every option.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// An exclusive lock on `key`; configure and `.await` it. Waits forever unless told otherwise.
    pub fn lock(&self, key: impl Into<Bytes>) -> LockRequest {
        LockRequest::new(self.clone(), key.into(), lockbroker_proto::Mode::Exclusive)
    }

    /// An exclusive lock that fails at once with [`Error::Busy`] when held.
    pub fn try_lock(&self, key: impl Into<Bytes>) -> LockRequest {
        self.lock(key).no_wait()
    }

    /// A shared (read) lock: many readers at once, never with a writer.
    pub fn read_lock(&self, key: impl Into<Bytes>) -> LockRequest {
        LockRequest::new(self.clone(), key.into(), lockbroker_proto::Mode::Shared)
    }

    /// One of `permits` slots of a counting semaphore on `key`.
    pub fn semaphore(&self, key: impl Into<Bytes>, permits: u32) -> LockRequest {
        LockRequest::new(
            self.clone(),
            key.into(),
            lockbroker_proto::Mode::Semaphore(permits),
        )
    }

    /// Holders, fencing tokens, remaining TTLs and waiters of `key`.
    pub async fn inspect(&self, key: impl Into<Bytes>) -> Result<LockInfo> {
        let key = key.into();
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

    /// Waits until nobody holds `key`; tells whether the last holder released it or its lease
    /// expired. Returns at once with `Released` when the key is free.
    pub async fn wait_until_unlocked(&self, key: impl Into<Bytes>) -> Result<UnlockOutcome> {
        self.wait_unlocked(key.into(), WaitSpec::Forever).await
    }

    /// Like [`Client::wait_until_unlocked`], failing with [`Error::Timeout`] after `timeout`.
    pub async fn wait_until_unlocked_for(
        &self,
        key: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<UnlockOutcome> {
        self.wait_unlocked(key.into(), WaitSpec::Millis(millis(timeout)))
            .await
    }

    async fn wait_unlocked(&self, key: Bytes, wait: WaitSpec) -> Result<UnlockOutcome> {
        let (deadline, wait_end) = for_wait(wait, self.inner.request_timeout);
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

    /// The broker's session id for the current connection.
    pub async fn session_id(&self) -> Result<u64> {
        Ok(self.conn().await?.welcome().session)
    }

    /// The principal the broker identified this client as.
    pub async fn principal(&self) -> Result<String> {
        Ok(self.conn().await?.welcome().principal.clone())
    }

    /// Closes the client's connections cleanly (to every broker of a cluster it talked to):
    /// the brokers release every lease of this client at once.
    pub async fn close(&self) {
        let conn = self
            .inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(conn) = conn {
            conn.close();
        }
        let routed: Vec<Arc<Conn>> = self
            .inner
            .routed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        for conn in routed {
            conn.close();
        }
        let endpoints: Vec<quinn::Endpoint> = {
            let e = self
                .inner
                .endpoints
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            e.v4.iter().chain(e.v6.iter()).cloned().collect()
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for endpoint in &endpoints {
                endpoint.wait_idle().await;
            }
        })
        .await;
    }

    /// The default owner label of this client's locks (empty: none).
    pub(crate) fn default_owner(&self) -> Bytes {
        self.inner.owner.clone()
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.inner.request_timeout
    }

    /// The client's watchdog starter (`watchdogs.rs`).
    pub(crate) fn watchdogs(&self) -> &Arc<Starter> {
        &self.inner.watchdogs
    }

    /// Subscribes to the broker's `LeaseEnded` pushes: (fence, reason, why).
    pub(crate) fn lease_ended(&self) -> tokio::sync::broadcast::Receiver<crate::routing::LeaseEnd> {
        self.inner.pushes.lease_ended.subscribe()
    }

    /// The connection for requests on `key`: in cluster mode, to the broker the shard map says
    /// serves it (connected on first use); otherwise — or if that broker cannot be reached —
    /// the client's one connection.
    pub(crate) async fn conn_for(&self, key: &[u8]) -> Result<Arc<Conn>> {
        if self.inner.local.is_some() {
            return self.conn().await;
        }
        let Some(url) = self.inner.pushes.routes.owner(key) else {
            return self.conn().await;
        };
        if let Some(c) = self.routed_conn(&url) {
            return Ok(c);
        }
        // Boxed, as in `conn`.
        Box::pin(self.connect_routed(key, url)).await
    }

    /// Connects to `url`, the owner of `key`'s shard. If it has not answered within
    /// [`STAGGER`], the client's own connection races it (its broker serves the key or answers
    /// `Moved` with where the shard is now): a dead owner costs a moment, not a connect
    /// timeout. If it cannot be reached, the client's own connection it is.
    async fn connect_routed(&self, key: &[u8], url: String) -> Result<Arc<Conn>> {
        let routed = async {
            let _one_at_a_time = self.inner.routed_connect.lock().await;
            if let Some(c) = self.routed_conn(&url) {
                return Ok(c);
            }
            let conn = self.connect_url(&url).await?;
            self.inner
                .routed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(url.clone(), conn.clone());
            Ok::<_, Error>(conn)
        };
        let fallback = async {
            tokio::time::sleep(STAGGER).await;
            self.conn().await
        };
        tokio::select! {
            r = routed => match r {
                Ok(conn) => Ok(conn),
                // Not an outage: this client does not trust that broker. Say so.
                Err(e @ Error::Tls(_)) => Err(e),
                Err(e) => {
                    // Forget that owner until a broker names one again: the default
                    // connection's broker answers `Moved` with the shard's real owner (or
                    // none, during a takeover).
                    tracing::debug!(%url, "cannot reach the shard's owner: {e}");
                    self.inner.pushes.routes.moved(key, "");
                    self.conn().await
                }
            },
            c = fallback => c,
        }
    }

    /// A usable routed connection to `url` (closed or left ones are forgotten).
    fn routed_conn(&self, url: &str) -> Option<Arc<Conn>> {
        let mut routed = self.inner.routed.lock().unwrap_or_else(|e| e.into_inner());
        match routed.get(url) {
            Some(c) if c.is_usable() => Some(c.clone()),
            Some(_) => {
                routed.remove(url);
                None
            }
            None => None,
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
        let mut current = self.inner.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
        }
        drop(current);
        self.inner
            .routed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, c| !Arc::ptr_eq(c, conn));
    }

    /// The shard map and its changes.
    pub(crate) fn routes(&self) -> &Routes {
        &self.inner.pushes.routes
    }

    /// Connects to the broker at `url` (`quic://host:port`).
    async fn connect_url(&self, url: &str) -> Result<Arc<Conn>> {
        self.connect_target(&parse_url(url)?).await
    }

    /// Resolves `target` (again on every call: the broker may have moved) and connects to the
    /// first of its addresses that answers. A refusal by the broker (`Denied`) ends the try.
    async fn connect_target(&self, target: &Target) -> Result<Arc<Conn>> {
        let mut last_error = Error::Connect(format!("{target:?}: no address"));
        for addr in target.resolve_within(self.inner.connect_timeout).await? {
            match self.connect_to(&target.host, addr).await {
                Ok(conn) => return Ok(conn),
                Err(e @ (Error::Denied(_) | Error::Tls(_))) => return Err(e),
                Err(e) => {
                    tracing::debug!(%addr, "connect failed: {e}");
                    last_error = e;
                }
            }
        }
        Err(last_error)
    }

    /// True once a broker pushed a shard map: this client talks to a cluster.
    pub(crate) fn is_clustered(&self) -> bool {
        self.inner.pushes.routes.is_known()
    }

    /// A broker answered `Moved` for `key`: remember where its shard is served now.
    pub(crate) fn note_moved(&self, key: &[u8], url: &str) {
        self.inner.pushes.routes.moved(key, url);
    }

    /// How long before its local deadline a lease of `ttl` is reported lost: the fixed margin
    /// plus the clock drift over the TTL, at most half the TTL.
    pub(crate) fn lease_margin(&self, ttl: Duration) -> Duration {
        (self.inner.lease_margin + ttl.mul_f64(CLOCK_DRIFT)).min(ttl / 2)
    }

    /// An embedded client's connection (open or closed: [`Conn::local`] tells).
    pub(crate) fn local_conn(&self) -> Option<&Arc<Conn>> {
        self.inner.local.as_ref()
    }

    /// The live connection, reconnecting if it is gone.
    pub(crate) async fn conn(&self) -> Result<Arc<Conn>> {
        if let Some(c) = &self.inner.local {
            return if c.is_closed() {
                Err(c.disconnected())
            } else {
                Ok(c.clone())
            };
        }
        if let Some(c) = self.current_conn() {
            return Ok(c);
        }
        // Boxed: connecting (resolve, QUIC and TLS handshakes, Hello) is rare, and its state
        // would otherwise sit inline in every request's future.
        Box::pin(self.reconnect()).await
    }

    /// Connects to the first broker of the list that answers (one reconnect at a time).
    async fn reconnect(&self) -> Result<Arc<Conn>> {
        let _one_at_a_time = self.inner.reconnect.lock().await;
        if let Some(c) = self.current_conn() {
            return Ok(c);
        }
        let conn = self.connect_first().await?;
        *self.inner.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.clone());
        Ok(conn)
    }

    /// Connects to the brokers of the list in order, each started [`STAGGER`] after the one
    /// before (at once once that one failed): the first to answer wins, the others are closed.
    /// A dead broker early in the list costs a moment, not a connect timeout. A refusal
    /// (`Denied`) ends the try.
    async fn connect_first(&self) -> Result<Arc<Conn>> {
        let mut tries = tokio::task::JoinSet::new();
        let mut next = 0;
        let mut last_error = Error::Connect("no broker address".into());
        let winner = loop {
            if next < self.inner.targets.len() {
                let (client, target) = (self.clone(), self.inner.targets[next].clone());
                tries.spawn(async move {
                    let r = client.connect_target(&target).await;
                    (target, r)
                });
                next += 1;
            }
            let more = next < self.inner.targets.len();
            let done = tokio::select! {
                done = tries.join_next() => done,
                () = tokio::time::sleep(STAGGER), if more => continue,
            };
            match done {
                None => break Err(last_error),
                Some(Ok((_, Ok(conn)))) => break Ok(conn),
                Some(Ok((_, Err(e @ (Error::Denied(_) | Error::Tls(_)))))) => break Err(e),
                Some(Ok((target, Err(e)))) => {
                    tracing::debug!(?target, "{e}");
                    last_error = e;
                }
                Some(Err(e)) => last_error = Error::Connect(format!("connect task: {e}")),
            }
        };
        // Connections that answered too late are closed (each opened a session).
        tries.abort_all();
        while let Some(done) = tries.join_next().await {
            if let Ok((_, Ok(conn))) = done {
                conn.close();
            }
        }
        winner
    }

    /// The UDP endpoint for `addr`'s address family, opened on first use.
    fn endpoint_for(&self, addr: SocketAddr) -> Result<quinn::Endpoint> {
        let mut endpoints = self
            .inner
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (slot, bind) = if addr.is_ipv6() {
            (&mut endpoints.v6, SocketAddr::from(([0u16; 8], 0)))
        } else {
            (&mut endpoints.v4, SocketAddr::from(([0u8; 4], 0)))
        };
        if let Some(endpoint) = slot {
            return Ok(endpoint.clone());
        }
        let endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| Error::Connect(format!("{addr}: cannot open a UDP socket: {e}")))?;
        *slot = Some(endpoint.clone());
        Ok(endpoint)
    }

    /// The live connection if there is one (no reconnect; usable from `Drop`).
    pub(crate) fn current_conn(&self) -> Option<Arc<Conn>> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|c| c.is_usable())
            .cloned()
    }

    async fn connect_to(&self, name: &str, addr: SocketAddr) -> Result<Arc<Conn>> {
        let endpoint = self.endpoint_for(addr)?;
        let attempt = async {
            let connecting = endpoint
                .connect_with(
                    self.inner.quic_config.clone().ok_or_else(|| {
                        Error::Connect("an embedded client has no network".into())
                    })?,
                    addr,
                    name,
                )
                .map_err(|e| Error::Connect(format!("{addr}: {e}")))?;
            let quic = connecting.await.map_err(|e| connect_error(name, addr, e))?;
            let pushes = self.inner.pushes.clone();
            Conn::open(
                format!("{name}:{}", addr.port()),
                quic,
                self.inner.token.clone(),
                self.inner.name.clone(),
                pushes,
            )
            .await
        };
        tokio::time::timeout(self.inner.connect_timeout, attempt)
            .await
            .map_err(|_| Error::Connect(format!("{addr}: timed out")))?
    }

    /// Sends one request on `key` that answers at once and waits (bounded) for the answer, at
    /// the broker that serves the key (following `Moved` answers: the retry policy, bounded by
    /// the request timeout).
    pub(crate) async fn round_trip(
        &self,
        key: &[u8],
        build: impl Fn(u64) -> Frame,
    ) -> Result<Frame> {
        let timeout = self.inner.request_timeout;
        let deadline = Deadline::At(Instant::now() + timeout);
        retry(self, key, Kind::Request, deadline, |conn| {
            let build = &build;
            async move { step(ask(self, &conn, timeout, build).await?) }
        })
        .await
    }
}

/// A failed QUIC handshake with broker `name` at `addr`: a TLS failure (the broker's
/// certificate is not trusted, say) is [`Error::Tls`], naming the broker; anything else
/// [`Error::Connect`].
fn connect_error(name: &str, addr: SocketAddr, e: quinn::ConnectionError) -> Error {
    if let quinn::ConnectionError::TransportError(t) = &e {
        let code = u64::from(t.code);
        if (0x100..0x200).contains(&code) {
            return Error::Tls(format!(
                "broker {name} ({addr}): {e} (is its certificate among the trusted CAs?)"
            ));
        }
    }
    Error::Connect(format!("{addr}: {e}"))
}

/// How long a connect to one broker runs alone before the next is tried alongside it.
const STAGGER: Duration = Duration::from_millis(250);

/// The answer to one waiting request (acquire or wait-for-unlock). Dropped before the answer
/// was taken — a timeout, a `select!` — it gives the request up: cancelled on the broker if
/// still pending, and a grant that already arrived (or crosses the cancel) is released.
pub(crate) struct PendingReply {
    conn: Arc<Conn>,
    id: u64,
    /// The key of an acquire (a grant for it must be released if given up); `None` otherwise.
    key: Option<Bytes>,
    rx: Option<tokio::sync::oneshot::Receiver<Frame>>,
}

impl PendingReply {
    pub(crate) fn new(
        conn: &Arc<Conn>,
        id: u64,
        key: Option<Bytes>,
        rx: tokio::sync::oneshot::Receiver<Frame>,
    ) -> Self {
        PendingReply {
            conn: conn.clone(),
            id,
            key,
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
            self.conn.give_up(self.id, self.key.take(), rx);
        }
    }
}

pub(crate) fn unexpected(frame: Frame) -> Error {
    match frame {
        Frame::Error { code, message, .. } => Error::from_wire(code, message),
        other => Error::Protocol(format!("unexpected answer {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{ClientBuilder, Target, parse_url};
    use crate::Error;

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn urls_parse_with_and_without_scheme_and_port() {
        assert_eq!(
            parse_url("quic://127.0.0.1:7421").unwrap(),
            target("127.0.0.1", 7421)
        );
        assert_eq!(parse_url("127.0.0.1").unwrap(), target("127.0.0.1", 7420));
        assert_eq!(
            parse_url("quic://[::1]:9000/").unwrap(),
            target("::1", 9000)
        );
        assert_eq!(
            parse_url("quic://localhost:7420").unwrap(),
            target("localhost", 7420)
        );
        assert!(parse_url("quic://127.0.0.1:notaport").is_err());
        assert!(parse_url("quic://").is_err());
        assert_eq!(format!("{:?}", target("::1", 9000)), "[::1]:9000");
    }

    #[test]
    fn parsing_does_not_resolve() {
        // A name no resolver knows parses fine: it is looked up when connecting.
        assert_eq!(
            parse_url("quic://broker.invalid:7420").unwrap(),
            target("broker.invalid", 7420)
        );
    }

    #[tokio::test]
    async fn localhost_resolves_through_the_async_resolver() {
        let addrs = target("localhost", 7421).resolve().await.unwrap();
        assert!(!addrs.is_empty());
        for a in &addrs {
            assert!(a.ip().is_loopback(), "{a}");
            assert_eq!(a.port(), 7421);
        }
        let mut unique = addrs.clone();
        unique.dedup();
        assert_eq!(unique.len(), addrs.len());
    }

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves() {
        let addrs = target("127.0.0.1", 9).resolve().await.unwrap();
        assert_eq!(addrs, vec!["127.0.0.1:9".parse().unwrap()]);
        let addrs = target("::1", 9).resolve().await.unwrap();
        assert_eq!(addrs, vec!["[::1]:9".parse().unwrap()]);
    }

    #[test]
    fn every_setter_reaches_the_builder() {
        let b = ClientBuilder::default()
            .broker("quic://a:1")
            .broker("quic://b:2")
            .ca_pem("pem")
            .client_cert("cert", "key")
            .token("t")
            .name("n")
            .connect_timeout(Duration::from_millis(1))
            .request_timeout(Duration::from_millis(2))
            .keep_alive(Duration::from_millis(3))
            .idle_timeout(Duration::from_millis(4))
            .lease_margin(Duration::from_millis(5));
        assert_eq!(b.lease_margin, Duration::from_millis(5));
        assert_eq!(b.urls, ["quic://a:1", "quic://b:2"]);
        assert!(matches!(&b.trust, Some(crate::tls::Trust::Pem(p)) if p == b"pem"));
        let id = b.identity.as_ref().unwrap();
        assert_eq!(
            (&id.cert_pem[..], &id.key_pem[..]),
            (&b"cert"[..], &b"key"[..])
        );
        assert_eq!(b.token.as_deref(), Some("t"));
        assert_eq!(b.name, "n");
        assert_eq!(b.connect_timeout, Duration::from_millis(1));
        assert_eq!(b.request_timeout, Duration::from_millis(2));
        assert_eq!(b.keep_alive, Duration::from_millis(3));
        assert_eq!(b.idle_timeout, Duration::from_millis(4));

        let b = b.insecure_dev_mode();
        assert!(matches!(b.trust, Some(crate::tls::Trust::Insecure)));
        let b = b.ca_file("/nonexistent/ca.pem");
        assert!(b.ca_error.as_deref().unwrap().contains("CA file"));
    }

    #[tokio::test]
    async fn connecting_resolves_names_and_reports_the_address_tried() {
        // Nothing listens there: the resolved address is tried and the attempt times out.
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let r = ClientBuilder::default()
            .broker(format!("quic://localhost:{port}"))
            .insecure_dev_mode()
            .connect_timeout(Duration::from_millis(200))
            .connect()
            .await;
        match r {
            Err(Error::Connect(m)) => assert!(m.contains(&port.to_string()), "message: {m}"),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unknown_host_fails_to_connect_not_to_build() {
        let r = ClientBuilder::default()
            .broker("quic://no-such-broker.invalid:7420")
            .insecure_dev_mode()
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await;
        assert!(matches!(r, Err(Error::Connect(_))), "{r:?}");
    }
}
