//! The throughput load shared by the `throughput` and `metrics` scenarios: N tasks running
//! lock+unlock cycles on distinct keys for one window, over the given connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use lockbroker_sdk::Client;

use crate::fixture::TTL;
use crate::redis_lock::RedisLock;

/// What a throughput task cycles through: the broker with a fire-and-forget release (guard
/// dropped), with an acknowledged one, or Redis's `SET NX` + compare-and-delete.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum System {
    BrokerFf,
    BrokerAck,
    Redis,
}

/// Cycles per second of `tasks` tasks (connections round robin) over one window, after a
/// warm-up of a fifth of it.
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
