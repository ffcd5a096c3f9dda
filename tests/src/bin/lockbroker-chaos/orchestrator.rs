//! `lockbroker-chaos run`: sets up redis-server, the stallable proxy, the broker and the client
//! processes; runs the phases with the nemesis; stops everything; reads the histories and the
//! fencing store; runs the checks and prints the summary. Non-zero exit on any violation.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::broker::{self, BrokerProcess, BrokerSpec, PhaseConfig};
use crate::checks::{self, Violation};
use crate::clients::{ClientPool, ClientSpec};
use crate::clock::mono_ns;
use crate::cluster::Cluster;
use crate::faults::{FaultKind, FaultLog};
use crate::history::History;
use crate::nemesis::Nemesis;
use crate::proxy::StallableProxy;
use crate::redis_server::RedisServer;
use crate::report::{PhaseSummary, Summary, ViolationReport};
use crate::store::FenceStore;
use crate::{Phases, RunArgs};

/// Runs the experiment on a current-thread runtime: every child process is spawned from the
/// main thread, so their parent-death signal fires only when this process ends.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.keys > 0, "--keys must be at least 1");
    ensure!(
        args.ttl >= Duration::from_millis(200),
        "--ttl must be at least 200ms (the SDK's safety margin is 100 ms)"
    );
    ensure!(!args.duration.is_zero(), "--duration must be positive");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("build the tokio runtime")?;
    runtime.block_on(run_experiment(args))
}

/// The phases of the run and how long each lasts.
fn plan(args: &RunArgs, sync: &PhaseConfig) -> Vec<(PhaseConfig, Duration)> {
    match args.phases {
        Phases::Sync => vec![(sync.clone(), args.duration)],
        Phases::None => vec![(PhaseConfig::Memory, args.duration)],
        Phases::Both => {
            let half = args.duration / 2;
            vec![
                (sync.clone(), half),
                (PhaseConfig::Memory, args.duration - half),
            ]
        }
    }
}

/// A free UDP port on 127.0.0.1 for the broker (the same for every start in the run).
fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").context("bind udp 127.0.0.1:0")?;
    Ok(socket.local_addr()?)
}

fn mirror_plugin(args: &RunArgs) -> anyhow::Result<PathBuf> {
    let path = args.mirror_plugin.clone().unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/redis_mirror.wasm")
    });
    ensure!(
        path.exists(),
        "the redis-mirror plugin is missing at {}: build it with plugins/build.sh \
         (or pass --mirror-plugin, or --phases none)",
        path.display()
    );
    Ok(std::fs::canonicalize(&path).unwrap_or(path))
}

fn default_seed() -> u64 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    wall ^ u64::from(std::process::id()).rotate_left(32)
}

