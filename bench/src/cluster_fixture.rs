//! What the `cluster` scenario runs against: a single-member etcd and clusters of three
//! brokers on it (each its own cluster name and key, `replicas` as asked), all on loopback
//! ports of this machine, each broker with a client of its own and the cluster with one
//! routed client.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lockbroker_sdk::{Client, ClientBuilder};

use crate::procs::{Broker, TempDir, free_tcp_port};

/// The ownership lease and TTL cap of the bench clusters: failover without replicas = lease +
/// grace; with replicas, the lease only.
pub(crate) const OWNERSHIP_TTL_MS: u64 = 2000;
pub(crate) const MAX_TTL_MS: u64 = 3000;

/// A single-member etcd on free loopback ports.
pub(crate) struct Etcd {
    child: Child,
    pub(crate) endpoint: String,
    data: TempDir,
}

impl Etcd {
    pub(crate) fn start() -> Result<Etcd> {
        let data = TempDir::new("etcd")?;
        let (client, peer) = (free_tcp_port()?, free_tcp_port()?);
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(data.path().join("member"))
            .args(["--listen-client-urls", &endpoint])
            .args(["--advertise-client-urls", &endpoint])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("bench={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawn etcd (apt-get install etcd-server)")?;
        let etcd = Etcd {
            child,
            endpoint,
            data,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], client));
        let start = Instant::now();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                bail!("etcd did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(etcd)
    }

    /// The key file of cluster `cluster`, beside etcd's data (gone with it).
    fn key_file(&self, cluster: &str) -> PathBuf {
        self.data.path().join(format!("{cluster}.key"))
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Three brokers of one cluster on `etcd`, their own clients and one routed client.
pub(crate) struct BenchCluster {
    bin: PathBuf,
    config: MemberConfig,
    addrs: Vec<SocketAddr>,
    /// Each member, in `addrs` order.
    members: Vec<Member>,
    /// A client of all three, routing by shard.
    pub(crate) routed: Client,
}

/// A member: running, with a client of that member only, or killed (its data dir kept, so
/// that it restarts with its certificate).
enum Member {
    Up(Broker, Client),
    Down(TempDir),
}

/// What every member's config shares.
struct MemberConfig {
    etcd: String,
    cluster: String,
    key_file: PathBuf,
    replicas: u32,
}

impl MemberConfig {
    fn toml(&self, name: &str, addr: SocketAddr) -> String {
        let MemberConfig {
            etcd,
            cluster,
            key_file,
            replicas,
        } = self;
        format!(
            "[locks]\ndefault_ttl_ms = {MAX_TTL_MS}\n[cluster]\netcd = [\"{etcd}\"]\n\
             name = \"{cluster}\"\nbroker = \"{name}\"\nadvertise = \"{addr}\"\nshards = 16\n\
             ownership_ttl_ms = {OWNERSHIP_TTL_MS}\nmax_ttl_ms = {MAX_TTL_MS}\n\
             replicas = {replicas}\nkey_file = {key_file:?}\n"
        )
    }
}

/// Client settings that notice a dead broker quickly.
fn quick(builder: ClientBuilder) -> ClientBuilder {
    builder
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(1))
        .keep_alive(Duration::from_millis(200))
}

impl BenchCluster {
    /// Starts cluster `cluster` of three brokers with `replicas`, and waits until every one of
    /// `keys` can be locked through the routed client.
    pub(crate) async fn start(
        bin: &Path,
        etcd: &Etcd,
        cluster: &str,
        replicas: u32,
        keys: &[String],
    ) -> Result<BenchCluster> {
        let config = MemberConfig {
            etcd: etcd.endpoint.clone(),
            cluster: cluster.to_string(),
            key_file: etcd.key_file(cluster),
            replicas,
        };
        let addrs: Vec<SocketAddr> = (0..3).map(|_| free_udp_addr()).collect::<Result<_>>()?;
        let mut members = Vec::new();
        let mut cas = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let name = format!("b{i}");
            let b = Broker::start_at(bin, &config.toml(&name, *addr), *addr, TempDir::new(&name)?)?;
            cas.extend(std::fs::read(b.ca())?);
            let c = quick(b.client_builder()).connect().await?;
            members.push(Member::Up(b, c));
        }
        let mut builder = quick(Client::builder().ca_pem(cas));
        for addr in &addrs {
            builder = builder.broker(format!("quic://{addr}"));
        }
        let routed = builder.connect().await?;
        let c = BenchCluster {
            bin: bin.to_path_buf(),
            config,
            addrs,
            members,
            routed,
        };
        c.settle(keys).await?;
        Ok(c)
    }

    /// Waits until every one of `keys` is granted through the routed client.
    pub(crate) async fn settle(&self, keys: &[String]) -> Result<()> {
        for k in keys {
            lock_when_possible(&self.routed, k, Duration::from_secs(60)).await?;
        }
        Ok(())
    }

    /// The client of member `i` only.
    pub(crate) fn member_client(&self, i: usize) -> Option<&Client> {
        match self.members.get(i)? {
            Member::Up(_, c) => Some(c),
            Member::Down(_) => None,
        }
    }

    /// Which member serves `key`: the one whose own client is granted it.
    pub(crate) async fn owner_of(&self, key: &str) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            let Member::Up(_, c) = m else { continue };
            if let Ok(g) = c.try_lock(key.to_string()).await {
                let _ = g.unlock().await;
                return Some(i);
            }
        }
        None
    }

    /// SIGKILLs member `i`; returns when.
    pub(crate) fn kill(&mut self, i: usize) -> Result<Instant> {
        let Some(slot) = self.members.get_mut(i) else {
            bail!("no member b{i}");
        };
        match std::mem::replace(slot, Member::Down(TempDir::none())) {
            Member::Up(b, _) => {
                let killed = Instant::now();
                *slot = Member::Down(b.kill());
                Ok(killed)
            }
            down => {
                *slot = down;
                bail!("member b{i} is not running")
            }
        }
    }

    /// Starts member `i` again at its address.
    pub(crate) async fn restart(&mut self, i: usize) -> Result<()> {
        let name = format!("b{i}");
        let addr = self.addrs[i];
        let Some(Member::Down(dir)) = self.members.get_mut(i) else {
            bail!("member b{i} is running");
        };
        let dir = std::mem::replace(dir, TempDir::none());
        let b = Broker::start_at(&self.bin, &self.config.toml(&name, addr), addr, dir)?;
        let c = quick(b.client_builder()).connect().await?;
        self.members[i] = Member::Up(b, c);
        Ok(())
    }
}

fn free_udp_addr() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Locks `key` through `client`, again while the cluster cannot grant it yet; returns when it
/// was granted (and releases it).
pub(crate) async fn lock_when_possible(
    client: &Client,
    key: &str,
    limit: Duration,
) -> Result<Instant> {
    let start = Instant::now();
    loop {
        match client
            .lock(key.to_string())
            .wait(Duration::from_secs(10))
            .await
        {
            Ok(g) => {
                let at = Instant::now();
                // The shard may move again right away (a restarted member takes its shards
                // back): the release then lands wherever the lease went, or the lease ends.
                let _ = g.unlock().await;
                return Ok(at);
            }
            Err(_) if start.elapsed() < limit => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("{key} never granted: {e}"),
        }
    }
}
