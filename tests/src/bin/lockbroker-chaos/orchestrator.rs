//! `lockbroker-chaos run`: sets up redis-server, the stallable proxy, the broker (or etcd and
//! the brokers of a cluster) and the client processes; runs the phases with the nemesis; stops everything; reads the histories and the
//! fencing store, has them analysed and prints the summary. Non-zero exit on any violation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::analysis::{self, Record};
use crate::broker::{self, BrokerProcess, BrokerSpec, PhaseConfig};
use crate::clients::{ClientPool, ClientSpec};
use crate::clock::mono_ns;
use crate::cluster::{BrokerSlot, Cluster};
use crate::faults::FaultKind;
use crate::history::History;
use crate::nemesis::Nemesis;
use crate::redis_server::RedisServer;
use crate::report::Summary;
use crate::store::FenceStore;
use crate::{Phases, RunArgs};
use lockbroker_tests::etcd::EtcdServer;
use lockbroker_tests::proxy::StallableProxy;

/// Runs the experiment on a current-thread runtime: every child process is spawned from the
/// main thread, so their parent-death signal fires only when this process ends.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.clients > 0, "--clients must be at least 1");
    ensure!(args.keys > 0, "--keys must be at least 1");
    ensure!(args.brokers > 0, "--brokers must be at least 1");
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
fn plan(args: &RunArgs, sync: &PhaseConfig, etcd: Option<String>) -> Vec<(PhaseConfig, Duration)> {
    match args.phases {
        Phases::Cluster => vec![(
            PhaseConfig::Cluster {
                etcd: etcd.unwrap_or_default(),
                replicas: args.replicas,
            },
            args.duration,
        )],
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

/// One PEM file with every broker's dev certificate, for the clients to trust.
fn trust_all(brokers: &[BrokerSlot], work_dir: &Path) -> anyhow::Result<PathBuf> {
    let mut pem = Vec::new();
    for b in brokers {
        let ca = b.spec.ca();
        pem.extend(std::fs::read(&ca).with_context(|| format!("read {}", ca.display()))?);
    }
    let path = work_dir.join("brokers-ca.pem");
    std::fs::write(&path, pem).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
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
    let plugin = if matches!(args.phases, Phases::None | Phases::Cluster) {
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
    let etcd = (args.phases == Phases::Cluster).then(EtcdServer::start);
    let phases = plan(&args, &sync, etcd.as_ref().map(EtcdServer::endpoint));
    let count = if etcd.is_some() { args.brokers } else { 1 };
    let brokers: Vec<BrokerSlot> = (0..count)
        .map(|i| {
            let name = if etcd.is_some() {
                format!("broker {i}")
            } else {
                "broker".to_owned()
            };
            let spec = BrokerSpec {
                data_dir: work_dir.join(format!("{}-data", name.replace(' ', "-"))),
                name,
                bin: broker_bin.clone(),
                listen: lockbroker_tests::ports::free_udp_addr(),
                ttl: args.ttl,
                work_dir: work_dir.clone(),
            };
            BrokerSlot {
                spec,
                process: None,
            }
        })
        .collect();
    let first_phase = phases[0].0.clone();
    let mut started = Vec::new();
    for b in &brokers {
        started.push(BrokerProcess::start(&b.spec, &first_phase).await?);
    }
    let ca = trust_all(&brokers, &work_dir)?;
    let clients = ClientPool::start(
        ClientSpec {
            exe: std::env::current_exe().context("locate this executable")?,
            broker_urls: brokers.iter().map(|b| b.spec.url()).collect(),
            ca,
            store_url: redis.url(),
            keys: args.keys,
            ttl: args.ttl,
            seed,
            log_dir: work_dir.join("clients"),
            caching: !args.no_caching,
        },
        args.clients,
    )?;
    let mut cluster = Cluster {
        brokers,
        phase: first_phase,
        clients,
        proxy,
        etcd,
        unexpected_broker_exits: Vec::new(),
    };
    for (slot, process) in cluster.brokers.iter_mut().zip(started) {
        slot.process = Some(process);
    }

    let start_ns = mono_ns();
    let mut nemesis = Nemesis::new(seed, args.ttl);
    // Per phase: (name, seconds under the nemesis, first ns its grants may carry). A phase's
    // grants are those from the start of its broker's (re)start to the next phase's.
    let mut windows: Vec<(&'static str, f64, u64)> = Vec::new();
    for (i, (phase, length)) in phases.iter().enumerate() {
        let mut grants_from = 0;
        if i > 0 {
            grants_from = mono_ns();
            let switch = nemesis.log.start(
                FaultKind::PhaseSwitch,
                format!("broker -> {}", phase.name()),
                grants_from,
            );
            cluster.stop_all().await;
            cluster.phase = phase.clone();
            cluster.start_all().await?;
            nemesis.log.end(switch, mono_ns());
        }
        println!("lockbroker-chaos: phase {} for {length:?}", phase.name());
        let from = Instant::now();
        nemesis.run_until(&mut cluster, from + *length).await?;
        windows.push((phase.name(), from.elapsed().as_secs_f64(), grants_from));
    }
    nemesis.undo_all(&mut cluster).await?;
    cluster.clients.kill_all().await;
    cluster.stop_all().await;
    drop(cluster.etcd.take());

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
    let summary = analysis::summarize(Record {
        args: &args,
        seed,
        start_ns,
        phases: &windows,
        history: &history,
        fence_logs: &fence_logs,
        faults: &nemesis.log,
        cluster: &cluster,
        work_dir,
    });
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
