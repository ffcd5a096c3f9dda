//! `--only cluster`: cluster mode, side by side in one run: three brokers on one etcd (same
//! machine — say so) against the single broker of the run, the acknowledged lock cycle through
//! one SDK client that routes by shard, etcd's own lock (`etcd-client`'s lock API, `etcdctl
//! lock` semantics) for the same cycle, and failover time: SIGKILL the owner of a key's shard,
//! time until the next grant of that key (its etcd lease running out, then the takeover grace).

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use lockbroker_sdk::Client;

use crate::opts::Opts;
use crate::procs::{Broker, TempDir, free_tcp_port};
use crate::report::Report;
use crate::stats::Lat;

/// The ownership lease and TTL cap of the bench cluster: failover = lease + grace.
const OWNERSHIP_TTL_MS: u64 = 2000;
const MAX_TTL_MS: u64 = 3000;

/// A single-member etcd on free loopback ports.
struct Etcd {
    child: Child,
    endpoint: String,
    data: TempDir,
}

impl Etcd {
    fn start() -> Result<Etcd> {
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
}

impl Etcd {
    /// The cluster's key file, beside etcd's data (gone with it).
    fn key_file(&self) -> String {
        self.data.path().join("cluster.key").display().to_string()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A member's config; `key_file` is the cluster's key (the first member creates it).
fn member_config(etcd: &Etcd, name: &str, addr: SocketAddr) -> String {
    let (endpoint, key_file) = (&etcd.endpoint, etcd.key_file());
    format!(
        "[locks]\ndefault_ttl_ms = {MAX_TTL_MS}\n[cluster]\netcd = [\"{endpoint}\"]\n\
         name = \"bench\"\nbroker = \"{name}\"\nadvertise = \"{addr}\"\nshards = 16\n\
         ownership_ttl_ms = {OWNERSHIP_TTL_MS}\nmax_ttl_ms = {MAX_TTL_MS}\nkey_file = {key_file:?}\n"
    )
}

fn free_udp_addr() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

/// Acknowledged lock cycles (`lock` then `unlock().await`) on `keys`, round robin.
async fn lock_cycles(client: &Client, keys: &[String], window: Duration) -> Result<Lat> {
    let mut lat = Lat::default();
    let until = Instant::now() + window;
    let mut i = 0;
    while Instant::now() < until {
        let key = &keys[i % keys.len()];
        i += 1;
        let t = Instant::now();
        let g = client.lock(key.clone()).await?;
        g.unlock().await?;
        lat.record(t.elapsed());
    }
    Ok(lat)
}

/// Lock cycles with etcd's lock API: `lock(name)` (a key under a lease, waiting its turn) then
/// `unlock(key)`, on a lease granted once.
async fn etcd_cycles(endpoint: &str, keys: &[String], window: Duration) -> Result<Lat> {
    let mut client = etcd_client::Client::connect([endpoint], None).await?;
    let lease = client.lease_grant(30, None).await?.id();
    let mut lat = Lat::default();
    let until = Instant::now() + window;
    let mut i = 0;
    while Instant::now() < until {
        let key = &keys[i % keys.len()];
        i += 1;
        let t = Instant::now();
        let opts = etcd_client::LockOptions::new().with_lease(lease);
        let held = client.lock(key.as_str(), Some(opts)).await?;
        client.unlock(held.key()).await?;
        lat.record(t.elapsed());
    }
    Ok(lat)
}

/// Locks `key` through `client`, retrying while the cluster cannot grant it yet; returns when.
async fn lock_when_possible(client: &Client, key: &str, limit: Duration) -> Result<Instant> {
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
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => bail!("{key} never granted: {e}"),
        }
    }
}

/// Which member serves `key`: the one whose own-CA client is granted it.
async fn owner_of(members: &[(Broker, Client)], key: &str) -> Option<usize> {
    for (i, (_, c)) in members.iter().enumerate() {
        if let Ok(g) = c.try_lock(key.to_string()).await {
            let _ = g.unlock().await;
            return Some(i);
        }
    }
    None
}

async fn member_client(b: &Broker) -> Result<Client> {
    Ok(b.client_builder()
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(1))
        .keep_alive(Duration::from_millis(200))
        .connect()
        .await?)
}

