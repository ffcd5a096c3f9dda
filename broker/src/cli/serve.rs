//! `lockbroker serve`: load the config (or defaults), bind, print how clients connect, serve
//! until SIGINT/SIGTERM, then shut down gracefully and exit 0.
//!
//! The one place where `server`, `mirror`, `cluster` and `admin` meet: it loads the plugins
//! (in cluster mode fetches the cluster's secret key from etcd), binds the `Server`, starts the
//! `Mirror` (the broker's grant gate) and the `Cluster` (its key router), sizes the restart
//! grace, runs the server, and at shutdown lets a cluster member leave first
//! (`Cluster::leave`) and flushes the mirror.

/// `println!` that never panics: a closed stdout (the reading side went away) must not bring
/// the broker down, so write errors are ignored.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use lockbroker::admin::{Admin, Listener};
use lockbroker::cluster::{self, Cluster};
use lockbroker::config::Config;
use lockbroker::horizon::Previous;
use lockbroker::mirror::Mirror;
use lockbroker::plugins::{self, PluginHost};
use lockbroker::server::Server;
use lockbroker::server::policy::Policy;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// UDP address to listen on [default: 127.0.0.1:7420, or the config's].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory: epoch file, dev certificate, plugin cache [default: .lockbroker].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML config file (see broker.example.toml).
    #[arg(long, env = "LOCKBROKER_CONFIG")]
    config: Option<PathBuf>,
    /// TCP address of the admin HTTP listener (metrics, health, API, status page)
    /// [default: 127.0.0.1:7421, or the config's `[admin] listen`].
    #[arg(long, env = "LOCKBROKER_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "lockbroker=debug".
    #[arg(long, env = "LOCKBROKER_LOG", default_value = "info")]
    log: String,
    /// Log lines as human-readable text, or as one JSON object per line (for log shippers).
    #[arg(long, env = "LOCKBROKER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Start without the restart grace, although the previous run may have left leases whose
    /// holders still work (a crash, or an unreadable `lease-horizon`). Only when you know that
    /// no holder of the previous run is alive — e.g. every client process was stopped.
    #[arg(long)]
    forget_previous_leases: bool,
}

/// How log lines are written (to stderr).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Raises the soft limit of open files to the hard limit: sessions, admin connections and
/// plugin files all take descriptors, and the default soft limit (often 1024) is reached by a
/// few thousand idle connections.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let soft = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::debug!(
                from = soft,
                to = limit.rlim_max,
                "raised the open-file limit"
            );
        }
    }
}

