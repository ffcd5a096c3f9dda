//! `lockbroker serve`: load the config (or defaults), bind, print how clients connect, serve
//! until SIGINT/SIGTERM, then shut down gracefully and exit 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use lockbroker::config::Config;
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
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "lockbroker=debug".
    #[arg(long, env = "LOCKBROKER_LOG", default_value = "info")]
    log: String,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&args.log).context("bad --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
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
    cfg.validate()?;
    let server = Server::bind(cfg, Policy::default())?;
    let addr = server.local_addr()?;
    println!(
        "lockbroker listening on {addr}/udp (epoch {})",
        server.broker().epoch
    );
    if let Some(ca) = &server.dev_ca {
        let ca = std::fs::canonicalize(ca).unwrap_or_else(|_| ca.clone());
        if server.generated_cert {
            println!("generated a self-signed dev certificate: {}", ca.display());
        }
        println!("clients trust it with:");
        println!(
            "  export LOCKBROKER_URL=quic://{addr} LOCKBROKER_CA={}",
            ca.display()
        );
        println!(
            "  lockbroker lock --broker quic://{addr} --ca {} my-key -- echo locked",
            ca.display()
        );
    }
    server.run(shutdown_signal()).await;
    println!("lockbroker stopped");
    Ok(ExitCode::SUCCESS)
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
