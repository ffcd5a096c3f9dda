//! What the scenarios of one run share: the broker config they run with, the lease TTL of their
//! cycles, and the processes started once per run (`redis-server`, the release broker, the raw
//! QUIC echo server in its own process and in this one).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use crate::echo::{self, EchoServer};
use crate::opts::Opts;
use crate::procs::{Broker, Redis};

/// Lease TTL of the uncontended and throughput cycles.
pub(crate) const TTL: Duration = Duration::from_secs(30);

/// The broker config of a run: per-session limits raised for the memory test, whose raw
/// sessions pipeline a million acquires and may fall behind reading the answers for a while on
/// a busy machine (a longer slow-reader deadline than the default 10 s).
pub(crate) fn broker_config(opts: &Opts) -> String {
    let per_session = opts.mem_locks.div_ceil(MEM_SESSIONS) + 1000;
    format!(
        "[limits]\nmax_leases_per_session = {per_session}\nmax_waiters_per_session = 100000\n\
         outbox_stall_ms = 120000\n"
    )
}

/// Raw sessions the memory test spreads its leases over.
pub(crate) const MEM_SESSIONS: usize = 4;

/// The processes every run starts, whichever scenarios it runs (fields drop in order: the
/// echo servers, then the broker, then Redis — the reverse of their start).
pub(crate) struct Fixture {
    pub echo_inproc: EchoServer,
    pub echo_server: EchoServer,
    pub broker: Broker,
    pub redis: Redis,
}

impl Fixture {
    /// Starts the processes and prints the run's header (who runs where, on what machine).
    pub(crate) fn start(opts: &Opts, bin: &Path) -> Result<Fixture> {
        let redis = Redis::start()?;
        let broker = Broker::start(bin, &broker_config(opts))?;
        let echo_server = echo::spawn_server_process()?;
        let echo_inproc = echo::start_server()?;
        println!(
            "lockbroker-bench{}: broker {} (pid {}), redis-server {} on port {}, echo server {}",
            if opts.quick { " --quick" } else { "" },
            broker.addr,
            broker.pid(),
            redis.version,
            redis.port,
            echo_server.addr
        );
        println!(
            "machine: {} cores, {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model()
        );
        Ok(Fixture {
            echo_inproc,
            echo_server,
            broker,
            redis,
        })
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
