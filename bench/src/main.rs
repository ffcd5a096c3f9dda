//! `lockbroker-bench`: lockbroker side by side with Redis locking and a raw QUIC echo, in one
//! run, reported as ratios. Starts its own `redis-server` and release `lockbroker` (ephemeral
//! ports, temp data dir), runs every scenario, prints a table of figures, ratios and targets.
//!
//! `cargo run --release -p lockbroker-bench` (add `-- --quick` for a short run).

mod attack;
mod cluster;
mod echo;
mod embedded;
mod metrics_overhead;
mod procs;
mod raw;
mod redis_lock;
mod scenarios;
mod stats;

use std::time::Duration;

use anyhow::Result;

/// Run options.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Short run (smoke test): fewer rounds, shorter windows, 200k locks for memory.
    pub quick: bool,
    /// Locks held for the memory figure.
    pub mem_locks: usize,
    /// Length of one sequential measurement window (several rounds alternate the systems).
    pub seq_window: Duration,
    pub seq_rounds: usize,
    /// Length of one throughput window.
    pub tp_window: Duration,
    /// Length of one contention window.
    pub contention_window: Duration,
    /// Expiry rounds.
    pub expiry_rounds: usize,
    /// Table cycles for the in-process figure.
    pub table_cycles: usize,
    /// Run only the scenarios whose name contains this.
    pub only: Option<String>,
}

impl Opts {
    fn parse() -> Result<Opts> {
        let mut quick = false;
        let mut mem_locks = None;
        let mut only = None;
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            match a.as_str() {
                "--quick" => quick = true,
                "--mem-locks" => {
                    mem_locks = Some(args.next().unwrap_or_default().parse()?);
                }
                "--only" => only = args.next(),
                "-h" | "--help" => {
                    println!(
                        "lockbroker-bench [--quick] [--mem-locks N] [--only seq|throughput|contention|memory|expiry|table|cluster|attack|metrics|embedded]\n\
                         Starts redis-server and a release lockbroker on ephemeral ports and prints\n\
                         lockbroker's figures next to Redis's and a raw QUIC echo's, as ratios."
                    );
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(if quick {
            Opts {
                quick,
                mem_locks: mem_locks.unwrap_or(200_000),
                seq_window: Duration::from_millis(400),
                seq_rounds: 2,
                tp_window: Duration::from_millis(700),
                contention_window: Duration::from_secs(2),
                expiry_rounds: 10,
                table_cycles: 500_000,
                only,
            }
        } else {
            Opts {
                quick,
                mem_locks: mem_locks.unwrap_or(1_000_000),
                seq_window: Duration::from_secs(1),
                seq_rounds: 5,
                tp_window: Duration::from_secs(2),
                contention_window: Duration::from_secs(5),
                expiry_rounds: 40,
                table_cycles: 3_000_000,
                only,
            }
        })
    }

    pub fn runs(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.contains(o))
    }
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--echo-server") {
        return echo::serve_forever();
    }
    let opts = Opts::parse()?;
    let bin = procs::build_broker()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(scenarios::run_all(&opts, &bin))
}
