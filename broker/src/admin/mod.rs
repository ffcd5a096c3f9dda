//! The admin HTTP listener (`[admin]`, on by default at 127.0.0.1:7421): Prometheus
//! `/metrics`, `/healthz` and `/readyz`, the JSON API (`/api/locks`, `/api/sessions`,
//! `POST /api/release|cancel|end-session`) and the status page at `/`. Axum routes on hyper connections, the
//! versions tonic (etcd-client) already brings.
//!
//! * here — [`Admin`] (what the endpoints read: the broker, plugin host, mirror, cluster and a
//!   `serving` flag), [`Listener`] (bind, write the per-start token, serve until shutdown)
//!   and the router, which states what each route needs.
//! * `auth.rs` — who may ask: an allowed `Host`, a same-origin `Origin` on writes, and a
//!   loopback peer or an admin token (`Authorization: Bearer`) — a token always for a forced
//!   release, a cancel or an ended session, and for the API once the broker authenticates its clients; health probes are
//!   open.
//! * `conn.rs` — the accept loop: HTTP/1.1, a connection cap and a header read timeout.
//! * `metrics.rs` — the Prometheus text: the core's lock metrics plus gauges and counters
//!   read at scrape time (table totals, plugin, mirror and cluster stats).
//! * `api.rs` — health, readiness and the JSON API.
//! * `page.rs` — the status page (plain HTML/JS/CSS embedded in the binary).
//!
//! Layering: above `server`, `mirror` and `cluster` (it reads all three), below `cli`, which
//! starts it. Nothing but `cli` imports it.

mod api;
mod auth;
mod conn;
mod metrics;
mod page;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::mirror::Mirror;
use crate::plugins::PluginHost;

use auth::Gate;
pub use auth::{Need, Refusal, TOKEN_FILE, TokenError, Who, authorize};

/// Errors starting the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(
        "cannot bind the admin listener on {addr}/tcp: {source} (set [admin] listen, or enabled = false)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// What the admin endpoints read.
pub struct Admin {
    broker: Arc<Broker>,
    plugins: Option<Arc<PluginHost>>,
    mirror: Option<Arc<Mirror>>,
    cluster: Option<Arc<Cluster>>,
    /// Set once the broker serves (restore done, grace begun).
    serving: AtomicBool,
    lag: metrics::LagProbe,
    /// The listener's connection counts.
    conns: Arc<conn::ConnStats>,
}

impl Admin {
    /// The admin state of `broker` and the components `cli/serve.rs` started.
    pub fn new(
        broker: Arc<Broker>,
        plugins: Option<Arc<PluginHost>>,
        mirror: Option<Arc<Mirror>>,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Admin> {
        Arc::new(Admin {
            broker,
            plugins,
            mirror,
            cluster,
            serving: AtomicBool::new(false),
            lag: metrics::LagProbe::default(),
            conns: Arc::default(),
        })
    }

    /// Marks the broker as serving (readiness).
    pub fn set_serving(&self) {
        self.serving.store(true, Ordering::Release);
    }

    fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }
}

/// A bound admin listener, not yet serving.
pub struct Listener {
    listener: tokio::net::TcpListener,
    admin: Arc<Admin>,
    gate: Arc<Gate>,
}

impl Listener {
    /// Binds `addr` (port 0: any free port) and writes a fresh admin token to
    /// `<data_dir>/admin-token` (0600).
    pub async fn bind(addr: SocketAddr, admin: Arc<Admin>) -> Result<Listener, AdminError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let gate = Arc::new(Gate::create(&admin.broker.cfg)?);
        tracing::info!(
            file = %gate.token_file().display(),
            api_needs_token = gate.strict(),
            "admin token for this run written (forced releases need a token, from loopback too)"
        );
        Ok(Listener {
            listener,
            admin,
            gate,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The per-start token's file.
    pub fn token_file(&self) -> PathBuf {
        self.gate.token_file().to_path_buf()
    }

    /// Serves on a thread of its own (a one-thread runtime) until `shutdown` resolves: admin
    /// work — pages, scrapes, the status page — never takes a worker of the runtime that
    /// serves lock requests. The receiver resolves when it has stopped.
    pub fn spawn(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<tokio::sync::oneshot::Receiver<()>, AdminError> {
        let addr = self
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let bind = |source| AdminError::Bind { addr, source };
        let std_listener = self.listener.into_std().map_err(bind)?;
        let (admin, gate) = (self.admin, self.gate);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(bind)?;
        let (stopped, on_stop) = tokio::sync::oneshot::channel();
        // A detached thread, not `spawn_blocking`: the serving runtime's drop never waits
        // for admin connections still open.
        std::thread::Builder::new()
            .name("lockbroker-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(listener) => {
                            Listener {
                                listener,
                                admin,
                                gate,
                            }
                            .run(shutdown)
                            .await
                        }
                        Err(e) => tracing::error!("admin listener: {e}"),
                    }
                });
                let _ = stopped.send(());
            })
            .map_err(bind)?;
        Ok(on_stop)
    }

    /// Serves until `shutdown` resolves; the per-start token's file is removed then, before
    /// open connections are let finish.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(mirror) = self.admin.mirror.clone() {
            tokio::spawn(metrics::sample_lag(self.admin.clone(), mirror));
        }
        let cfg = &self.admin.broker.cfg.admin;
        let limits = conn::Limits {
            max_connections: cfg.max_connections,
            header_timeout: Duration::from_millis(cfg.header_timeout_ms),
        };
        let stats = self.admin.conns.clone();
        let token_file = self.token_file();
        let shutdown = async move {
            shutdown.await;
            let _ = std::fs::remove_file(token_file);
        };
        let app = router(self.admin, self.gate);
        conn::serve(self.listener, app, limits, stats, shutdown).await;
    }
}

/// Every route, and what each needs (`auth.rs`): the health probes nothing; everything else
/// an allowed `Host` (and a same-origin `Origin` on writes); the status page's files nothing
/// more; `/metrics` a loopback peer or a token; the read API the same, or a token on a broker
/// that authenticates its clients; the writes (release, cancel, end a session) a token.
fn router(admin: Arc<Admin>, gate: Arc<Gate>) -> Router {
    let need =
        |need: Need| axum::middleware::from_fn_with_state((gate.clone(), need), auth::require);
    let page = Router::new()
        .route("/", get(page::index))
        .route("/status.js", get(page::script))
        .route("/status.css", get(page::style));
    let metrics = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route_layer(need(Need::LoopbackOrToken));
    let read = Router::new()
        .route("/api/locks", get(api::locks))
        .route("/api/sessions", get(api::sessions))
        .route_layer(need(gate.api_read()));
    let write = Router::new()
        .route("/api/release", post(api::release))
        .route("/api/cancel", post(api::cancel))
        .route("/api/end-session", post(api::end_session))
        .route_layer(need(Need::Token));
    let checked =
        page.merge(metrics)
            .merge(read)
            .merge(write)
            .layer(axum::middleware::from_fn_with_state(
                gate.clone(),
                auth::check_host,
            ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(checked)
        .with_state(admin)
}
