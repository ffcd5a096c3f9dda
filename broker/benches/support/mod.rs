//! Shared pieces of the broker's side-by-side benchmarks (plain timing programs): start an
//! in-process broker, connect SDK clients, measure lock throughput and acquire latency.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockbroker::broker::Broker;
use lockbroker::config::Config;
use lockbroker::mirror::Mirror;
use lockbroker::server::Server;
use lockbroker::server::policy::Policy;
use lockbroker_sdk::Client;

/// A broker running in this process, on an ephemeral port, with its own data dir.
pub struct InProcessBroker {
    pub url: String,
    pub ca: PathBuf,
    pub broker: Arc<Broker>,
    /// The mirror, when the config has one.
    pub mirror: Option<Arc<Mirror>>,
    _dir: tempfile::TempDir,
}

/// Binds and starts a broker with `cfg` (listen address and data dir are set here).
pub async fn start_broker(tag: &str, mut cfg: Config, policy: Policy) -> InProcessBroker {
    let dir = tempfile::Builder::new()
        .prefix(tag)
        .tempdir()
        .expect("tempdir");
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.data_dir = dir.path().to_path_buf();
    let server = Server::bind(cfg, policy).expect("bind");
    let cfg = &server.broker().cfg;
    let mirror = Mirror::start(&cfg.mirror, &cfg.redis, &cfg.data_dir, server.broker())
        .await
        .expect("mirror");
    let addr = server.local_addr().expect("addr");
    let ca = server.dev_ca.clone().expect("dev ca");
    let broker = server.broker().clone();
    tokio::spawn(server.run(std::future::pending()));
    InProcessBroker {
        url: format!("quic://{addr}"),
        ca,
        broker,
        mirror,
        _dir: dir,
    }
}

impl InProcessBroker {
    pub async fn client(&self) -> Client {
        Client::builder()
            .broker(&self.url)
            .ca_file(&self.ca)
            .connect()
            .await
            .expect("connect")
    }
}

/// Lock + acknowledged unlock cycles per second, `clients` connections × `tasks` lockers each,
/// every locker on its own key under `prefix`.
pub async fn throughput(
    b: &InProcessBroker,
    clients: usize,
    tasks: usize,
    secs: f64,
    prefix: &str,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for c in 0..clients {
        let cl = b.client().await;
        for t in 0..tasks {
            let (cl, done) = (cl.clone(), done.clone());
            let key = format!("{prefix}/{c}/{t}");
            handles.push(tokio::spawn(async move {
                while Instant::now() < until {
                    let g = cl.lock(key.clone()).no_renew().await.expect("lock");
                    g.unlock().await.expect("unlock");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for h in handles {
        h.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / secs
}

/// Throughput of two brokers side by side: a warm-up each, then three alternating rounds of
/// `secs` (4 connections × 16 lockers, keys under `prefix`). Returns each broker's rounds.
pub async fn alternate_throughput(
    a: &InProcessBroker,
    b: &InProcessBroker,
    secs: f64,
    prefix: &str,
) -> (Vec<f64>, Vec<f64>) {
    throughput(a, 4, 16, 0.5, "warmup").await;
    throughput(b, 4, 16, 0.5, "warmup").await;
    let (mut ra, mut rb) = (Vec::new(), Vec::new());
    for round in 0..3 {
        ra.push(throughput(a, 4, 16, secs, &format!("{prefix}{round}")).await);
        rb.push(throughput(b, 4, 16, secs, &format!("{prefix}{round}")).await);
    }
    (ra, rb)
}

/// Sequential acquire latencies (the lock timed, the unlock not), sorted.
pub async fn acquire_latencies(b: &InProcessBroker, n: usize, prefix: &str) -> Vec<Duration> {
    let cl = b.client().await;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let key = format!("{prefix}/lat/{}", i % 64);
        let t = Instant::now();
        let g = cl.lock(key).no_renew().await.expect("lock");
        lat.push(t.elapsed());
        g.unlock().await.expect("unlock");
    }
    lat.sort();
    lat
}

/// The `p` quantile of sorted durations, in µs.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// The median of a list of figures.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// The benches' multi-thread runtime and the length of a throughput round in seconds
/// (`LB_BENCH_SECS`, default 3).
pub fn runtime_and_round_secs() -> (tokio::runtime::Runtime, f64) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let secs = std::env::var("LB_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    (rt, secs)
}
