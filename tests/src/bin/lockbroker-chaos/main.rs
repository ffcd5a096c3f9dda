//! `lockbroker-chaos`: a Jepsen-style fault-injection checker for lockbroker.
//!
//! `run` starts its own `redis-server`, a stallable TCP proxy to it, the real `lockbroker
//! serve` binary (by default one broker through two phases: the sync mirror, then memory only;
//! or, with `--phases cluster`, an etcd and several brokers forming one cluster)
//! and client processes (this binary's `client` subcommand), injects faults (SIGKILL/SIGSTOP of
//! clients and brokers, stalled Redis, brokers leaving and joining) for a while, then checks
//! the clients' histories and the fencing store: mutual exclusion, strictly increasing accepted
//! fences, no fence issued twice; in cluster mode it also measures failover times. `client` is
//! one of those client processes.

mod analysis;
mod broker;
mod checks;
mod client;
mod clients;
mod clock;
mod cluster;
mod failover;
mod faults;
mod history;
mod nemesis;
mod orchestrator;
mod process;
mod redis_server;
mod report;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "lockbroker-chaos",
    about = "Fault-injection checker for lockbroker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole experiment: redis-server, proxy, broker, clients, nemesis, checks.
    Run(RunArgs),
    /// One client process (started by `run`).
    Client(ClientArgs),
}

/// Which broker configurations the run goes through.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phases {
    /// First half with the sync Redis mirror, second half memory only.
    Both,
    /// Memory only (no mirror) for the whole run.
    None,
    /// The sync Redis mirror for the whole run.
    Sync,
    /// `--brokers` brokers forming one cluster on etcd (memory only) for the whole run.
    Cluster,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// How long clients run under faults (all phases together).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Client processes. The defaults (24 clients on 12 keys: two per key) reach 35–40k
    /// grants in 60 s with the debug broker on 2 cores; 8 on 4 reach only 12–16k.
    #[arg(long, default_value_t = 24)]
    pub clients: usize,
    /// Hot keys (`chaos/0` .. `chaos/{keys-1}`).
    #[arg(long, default_value_t = 12)]
    pub keys: usize,
    /// Lease TTL clients ask for (also the brokers' default TTL, and their TTL cap except with
    /// replicated shards, which run with the shipped caps: 30 s in a cluster).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// Seed of every random choice (nemesis and clients); default: from the clock.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Fewer grants than this fails the run.
    #[arg(long, default_value_t = 20_000)]
    pub min_grants: u64,
    /// Broker configurations: both (sync mirror, then memory only), none, sync, cluster.
    #[arg(long, value_enum, default_value_t = Phases::Both)]
    pub phases: Phases,
    /// Brokers of the cluster (`--phases cluster`).
    #[arg(long, default_value_t = 3)]
    pub brokers: usize,
    /// `cluster.replicas` of the cluster's brokers (`--phases cluster`): 2 (the brokers'
    /// default) gives every shard an in-sync backup that takes it over without a grace; 1
    /// waits the grace.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Also write the summary to this file (key=value lines).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// The `lockbroker` binary [default: next to this executable].
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,
    /// The redis-mirror plugin [default: plugins/dist/redis_mirror.wasm of this repository].
    #[arg(long)]
    pub mirror_plugin: Option<PathBuf>,
    /// Keep the work dir (logs, broker data) even when the run passes.
    #[arg(long)]
    pub keep: bool,
    /// No client caches its locks (by default every second client does: lock caching's
    /// recalls under the same faults).
    #[arg(long)]
    pub no_caching: bool,
}

#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// Broker URL, quic://127.0.0.1:PORT; repeated for the members of a cluster.
    #[arg(long, required = true)]
    pub broker: Vec<String>,
    /// The brokers' (dev) certificates to trust (one PEM file).
    #[arg(long)]
    pub ca: PathBuf,
    /// The fencing store, redis://127.0.0.1:PORT/0.
    #[arg(long)]
    pub redis: String,
    /// Hot keys (`chaos/0` .. `chaos/{keys-1}`).
    #[arg(long, default_value_t = 4)]
    pub keys: usize,
    /// Lease TTL to ask for.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The history log this client appends to.
    #[arg(long)]
    pub log: PathBuf,
    /// Seed of this client's random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The client exits by itself after this long (a bound in case its parent is lost).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_runtime: Duration,
    /// Cache locks (`ClientBuilder::cache_locks`): kept after unlock, granted again locally,
    /// given back when the broker recalls them.
    #[arg(long)]
    pub cache_locks: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => orchestrator::run(args),
        Command::Client(args) => client::run(args).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lockbroker-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
