//! `--only embedded`: `Client::embedded()` (the lock table in this process, behind the SDK's
//! API) against the usual Rust keyed mutexes, in the same run: a
//! `DashMap<String, Arc<tokio::sync::Mutex<()>>>` and `lockable`'s `LockPool`.
//!
//! - uncontended: one task locks and unlocks distinct keys in turn (ns per lock+unlock);
//! - contended: 16 tasks take turns on one key (ns per hand-off), and how evenly the turns
//!   were shared (the spread of per-task counts in a fixed time: FIFO hands out equal turns).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use dashmap::DashMap;
use lockbroker_sdk::Client;

use crate::opts::Opts;
use crate::report::{Report, Target};

const KEYS: usize = 1024;
const TASKS: usize = 16;

type KeyedMutex = DashMap<String, Arc<tokio::sync::Mutex<()>>>;

fn keys() -> Vec<String> {
    (0..KEYS).map(|i| format!("acct/{i}")).collect()
}

/// ns per lock+unlock, one task, `n` cycles over distinct keys.
async fn uncontended_embedded(n: usize) -> Result<f64> {
    let c = Client::embedded();
    let keys = keys();
    let start = Instant::now();
    for i in 0..n {
        let g = c.lock(keys[i % KEYS].clone()).await?;
        g.unlock().await?;
    }
    Ok(start.elapsed().as_nanos() as f64 / n as f64)
}

async fn uncontended_dashmap(n: usize) -> f64 {
    let map = KeyedMutex::new();
    let keys = keys();
    let start = Instant::now();
    for i in 0..n {
        let m = map.entry(keys[i % KEYS].clone()).or_default().clone();
        let g = m.lock_owned().await;
        drop(g);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

async fn uncontended_lockable(n: usize) -> f64 {
    let pool = lockable::LockPool::<String>::new();
    let keys = keys();
    let start = Instant::now();
    for i in 0..n {
        let g = pool.async_lock(keys[i % KEYS].clone()).await;
        drop(g);
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// Contended: `TASKS` tasks take turns on one key for `d`. Returns (ns per hand-off, the
/// spread of per-task turn counts: max / min).
async fn contended<F, Fut>(d: Duration, turn: F) -> (f64, f64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..TASKS {
        let (stop, turn) = (stop.clone(), turn.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                turn().await;
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(d).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for t in tasks {
        counts.push(t.await.unwrap_or(0));
    }
    let elapsed = start.elapsed();
    let total: u64 = counts.iter().sum();
    let (min, max) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    (
        elapsed.as_nanos() as f64 / total.max(1) as f64,
        max as f64 / min.max(1) as f64,
    )
}

pub async fn run(opts: &Opts, report: &mut Report) -> Result<()> {
    let n = if opts.quick { 50_000 } else { 300_000 };
    let d = Duration::from_secs(if opts.quick { 1 } else { 3 });
    println!("\n== embedded client vs in-process keyed mutexes ==");
    if opts.runs("embedded-uncontended") {
        uncontended(n, report).await?;
    }
    if opts.runs("embedded-contended") {
        contention(d, report).await;
    }
    Ok(())
}

async fn uncontended(n: usize, report: &mut Report) -> Result<()> {
    // Warm-up, then the three side by side.
    uncontended_embedded(n / 10).await?;
    let emb = uncontended_embedded(n).await?;
    let dm = uncontended_dashmap(n).await;
    let lp = uncontended_lockable(n).await;
    println!(
        "uncontended lock+unlock: embedded {emb:.0} ns, DashMap+tokio Mutex {dm:.0} ns, \
         lockable LockPool {lp:.0} ns"
    );
    let fastest = dm.min(lp);
    report.row(
        "embedded uncontended lock+unlock",
        format!("{emb:.0} ns"),
        format!("{fastest:.0} ns (fastest keyed mutex)"),
        Some(emb / fastest),
        Some(Target::AtMost(1.5)),
    );
    Ok(())
}

async fn contention(d: Duration, report: &mut Report) {
    let c = Client::embedded();
    let (emb_h, emb_spread) = contended(d, move || {
        let c = c.clone();
        async move {
            if let Ok(g) = c.lock("hot").await {
                let _ = g.unlock().await;
            }
        }
    })
    .await;
    let map = Arc::new(KeyedMutex::new());
    let (dm_h, dm_spread) = contended(d, move || {
        let map = map.clone();
        async move {
            let m = map.entry("hot".to_owned()).or_default().clone();
            drop(m.lock_owned().await);
        }
    })
    .await;
    let pool = Arc::new(lockable::LockPool::<String>::new());
    let (lp_h, lp_spread) = contended(d, move || {
        let pool = pool.clone();
        async move {
            drop(pool.async_lock("hot".to_owned()).await);
        }
    })
    .await;
    println!(
        "contended ({TASKS} tasks, one key): embedded {emb_h:.0} ns/hand-off (turns max/min \
         {emb_spread:.2}), DashMap+tokio Mutex {dm_h:.0} ns ({dm_spread:.2}), lockable \
         {lp_h:.0} ns ({lp_spread:.2})"
    );
    let best = dm_h.min(lp_h);
    report.row(
        "embedded contended hand-off (16 tasks)",
        format!("{emb_h:.0} ns, turns max/min {emb_spread:.2}"),
        format!(
            "{best:.0} ns (fastest keyed mutex; DashMap {dm_spread:.2}, lockable {lp_spread:.2})"
        ),
        Some(emb_h / best),
        Some(Target::AtMost(1.0)),
    );
}