pub async fn run(opts: &Opts, bin: &Path, single: &Broker, report: &mut Report) -> Result<()> {
    println!("cluster: 3 brokers and etcd on this same machine, next to the single broker");
    let etcd = Etcd::start()?;
    let addrs = [free_udp_addr()?, free_udp_addr()?, free_udp_addr()?];
    let mut members = Vec::new();
    let mut cas = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let name = format!("b{i}");
        let b = Broker::start_at(
            bin,
            &member_config(&etcd, &name, *addr),
            *addr,
            TempDir::new(&name)?,
        )?;
        cas.extend(std::fs::read(b.ca())?);
        let c = member_client(&b).await?;
        members.push((b, c));
    }
    let mut builder = Client::builder()
        .ca_pem(cas.clone())
        .request_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(1))
        .keep_alive(Duration::from_millis(200));
    for (b, _) in &members {
        builder = builder.broker(b.url());
    }
    let routed = builder.connect().await?;
    let keys: Vec<String> = (0..64).map(|i| format!("bench-cluster/{i}")).collect();
    for k in &keys {
        lock_when_possible(&routed, k, Duration::from_secs(60)).await?;
    }

    // The acknowledged lock cycle: routed through the cluster vs the single broker vs etcd,
    // interleaved in rounds so that drift of the machine's load hits all alike.
    let window = opts.seq_window * opts.seq_rounds as u32;
    let rounds = 6u32;
    let single_client = single.client_builder().connect().await?;
    // Where the overhead comes from: one member's own keys through a client of that member
    // only (no SDK routing; the broker's cluster checks) and through the routed client.
    let mut own_keys = Vec::new();
    for k in &keys {
        if owner_of(&members, k).await == Some(0) {
            own_keys.push(k.clone());
        }
    }
    if own_keys.is_empty() {
        bail!("member b0 owns none of the bench keys");
    }
    let (mut one, mut three, mut direct, mut routed_own) = (
        Lat::default(),
        Lat::default(),
        Lat::default(),
        Lat::default(),
    );
    for _ in 0..rounds {
        one.merge(&lock_cycles(&single_client, &keys, window / rounds).await?);
        three.merge(&lock_cycles(&routed, &keys, window / rounds).await?);
        direct.merge(&lock_cycles(&members[0].1, &own_keys, window / rounds).await?);
        routed_own.merge(&lock_cycles(&routed, &own_keys, window / rounds).await?);
    }
    let etcd_lock = etcd_cycles(&etcd.endpoint, &keys, window).await?;
    report.row(
        "cluster: acked lock cycle p50, one member's keys, client of that member only vs 1 broker",
        format!("{:.1} µs", direct.p50()),
        format!("{:.1} µs (1 broker)", one.p50()),
        Some(direct.p50() / one.p50()),
        None,
    );
    report.row(
        "cluster: acked lock cycle p50, one member's keys, routed client vs client of the member",
        format!("{:.1} µs", routed_own.p50()),
        format!("{:.1} µs (member's own client)", direct.p50()),
        Some(routed_own.p50() / direct.p50()),
        None,
    );
    report.row(
        "cluster: acked lock cycle p50 (3 brokers routed vs 1 broker)",
        format!("{:.1} µs", three.p50()),
        format!("{:.1} µs (1 broker)", one.p50()),
        Some(three.p50() / one.p50()),
        None,
    );
    report.row(
        "cluster: acked lock cycle p99 (3 brokers routed vs 1 broker)",
        format!("{:.1} µs", three.p99()),
        format!("{:.1} µs (1 broker)", one.p99()),
        Some(three.p99() / one.p99()),
        None,
    );
    report.row(
        "cluster: acked lock cycle p50 vs etcd's lock API",
        format!("{:.1} µs", three.p50()),
        format!("{:.1} µs (etcd lock+unlock)", etcd_lock.p50()),
        Some(three.p50() / etcd_lock.p50()),
        None,
    );

    // Failover: kill the owner of a key's shard, time the next grant of that key; restart the
    // killed broker (same address and data dir) and let the shards settle between rounds.
    let rounds = if opts.quick { 3 } else { 10 };
    let mut failover = Lat::default();
    for round in 0..rounds {
        let key = &keys[round % keys.len()];
        let Some(owner) = owner_of(&members, key).await else {
            bail!("no member serves {key}");
        };
        let (b, _) = members.remove(owner);
        let addr = b.addr;
        let name = format!(
            "b{}",
            addrs.iter().position(|a| *a == addr).unwrap_or(owner)
        );
        let killed = Instant::now();
        let dir = b.kill();
        let granted = lock_when_possible(&routed, key, Duration::from_secs(60)).await?;
        failover.record(granted - killed);
        let b = Broker::start_at(bin, &member_config(&etcd, &name, addr), addr, dir)?;
        let c = member_client(&b).await?;
        members.insert(owner.min(members.len()), (b, c));
        for k in &keys {
            lock_when_possible(&routed, k, Duration::from_secs(60)).await?;
        }
    }
    report.row(
        format!(
            "cluster: failover, kill → next grant ({} kills; lease {} s + grace {} s)",
            failover.count(),
            OWNERSHIP_TTL_MS / 1000,
            MAX_TTL_MS / 1000
        ),
        format!(
            "p50 {:.2} s, max {:.2} s",
            failover.p50() / 1e6,
            failover.max_us() / 1e6
        ),
        "lease expiry + grace, by design".to_string(),
        None,
        None,
    );
    drop(etcd);
    Ok(())
}
