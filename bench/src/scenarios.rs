//! The scenarios of one run and the report that puts them side by side.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use lockbroker_sdk::Client;

use crate::Opts;
use crate::echo::{self, EchoClient};
use crate::procs::{Broker, Redis};
use crate::redis_lock::{self, RedisLock};
use crate::stats::{Lat, fmt_rate, fmt_us};

/// Lease TTL of the uncontended and throughput cycles.
const TTL: Duration = Duration::from_secs(30);

/// The broker config of a run: per-session limits raised for the memory test, whose raw
/// sessions pipeline a million acquires and may fall behind reading the answers for a while on
/// a busy machine (a longer slow-reader deadline than the default 10 s).
pub(crate) fn broker_config(opts: &Opts) -> String {
    let per_session = opts.mem_locks.div_ceil(MEM_SESSIONS) + 1000;
    format!(
        "[limits]\nmax_leases_per_session = {per_session}\nmax_waiters_per_session = 100000\n\
         outbox_stall_ms = 120000\n"
    )
}

/// Raw sessions the memory test spreads its leases over.
const MEM_SESSIONS: usize = 4;

/// One line of the report.
struct Row {
    figure: String,
    broker: String,
    reference: String,
    ratio: Option<f64>,
    target: Option<Target>,
}

#[derive(Clone, Copy)]
pub(crate) enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    fn met(self, r: f64) -> bool {
        match self {
            Target::AtMost(t) => r <= t,
            Target::AtLeast(t) => r >= t,
        }
    }

    fn show(self) -> String {
        match self {
            Target::AtMost(t) => format!("≤ {t}"),
            Target::AtLeast(t) => format!("≥ {t}"),
        }
    }
}

#[derive(Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub(crate) fn row(
        &mut self,
        figure: impl Into<String>,
        broker: impl Into<String>,
        reference: impl Into<String>,
        ratio: Option<f64>,
        target: Option<Target>,
    ) {
        let row = Row {
            figure: figure.into(),
            broker: broker.into(),
            reference: reference.into(),
            ratio,
            target,
        };
        println!(
            "  {} | {} | {} | {}",
            row.figure,
            row.broker,
            row.reference,
            row.ratio.map_or("-".into(), |r| format!("{r:.2}×"))
        );
        self.rows.push(row);
    }

    fn print(&self) {
        println!();
        println!("| figure | lockbroker | reference | ratio | target | met |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}×"));
            let (target, met) = match (r.target, r.ratio) {
                (Some(t), Some(x)) => (t.show(), if t.met(x) { "yes" } else { "**no**" }),
                (Some(t), None) => (t.show(), "?"),
                _ => ("".into(), ""),
            };
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.figure, r.broker, r.reference, ratio, target, met
            );
        }
    }
}

