//! A networked client's links to its brokers: the client's own connection (`current`, to the
//! first broker of the list that answers, reconnected lazily when gone) and, in cluster mode,
//! one connection per broker that owns the shard of a key used (`routed`, by URL, connected on
//! first use). Connecting races the list with a [`STAGGER`] between starts, so a dead broker
//! early in the list costs a moment, not a connect timeout. The UDP endpoint of an address
//! family is opened the first time an address of that family is tried. A live connection is
//! [`Conn`] (one mutex for all its state, see `conn.rs`). A list of brokers is for the members
//! of one cluster only: a broker that sends no shard map, or of another cluster (another
//! identity), is refused — independent brokers would each grant the same key. A broker left
//! for not answering is *silent* (`silence.rs`) until a probe's handshake is answered: the
//! client's own connection moves to another broker at once (its pushes keep coming), and
//! requests for the silent broker's shards go to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::silence::{PROBE_EVERY, SILENCE_AT_MOST, Silence};
use super::target::{Target, parse_url};
use crate::conn::Conn;
use crate::error::{Error, Result};
use crate::shards::Pushes;

/// How long a connect to one broker runs alone before the next is tried alongside it.
pub(crate) const STAGGER: Duration = Duration::from_millis(250);

/// What connecting needs: QUIC settings, the brokers, the credentials.
pub(crate) struct Dial {
    pub(crate) quic_config: quinn::ClientConfig,
    pub(crate) targets: Vec<Target>,
    pub(crate) token: Option<String>,
    pub(crate) name: String,
    pub(crate) connect_timeout: Duration,
}

/// The client's UDP endpoints, one per address family, opened on first use.
#[derive(Default)]
struct Endpoints {
    v4: Option<quinn::Endpoint>,
    v6: Option<quinn::Endpoint>,
}

/// The connections of a networked client.
pub(crate) struct Brokers {
    dial: Dial,
    /// Where every connection passes the broker's pushes (`LeaseEnded`, the shard map).
    pushes: Pushes,
    endpoints: Mutex<Endpoints>,
    current: Mutex<Option<Arc<Conn>>>,
    /// Cluster mode: connections to the brokers that own the shards of the keys used, by URL.
    routed: Mutex<HashMap<String, Arc<Conn>>>,
    /// One reconnect of the client's own connection at a time.
    reconnect: tokio::sync::Mutex<()>,
    /// One connect to a shard's owner at a time.
    routed_connect: tokio::sync::Mutex<()>,
    /// A client of several brokers: the identity of their cluster (first broker reached).
    cluster: Mutex<Option<u64>>,
    /// Brokers left for not answering, until they answer again.
    silence: Silence,
}

impl Drop for Brokers {
    fn drop(&mut self) {
        if let Some(conn) = self.current.get_mut().take() {
            conn.close();
        }
        for (_, conn) in self.routed.get_mut().drain() {
            conn.close();
        }
    }
}

impl std::fmt::Debug for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.dial.targets).finish()
    }
}

impl Brokers {
    pub(crate) fn new(dial: Dial, pushes: Pushes) -> Arc<Brokers> {
        Arc::new(Brokers {
            dial,
            pushes,
            endpoints: Mutex::new(Endpoints::default()),
            current: Mutex::new(None),
            routed: Mutex::new(HashMap::new()),
            reconnect: tokio::sync::Mutex::new(()),
            routed_connect: tokio::sync::Mutex::new(()),
            cluster: Mutex::new(None),
            silence: Silence::default(),
        })
    }

    /// The client's own connection, reconnecting if it is gone.
    pub(crate) async fn conn(self: &Arc<Self>) -> Result<Arc<Conn>> {
        if let Some(c) = self.current_conn() {
            return Ok(c);
        }
        // Boxed: connecting (resolve, QUIC and TLS handshakes, Hello) is rare, and its state
        // would otherwise sit inline in every request's future.
        Box::pin(self.reconnect()).await
    }

    /// The connection to `url`, the owner of `key`'s shard (connected on first use).
    pub(crate) async fn conn_to(self: &Arc<Self>, key: &[u8], url: String) -> Result<Arc<Conn>> {
        if let Some(c) = self.routed_conn(&url) {
            return Ok(c);
        }
        if self.is_silent(&url) {
            // Its lease may still name it; the client's own broker says when it no longer does.
            return self.conn().await;
        }
        // Boxed, as in `conn`.
        Box::pin(self.connect_routed(key, url)).await
    }

