//! The processes a run compares: the release `lockbroker` binary (built here if needed) on an
//! ephemeral UDP port with its own temp data dir, and a `redis-server` on an ephemeral TCP port
//! with persistence off. Both are killed when their handle drops.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The workspace root (this crate lives in `<root>/bench`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Builds (a no-op when fresh) and returns the release `lockbroker` binary; `LOCKBROKER_BIN`
/// names a prebuilt one instead (for A/B comparisons of two builds).
pub fn build_broker() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("LOCKBROKER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "lockbroker",
            "--bin",
            "lockbroker",
        ])
        .status()
        .context("run cargo build")?;
    if !status.success() {
        bail!("cargo build of the lockbroker binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_relative() {
        root.join(target)
    } else {
        target
    };
    let bin = target.join("release").join("lockbroker");
    if !bin.exists() {
        bail!("{} missing after build", bin.display());
    }
    Ok(bin)
}

/// A temporary directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Result<TempDir> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("lockbroker-bench-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    /// No directory (a placeholder where one was moved out).
    pub fn none() -> TempDir {
        TempDir(PathBuf::new())
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET path` from an admin listener, bounded to 10 s; the whole response's length.
pub async fn admin_get(admin: SocketAddr, path: &str) -> Result<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(admin).await?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        anyhow::Ok(out.len())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("GET {path}: no answer in 10 s"))?
}

/// A running broker process.
pub struct Broker {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: TempDir,
    /// The admin HTTP listener (when the banner names one).
    pub admin: Option<SocketAddr>,
}

impl Broker {
    /// Starts `bin serve` on 127.0.0.1:0 with `toml` as its config.
    pub fn start(bin: &Path, toml: &str) -> Result<Broker> {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        Broker::start_at(bin, toml, listen, TempDir::new("broker")?)
    }

    /// Starts `bin serve` on `listen` with `toml` as its config and `data_dir` (a restart
    /// keeps both).
    pub fn start_at(
        bin: &Path,
        toml: &str,
        listen: SocketAddr,
        data_dir: TempDir,
    ) -> Result<Broker> {
        let cfg = data_dir.path().join("broker.toml");
        std::fs::write(&cfg, toml)?;
        let mut child = Command::new(bin)
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .env("LOCKBROKER_ADMIN_LISTEN", "127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path())
            .arg("--config")
            .arg(&cfg)
            .env(
                "LOCKBROKER_LOG",
                std::env::var("LOCKBROKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawn {} serve", bin.display()))?;
        let stdout = child.stdout.take().context("broker stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let (admin_tx, admin_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(admin) = line
                    .strip_prefix("admin listening on http://")
                    .and_then(|r| r.split('/').next())
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = admin_tx.send(admin);
                }
                if !sent
                    && let Some(addr) = line
                        .strip_prefix("lockbroker listening on ")
                        .and_then(|r| r.split('/').next())
                        .and_then(|a| a.parse::<SocketAddr>().ok())
                {
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                bail!("the broker did not print its listen address within 60 s");
            }
        };
        // The dev certificate is written before the banner; wait for it to be readable.
        let ca = data_dir.path().join("dev-cert.pem");
        let start = Instant::now();
        while !ca.exists() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        // The admin line follows the listen line at once (none when admin is disabled).
        let admin = admin_rx.recv_timeout(Duration::from_secs(2)).ok();
        Ok(Broker {
            child,
            addr,
            data_dir,
            admin,
        })
    }

    pub fn url(&self) -> String {
        format!("quic://{}", self.addr)
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir.path().join("dev-cert.pem")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes (VmRSS of /proc/<pid>/status).
    pub fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS line")?;
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .context("VmRSS value")?
            .parse()?;
        Ok(kb * 1024)
    }

    /// The client builder every broker client of the run uses.
    pub fn client_builder(&self) -> lockbroker_sdk::ClientBuilder {
        lockbroker_sdk::Client::builder()
            .broker(self.url())
            .ca_file(self.ca())
            .name("lockbroker-bench")
    }
}

impl Broker {
    /// SIGKILLs the broker and gives its data dir back (to restart it).
    pub fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.data_dir, TempDir::none())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running redis-server.
pub struct Redis {
    child: Child,
    pub port: u16,
    pub version: String,
}

impl Redis {
    /// Starts `redis-server --port <ephemeral> --save "" --appendonly no`.
    pub fn start() -> Result<Redis> {
        let port = free_tcp_port()?;
        let version = Command::new("redis-server")
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .context(
                "redis-server not found: install it (e.g. `apt-get install -y redis-server`)",
            )?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn redis-server")?;
        let mut redis = Redis {
            child,
            port,
            version,
        };
        let start = Instant::now();
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = redis.child.try_wait() {
                bail!("redis-server exited at start: {status}");
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("redis-server did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        redis.version = redis
            .version
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))
            .unwrap_or(&redis.version)
            .to_owned();
        Ok(redis)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_tcp_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
