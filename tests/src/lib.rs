//! End-to-end test support: start the real `lockbroker` binary on an ephemeral UDP port with
//! its own data dir, connect SDK clients or raw QUIC connections to it, and stop it by handle.
//! Likewise `redis-server` (`redis.rs`) and `etcd` (`etcd.rs`), on loopback ports; ports a test
//! must reuse across restarts come from below the kernel's ephemeral range (`ports.rs`).

pub mod etcd;
pub mod fencing;
pub mod http;
#[cfg(test)]
mod model;
#[cfg(test)]
mod model_check;
pub mod plugins;
pub mod ports;
pub mod proxy;
pub mod raw;
pub mod redis;
#[cfg(test)]
mod replica_model;
pub mod udp_relay;
pub mod util;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use lockbroker_sdk::Client;

/// The `lockbroker` binary of this build, built on first use if missing.
pub fn lockbroker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // target/<profile>/deps/<test-exe> → target/<profile>/lockbroker
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test exe lives in target/<profile>/deps")
            .to_path_buf();
        let bin = profile_dir.join("lockbroker");
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cmd = Command::new(env!("CARGO"));
        // Exactly the build `scripts/test-all.sh` runs before the tests (`--workspace --bins`):
        // a different package selection unifies other features of shared dependencies and
        // would rebuild them (and the broker) once more.
        cmd.args(["build", "--workspace", "--bins"]);
        // `cargo test` runs this process with the test package's CARGO_PKG_*/CARGO_MANIFEST_*
        // variables set; build scripts that watch them (ring's does) would then see a changed
        // environment and rebuild half the tree on every switch between `cargo build` and the
        // tests. Build as a plain `cargo build` from a shell would.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || name.starts_with("CARGO_BIN_")
                || matches!(
                    &*name,
                    "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "OUT_DIR"
                )
            {
                cmd.env_remove(&*name);
            }
        }
        if release {
            cmd.arg("--release");
        }
        // Always ask cargo: it is a no-op when the binary is fresh, and rebuilds it when the
        // broker changed since the last `cargo build`.
        let status = cmd.status().expect("run cargo build");
        assert!(
            status.success(),
            "cargo build of the lockbroker binary failed"
        );
        assert!(bin.exists(), "{} missing after build", bin.display());
        pin_binary(&profile_dir, &bin)
    })
    .clone()
}

