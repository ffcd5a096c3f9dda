//! `--only memory`: memory per held lock — the broker's resident set growth while raw sessions
//! hold N leases, against Redis's `used_memory` for the same keys with redsync-length tokens.

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;

use crate::fixture::MEM_SESSIONS;
use crate::opts::Opts;
use crate::procs::{Broker, Redis};
use crate::raw;
use crate::redis_lock::RedisLock;
use crate::report::{Report, Target};
use crate::stats::fmt_rate;

pub async fn run(opts: &Opts, broker: &Broker, redis: &Redis, report: &mut Report) -> Result<()> {
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
        set.spawn(async move { raw::hold(addr, &ca, keys, 3_600_000, 1000).await });
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
