//! `--only expiry`: expiry precision — a holder stops renewing a 30 ms lease with a waiter
//! queued; how long after the lease's deadline the waiter is granted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;

use crate::fixture::TTL;
use crate::opts::Opts;
use crate::procs::Broker;
use crate::report::{Report, Target};
use crate::stats::{Lat, fmt_us};

pub async fn run(opts: &Opts, broker: &Broker, report: &mut Report) -> Result<()> {
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
