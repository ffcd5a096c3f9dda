//! The QUIC server: endpoint and TLS setup, the accept loop (one task per connection, one
//! session per connection), the expiry task, and graceful shutdown.
//!
//! * QUIC stateless-reset and connection-id keys are derived from the broker key, so a broker
//!   restarted on the same data dir resets its previous run's connections at once.
//! * A shutdown abandons connections still in their handshake.
//! * `admission.rs` (connections open in all and per source IP) and `handshake_rate.rs` (new
//!   connections per source IP) guard the accept loop, IPv6 sources grouped by /64
//!   (`addr_group.rs`); past `limits.retry_above_handshakes` handshakes in progress, a new
//!   connection from an address not yet validated is sent a QUIC Retry first;
//!   `principal_sessions.rs` caps sessions per principal; `session.rs` serves one connection;
//!   `auth.rs` says who it is; `cmd/` applies each request frame; `policy.rs` turns a request's
//!   key and TTL into what the table sees.

mod addr_group;
mod admission;
pub(crate) mod auth;
mod cmd;
#[cfg(fuzzing)]
pub mod fuzzing;
mod handshake_rate;
pub mod policy;
mod principal_sessions;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use session::{CLOSE_CLEAN, CLOSE_PROTOCOL_ERROR, CLOSE_SHUTDOWN, CLOSE_SLOW_READER};

use lockbroker_proto::ErrorCode;

use crate::broker::Broker;
use crate::config::Config;
use crate::tls;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind {addr}/udp: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot prepare the data dir {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("QUIC setup failed: {0}")]
    Quic(String),
}

/// A bound, not yet serving broker.
pub struct Server {
    endpoint: quinn::Endpoint,
    broker: Arc<Broker>,
    policy: Arc<policy::Policy>,
    /// The PEM file clients pass as `--ca` when the dev certificate is in use.
    pub dev_ca: Option<std::path::PathBuf>,
    /// True when this start generated the dev certificate.
    pub generated_cert: bool,
}

impl Server {
    /// Prepares the data dir (epoch, certificate) and binds the UDP socket.
    pub fn bind(cfg: Config, policy: policy::Policy) -> Result<Server, ServerError> {
        Server::bind_with(cfg, policy, None)
    }