async fn run_experiment(args: RunArgs) -> anyhow::Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(default_seed);
    let broker_bin = match &args.broker_bin {
        Some(b) => b.clone(),
        None => broker::default_bin()?,
    };
    ensure!(
        broker_bin.exists(),
        "the lockbroker binary is missing at {}: run `cargo build --workspace --bins` \
         (or pass --broker-bin)",
        broker_bin.display()
    );
    let plugin = if args.phases == Phases::None {
        PathBuf::new()
    } else {
        mirror_plugin(&args)?
    };
    let work_dir =
        std::env::temp_dir().join(format!("lockbroker-chaos-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(work_dir.join("clients"))
        .with_context(|| format!("create {}", work_dir.display()))?;
    println!(
        "lockbroker-chaos: seed {seed}, {} clients, {} keys, ttl {:?}, {:?} ({:?} phases); logs in {}",
        args.clients,
        args.keys,
        args.ttl,
        args.duration,
        args.phases,
        work_dir.display()
    );

    let redis = RedisServer::start(&work_dir).await?;
    let proxy = StallableProxy::start(redis.addr)
        .await
        .context("start the broker<->redis proxy")?;
    let sync = PhaseConfig::SyncMirror {
        redis_url: proxy.url(),
        plugin,
    };
    let phases = plan(&args, &sync);
    let spec = BrokerSpec {
        bin: broker_bin,
        listen: free_udp_addr()?,
        data_dir: work_dir.join("broker-data"),
        ttl: args.ttl,
        work_dir: work_dir.clone(),
    };
    let first_phase = phases[0].0.clone();
    let first_broker = BrokerProcess::start(&spec, &first_phase).await?;
    let clients = ClientPool::start(
        ClientSpec {
            exe: std::env::current_exe().context("locate this executable")?,
            broker_url: spec.url(),
            ca: spec.ca(),
            store_url: redis.url(),
            keys: args.keys,
            ttl: args.ttl,
            seed,
            log_dir: work_dir.join("clients"),
        },
        args.clients,
    )?;
    let mut cluster = Cluster {
        spec,
        phase: first_phase,
        broker: Some(first_broker),
        clients,
        proxy,
        unexpected_broker_exits: Vec::new(),
    };

    let start_ns = mono_ns();
    let mut nemesis = Nemesis::new(seed, args.ttl);
    let mut windows = Vec::new();
    for (i, (phase, length)) in phases.iter().enumerate() {
        if i > 0 {
            let switch = nemesis.log.start(
                FaultKind::PhaseSwitch,
                format!("broker -> {}", phase.name()),
                mono_ns(),
            );
            cluster.stop_broker().await;
            cluster.phase = phase.clone();
            cluster.start_broker().await?;
            nemesis.log.end(switch, mono_ns());
        }
        println!("lockbroker-chaos: phase {} for {length:?}", phase.name());
        let from = mono_ns();
        nemesis
            .run_until(&mut cluster, Instant::now() + *length)
            .await?;
        windows.push((phase.name(), from, mono_ns()));
    }
    nemesis.undo_all(&mut cluster).await?;
    cluster.clients.kill_all().await;
    cluster.stop_broker().await;

    let mut fence_logs = BTreeMap::new();
    let mut store = FenceStore::connect(&redis.url())
        .await
        .context("connect to the fencing store")?;
    for k in 0..args.keys {
        let key = format!("chaos/{k}");
        let accepted = store
            .accepted(&key)
            .await
            .with_context(|| format!("read fencelog:{key}"))?;
        fence_logs.insert(key, accepted);
    }
    drop(store);
    redis.stop().await;
    nemesis.log.write_to(&work_dir.join("faults.log"))?;

    let mut history = History::default();
    for i in 0..cluster.clients.len() {
        let path = cluster.clients.log_path(i);
        history
            .read_client_log(i, &path)
            .with_context(|| format!("read {}", path.display()))?;
    }
    let grants = history.leases.len() as u64;
    let mut violations = checks::exclusion(&history.leases);
    violations.extend(checks::fence_logs(&fence_logs));
    violations.extend(checks::unique_fences(&history.leases));
    violations.extend(checks::min_grants(grants, args.min_grants));

    let summary = Summary {
        seed,
        settings: format!(
            "clients={} keys={} ttl={} duration={} phases={:?} start_ns={start_ns}",
            args.clients,
            args.keys,
            humantime::format_duration(args.ttl),
            humantime::format_duration(args.duration),
            args.phases
        ),
        phases: windows
            .iter()
            .map(|&(name, from, to)| PhaseSummary {
                name,
                seconds: (to - from) as f64 / 1e9,
                grants: history
                    .leases
                    .iter()
                    .filter(|l| (from..to).contains(&l.grant_ns))
                    .count() as u64,
            })
            .collect(),
        grants,
        min_grants: args.min_grants,
        faults: nemesis
            .log
            .counts()
            .into_iter()
            .map(|(k, n)| (k.name(), n))
            .collect(),
        stale_writes: history.stale_writes,
        lost_reports: history.lost_reports,
        client_processes: cluster.clients.incarnations(),
        client_errors: history.errors.clone(),
        anomalies: anomalies(&cluster, &history, &nemesis.log, args.ttl),
        violations: violations
            .into_iter()
            .map(|v| annotate(v, &nemesis.log, args.ttl))
            .collect(),
        work_dir_kept: false,
        work_dir,
    };
    let keep = args.keep || !summary.passed();
    let summary = Summary {
        work_dir_kept: keep,
        ..summary
    };
    if !keep {
        let _ = std::fs::remove_dir_all(&summary.work_dir);
    }
    print!("{}", summary.text());
    if let Some(path) = &args.report {
        summary
            .write_key_values(path)
            .with_context(|| format!("write the report {}", path.display()))?;
    }
    Ok(if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Findings that are not violations: crashes, errors faults do not obviously explain (with
/// the faults around them), torn log lines.
fn anomalies(
    cluster: &Cluster,
    history: &History,
    faults: &FaultLog,
    ttl: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    for status in &cluster.unexpected_broker_exits {
        out.push(format!("the broker exited by itself: {status}"));
    }
    for (slot, status) in &cluster.clients.unexpected_exits {
        out.push(format!("client {slot} exited by itself: {status}"));
    }
    // An unusual error right after a fault of that client or of the broker is explained
    // (e.g. a grant that arrived while the client was stopped, refreshed too late: NotOwner).
    let slack = 2 * ttl.as_nanos() as u64;
    let client_target = |c: usize| format!("client {c}");
    let mut explained = 0;
    let mut unexplained = Vec::new();
    for e in &history.unusual_errors {
        let around = faults.around(e.t.saturating_sub(slack), e.t, 0);
        let target = client_target(e.client);
        if around
            .iter()
            .any(|f| f.target == target || !f.target.starts_with("client"))
        {
            explained += 1;
        } else {
            unexplained.push(e);
        }
    }
    if explained > 0 {
        out.push(format!(
            "{explained} client error(s) of unusual kinds, each within 2x TTL after a fault \
             of that client or of the broker"
        ));
    }
    for e in unexplained.iter().take(10) {
        out.push(format!(
            "client {} got {} at {} with no fault of its own or of the broker before: {}",
            e.client, e.kind, e.t, e.message
        ));
    }
    if unexplained.len() > 10 {
        out.push(format!(
            "... and {} more unexplained errors",
            unexplained.len() - 10
        ));
    }
    for m in history.malformed.iter().take(5) {
        out.push(format!("malformed log line: {m}"));
    }
    out
}

/// Names the faults active around a violation (up to 2×TTL before it).
fn annotate(v: Violation, faults: &FaultLog, ttl: Duration) -> ViolationReport {
    let faults_around = match v.window {
        Some((from, to)) => faults
            .around(from, to, 2 * ttl.as_nanos() as u64)
            .into_iter()
            .map(|f| f.to_string())
            .collect(),
        None => Vec::new(),
    };
    ViolationReport {
        check: v.check,
        detail: v.detail,
        faults_around,
    }
}