pub async fn run_all(opts: &Opts, bin: &Path) -> Result<()> {
    let redis = Redis::start()?;
    let broker = Broker::start(bin, &broker_config(opts))?;
    let echo_server = echo::spawn_server_process()?;
    let echo_inproc = echo::start_server()?;
    println!(
        "lockbroker-bench{}: broker {} (pid {}), redis-server {} on port {}, echo server {}",
        if opts.quick { " --quick" } else { "" },
        broker.addr,
        broker.pid(),
        redis.version,
        redis.port,
        echo_server.addr
    );
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    let mut report = Report::default();
    if opts.runs("seq") {
        sequential(
            opts,
            &broker,
            &redis,
            &echo_server,
            &echo_inproc,
            &mut report,
        )
        .await?;
    }
    if opts.runs("throughput") {
        throughput(opts, &broker, &redis, &mut report).await?;
    }
    if opts.runs("contention") {
        contention(opts, &broker, &redis, &mut report).await?;
    }
    if opts.runs("expiry") {
        expiry(opts, &broker, &mut report).await?;
    }
    if opts.runs("memory") {
        memory(opts, &broker, &redis, &mut report).await?;
    }
    if opts.runs("table") {
        table(opts, &mut report);
    }
    if opts.runs("cluster") {
        crate::cluster::cluster(opts, bin, &broker, &mut report).await?;
    }
    if opts.runs("attack") {
        crate::attack::attack(opts, bin, &mut report).await?;
    }
    if opts.runs("embedded-uncontended") || opts.runs("embedded-contended") {
        crate::embedded::embedded(opts, &mut report).await?;
    }
    if opts.runs("metrics") {
        crate::metrics_overhead::metrics_overhead(opts, bin, &mut report).await?;
    }
    report.print();
    Ok(())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

// ---------------------------------------------------------------------------------------------
// Sequential: one operation in flight.

async fn sequential(
    opts: &Opts,
    broker: &Broker,
    redis: &Redis,
    echo_server: &echo::EchoServer,
    echo_inproc: &echo::EchoServer,
    report: &mut Report,
) -> Result<()> {
    println!("\n== sequential (1 client, 1 operation in flight) ==");
    let mut ec_in = EchoClient::connect(echo_inproc).await?;
    let mut echo_in_l = Lat::default();
    let client = broker.client_builder().connect().await?;
    let mut rl = RedisLock::connect(&redis.url()).await?;
    let mut ec = EchoClient::connect(echo_server).await?;
    let (mut echo_l, mut acq_l, mut ack_l, mut ff_l, mut redis_l) = Default::default();
    let w = opts.seq_window;
    // Warm up every path, then alternate the systems round by round so drift hits all alike.
    ec.run(w / 4, &mut Lat::default()).await?;
    broker_acquire(&client, w / 4, &mut Lat::default()).await?;
    broker_cycle(&client, true, w / 4, &mut Lat::default()).await?;
    broker_cycle(&client, false, w / 4, &mut Lat::default()).await?;
    redis_cycle(&mut rl, w / 4, &mut Lat::default()).await?;
    for _ in 0..opts.seq_rounds {
        ec.run(w, &mut echo_l).await?;
        ec_in.run(w / 2, &mut echo_in_l).await?;
        broker_acquire(&client, w, &mut acq_l).await?;
        broker_cycle(&client, true, w, &mut ack_l).await?;
        broker_cycle(&client, false, w, &mut ff_l).await?;
        redis_cycle(&mut rl, w, &mut redis_l).await?;
    }
    let (echo_l, acq_l, ack_l, ff_l, redis_l): (Lat, Lat, Lat, Lat, Lat) =
        (echo_l, acq_l, ack_l, ff_l, redis_l);
    println!(
        "  raw QUIC echo 32 B RTT    p50/p99/p999: {}",
        echo_l.summary()
    );
    println!(
        "  … echo server in this process (thread): {}",
        echo_in_l.summary()
    );
    println!(
        "  broker uncontended acquire p50/p99/p999: {}",
        acq_l.summary()
    );
    println!(
        "  broker lock+unlock (ack)  p50/p99/p999: {}",
        ack_l.summary()
    );
    println!(
        "  broker lock+drop (f&f)    p50/p99/p999: {}",
        ff_l.summary()
    );
    println!(
        "  redis SET NX + EVALSHA    p50/p99/p999: {}",
        redis_l.summary()
    );
    report.row(
        "uncontended acquire p50 vs raw QUIC echo RTT p50 (µs)",
        fmt_us(acq_l.p50()),
        fmt_us(echo_l.p50()),
        Some(acq_l.p50() / echo_l.p50()),
        Some(Target::AtMost(1.0)),
    );
    report.row(
        "  … p99 (µs)",
        fmt_us(acq_l.p99()),
        fmt_us(echo_l.p99()),
        Some(acq_l.p99() / echo_l.p99()),
        None,
    );
    for (name, l, target) in [
        (
            "lock + fire-and-forget unlock (drop)",
            &ff_l,
            Some(Target::AtMost(0.6)),
        ),
        (
            "lock + acknowledged unlock",
            &ack_l,
            Some(Target::AtMost(1.0)),
        ),
    ] {
        report.row(
            format!("{name} p50 vs Redis cycle p50 (µs)"),
            fmt_us(l.p50()),
            fmt_us(redis_l.p50()),
            Some(l.p50() / redis_l.p50()),
            target,
        );
        report.row(
            "  … p99 (µs)",
            fmt_us(l.p99()),
            fmt_us(redis_l.p99()),
            Some(l.p99() / redis_l.p99()),
            None,
        );
        report.row(
            "  … p999 (µs)",
            fmt_us(l.p999()),
            fmt_us(redis_l.p999()),
            Some(l.p999() / redis_l.p999()),
            None,
        );
    }
    client.close().await;
    Ok(())
}

/// Uncontended acquires of one key (each released by drop, outside the timed part).
async fn broker_acquire(client: &Client, d: Duration, lat: &mut Lat) -> Result<()> {
    let key = Bytes::from_static(b"bench/seq/acquire");
    let end = Instant::now() + d;
    while Instant::now() < end {
        let t = Instant::now();
        let g = client.try_lock(key.clone()).ttl(TTL).await?;
        lat.record(t.elapsed());
        drop(g);
    }
    Ok(())
}

/// Lock + unlock cycles on one key: `ack` waits for the release's answer; otherwise the guard
/// is dropped (fire-and-forget) and the next try-lock of the same key must succeed.
async fn broker_cycle(client: &Client, ack: bool, d: Duration, lat: &mut Lat) -> Result<()> {
    let key = Bytes::from_static(if ack {
        b"bench/seq/ack"
    } else {
        b"bench/seq/ff"
    });
    let end = Instant::now() + d;
    while Instant::now() < end {
        let t = Instant::now();
        let g = client
            .try_lock(key.clone())
            .ttl(TTL)
            .await
            .context("uncontended try-lock (after a fire-and-forget unlock?)")?;
        if ack {
            g.unlock().await?;
        } else {
            drop(g);
        }
        lat.record(t.elapsed());
    }
    Ok(())
}

async fn redis_cycle(rl: &mut RedisLock, d: Duration, lat: &mut Lat) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let t = Instant::now();
        rl.cycle("bench/seq/redis").await?;
        lat.record(t.elapsed());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Throughput: N tasks, distinct keys, over 1 or 8 connections.

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    BrokerFf,
    BrokerAck,
    Redis,
}