    /// The live connection if there is one (no reconnect; usable from `Drop`).
    pub(crate) fn current_conn(&self) -> Option<Arc<Conn>> {
        self.current
            .lock()
            .as_ref()
            .filter(|c| c.is_usable())
            .cloned()
    }

    /// Stops using `conn` for new requests (the next request connects again).
    fn forget(&self, conn: &Arc<Conn>) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            *current = None;
        }
        drop(current);
        self.routed.lock().retain(|_, c| !Arc::ptr_eq(c, conn));
    }

    /// Leaves `conn`, whose broker did not answer in time, and every other connection to that
    /// broker: no new request goes there, the broker is silent until a probe is answered, and
    /// if the client's own connection went there another broker of the list becomes it at once
    /// (so the cluster's pushes keep arriving).
    pub(crate) fn left_silent(self: &Arc<Self>, conn: &Arc<Conn>) {
        let Some(target) = parse_url(conn.addr()).ok().filter(|_| self.is_list()) else {
            self.forget(conn);
            return;
        };
        let same =
            |c: &Arc<Conn>| Arc::ptr_eq(c, conn) || parse_url(c.addr()).is_ok_and(|t| t == target);
        // Reconnected at once if the client's own connection went to that broker, or it has
        // none (no pushes would arrive).
        let reconnect = {
            let mut current = self.current.lock();
            match current.take_if(|c| same(c)) {
                Some(c) => {
                    c.leave();
                    true
                }
                None => current.is_none(),
            }
        };
        self.routed.lock().retain(|_, c| {
            let keep = !same(c);
            if !keep {
                c.leave();
            }
            keep
        });
        if self.silence.mark(&target) {
            tokio::spawn(probe(Arc::downgrade(self), target));
        }
        if reconnect {
            let brokers = self.clone();
            tokio::spawn(async move {
                if let Err(e) = brokers.conn().await {
                    tracing::debug!("no other broker answers: {e}");
                }
            });
        }
    }

    /// Whether the broker at `url` was left for not answering and has not answered since.
    pub(crate) fn is_silent(&self, url: &str) -> bool {
        parse_url(url).is_ok_and(|t| self.silence.contains(&t))
    }

    /// Closes every connection cleanly and waits (at most 1 s) for the brokers to hear it.
    pub(crate) async fn close(&self) {
        let conn = self.current.lock().take();
        if let Some(conn) = conn {
            conn.close();
        }
        let routed: Vec<Arc<Conn>> = self.routed.lock().drain().map(|(_, c)| c).collect();
        for conn in routed {
            conn.close();
        }
        let endpoints: Vec<quinn::Endpoint> = {
            let e = self.endpoints.lock();
            e.v4.iter().chain(e.v6.iter()).cloned().collect()
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            for endpoint in &endpoints {
                endpoint.wait_idle().await;
            }
        })
        .await;
    }

    /// Connects to `url`, the owner of `key`'s shard. If it has not answered within
    /// [`STAGGER`], the client's own connection races it (its broker serves the key or answers
    /// `Moved` with where the shard is now): a dead owner costs a moment, not a connect
    /// timeout. If it cannot be reached, the client's own connection it is.
    async fn connect_routed(self: &Arc<Self>, key: &[u8], url: String) -> Result<Arc<Conn>> {
        let routed = async {
            let _one_at_a_time = self.routed_connect.lock().await;
            if let Some(c) = self.routed_conn(&url) {
                return Ok(c);
            }
            let conn = self.connect_target(&parse_url(&url)?).await?;
            self.routed.lock().insert(url.clone(), conn.clone());
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
                    self.pushes.routes.moved(key, "");
                    self.conn().await
                }
            },
            c = fallback => c,
        }
    }

    /// A usable routed connection to `url` (closed or left ones are forgotten).
    fn routed_conn(&self, url: &str) -> Option<Arc<Conn>> {
        let mut routed = self.routed.lock();
        match routed.get(url) {
            Some(c) if c.is_usable() => Some(c.clone()),
            Some(_) => {
                routed.remove(url);
                None
            }
            None => None,
        }
    }

    /// Connects to the first broker of the list that answers (one reconnect at a time).
    async fn reconnect(self: &Arc<Self>) -> Result<Arc<Conn>> {
        let _one_at_a_time = self.reconnect.lock().await;
        if let Some(c) = self.current_conn() {
            return Ok(c);
        }
        let conn = self.connect_first().await?;
        *self.current.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Connects to the brokers of the list in order, each started [`STAGGER`] after the one
    /// before (at once once that one failed): the first to answer wins, the others are closed.
    /// A refusal (`Denied`, an untrusted certificate) ends the try.
    async fn connect_first(self: &Arc<Self>) -> Result<Arc<Conn>> {
        let targets = &self.silence.answering_first(&self.dial.targets);
        let mut tries = tokio::task::JoinSet::new();
        let mut next = 0;
        let mut last_error = Error::Connect("no broker address".into());
        let winner = loop {
            if next < targets.len() {
                let (brokers, target) = (self.clone(), targets[next].clone());
                tries.spawn(async move {
                    let r = brokers.connect_target(&target).await;
                    (target, r)
                });
                next += 1;
            }
            let more = next < targets.len();
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

    /// Resolves `target` (again on every call: the broker may have moved) and connects to the
    /// first of its addresses that answers. A refusal by the broker (`Denied`) ends the try.
    async fn connect_target(&self, target: &Target) -> Result<Arc<Conn>> {
        let mut last_error = Error::Connect(format!("{target:?}: no address"));
        for addr in target.resolve_within(self.dial.connect_timeout).await? {
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

    /// The UDP endpoint for `addr`'s address family, opened on first use.
    fn endpoint_for(&self, addr: SocketAddr) -> Result<quinn::Endpoint> {
        let mut endpoints = self.endpoints.lock();
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

    async fn connect_to(&self, name: &str, addr: SocketAddr) -> Result<Arc<Conn>> {
        let endpoint = self.endpoint_for(addr)?;
        let attempt = async {
            let connecting = endpoint
                .connect_with(self.dial.quic_config.clone(), addr, name)
                .map_err(|e| Error::Connect(format!("{addr}: {e}")))?;
            let quic = connecting.await.map_err(|e| connect_error(name, addr, e))?;
            Conn::open(
                format!("{name}:{}", addr.port()),
                quic,
                self.dial.token.clone(),
                self.dial.name.clone(),
                self.pushes.clone(),
                self.is_list().then_some(self.dial.connect_timeout / 2),
            )
            .await
        };
        let conn = tokio::time::timeout(self.dial.connect_timeout, attempt)
            .await
            .map_err(|_| Error::Connect(format!("{addr}: timed out")))??;
        self.same_cluster(&conn)?;
        Ok(conn)
    }

    /// Whether the client was given several brokers (members of one cluster, then).
    fn is_list(&self) -> bool {
        self.dial.targets.len() > 1
    }

    /// A client of several brokers: `conn`'s broker must be of the same cluster as the first
    /// one this client reached (brokers of one cluster share its key, and so their identity).
    fn same_cluster(&self, conn: &Arc<Conn>) -> Result<()> {
        if !self.is_list() {
            return Ok(());
        }
        let id = conn.welcome().broker_id;
        let mut cluster = self.cluster.lock();
        match *cluster {
            None => {
                *cluster = Some(id);
                Ok(())
            }
            Some(known) if known == id => Ok(()),
            Some(_) => {
                conn.close();
                Err(Error::Invalid(format!(
                    "{} belongs to another cluster than the brokers reached before: a list of \
                     brokers is only for the members of one cluster",
                    conn.addr()
                )))
            }
        }
    }
}

/// Connects to silent broker `target` every [`PROBE_EVERY`] until it answers (its silence
/// ends; the probe's connection is closed) or [`SILENCE_AT_MOST`] passed, or the client is gone.
async fn probe(brokers: std::sync::Weak<Brokers>, target: Target) {
    let started = tokio::time::Instant::now();
    while started.elapsed() < SILENCE_AT_MOST {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(b) = brokers.upgrade() else { return };
        let answered = tokio::time::timeout(
            b.dial.connect_timeout.min(Duration::from_secs(1)),
            b.connect_target(&target),
        )
        .await;
        if let Ok(Ok(conn)) = answered {
            conn.close();
            tracing::debug!(?target, "the silent broker answers again");
            break;
        }
    }
    if let Some(b) = brokers.upgrade() {
        b.silence.lift(&target);
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
