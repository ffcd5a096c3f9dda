//! `lockbroker plugin check FILE.wasm` (load, validate world and version, smoke call, print
//! what was found) and `lockbroker plugin reload` (signal the running broker to reload).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::serve::PID_FILE;

#[derive(Args, Debug)]
pub struct PluginArgs {
    #[command(subcommand)]
    command: PluginCommand,
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
    /// Load a plugin component, check its world and WIT version, make a smoke call.
    Check {
        /// The component file.
        file: PathBuf,
    },
    /// Ask the broker running on a data dir to reload its plugins (sends SIGHUP).
    Reload {
        /// The broker's data directory (where it wrote lockbroker.pid).
        #[arg(long, default_value = ".lockbroker")]
        data_dir: PathBuf,
    },
}

pub async fn run(args: PluginArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        PluginCommand::Check { file } => {
            let report =
                tokio::task::spawn_blocking(move || lockbroker::plugins::check_file(&file))
                    .await
                    .context("plugin check task failed")?;
            match report {
                Ok(report) => {
                    println!("{report}");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("lockbroker: plugin refused: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        PluginCommand::Reload { data_dir } => {
            let pid_path = data_dir.join(PID_FILE);
            let pid = std::fs::read_to_string(&pid_path).with_context(|| {
                format!(
                    "no running broker found: cannot read {}",
                    pid_path.display()
                )
            })?;
            let pid: u32 = pid
                .trim()
                .parse()
                .with_context(|| format!("{} does not hold a pid", pid_path.display()))?;
            let status = std::process::Command::new("kill")
                .arg("-HUP")
                .arg(pid.to_string())
                .status()
                .context("cannot run kill(1)")?;
            anyhow::ensure!(status.success(), "could not signal broker pid {pid}");
            println!("asked broker {pid} to reload its plugins (see its log for the result)");
            Ok(ExitCode::SUCCESS)
        }
    }
}
