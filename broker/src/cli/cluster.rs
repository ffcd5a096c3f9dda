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
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ClusterCommand::Status { config } => {
            let cfg = Config::load(&config)?;
            anyhow::ensure!(
                cfg.cluster.enabled(),
                "{} has no [cluster] table with etcd endpoints",
                config.display()
            );
            let report = lockbroker::cluster::status(&cfg.cluster)
                .await
                .context("cannot read the cluster from etcd")?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}