/// Installs the global log subscriber: `filter` (EnvFilter syntax), text or JSON lines on stderr.
fn init_logs(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).context("bad --log filter")?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    Ok(())
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    init_logs(&args.log, args.log_format)?;
    raise_fd_limit();
    let mut cfg = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        cfg.data_dir = dir;
    }
    if let Some(admin) = args.admin_listen {
        cfg.admin.listen = admin;
    }
    cfg.validate()?;
    // The data dir holds the broker key, the dev key and precompiled plugin code: owner only.
    let tightened = lockbroker::private_files::ensure_private_dir(&cfg.data_dir)
        .with_context(|| format!("cannot use the data dir {}", cfg.data_dir.display()))?;
    if tightened {
        tracing::warn!(
            dir = %cfg.data_dir.display(),
            "the data dir was open to other users; its mode is now 0700"
        );
    }
    let plugins = Arc::new(
        PluginHost::load(cfg.plugin.clone(), &cfg.data_dir.join("plugin-cache"))
            .context("cannot load plugins")?,
    );
    let _watcher = (cfg.plugins.watch && !plugins.is_empty()).then(|| {
        plugins::watch_every(
            plugins.clone(),
            Duration::from_millis(cfg.plugins.watch_interval_ms),
        )
    });
    let _reloader = (!plugins.is_empty()).then(|| tokio::spawn(reload_on_sighup(plugins.clone())));
    let pid_file = PidFile::write(&cfg.data_dir)?;
    // Cluster mode: every broker signs and verifies lease secrets with the cluster's key.
    let cluster_key = if cfg.cluster.enabled() {
        Some(
            cluster::cluster_key(&cfg.cluster)
                .await
                .context("cannot set up the cluster key")?,
        )
    } else {
        None
    };
    let plugin_stats = (!plugins.is_empty()).then(|| plugins.clone());
    let server = Server::bind_with(
        cfg,
        Policy::with_plugins(plugins),
        cluster_key.as_ref().map(|k| &k[..]),
    )?;
    // The mirror (if configured) restores held locks and becomes the broker's grant gate
    // before the first client is served.
    let cfg = &server.broker().cfg;
    let mirror = Mirror::start(&cfg.mirror, &cfg.redis, &cfg.data_dir, server.broker())
        .await
        .context("cannot start the mirror")?;
    let shutdown_grace = Duration::from_millis(cfg.quic.shutdown_grace_ms);
    // The sync mirror restored every lease the previous run acknowledged; otherwise hold new
    // grants until the previous run's leases may have ended.
    let broker = server.broker().clone();
    // In cluster mode each shard taken over has its own grace (the cluster driver's).
    let restored_all = mirror.as_ref().is_some_and(|m| m.is_sync()) || cfg.cluster.enabled();
    if args.forget_previous_leases {
        tracing::warn!(
            previous = ?broker.previous_run(),
            "--forget-previous-leases: no restart grace; holders of the previous run are not waited for"
        );
    }
    let restart_grace = broker.begin_grace(restored_all || args.forget_previous_leases);
    let cluster = if cfg.cluster.enabled() {
        Some(
            Cluster::start(&cfg.cluster, &broker, cluster_key.as_ref().map(|k| &k[..]))
                .await
                .context("cannot start cluster mode")?,
        )
    } else {
        None
    };
    let addr = server.local_addr()?;
    let admin = Admin::new(
        broker.clone(),
        plugin_stats,
        mirror.clone(),
        cluster.clone(),
    );
    let admin_listener = if cfg.admin.enabled {
        Some(Listener::bind(cfg.admin.listen, admin.clone()).await?)
    } else {
        None
    };
    say!(
        "lockbroker listening on {addr}/udp (epoch {})",
        broker.epoch
    );
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin_task = match admin_listener {
        Some(listener) => {
            let admin_addr = listener.local_addr()?;
            say!("admin listening on http://{admin_addr}/ (metrics, health, API, status page)");
            if !admin_addr.ip().is_loopback() && cfg.admin.tokens.is_empty() {
                tracing::warn!(
                    "the admin listener {admin_addr} is not on loopback and [admin] tokens is \
                     empty: only loopback peers can use it"
                );
            }
            Some(listener.spawn(async move {
                let _ = admin_stopped.await;
            })?)
        }
        None => None,
    };
    if let Some(warning) = exposure_warning(cfg, addr) {
        tracing::warn!("{warning}");
        say!("{warning}");
    }
    if !restart_grace.is_zero() {
        let why = match broker.previous_run() {
            Previous::Unknown(why) => format!("{why}; assuming the longest lease"),
            _ => "leases of the previous run may still be held".to_string(),
        };
        say!(
            "restart grace: no new grants for {:.1}s ({why}; their holders can reclaim them \
             meanwhile; --forget-previous-leases skips it)",
            restart_grace.as_secs_f64()
        );
    }
    if let Some(ca) = &server.dev_ca {
        let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        if server.generated_cert {
            say!("generated a self-signed dev certificate: {}", ca.display());
        }
        say!("clients trust it with:");
        say!(
            "  export LOCKBROKER_URL=quic://{addr} LOCKBROKER_CA={}",
            ca.display()
        );
        say!(
            "  lockbroker lock --broker quic://{addr} --ca {} my-key -- echo locked",
            ca.display()
        );
    }
    // A cluster member leaves first (its shards move, their clients are told), then the
    // sessions close.
    let shutdown = async {
        shutdown_signal().await;
        if let Some(cluster) = &cluster {
            cluster.leave().await;
        }
    };
    admin.set_serving();
    server.run(shutdown).await;
    let _ = admin_stop.send(());
    if let Some(task) = admin_task {
        let _ = tokio::time::timeout(shutdown_grace, task).await;
    }
    if let Some(mirror) = mirror {
        // Ship the releases of the sessions that just ended.
        mirror.flush(shutdown_grace).await;
    }
    // The next start waits out the leases still running (sessions' leases are not released at
    // shutdown: a paused holder could not be told), or needs no grace if none is left.
    broker.close_horizon();
    drop(pid_file);
    say!("lockbroker stopped");
    Ok(ExitCode::SUCCESS)
}

/// A warning when anonymous clients are accepted on an address others can reach.
fn exposure_warning(cfg: &Config, addr: std::net::SocketAddr) -> Option<String> {
    let anonymous = !cfg.auth.require && !cfg.tls.require_client_cert;
    (anonymous && !addr.ip().is_loopback()).then(|| {
        format!(
            "warning: anonymous access is on and {addr} is not a loopback address: anyone who \
             reaches it may take and hold any lock (set [auth] require = true with tokens, or \
             [tls] require_client_cert = true)"
        )
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the broker with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
}

/// Reloads the plugins on SIGHUP (also sent by `lockbroker plugin reload`). A bad new
/// version is refused and the running one keeps serving.
async fn reload_on_sighup(host: Arc<PluginHost>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot install the SIGHUP handler; plugin reload by signal is off");
        return;
    };
    while hup.recv().await.is_some() {
        let host = host.clone();
        match tokio::task::spawn_blocking(move || host.reload()).await {
            Ok(Ok(report)) => tracing::info!("plugin reload (SIGHUP): {report}"),
            Ok(Err(e)) => tracing::error!("plugin reload refused, old plugins keep running: {e}"),
            Err(e) => tracing::error!("plugin reload task failed: {e}"),
        }
    }
}

/// `lockbroker.pid` in the data dir while the broker runs, so `lockbroker plugin reload`
/// can find it. Removed on clean exit.
pub struct PidFile(PathBuf);

/// File name of the pid file inside the data dir.
pub const PID_FILE: &str = "lockbroker.pid";

impl PidFile {
    fn write(data_dir: &Path) -> anyhow::Result<PidFile> {
        let path = data_dir.join(PID_FILE);
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(PidFile(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_access_beyond_loopback_is_warned_about() {
        let mut cfg = Config::default();
        let any: std::net::SocketAddr = "0.0.0.0:7420".parse().expect("addr");
        let lo: std::net::SocketAddr = "127.0.0.1:7420".parse().expect("addr");
        assert!(exposure_warning(&cfg, any).is_some_and(|w| w.contains("anonymous")));
        assert!(exposure_warning(&cfg, lo).is_none());
        cfg.auth.require = true;
        assert!(exposure_warning(&cfg, any).is_none());
    }
}
