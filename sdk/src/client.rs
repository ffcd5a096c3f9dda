//! `Client` and `ClientBuilder`: the SDK's public face. The builder turns options into a
//! [`Route`] (`route/`: links, connection choice, reconnects, DNS, the one retry policy);
//! `Client` is a handle on it that starts requests (`lock`, `lock_all`, `inspect`, waits,
//! elections). Everything a request does after it starts lives in `lock.rs`, `lock_all.rs`,
//! `guard.rs` and `route/`, which hold the route, never the `Client`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lockbroker_core::wire::millis;
use lockbroker_proto::{Mode, UnlockOutcome, WaitSpec};

use crate::cache::LockCache;
use crate::conn::Conn;
use crate::embedded::Engine;
use crate::error::{Error, Result};
use crate::guard::Guard;
use crate::inspect::LockInfo;
use crate::lock::LockRequest;
use crate::lock_all::LockAllRequest;
use crate::route::target::parse_url;
use crate::route::{Brokers, Dial, Links, Route, Settings};
use crate::shards::{Pushes, Recalls};
use crate::tls::{ClientIdentity, Trust, client_config, read_file};

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
    /// Lock caching (`cache.rs`): how long a cached lease is kept unused; `None`: off.
    cache_idle: Option<Duration>,
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
            cache_idle: None,
        }
    }
}

/// Local grants per cached lease: the fence block asked for with it.
const CACHE_BLOCK: u32 = 1024;

/// Default fixed part of a guard's safety margin (see [`ClientBuilder::lease_margin`]).
pub const DEFAULT_LEASE_MARGIN: Duration = Duration::from_millis(100);

impl ClientBuilder {
    /// Adds a broker address (`quic://host:port`). Several may be given — the members of one
    /// cluster: the client connects to the first that answers, in order, and moves on when one
    /// fails. A broker of such a list that is not in cluster mode, or of another cluster, is
    /// refused (`Error::Invalid`): independent brokers would each grant the same key.
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

    /// Lock caching (opt-in): an exclusive lock is kept by this client after its guard
    /// unlocks, for up to `idle` unused, and the next lock of the key from this client is
    /// granted in the process — no round trip — with the next fencing token of a block the
    /// broker reserved for the lease. When another client asks for the key the broker recalls
    /// the lease: it is given back as soon as this client's current holder unlocks (local
    /// waiters then queue at the broker behind the other client). Local lockers of one key are
    /// served FIFO. Per request: [`LockRequest::cache`](crate::LockRequest::cache). Shared
    /// locks, semaphores, `lock_all` and the embedded client do not cache.
    pub fn cache_locks(mut self, idle: Duration) -> Self {
        self.cache_idle = Some(idle);
        self
    }

    /// The embedded client this builder describes: a table of its own in this process.
    fn build_embedded(self) -> Client {
        // In process already: nothing to cache.
        let pushes = Pushes::new(None);
        let conn = Conn::open_local(Engine::new(), pushes.clone());
        self.into_client(Links::Embedded(conn), pushes, None)
    }

