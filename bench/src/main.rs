//! `lockbroker-bench`: lockbroker side by side with Redis locking and a raw QUIC echo, in one
//! run, reported as ratios. Starts its own `redis-server` and release `lockbroker` (ephemeral
//! ports, temp data dir), runs every scenario, prints a table of figures, ratios and targets.
//!
//! `cargo run --release -p lockbroker-bench` (add `-- --quick` for a short run).
//!
//! This file parses the flags and calls the scenarios (`scenario/`, one file each) in order;
//! the helpers they share are the other modules, which import no scenario.

mod cluster_fixture;
mod echo;
mod fixture;
mod load;
mod opts;
mod procs;
mod raw;
mod redis_lock;
mod report;
mod scenario;
mod stats;

use std::path::Path;

use anyhow::Result;

use crate::fixture::Fixture;
use crate::opts::Opts;
use crate::report::Report;

fn parse_args() -> Result<Opts> {
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
                    "lockbroker-bench [--quick] [--mem-locks N] [--only seq|recall|throughput|contention|memory|expiry|table|cluster|attack|address-flood|metrics|embedded]\n\
                     Starts redis-server and a release lockbroker on ephemeral ports and prints\n\
                     lockbroker's figures next to Redis's and a raw QUIC echo's, as ratios."
                );
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(Opts::new(quick, mem_locks, only))
}

/// The scenarios `opts` selects, in the order of a full run, then the report.
async fn run_all(opts: &Opts, bin: &Path) -> Result<()> {
    let fx = Fixture::start(opts, bin)?;
    let (broker, redis) = (&fx.broker, &fx.redis);
    let mut report = Report::default();
    if opts.runs("seq") {
        let (echo_server, echo_inproc) = (&fx.echo_server, &fx.echo_inproc);
        scenario::seq::run(opts, broker, redis, echo_server, echo_inproc, &mut report).await?;
    }
    if opts.runs("recall") {
        scenario::recall::run(opts, broker, &fx.echo_server, &mut report).await?;
    }
    if opts.runs("throughput") {
        scenario::throughput::run(opts, broker, redis, &mut report).await?;
    }
    if opts.runs("contention") {
        scenario::contention::run(opts, broker, redis, &mut report).await?;
    }
    if opts.runs("expiry") {
        scenario::expiry::run(opts, broker, &mut report).await?;
    }
    if opts.runs("memory") {
        scenario::memory::run(opts, broker, redis, &mut report).await?;
    }
    if opts.runs("table") {
        scenario::table::run(opts, &mut report);
    }
    if opts.runs("cluster") {
        scenario::cluster::run(opts, bin, broker, &mut report).await?;
    }
    if opts.runs("attack") {
        scenario::attack::run(opts, bin, &mut report).await?;
    } else if opts.runs("address-flood") {
        scenario::attack::run_address_flood(opts, bin, &mut report).await?;
    }
    if opts.runs("embedded-uncontended") || opts.runs("embedded-contended") {
        scenario::embedded::run(opts, &mut report).await?;
    }
    if opts.runs("metrics") {
        scenario::metrics::run(opts, bin, &mut report).await?;
    }
    report.print();
    Ok(())
}

fn main() -> Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--echo-server") {
        return echo::serve_forever();
    }
    let opts = parse_args()?;
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("LOCKBROKER_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init();
    }
    let bin = procs::build_broker()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_all(&opts, &bin))
}
