//! `lockbroker cluster status`: members, shard owners, epochs and grace, read from etcd.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use lockbroker::config::Config;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Print members, shard owners, ownership epochs and takeover grace.
    Status {
        /// The broker config with the `[cluster]` table (etcd endpoints, cluster name).
        #[arg(long, env = "LOCKBROKER_CONFIG")]
        config: PathBuf,
    },
    /// Move every shard off a broker (its holders keep their leases at the new owners), e.g.
    /// before stopping it. Waits until it owns none. Kept until `undrain`.
    Drain {
        #[arg(long, env = "LOCKBROKER_CONFIG")]
        config: PathBuf,
        /// The member to drain [default: the config's `cluster.broker`].
        #[arg(long)]
        broker: Option<String>,
        /// How long to wait for the hand-over.
        #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
        wait: std::time::Duration,
    },
    /// Let a drained broker own shards again.
    Undrain {
        #[arg(long, env = "LOCKBROKER_CONFIG")]
        config: PathBuf,
        #[arg(long)]
        broker: Option<String>,
    },
}

/// Loads a config that has a `[cluster]` table.
fn cluster_config(config: &std::path::Path) -> anyhow::Result<Config> {
    let cfg = Config::load(config)?;
    anyhow::ensure!(
        cfg.cluster.enabled(),
        "{} has no [cluster] table with etcd endpoints",
        config.display()
    );
    Ok(cfg)
}

/// The member name: given, or the config's `cluster.broker`.
fn member(cfg: &Config, broker: Option<String>) -> anyhow::Result<String> {
    broker
        .or_else(|| cfg.cluster.broker.clone())
        .context("name the broker with --broker (the config sets no cluster.broker)")
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClusterCommand::Drain {
            config,
            broker,
            wait,
        } => {
            let cfg = cluster_config(&config)?;
            let name = member(&cfg, broker)?;
            let left = lockbroker::cluster::drain(&cfg.cluster, &name, true, wait)
                .await
                .context("cannot drain through etcd")?;
            if left > 0 {
                anyhow::bail!("{name} still owns {left} shard(s) after {wait:?}");
            }
            println!(
                "{name} is drained: it owns no shard (undo with `lockbroker cluster undrain`)"
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Undrain { config, broker } => {
            let cfg = cluster_config(&config)?;
            let name = member(&cfg, broker)?;
            lockbroker::cluster::drain(&cfg.cluster, &name, false, std::time::Duration::ZERO)
                .await
                .context("cannot undrain through etcd")?;
            println!("{name} may own shards again");
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Status { config } => {
            let cfg = cluster_config(&config)?;
            let report = lockbroker::cluster::status(&cfg.cluster)
                .await
                .context("cannot read the cluster from etcd")?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