/// Others build in the same target dir while tests run, and cargo replaces
/// `target/<profile>/lockbroker` when they do. A hard link of our own keeps this test process
/// on the binary it built, and never spawns from a path that is being replaced. Links left by
/// test processes that are gone are removed (each pins a whole binary on disk).
fn pin_binary(profile_dir: &Path, bin: &Path) -> PathBuf {
    let dir = profile_dir.join("lockbroker-tests-bin");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let pid = e
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("lockbroker."))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let pinned = dir.join(format!("lockbroker.{}", std::process::id()));
    let _ = std::fs::remove_file(&pinned);
    match std::fs::hard_link(bin, &pinned) {
        Ok(()) => pinned,
        Err(_) => bin.to_path_buf(),
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A temporary directory in memory (`/dev/shm` where it exists): for servers whose fsyncs
    /// would otherwise set their pace under load (etcd), when the test needs no durability
    /// beyond a process restart.
    pub fn in_memory(tag: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            TempDir::new_in(shm, tag)
        } else {
            TempDir::new(tag)
        }
    }

    fn new_in(parent: &Path, tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent.join(format!("lockbroker-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// A handle owning nothing (removes nothing on drop).
    pub fn empty() -> TempDir {
        TempDir(PathBuf::new())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A running broker process.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: TempDir,
    /// Everything the broker printed on stdout up to "listening".
    pub banner: Vec<String>,
    /// The admin HTTP listener's address (None when `[admin] enabled = false`).
    pub admin: Option<SocketAddr>,
}

impl Broker {
    /// Starts a broker with default settings on an ephemeral port.
    pub fn start() -> Broker {
        Broker::start_with_config("")
    }

    /// Starts a broker with this TOML config (listen/data_dir are set by the harness).
    pub fn start_with_config(toml: &str) -> Broker {
        let data_dir = TempDir::new("broker");
        Broker::start_in(data_dir, toml)
    }

    /// Starts a broker on an existing data dir (e.g. to restart one).
    pub fn start_in(data_dir: TempDir, toml: &str) -> Broker {
        Broker::start_at(data_dir, toml, "127.0.0.1:0".parse().expect("an address"))
    }

    /// Starts a broker on an existing data dir and a given address (to restart one where its
    /// clients will reconnect).
    pub fn start_at(data_dir: TempDir, toml: &str, listen: SocketAddr) -> Broker {
        let mut cmd = Command::new(lockbroker_bin());
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir.path())
            // Tests run many brokers at once: each gets its own ephemeral admin port.
            .arg("--admin-listen")
            .arg("127.0.0.1:0");
        if !toml.is_empty() {
            let cfg = data_dir.path().join("broker.toml");
            std::fs::write(&cfg, toml).expect("write config");
            cmd.arg("--config").arg(cfg);
        }
        cmd.env(
            "LOCKBROKER_LOG",
            std::env::var("LOCKBROKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn lockbroker serve");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let mut banner = Vec::new();
            let mut sent = false;
            while let Some(Ok(line)) = lines.next() {
                if !sent {
                    banner.push(line.clone());
                    if line.starts_with("  lockbroker lock") {
                        let _ = tx.send(std::mem::take(&mut banner));
                        sent = true;
                    }
                }
            }
            if !sent {
                let _ = tx.send(banner);
            }
        });
        let banner = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("broker did not print its banner within 60 s");
        let addr = banner
            .iter()
            .find_map(|l| {
                l.strip_prefix("lockbroker listening on ")
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse().ok())
            })
            .unwrap_or_else(|| panic!("no listen address in banner {banner:?}"));
        let admin = banner.iter().find_map(|l| {
            l.strip_prefix("admin listening on http://")
                .and_then(|r| r.split('/').next())
                .and_then(|a| a.parse().ok())
        });
        Broker {
            child,
            addr,
            data_dir,
            banner,
            admin,
        }
    }

    /// The broker URL.
    pub fn url(&self) -> String {
        format!("quic://{}", self.addr)
    }

    /// The dev certificate clients pin.
    pub fn ca(&self) -> PathBuf {
        self.data_dir.path().join("dev-cert.pem")
    }

    /// A client builder pointed at this broker and trusting its dev certificate.
    pub fn client_builder(&self) -> lockbroker_sdk::ClientBuilder {
        Client::builder().broker(self.url()).ca_file(self.ca())
    }

    /// A client builder pointed at this broker, trusting `ca` instead of its dev certificate.
    pub fn client_builder_with_ca(&self, ca: &Path) -> lockbroker_sdk::ClientBuilder {
        Client::builder()
            .broker(self.url())
            .ca_file(ca)
            .connect_timeout(Duration::from_secs(5))
    }

    /// A connected client.
    pub async fn client(&self) -> Client {
        self.client_builder()
            .connect()
            .await
            .expect("connect to broker")
    }

    /// An operator's forced release of `key` (`POST /api/release` with the admin token the
    /// broker wrote to its data dir); the answer as it came.
    pub async fn force_release(&self, key: &str) -> http::Response {
        let admin = self.admin.expect("the admin listener");
        let token = std::fs::read_to_string(self.data_dir.path().join("admin-token"))
            .expect("the broker's admin-token");
        let bearer = format!("Bearer {}", token.trim());
        let body = serde_json::json!({ "key": key });
        http::post_json(admin, "/api/release", &[("Authorization", &bearer)], &body).await
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (by number) with kill(1).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Kills the process (SIGKILL) and gives back its data dir, e.g. to restart on it.
    pub fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = TempDir(self.data_dir.0.clone());
        // Keep the directory alive past our Drop.
        self.data_dir.0 = PathBuf::new();
        dir
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `lockbroker <args>` against `broker` with LOCKBROKER_URL/CA set.
pub fn cli(broker: &Broker) -> Command {
    let mut cmd = Command::new(lockbroker_bin());
    cmd.env("LOCKBROKER_URL", broker.url())
        .env("LOCKBROKER_CA", broker.ca());
    cmd
}
