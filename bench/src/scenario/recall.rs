//! `--only recall`: what lock caching costs when another client wants the key, against the
//! raw QUIC echo's round trip and today's uncached locking, in the same run.
//!
//! - Recall: a client locks a key another client caches (idle: no local holder). Its acquire
//!   reaches the broker (half a round trip), which pushes `Recall` to the cacher; the cacher
//!   releases and the broker grants — recall to grant is 1.5 round trips, the whole acquire
//!   two. Against an acquire of a free key and the echo RTT.
//! - Ping-pong: two clients take turns on one key, each a lock + acknowledged unlock, both
//!   caching against both not caching (after the first recalls the key is contended, and the
//!   caching clients ask for ordinary leases: what caching costs where it does not help).

use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use lockbroker_sdk::Client;

use crate::echo::{EchoClient, EchoServer};
use crate::fixture::TTL;
use crate::opts::Opts;
use crate::procs::Broker;
use crate::report::{Report, Target};
use crate::stats::{Lat, fmt_us};

/// How long a lock may wait here (nobody holds the key for long).
const WAIT: Duration = Duration::from_secs(5);

pub async fn run(
    opts: &Opts,
    broker: &Broker,
    echo_server: &EchoServer,
    report: &mut Report,
) -> Result<()> {
    println!("\n== recall: a key cached by another client ==");
    let caching = || {
        broker
            .client_builder()
            .cache_locks(Duration::from_secs(600))
            .connect()
    };
    let (cacher, cacher_b) = (caching().await?, caching().await?);
    let (plain, plain_b) = (
        broker.client_builder().connect().await?,
        broker.client_builder().connect().await?,
    );
    let mut ec = EchoClient::connect(echo_server).await?;
    let (mut echo_l, mut free_l, mut recall_l) = (Lat::default(), Lat::default(), Lat::default());
    let (mut cached_pp, mut plain_pp) = (Lat::default(), Lat::default());
    let w = opts.seq_window;
    // Warm up, then alternate the measurements round by round so drift hits all alike.
    let mut warm = Lat::default();
    ec.run(w / 4, &mut warm).await?;
    free_acquires(&plain, w / 4, &mut warm).await?;
    recalls(&cacher, &plain, w / 4, &mut warm).await?;
    ping_pong(
        &cacher,
        &cacher_b,
        b"bench/recall/pp-cached",
        w / 4,
        &mut warm,
    )
    .await?;
    ping_pong(&plain, &plain_b, b"bench/recall/pp-plain", w / 4, &mut warm).await?;
    for _ in 0..opts.seq_rounds {
        ec.run(w / 2, &mut echo_l).await?;
        free_acquires(&plain, w / 2, &mut free_l).await?;
        recalls(&cacher, &plain, w, &mut recall_l).await?;
        ping_pong(
            &cacher,
            &cacher_b,
            b"bench/recall/pp-cached",
            w,
            &mut cached_pp,
        )
        .await?;
        ping_pong(&plain, &plain_b, b"bench/recall/pp-plain", w, &mut plain_pp).await?;
    }
    println!(
        "  raw QUIC echo 32 B RTT      p50/p99/p999: {}",
        echo_l.summary()
    );
    println!(
        "  acquire of a free key       p50/p99/p999: {}",
        free_l.summary()
    );
    println!(
        "  acquire of a key cached elsewhere (recall): {}",
        recall_l.summary()
    );
    println!(
        "  ping-pong, both caching     p50/p99/p999: {}",
        cached_pp.summary()
    );
    println!(
        "  ping-pong, neither caching  p50/p99/p999: {}",
        plain_pp.summary()
    );
    report.row(
        "acquire of a key another client caches p50 vs raw QUIC RTT p50 (µs; 0.5 + 1.5 recall)",
        fmt_us(recall_l.p50()),
        fmt_us(echo_l.p50()),
        Some(recall_l.p50() / echo_l.p50()),
        Some(Target::AtMost(2.0)),
    );
    report.row(
        "  … vs an acquire of a free key p50 (µs)",
        fmt_us(recall_l.p50()),
        fmt_us(free_l.p50()),
        Some(recall_l.p50() / free_l.p50()),
        None,
    );
    report.row(
        "two clients taking turns on a key, lock + unlock p50: caching vs not (µs)",
        fmt_us(cached_pp.p50()),
        fmt_us(plain_pp.p50()),
        Some(cached_pp.p50() / plain_pp.p50()),
        Some(Target::AtMost(1.0)),
    );
    for c in [cacher, cacher_b, plain, plain_b] {
        c.close().await;
    }
    Ok(())
}

/// Acquires of a free key (each released with an acknowledgement, outside the timed part).
async fn free_acquires(client: &Client, d: Duration, lat: &mut Lat) -> Result<()> {
    let key = Bytes::from_static(b"bench/recall/free");
    let end = Instant::now() + d;
    while Instant::now() < end {
        let t = Instant::now();
        let g = client.try_lock(key.clone()).ttl(TTL).await?;
        lat.record(t.elapsed());
        g.unlock().await?;
    }
    Ok(())
}

/// `cacher` locks and unlocks a key (its lease stays cached), then `other`'s acquire of it is
/// timed: the recall, the cacher's release, the grant. A new key each time (a recalled key is
/// contended for the cacher, which then would not cache it).
async fn recalls(cacher: &Client, other: &Client, d: Duration, lat: &mut Lat) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        let key = Bytes::from(format!("bench/recall/{}", rand::random::<u64>()));
        cacher
            .lock(key.clone())
            .ttl(TTL)
            .wait(WAIT)
            .await?
            .unlock()
            .await?;
        let t = Instant::now();
        let g = other.lock(key.clone()).ttl(TTL).wait(WAIT).await?;
        lat.record(t.elapsed());
        g.unlock().await?;
    }
    Ok(())
}

/// `a` and `b` take turns on `key`, each a lock + acknowledged unlock, timed one by one.
async fn ping_pong(
    a: &Client,
    b: &Client,
    key: &'static [u8],
    d: Duration,
    lat: &mut Lat,
) -> Result<()> {
    let key = Bytes::from_static(key);
    let end = Instant::now() + d;
    while Instant::now() < end {
        for c in [a, b] {
            let t = Instant::now();
            c.lock(key.clone())
                .ttl(TTL)
                .wait(WAIT)
                .await?
                .unlock()
                .await?;
            lat.record(t.elapsed());
        }
    }
    Ok(())
}