async fn throughput(
    opts: &Opts,
    broker: &Broker,
    redis: &Redis,
    report: &mut Report,
) -> Result<()> {
    println!("\n== throughput (lock+unlock cycles/s, distinct keys per task) ==");
    for conns in [1usize, 8] {
        let mut clients = Vec::new();
        let mut rls = Vec::new();
        for _ in 0..conns {
            clients.push(broker.client_builder().connect().await?);
            rls.push(RedisLock::connect(&redis.url()).await?);
        }
        for tasks in [1usize, 16, 64, 256] {
            let mut rate = [0.0f64; 3];
            for (i, sys) in [System::BrokerFf, System::BrokerAck, System::Redis]
                .into_iter()
                .enumerate()
            {
                rate[i] = run_throughput(sys, tasks, &clients, &rls, opts.tp_window).await?;
            }
            println!(
                "  {tasks:>3} tasks × {conns} conn: broker f&f {}/s, broker ack {}/s, redis {}/s",
                fmt_rate(rate[0]),
                fmt_rate(rate[1]),
                fmt_rate(rate[2])
            );
            let target = (tasks == 64).then_some(Target::AtLeast(2.0));
            report.row(
                format!("throughput {tasks} tasks, {conns} conn: lock+drop vs Redis (cycles/s)"),
                fmt_rate(rate[0]),
                fmt_rate(rate[2]),
                Some(rate[0] / rate[2]),
                target,
            );
            report.row(
                format!("throughput {tasks} tasks, {conns} conn: lock+unlock(ack) vs Redis"),
                fmt_rate(rate[1]),
                fmt_rate(rate[2]),
                Some(rate[1] / rate[2]),
                target,
            );
        }
        for c in &clients {
            c.close().await;
        }
    }
    Ok(())
}

