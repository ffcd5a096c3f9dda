//! What mirroring to Redis costs, side by side in one run (a plain timing program,
//! `harness = false`; needs `redis-server` on PATH and the plugins built):
//!
//! ```sh
//! plugins/build.sh && cargo bench -p lockbroker --bench mirror
//! ```
//!
//! Starts one `redis-server` and three in-process brokers (no mirror, `async` mirror, `sync`
//! mirror), then prints
//! 1. lock throughput (lock + unlock cycles/s, many concurrent SDK clients) with no mirror vs
//!    the async mirror, in alternating rounds, and the async overhead in %;
//! 2. acquire latency (one client, sequential) with no mirror, async and sync mirror, next to a
//!    plain Redis lock (`SET NX PX` acquire, and a full acquire + compare-and-delete cycle).
//!
//! `LB_BENCH_SECS` (default 3) sets the length of each throughput round.

mod support;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lockbroker::config::Config;
use lockbroker::mirror::MirrorMode;
use lockbroker::redis::RedisSettings;
use lockbroker::server::policy::Policy;
use support::{
    InProcessBroker, acquire_latencies, alternate_throughput, median, pct, start_broker,
};

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Redis {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH");
    let r = Redis(child, port);
    let start = Instant::now();
    loop {
        let ok = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_ok();
        if ok {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An in-process broker, mirroring to Redis when `mode` is set.
async fn mirrored_broker(tag: &str, redis_port: u16, mode: Option<MirrorMode>) -> InProcessBroker {
    let mut cfg = Config::default();
    if let Some(mode) = mode {
        let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../plugins/dist/redis_mirror.wasm");
        if !wasm.is_file() {
            eprintln!("{} is missing: run plugins/build.sh first", wasm.display());
            std::process::exit(2);
        }
        cfg.redis = vec![RedisSettings::new(
            "main",
            format!("redis://127.0.0.1:{redis_port}/0"),
        )];
        cfg.mirror.path = Some(wasm);
        cfg.mirror.mode = mode;
        cfg.mirror
            .config
            .insert("prefix".into(), toml::Value::String(format!("{tag}:")));
    }
    start_broker(tag, cfg, Policy::default()).await
}

/// Acquire latency (µs p50, p99): sequential lock (timed) + unlock (untimed).
async fn acquire_latency(b: &InProcessBroker, n: usize, tag: &str) -> (f64, f64) {
    let lat = acquire_latencies(b, n, tag).await;
    (pct(&lat, 0.5), pct(&lat, 0.99))
}

const RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// A plain Redis lock: (acquire p50, p99, full cycle p50, p99) in µs.
async fn redis_lock(port: u16, n: usize) -> (f64, f64, f64, f64) {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/0")).expect("client");
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let (mut acq, mut cycle) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let key = format!("plain/{}", i % 64);
        let token = format!("t{i}");
        let t = Instant::now();
        let ok: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(&mut con)
            .await
            .expect("SET NX");
        acq.push(t.elapsed());
        assert!(ok.is_some());
        let _: i64 = redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(&key)
            .arg(&token)
            .query_async(&mut con)
            .await
            .expect("release");
        cycle.push(t.elapsed());
    }
    acq.sort();
    cycle.sort();
    (
        pct(&acq, 0.5),
        pct(&acq, 0.99),
        pct(&cycle, 0.5),
        pct(&cycle, 0.99),
    )
}

fn main() {
    let (rt, secs) = support::runtime_and_round_secs();
    rt.block_on(async {
        let redis = start_redis();
        let none_b = mirrored_broker("none", redis.1, None).await;
        let async_b = mirrored_broker("async", redis.1, Some(MirrorMode::Async)).await;
        let sync_b = mirrored_broker("sync", redis.1, Some(MirrorMode::Sync)).await;
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
        println!("mirror benchmark: {cores} cores, in-process brokers, 4 clients x 16 lockers, {secs} s rounds");

        let (mut none, mut asy) = alternate_throughput(&none_b, &async_b, secs, "r").await;
        let (n, a) = (median(&mut none), median(&mut asy));
        println!("throughput, lock+unlock cycles/s (median of 3 rounds):");
        println!("  no mirror      {n:>10.0}   rounds {none:.0?}");
        println!("  async mirror   {a:>10.0}   rounds {asy:.0?}");
        println!("  async overhead {:>9.1} %", (1.0 - a / n) * 100.0);
        if let Some(m) = &async_b.mirror {
            println!("  async mirror counters: {:?}", m.stats());
        }

        let samples = 2_000;
        let (np50, np99) = acquire_latency(&none_b, samples, "lat").await;
        let (ap50, ap99) = acquire_latency(&async_b, samples, "lat").await;
        let (sp50, sp99) = acquire_latency(&sync_b, samples, "lat").await;
        let (r50, r99, c50, c99) = redis_lock(redis.1, samples).await;
        println!("acquire latency, one client, sequential ({samples} samples), µs p50 / p99:");
        println!("  broker, no mirror      {np50:>8.0} / {np99:>8.0}");
        println!("  broker, async mirror   {ap50:>8.0} / {ap99:>8.0}");
        println!("  broker, sync mirror    {sp50:>8.0} / {sp99:>8.0}");
        println!("  plain Redis SET NX PX  {r50:>8.0} / {r99:>8.0}");
        println!("  plain Redis lock cycle {c50:>8.0} / {c99:>8.0}   (SET NX PX + compare-and-delete)");
    });
}
