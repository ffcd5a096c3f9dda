//! Command-line interface: argument definitions and dispatch to one file per subcommand.
//!
//! The client commands (`lock.rs`, `inspect.rs`) use the SDK and the operator commands
//! (`operate.rs`) the admin HTTP API (`admin_http.rs`), not the library; `serve.rs` wires the
//! library together.

mod admin_http;
mod cluster;
mod completions;
mod escape;
mod inspect;
mod lock;
mod operate;
mod plugin;
mod serve;
mod supervise;
mod waiting;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// lockbroker: a lock service over QUIC with leases, fencing tokens, fair queues and plugins.
#[derive(Parser, Debug)]
#[command(name = "lockbroker", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the broker (memory only; a dev certificate is generated on first start).
    Serve(serve::ServeArgs),
    /// Hold a lock while a command runs; exit with the command's status.
    Lock(lock::LockArgs),
    /// Leader election: run a command only while this process leads KEY (a lock that waits its
    /// turn, labelled --owner, default HOSTNAME:PID; leadership lost → the command is stopped).
    Elect(lock::LockArgs),
    /// Show holders, fencing tokens, remaining TTL and waiters of a key.
    Inspect(inspect::InspectArgs),
    /// Check a plugin file, or reload the plugins of a running broker.
    Plugin(plugin::PluginArgs),
    /// Cluster mode: members, shard owners, epochs and grace, from etcd.
    Cluster(cluster::ClusterArgs),
    /// Held keys with their holders (fence, mode, TTL left, principal) and waiters, from the
    /// admin API.
    Locks(operate::LocksArgs),
    /// Connected sessions (principal, peer, leases, waiting requests), from the admin API.
    Sessions(operate::SessionsArgs),
    /// Operator: end every lease on a key now (`--force`); holders are told, the broker logs it.
    Release(operate::ReleaseArgs),
    /// Operator: take one queued request out of its queue (ids from `locks`' next in line).
    Cancel(operate::CancelArgs),
    /// Operator: revoke a session's leases and close its connection (`--force`).
    EndSession(operate::EndSessionArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(completions::CompletionsArgs),
}

/// How a client subcommand reaches the broker.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// Broker URL (repeat for a list of brokers, tried in order).
    #[arg(
        long = "broker",
        env = "LOCKBROKER_URL",
        value_delimiter = ',',
        default_value = "quic://127.0.0.1:7420"
    )]
    brokers: Vec<String>,
    /// PEM file of the CA (or dev certificate) to trust; repeat it (or separate files with
    /// commas) to trust several — the dev certificates of every broker of a cluster.
    #[arg(long, env = "LOCKBROKER_CA", value_delimiter = ',')]
    ca: Vec<PathBuf>,
    /// Accept any broker certificate (development only).
    #[arg(long)]
    insecure: bool,
    /// Auth token bound to a principal in the broker config.
    #[arg(long, env = "LOCKBROKER_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl Connection {
    async fn connect(&self) -> anyhow::Result<lockbroker_sdk::Client> {
        Ok(self.builder()?.connect().await?)
    }

    /// The client builder for these options (brokers, CA, token).
    fn builder(&self) -> anyhow::Result<lockbroker_sdk::ClientBuilder> {
        let mut b = lockbroker_sdk::Client::builder().name("lockbroker-cli");
        for url in &self.brokers {
            b = b.broker(url.clone());
        }
        if !self.ca.is_empty() {
            for ca in &self.ca {
                b = b.ca_file(ca);
            }
        } else if self.insecure {
            b = b.insecure_dev_mode();
        } else {
            anyhow::bail!(
                "no CA given: pass --ca FILE (the broker prints it on start, e.g. .lockbroker/dev-cert.pem) or set LOCKBROKER_CA, or --insecure for development"
            );
        }
        if let Some(t) = &self.token {
            b = b.token(t.clone());
        }
        Ok(b)
    }
}

/// Parses "30s", "1500ms", "2m" (humantime); a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))
}

/// Runs the chosen subcommand.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(a) => serve::run(a).await,
        Command::Lock(a) | Command::Elect(a) => lock::run(a).await,
        Command::Inspect(a) => inspect::run(a).await,
        Command::Plugin(a) => plugin::run(a).await,
        Command::Cluster(a) => cluster::run(a).await,
        Command::Completions(a) => Ok(completions::run(a)),
        Command::Locks(a) => operate::locks(a).await,
        Command::Sessions(a) => operate::sessions(a).await,
        Command::Release(a) => operate::release(a).await,
        Command::Cancel(a) => operate::cancel(a).await,
        Command::EndSession(a) => operate::end_session(a).await,
    }
}
