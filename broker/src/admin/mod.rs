//! The admin HTTP listener (`[admin]`, on by default at 127.0.0.1:7421): Prometheus
//! `/metrics`, `/healthz` and `/readyz`, the JSON API (`/api/locks`, `/api/sessions`,
//! `POST /api/release`) and the status page at `/`. Axum on hyper, the versions tonic
//! (etcd-client) already brings.
//!
//! * here — [`Admin`] (what the endpoints read: the broker, plugin host, mirror, cluster and a
//!   `serving` flag), [`Listener`] (bind, serve until shutdown) and the router.
//! * `auth.rs` — who may ask: loopback peers, or anyone with an admin token
//!   (`Authorization: Bearer`); health probes are open.
//! * `metrics.rs` — the Prometheus text: the core's lock metrics plus gauges and counters
//!   read at scrape time (table totals, plugin, mirror and cluster stats).
//! * `api.rs` — health, readiness and the JSON API.
//! * `page.rs` — the status page (plain HTML/JS/CSS embedded in the binary).
//!
//! Layering: above `server`, `mirror` and `cluster` (it reads all three), below `cli`, which
//! starts it. Nothing but `cli` imports it.

mod api;
mod auth;
mod metrics;
mod page;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::routing::{get, post};

use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::mirror::Mirror;
use crate::plugins::PluginHost;

pub use auth::{Refusal, Who, authorize};

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
}

impl Listener {
    /// Binds `addr` (port 0: any free port).
    pub async fn bind(addr: SocketAddr, admin: Arc<Admin>) -> Result<Listener, AdminError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        Ok(Listener { listener, admin })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Some(mirror) = self.admin.mirror.clone() {
            tokio::spawn(metrics::sample_lag(self.admin.clone(), mirror));
        }
        let app = router(self.admin);
        let served = axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await;
        if let Err(e) = served {
            tracing::error!("admin listener failed: {e}");
        }
    }
}

/// Every route. The token check covers all but the health probes.
fn router(admin: Arc<Admin>) -> Router {
    let guarded = Router::new()
        .route("/", get(page::index))
        .route("/status.js", get(page::script))
        .route("/status.css", get(page::style))
        .route("/metrics", get(metrics::scrape))
        .route("/api/locks", get(api::locks))
        .route("/api/sessions", get(api::sessions))
        .route("/api/release", post(api::release))
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            auth::require,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .merge(guarded)
        .with_state(admin)
}
