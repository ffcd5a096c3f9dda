//! The real `lockbroker serve` process: its config for each phase (memory only, the sync Redis
//! mirror through the stallable proxy, or one member of a cluster on etcd), starting it on the
//! run's fixed port and data dir and waiting for its banner, pausing, killing and stopping it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

use crate::process::{die_with_parent, kill_and_reap, signal};

/// How the broker keeps its locks during a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhaseConfig {
    /// In memory only.
    Memory,
    /// `[mirror] mode = "sync"` with the redis-mirror plugin, Redis reached at `redis_url`.
    SyncMirror { redis_url: String, plugin: PathBuf },
    /// In memory, one member of a cluster on the etcd at `etcd` (`http://127.0.0.1:PORT`),
    /// each shard kept by `replicas` brokers (its owner and, with 2, a backup).
    Cluster { etcd: String, replicas: u32 },
}

impl PhaseConfig {
    pub fn name(&self) -> &'static str {
        match self {
            PhaseConfig::Memory => "memory",
            PhaseConfig::SyncMirror { .. } => "sync",
            PhaseConfig::Cluster { .. } => "cluster",
        }
    }
}

/// What stays the same across every start of the broker in a run.
pub struct BrokerSpec {
    /// "broker" alone, "broker 0".."broker N-1" in a cluster (also its cluster member name).
    pub name: String,
    pub bin: PathBuf,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub ttl: Duration,
    /// Where configs and the broker's stderr (appended across starts) go.
    pub work_dir: PathBuf,
}

/// The ownership lease of a chaos cluster's brokers (the shortest allowed: faults then move
/// shards often).
pub const OWNERSHIP_TTL: Duration = Duration::from_secs(2);

/// Whether brokers run with the shipped TTL caps: with replicated shards (a takeover must not
/// need a shortened cap); a single broker and `replicas = 1` cap TTLs at the clients' TTL, or
/// every fault would stop a shard for the shipped 30 s grace.
pub fn shipped_caps(replicas: Option<u32>) -> bool {
    replicas.is_some_and(|r| r >= 2)
}

/// Shards of a chaos cluster: enough that every broker owns several.
const SHARDS: u32 = 8;

impl BrokerSpec {
    /// `quic://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("quic://{}", self.listen)
    }

    /// The dev certificate the broker writes on its first start.
    pub fn ca(&self) -> PathBuf {
        self.data_dir.join("dev-cert.pem")
    }

    fn config_toml(&self, phase: &PhaseConfig) -> String {
        let ttl_ms = self.ttl.as_millis().max(1);
        // The TTL cap bounds the grace of a takeover that has no in-sync backup.
        let replicas = match phase {
            PhaseConfig::Cluster { replicas, .. } => Some(*replicas),
            _ => None,
        };
        let cap = if shipped_caps(replicas) {
            String::new()
        } else {
            format!("max_ttl_ms = {ttl_ms}\n")
        };
        let mut toml = format!(
            "[locks]\ndefault_ttl_ms = {ttl_ms}\n{cap}\n\
             [quic]\nshutdown_grace_ms = 1000\n"
        );
        if let PhaseConfig::SyncMirror { redis_url, plugin } = phase {
            toml.push_str(&format!(
                "\n[[redis]]\nname = \"main\"\nurl = \"{redis_url}\"\n\
                 connect_timeout_ms = 300\ncommand_timeout_ms = 500\n\n\
                 [mirror]\npath = \"{}\"\nmode = \"sync\"\nretry_ms = 100\n\
                 restore_timeout_ms = 5000\n",
                plugin.display()
            ));
        }
        if let PhaseConfig::Cluster { etcd, replicas } = phase {
            // One key file for the run's brokers: the first to start creates it.
            toml.push_str(&format!(
                "\n[cluster]\netcd = [\"{etcd}\"]\nname = \"chaos\"\nbroker = \"{}\"\n\
                 advertise = \"{}\"\nshards = {SHARDS}\nownership_ttl_ms = {}\n\
                 {cap}replicas = {replicas}\nkey_file = {:?}\n",
                self.name.replace(' ', "-"),
                self.listen,
                OWNERSHIP_TTL.as_millis(),
                self.work_dir.join("cluster.key").display().to_string()
            ));
        }
        toml
    }

    /// This broker's file name part ("broker", "broker-1").
    fn file_stem(&self) -> String {
        self.name.replace(' ', "-")
    }
}

/// A running broker.
pub struct BrokerProcess {
    child: Child,
}

/// How long a start may take before we give up (a debug build compiles the plugin once).
const START_LIMIT: Duration = Duration::from_secs(60);

impl BrokerProcess {
    /// Starts the broker and waits until it listens.
    pub async fn start(spec: &BrokerSpec, phase: &PhaseConfig) -> anyhow::Result<BrokerProcess> {
        let stem = spec.file_stem();
        let config = spec.work_dir.join(format!("{stem}-{}.toml", phase.name()));
        std::fs::write(&config, spec.config_toml(phase))
            .with_context(|| format!("write {}", config.display()))?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(spec.work_dir.join(format!("{stem}.log")))
            .with_context(|| format!("open {stem}.log"))?;
        let mut cmd = Command::new(&spec.bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(spec.listen.to_string())
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .arg("--config")
            .arg(&config)
            .env("LOCKBROKER_LOG", "warn")
            // Several brokers at once: each its own admin port.
            .env("LOCKBROKER_ADMIN_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", spec.bin.display()))?;
        let stdout = child.stdout.take().context("broker stdout")?;
        match tokio::time::timeout(START_LIMIT, wait_for_banner(stdout)).await {
            Ok(Ok(())) => Ok(BrokerProcess { child }),
            Ok(Err(e)) => {
                kill_and_reap(&mut child).await;
                Err(e.context(format!(
                    "{} did not start; see {}",
                    spec.name,
                    spec.work_dir.join(format!("{stem}.log")).display()
                )))
            }
            Err(_) => {
                kill_and_reap(&mut child).await;
                bail!("{} did not listen within {START_LIMIT:?}", spec.name)
            }
        }
    }

    /// SIGSTOP.
    pub fn pause(&self) -> bool {
        signal(&self.child, libc::SIGSTOP)
    }

    /// SIGCONT.
    pub fn resume(&self) -> bool {
        signal(&self.child, libc::SIGCONT)
    }

    /// The exit status if the broker ended by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, and reap.
    pub async fn kill(mut self) {
        kill_and_reap(&mut self.child).await;
    }

    /// SIGTERM (graceful shutdown), SIGKILL if it takes longer than 10 s.
    pub async fn stop(mut self) {
        signal(&self.child, libc::SIGCONT);
        signal(&self.child, libc::SIGTERM);
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            kill_and_reap(&mut self.child).await;
        }
    }
}

/// Reads stdout until "lockbroker listening on", then keeps draining it in the background.
async fn wait_for_banner(stdout: ChildStdout) -> anyhow::Result<()> {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) if line.starts_with("lockbroker listening on") => break,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => bail!("the broker exited before listening"),
        }
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(())
}

/// The `lockbroker` binary next to this executable (`target/<profile>/lockbroker`).
pub fn default_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locate this executable")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    Ok(dir.join("lockbroker"))
}
