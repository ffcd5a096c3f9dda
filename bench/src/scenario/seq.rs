//! `--only seq`: one operation in flight — the broker's uncontended acquire against a raw QUIC
//! echo's round trip, and its lock+unlock cycles (acknowledged, fire-and-forget, and with lock
//! caching: granted in the client's process after the first) against Redis's `SET NX` +
//! compare-and-delete.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use lockbroker_sdk::Client;

use crate::echo::{EchoClient, EchoServer};
use crate::fixture::TTL;
use crate::opts::Opts;
use crate::procs::{Broker, Redis};
use crate::redis_lock::RedisLock;
use crate::report::{Report, Target};
use crate::stats::{Lat, fmt_us};

pub async fn run(
    opts: &Opts,
    broker: &Broker,
    redis: &Redis,
    echo_server: &EchoServer,
    echo_inproc: &EchoServer,
    report: &mut Report,
) -> Result<()> {
    println!("\n== sequential (1 client, 1 operation in flight) ==");
    let mut ec_in = EchoClient::connect(echo_inproc).await?;
    let mut echo_in_l = Lat::default();
    let client = broker.client_builder().connect().await?;
    let cacher = broker
        .client_builder()
        .cache_locks(Duration::from_secs(600))
        .connect()
        .await?;
    let mut rl = RedisLock::connect(&redis.url()).await?;
    let mut ec = EchoClient::connect(echo_server).await?;
    let (mut echo_l, mut acq_l, mut ack_l, mut ff_l, mut redis_l) = Default::default();
    let mut cached_l = Lat::default();
    let w = opts.seq_window;
    // Warm up every path, then alternate the systems round by round so drift hits all alike.
    ec.run(w / 4, &mut Lat::default()).await?;
    broker_acquire(&client, w / 4, &mut Lat::default()).await?;
    broker_cycle(&client, b"bench/seq/ack", true, w / 4, &mut Lat::default()).await?;
    broker_cycle(&client, b"bench/seq/ff", false, w / 4, &mut Lat::default()).await?;
    broker_cycle(
        &cacher,
        b"bench/seq/cached",
        true,
        w / 4,
        &mut Lat::default(),
    )
    .await?;
    redis_cycle(&mut rl, w / 4, &mut Lat::default()).await?;
    for _ in 0..opts.seq_rounds {
        ec.run(w, &mut echo_l).await?;
        ec_in.run(w / 2, &mut echo_in_l).await?;
        broker_acquire(&client, w, &mut acq_l).await?;
        broker_cycle(&client, b"bench/seq/ack", true, w, &mut ack_l).await?;
        broker_cycle(&client, b"bench/seq/ff", false, w, &mut ff_l).await?;
        broker_cycle(&cacher, b"bench/seq/cached", true, w, &mut cached_l).await?;
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
        "  broker lock+unlock cached p50/p99/p999: {}",
        cached_l.summary()
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
    report.row(
        "cached lock + unlock p50 (lock caching): Redis cycle ÷ cached (µs)",
        fmt_us(cached_l.p50()),
        fmt_us(redis_l.p50()),
        Some(redis_l.p50() / cached_l.p50()),
        None,
    );
    report.row(
        "  … uncached lock + acknowledged unlock ÷ cached (µs)",
        fmt_us(cached_l.p50()),
        fmt_us(ack_l.p50()),
        Some(ack_l.p50() / cached_l.p50()),
        None,
    );
    client.close().await;
    cacher.close().await;
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

/// Lock + unlock cycles on `key`: `ack` waits for the release's answer; otherwise the guard
/// is dropped (fire-and-forget) and the next try-lock of the same key must succeed. A client
/// that caches its locks grants every cycle after the first in its own process.
async fn broker_cycle(
    client: &Client,
    key: &'static [u8],
    ack: bool,
    d: Duration,
    lat: &mut Lat,
) -> Result<()> {
    let key = Bytes::from_static(key);
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