    /// [`Server::bind`], with the lease-secret key given (cluster mode: the cluster's key, so
    /// every broker verifies every lease) instead of the data dir's own.
    pub fn bind_with(
        cfg: Config,
        policy: policy::Policy,
        cluster_key: Option<&[u8]>,
    ) -> Result<Server, ServerError> {
        let data_dir = cfg.data_dir.clone();
        let broker_identity =
            crate::identity::Identity::load_or_create(&data_dir).map_err(|source| {
                ServerError::DataDir {
                    path: data_dir.join(crate::identity::KEY_FILE),
                    source,
                }
            })?;
        // Stateless resets and connection ids keyed by the broker key, so a broker restarted on
        // the same data dir resets the connections of its previous run at once.
        let mut endpoint_config =
            quinn::EndpointConfig::new(Arc::new(broker_identity.stateless_reset_key()));
        let cid_key = broker_identity.connection_id_key();
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let broker_identity = match cluster_key {
            Some(key) => crate::identity::Identity::from_bytes(key),
            None => broker_identity,
        };
        let first = crate::epoch::first_epoch(broker_identity.id());
        let fresh = !data_dir.join("epoch").exists();
        let previous_run = crate::horizon::read_previous(&data_dir, fresh);
        let epoch =
            crate::epoch::bump(&data_dir, first).map_err(|source| ServerError::DataDir {
                path: data_dir.clone(),
                source,
            })?;
        let cert_key = cfg.tls.cert.as_deref().zip(cfg.tls.key.as_deref());
        let identity = tls::server_identity(cert_key, &data_dir)?;
        let dev_ca = identity.dev_ca.clone();
        let generated_cert = identity.generated;
        // With replicated shards the members' replication links (their own ALPN, proven by
        // the cluster key, `cluster/peer.rs`) carry no client certificate: the handshake then
        // lets a client without one through, and its session is refused right after
        // (`needs_cert` below) before it reads a frame.
        let peer_links = cfg.cluster.enabled() && cfg.cluster.replicas > 1;
        let tls = tls::server_config(
            identity,
            cfg.tls.client_ca.as_deref(),
            cfg.tls.require_client_cert && !peer_links,
        )?;
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ServerError::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_millis(cfg.quic.idle_timeout_ms))
                    .map_err(|e| ServerError::Quic(e.to_string()))?,
            ))
            .keep_alive_interval(Some(Duration::from_millis(cfg.quic.keep_alive_ms)))
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into());
        // What a client may send ahead of the broker reading it, and what the broker keeps of
        // answers not yet acknowledged: bounded by the frame and outbox sizes (quinn's defaults
        // are 1.25 MB and 10 MB a connection — 200 clients that never read pinned 467 MB).
        let window = stream_window(&cfg.limits);
        transport
            .stream_receive_window(window)
            .receive_window(window)
            .send_window(cfg.limits.max_outbox_bytes as u64);
        server_config.transport_config(Arc::new(transport));
        let bind_error = |source| ServerError::Bind {
            addr: cfg.listen,
            source,
        };
        let socket = std::net::UdpSocket::bind(cfg.listen).map_err(bind_error)?;
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(bind_error)?;
        Ok(Server {
            endpoint,
            broker: Broker::new(cfg, epoch, broker_identity, previous_run),
            policy: Arc::new(policy),
            dev_ca,
            generated_cert,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The shared broker state.
    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: stops accepting, tells
    /// every session (whose leases run on to their TTL), and waits for connections to close.
    /// A grant gate (the mirror) attached to the broker is flushed by whoever attached it.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let broker = self.broker.clone();
        let expiry = tokio::spawn(broker.clone().run_expiry());
        let _horizon_keeper = tokio::spawn(broker.clone().run_horizon_keeper());
        let mut tasks = tokio::task::JoinSet::new();
        let limits = &broker.cfg.limits;
        let admission =
            admission::Admission::new(limits.max_connections, limits.max_connections_per_ip);
        let per_principal = principal_sessions::PrincipalSessions::new(&broker.cfg);
        let handshakes = handshake_rate::HandshakeRate::new(
            limits.handshake_rate_per_ip,
            limits.handshake_burst_per_ip,
        );
        let handshaking = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => {
                    let Some(mut incoming) = incoming else { break };
                    // Under load, an address must prove it receives what is sent to it (one
                    // round trip, no state kept here) before it costs a handshake or a token.
                    let busy = handshaking.load(std::sync::atomic::Ordering::Relaxed)
                        >= limits.retry_above_handshakes;
                    if busy && !incoming.remote_address_validated() && incoming.may_retry() {
                        match incoming.retry() {
                            Ok(()) => {
                                if let Some(m) = &broker.metrics {
                                    m.quic_retries.inc();
                                }
                                continue;
                            }
                            Err(e) => incoming = e.into_incoming(),
                        }
                    }
                    let broker = broker.clone();
                    let policy = self.policy.clone();
                    let per_principal = per_principal.clone();
                    let ip = addr_group::source_group(incoming.remote_address().ip());
                    if !handshakes.allow(ip, std::time::Instant::now()) {
                        // Faster than its handshake rate: refused before any TLS work.
                        tracing::debug!(%ip, "connection refused: limits.handshake_rate_per_ip");
                        incoming.refuse();
                        continue;
                    }
                    let slot = admission.admit(ip);
                    let metrics = broker.metrics.clone();
                    if let Some(m) = &metrics {
                        if slot.is_err() {
                            m.refuse("connections");
                        }
                        m.connections.inc();
                    }
                    if slot.is_err() && admission.open() >= 2 * broker.cfg.limits.max_connections {
                        // Far past the limit: not even a handshake to say why.
                        incoming.refuse();
                        if let Some(m) = &metrics {
                            m.connections.dec();
                        }
                        continue;
                    }
                    let in_progress = Handshaking::begin(&handshaking);
                    tasks.spawn(async move {
                        let _open = metrics.map(ConnectionGauge);
                        // A shutdown abandons connections still in their handshake: they have
                        // no session to end, and would hold the shutdown up to their timeout.
                        let mut shutdown = broker.shutdown_signal();
                        let handshake = tokio::select! {
                            r = incoming => r,
                            _ = shutdown.wait_for(|s| *s) => return,
                        };
                        drop(in_progress);
                        match (handshake, slot) {
                            (Ok(conn), Ok(_slot)) if is_peer_link(&conn) => {
                                match broker.serve_peer(conn.clone()) {
                                    Some(link) => link.await,
                                    None => conn.close(1u32.into(), b"this broker keeps no replicas"),
                                }
                            }
                            (Ok(conn), Ok(_slot))
                                if broker.cfg.tls.require_client_cert
                                    && conn.peer_identity().is_none() =>
                            {
                                let why = "this broker requires a client certificate";
                                session::turn_away(&broker, conn, ErrorCode::Denied, why).await;
                            }
                            (Ok(conn), Ok(_slot)) => {
                                let principal = peer_principal(&conn);
                                session::serve(broker, policy, conn, principal, per_principal).await;
                            }
                            (Ok(conn), Err(why)) => {
                                session::turn_away(&broker, conn, ErrorCode::LimitExceeded, &why)
                                    .await;
                            }
                            (Err(e), _) => tracing::debug!("handshake failed: {e}"),
                        }
                    });
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                () = &mut shutdown => break,
            }
        }
        tracing::info!(sessions = broker.session_count(), "shutting down");
        self.endpoint.set_server_config(None);
        broker.begin_shutdown();
        let grace = Duration::from_millis(broker.cfg.quic.shutdown_grace_ms);
        let drained = tokio::time::timeout(grace * 2, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("sessions did not end within the grace period; closing them");
            tasks.abort_all();
        }
        self.endpoint
            .close(CLOSE_SHUTDOWN.into(), b"broker shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        expiry.abort();
    }
}

/// The receive window of the control stream (and of the connection, which has no other):
/// four frames, at least 256 KiB, so a pipelining client is not held back on any link the
/// broker serves, yet a client that does not read pins little.
fn stream_window(limits: &crate::config::LimitsConfig) -> quinn::VarInt {
    let bytes = limits.max_frame_bytes.saturating_mul(4).max(256 * 1024);
    quinn::VarInt::from_u64(bytes as u64).unwrap_or(quinn::VarInt::MAX)
}

/// Counts a handshake as in progress until dropped.
struct Handshaking(Arc<std::sync::atomic::AtomicUsize>);

impl Handshaking {
    fn begin(count: &Arc<std::sync::atomic::AtomicUsize>) -> Handshaking {
        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Handshaking(count.clone())
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Counts a connection as open until dropped (its task ends, or is aborted).
struct ConnectionGauge(Arc<crate::broker::Metrics>);

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Whether `conn` negotiated the replication link's ALPN (another cluster member).
fn is_peer_link(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == lockbroker_proto::PEER_ALPN)
}

/// The principal named by the client certificate, when the client presented one.
fn peer_principal(conn: &quinn::Connection) -> Option<String> {
    let identity = conn.peer_identity()?;
    let certs = identity
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().and_then(tls::principal_from_cert)
}