pub(crate) async fn run_throughput(
    sys: System,
    tasks: usize,
    clients: &[Client],
    rls: &[RedisLock],
    window: Duration,
) -> Result<f64> {
    let warm = window / 5;
    let start = Instant::now() + Duration::from_millis(20);
    let counted_from = start + warm;
    let end = counted_from + window;
    let done = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let done = done.clone();
        let key = format!("bench/tp/{}/{t}", clients.len());
        match sys {
            System::BrokerFf | System::BrokerAck => {
                let client = clients[t % clients.len()].clone();
                let key = Bytes::from(key);
                set.spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    loop {
                        let g = client.try_lock(key.clone()).ttl(TTL).await?;
                        if sys == System::BrokerAck {
                            g.unlock().await?;
                        } else {
                            drop(g);
                        }
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        if now >= counted_from {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    anyhow::Ok(())
                });
            }
            System::Redis => {
                let mut rl = rls[t % rls.len()].clone();
                set.spawn(async move {
                    tokio::time::sleep_until(start.into()).await;
                    loop {
                        rl.cycle(&key).await?;
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        if now >= counted_from {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    anyhow::Ok(())
                });
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    // Let fire-and-forget releases drain before the next window.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(done.load(Ordering::Relaxed) as f64 / window.as_secs_f64())
}

// ---------------------------------------------------------------------------------------------
// Contention: 16 clients, one key.

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

async fn contention(
    opts: &Opts,
    broker: &Broker,
    redis: &Redis,
    report: &mut Report,
) -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// Expiry precision: lease deadline → next waiter's grant.

async fn expiry(opts: &Opts, broker: &Broker, report: &mut Report) -> Result<()> {
    println!("\n== expiry: holder stops renewing, waiter queued ==");
    let ttl = Duration::from_millis(30);
    let holder = broker.client_builder().connect().await?;
    let waiter = broker.client_builder().connect().await?;
    let mut lat = Lat::default();
    let mut early = 0u32;
    for i in 0..opts.expiry_rounds {
        let key = Bytes::from(format!("bench/expiry/{i}"));
        let sent = Instant::now();
        let g = holder.lock(key.clone()).ttl(ttl).no_renew().await?;
        let got = Instant::now();
        // The broker set the deadline between our send and our receipt of the grant.
        let deadline = sent + (got - sent) / 2 + ttl;
        let w = waiter.clone();
        let k = key.clone();
        let wait = tokio::spawn(async move {
            let g = w.lock(k).ttl(TTL).wait(Duration::from_secs(5)).await;
            (Instant::now(), g)
        });
        let (granted_at, wg) = wait.await?;
        let wg = wg.context("waiter after expiry")?;
        match granted_at.checked_duration_since(deadline) {
            Some(late) => lat.record(late),
            None => {
                early += 1;
                lat.record(Duration::from_nanos(1));
            }
        }
        drop(wg);
        // The holder's lease is gone; its guard's release is refused (NotOwner) quietly.
        drop(g);
    }
    println!(
        "  grant − deadline p50/p99/max: {} / {} / {} µs (n={}, {early} within the deadline's ±RTT/2 uncertainty)",
        fmt_us(lat.p50()),
        fmt_us(lat.p99()),
        fmt_us(lat.max_us()),
        lat.count()
    );
    report.row(
        "expiry → next waiter's grant, after the deadline p50 (max) (µs)",
        format!("{} ({})", fmt_us(lat.p50()), fmt_us(lat.max_us())),
        "5000 (target)",
        Some(lat.max_us() / 5000.0),
        Some(Target::AtMost(1.0)),
    );
    holder.close().await;
    waiter.close().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Memory per held lock.

async fn memory(opts: &Opts, broker: &Broker, redis: &Redis, report: &mut Report) -> Result<()> {
    let n = opts.mem_locks;
    println!("\n== memory: {n} locks held ==");
    // Broker: raw sessions pipelining Acquire frames (keys as long as Redis's).
    let keys: Vec<String> = (0..n).map(|i| format!("bench/mem/{i:08}")).collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = broker.rss_bytes()?;
    let per = n.div_ceil(MEM_SESSIONS);
    let mut sessions = Vec::new();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for chunk in keys.chunks(per) {
        let keys: Vec<Bytes> = chunk.iter().map(|k| Bytes::from(k.clone())).collect();
        let addr = broker.addr;
        let ca = broker.ca();
        set.spawn(async move { crate::raw::hold(addr, &ca, keys, 3_600_000, 1000).await });
    }
    while let Some(r) = set.join_next().await {
        sessions.push(r??);
    }
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = broker.rss_bytes()?;
    let b_per = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "  broker: VmRSS {} → {} MiB, {b_per:.0} B per lock (acquired in {:.2} s, {}/s pipelined)",
        before >> 20,
        after >> 20,
        took.as_secs_f64(),
        fmt_rate(n as f64 / took.as_secs_f64())
    );
    for s in &sessions {
        s.close();
    }
    // Redis: the same keys, redsync-length tokens, PX expiry.
    let mut rl = RedisLock::connect(&redis.url()).await?;
    rl.flushall(false).await?;
    let r_before = rl.used_memory().await?;
    rl.hold_many(&keys, 1000).await?;
    let r_after = rl.used_memory().await?;
    let r_per = r_after.saturating_sub(r_before) as f64 / n as f64;
    println!(
        "  redis: used_memory {} → {} MiB, {r_per:.0} B per lock",
        r_before >> 20,
        r_after >> 20
    );
    rl.flushall(true).await?;
    report.row(
        format!("memory per held lock, {n} held (bytes)"),
        format!("{b_per:.0}"),
        format!("{r_per:.0}"),
        Some(b_per / r_per),
        Some(Target::AtMost(1.0)),
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The table alone, in process.

fn table(opts: &Opts, report: &mut Report) {
    use lockbroker::table::{AcquireRequest, Mode, Table, TableConfig, Wait};
    println!("\n== table: uncontended acquire+release in process ==");
    let buf = Bytes::from(
        (0..1000)
            .flat_map(|i| format!("jobs/key-{i:05}").into_bytes())
            .collect::<Vec<u8>>(),
    );
    let keys: Vec<Bytes> = (0..1000).map(|i| buf.slice(i * 14..i * 14 + 14)).collect();
    let mut t = Table::new(TableConfig::default());
    let now = Instant::now();
    let mut out = Vec::with_capacity(8);
    let mut run = |n: usize| {
        let start = Instant::now();
        for i in 0..n {
            let g = t
                .acquire(
                    now,
                    AcquireRequest {
                        session: 1,
                        req: i as u64,
                        key: keys[i % keys.len()].clone(),
                        mode: Mode::Exclusive,
                        ttl: TTL,
                        wait: Wait::No,
                        owner: None,
                    },
                    &mut out,
                )
                .ok()
                .flatten();
            if let Some(g) = g {
                let _ = t.release(now, 1, &g.key, g.fence, &mut out);
            }
            std::hint::black_box(&out);
            out.clear();
        }
        start.elapsed().as_nanos() as f64 / n as f64
    };
    run(opts.table_cycles / 10);
    let ns = run(opts.table_cycles);
    println!("  {ns:.1} ns per acquire+release (1000 keys)");
    report.row(
        "table acquire+release, in process (ns; criterion: cargo bench -p lockbroker)",
        format!("{ns:.0}"),
        "150 (target)",
        Some(ns / 150.0),
        Some(Target::AtMost(1.0)),
    );
}