    /// The client of these options over `links`, caching its locks in `cache`, if any.
    fn into_client(self, links: Links, pushes: Pushes, cache: Option<Arc<LockCache>>) -> Client {
        let settings = Settings {
            owner: self.owner,
            request_timeout: self.request_timeout,
            lease_margin: self.lease_margin,
        };
        Client {
            route: Route::new(links, settings, pushes),
            cache,
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
        let cache = self
            .cache_idle
            .map(|idle| LockCache::new(CACHE_BLOCK, idle));
        let recalls = cache.as_ref().map(|c| {
            let weak: std::sync::Weak<dyn Recalls> =
                Arc::downgrade(c) as std::sync::Weak<LockCache>;
            weak
        });
        let pushes = Pushes::new(recalls);
        let dial = Dial {
            quic_config,
            targets,
            token: self.token.take(),
            name: self.name.clone(),
            connect_timeout: self.connect_timeout,
        };
        let brokers = Brokers::new(dial, pushes.clone());
        let client = self.into_client(Links::Brokers(brokers), pushes, cache);
        client.route.conn().await?;
        Ok(client)
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
    route: Arc<Route>,
    /// The cached leases (`ClientBuilder::cache_locks`; `None`: this client caches none).
    cache: Option<Arc<LockCache>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("brokers", &self.route)
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
        LockRequest::new(self.route.clone(), key.into(), Mode::Exclusive)
            .cached_by(self.cache.clone())
    }

    /// An exclusive lock that fails at once with [`Error::Busy`] when held.
    pub fn try_lock(&self, key: impl Into<Bytes>) -> LockRequest {
        self.lock(key).no_wait()
    }

    /// A shared (read) lock: many readers at once, never with a writer.
    pub fn read_lock(&self, key: impl Into<Bytes>) -> LockRequest {
        LockRequest::new(self.route.clone(), key.into(), Mode::Shared)
    }

    /// One of `permits` slots of a counting semaphore on `key`.
    pub fn semaphore(&self, key: impl Into<Bytes>, permits: u32) -> LockRequest {
        LockRequest::new(self.route.clone(), key.into(), Mode::Semaphore(permits))
    }

    /// Holders, fencing tokens, remaining TTLs and waiters of `key`.
    pub async fn inspect(&self, key: impl Into<Bytes>) -> Result<LockInfo> {
        self.route.inspect(key.into()).await
    }

    /// Waits until nobody holds `key`; tells whether the last holder released it or its lease
    /// expired. Returns at once with `Released` when the key is free.
    pub async fn wait_until_unlocked(&self, key: impl Into<Bytes>) -> Result<UnlockOutcome> {
        self.route
            .wait_unlocked(key.into(), WaitSpec::Forever)
            .await
    }

    /// Like [`Client::wait_until_unlocked`], failing with [`Error::Timeout`] after `timeout`.
    pub async fn wait_until_unlocked_for(
        &self,
        key: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<UnlockOutcome> {
        let wait = WaitSpec::Millis(millis(timeout));
        self.route.wait_unlocked(key.into(), wait).await
    }

    /// Locks every one of `keys` exclusively, all at once or not at all (e.g. two accounts for a
    /// transfer): no deadlock whatever order other clients name the keys in, FIFO per key. At
    /// most 64 distinct keys. Options as for [`Client::lock`].
    pub fn lock_all<K: Into<Bytes>>(&self, keys: impl IntoIterator<Item = K>) -> LockAllRequest {
        LockAllRequest::new(
            self.route.clone(),
            keys.into_iter().map(Into::into).collect(),
        )
    }

    /// Whether anyone holds `key` now (asks the broker, or the embedded table).
    pub async fn is_locked(&self, key: impl Into<Bytes>) -> Result<bool> {
        Ok(self.inspect(key).await?.is_locked())
    }

    /// Stands for election on `key` under `label` (e.g. `"scheduler@host-3"`): resolves when
    /// this client leads, with a guard that keeps the leadership (renewed in the background)
    /// until it is dropped or unlocked — or lost: watch [`Guard::lost`] and stop leading
    /// when it fires. Candidates are granted in the order they stood (FIFO); the grant is
    /// pushed, nobody polls. Pass [`Guard::fence`] to what the leader writes so a deposed
    /// leader's late writes are refused.
    pub async fn elect(&self, key: impl Into<Bytes>, label: impl Into<String>) -> Result<Guard> {
        self.lock(key).owner(label).wait_forever().await
    }

    /// The label of the current leader of `key` (the owner label of its exclusive holder),
    /// or `None` when nobody leads (or the holder gave no label).
    pub async fn leader(&self, key: impl Into<Bytes>) -> Result<Option<String>> {
        Ok(self.inspect(key).await?.owner_label().map(str::to_owned))
    }

    /// The broker's session id for the current connection.
    pub async fn session_id(&self) -> Result<u64> {
        Ok(self.route.conn().await?.welcome().session)
    }

    /// The principal the broker identified this client as.
    pub async fn principal(&self) -> Result<String> {
        Ok(self.route.conn().await?.welcome().principal.clone())
    }

    /// Closes the client's connections cleanly (to every broker of a cluster it talked to):
    /// the brokers release every lease of this client at once.
    pub async fn close(&self) {
        self.route.close().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::ClientBuilder;
    use crate::error::Error;

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
