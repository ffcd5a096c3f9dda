//! `--only contention`: 16 clients on one key — the hand-off (release → next grant) and cycles
//! per second of the broker's pushed grants against Redis clients retrying `SET NX`
//! (redsync's default 50–250 ms sleep, and a tight 1 ms one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;

use crate::fixture::TTL;
use crate::opts::Opts;
use crate::procs::{Broker, Redis};
use crate::redis_lock::{self, RedisLock};
use crate::report::{Report, Target};
use crate::stats::{Lat, fmt_rate, fmt_us};

const CONTENDERS: usize = 16;

/// Shared clock of a contention run: nanoseconds since `t0` of the last release.
struct Handoffs {
    t0: Instant,
    last_release: AtomicU64,
    stop: AtomicBool,
    cycles: AtomicU64,
}

impl Handoffs {
    fn new() -> Arc<Handoffs> {
        Arc::new(Handoffs {
            t0: Instant::now(),
            last_release: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            cycles: AtomicU64::new(0),
        })
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Called by a new holder: records release → grant.
    fn granted(&self, lat: &mut Lat) {
        let now = self.now_ns();
        let last = self.last_release.load(Ordering::Acquire);
        if last != 0 && !self.stop.load(Ordering::Relaxed) {
            lat.record(Duration::from_nanos(now.saturating_sub(last)));
            self.cycles.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Called by the holder just before it releases.
    fn releasing(&self) {
        self.last_release.store(self.now_ns(), Ordering::Release);
    }
}

#[derive(Clone, Copy)]
enum Retry {
    /// redsync's default: sleep a random 50–250 ms between tries.
    Redsync,
    /// A tight 1 ms sleep between tries.
    Tight,
}

impl Retry {
    fn delay(self) -> Duration {
        match self {
            Retry::Redsync => Duration::from_millis(rand::random_range(50..=250)),
            Retry::Tight => Duration::from_millis(1),
        }
    }
}

pub async fn run(opts: &Opts, broker: &Broker, redis: &Redis, report: &mut Report) -> Result<()> {
    println!("\n== contention: {CONTENDERS} clients, one key ==");
    let w = opts.contention_window;
    let (b_lat, b_rate) = contention_broker(broker, w).await?;
    println!(
        "  broker (pushed grants):      handoff {}; {}/s",
        b_lat.summary(),
        fmt_rate(b_rate)
    );
    let (rd_lat, rd_rate) = contention_redis(redis, Retry::Redsync, w).await?;
    println!(
        "  redis, redsync 50–250 ms:    handoff {}; {}/s",
        rd_lat.summary(),
        fmt_rate(rd_rate)
    );
    let (rt_lat, rt_rate) = contention_redis(redis, Retry::Tight, w).await?;
    println!(
        "  redis, 1 ms retry:           handoff {}; {}/s",
        rt_lat.summary(),
        fmt_rate(rt_rate)
    );
    report.row(
        "contended handoff p50: Redis redsync-default ÷ broker (µs)",
        fmt_us(b_lat.p50()),
        fmt_us(rd_lat.p50()),
        Some(rd_lat.p50() / b_lat.p50()),
        Some(Target::AtLeast(50.0)),
    );
    report.row(
        "contended handoff p50: Redis 1 ms retry ÷ broker (µs)",
        fmt_us(b_lat.p50()),
        fmt_us(rt_lat.p50()),
        Some(rt_lat.p50() / b_lat.p50()),
        Some(Target::AtLeast(5.0)),
    );
    report.row(
        "  … handoff p99: Redis 1 ms retry ÷ broker (µs)",
        fmt_us(b_lat.p99()),
        fmt_us(rt_lat.p99()),
        Some(rt_lat.p99() / b_lat.p99()),
        None,
    );
    report.row(
        "contended cycles/s: broker vs Redis redsync-default",
        fmt_rate(b_rate),
        fmt_rate(rd_rate),
        Some(b_rate / rd_rate),
        None,
    );
    report.row(
        "contended cycles/s: broker vs Redis 1 ms retry",
        fmt_rate(b_rate),
        fmt_rate(rt_rate),
        Some(b_rate / rt_rate),
        None,
    );
    Ok(())
}

/// Each client: lock (queued, granted by push) → note the handoff → release by drop → again.
/// The broker's FIFO puts the releasing client behind the 15 waiters.
async fn contention_broker(broker: &Broker, w: Duration) -> Result<(Lat, f64)> {
    let h = Handoffs::new();
    let mut clients = Vec::new();
    for _ in 0..CONTENDERS {
        clients.push(broker.client_builder().connect().await?);
    }
    let key = Bytes::from_static(b"bench/contended");
    let mut set = tokio::task::JoinSet::new();
    for client in &clients {
        let client = client.clone();
        let h = h.clone();
        let key = key.clone();
        set.spawn(async move {
            let mut lat = Lat::default();
            while !h.stop.load(Ordering::Relaxed) {
                let g = client.lock(key.clone()).ttl(TTL).await?;
                h.granted(&mut lat);
                h.releasing();
                drop(g);
            }
            anyhow::Ok(lat)
        });
    }
    let started = Instant::now();
    tokio::time::sleep(w).await;
    h.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut lat = Lat::default();
    while let Some(r) = set.join_next().await {
        lat.merge(&r??);
    }
    for c in &clients {
        c.close().await;
    }
    Ok((
        lat,
        h.cycles.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
    ))
}

/// Each client: try `SET NX PX` until it succeeds, sleeping `retry` between tries → note the
/// handoff → compare-and-delete → sleep one retry interval (stand aside) → again.
async fn contention_redis(redis: &Redis, retry: Retry, w: Duration) -> Result<(Lat, f64)> {
    let h = Handoffs::new();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CONTENDERS {
        let mut rl = RedisLock::connect(&redis.url()).await?;
        let h = h.clone();
        set.spawn(async move {
            let mut lat = Lat::default();
            let key = "bench/contended";
            'outer: while !h.stop.load(Ordering::Relaxed) {
                let tok = redis_lock::token();
                loop {
                    if rl.try_lock(key, &tok).await? {
                        break;
                    }
                    if h.stop.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                    tokio::time::sleep(retry.delay()).await;
                }
                h.granted(&mut lat);
                h.releasing();
                if !rl.unlock(key, &tok).await? {
                    bail!("redis contention: lost the lock before unlocking");
                }
                tokio::time::sleep(retry.delay()).await;
            }
            anyhow::Ok(lat)
        });
    }
    let started = Instant::now();
    tokio::time::sleep(w).await;
    h.stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut lat = Lat::default();
    while let Some(r) = set.join_next().await {
        lat.merge(&r??);
    }
    Ok((
        lat,
        h.cycles.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64(),
    ))
}
