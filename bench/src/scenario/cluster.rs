//! `--only cluster`: cluster mode, side by side in one run, all on this same machine (say so):
//! two clusters of three brokers on one etcd — `replicas = 1` and `replicas = 2` — against the
//! single broker of the run and etcd's own lock (`etcd-client`'s lock API, `etcdctl lock`
//! semantics). Figures: the acknowledged lock cycle through one routed SDK client (where its
//! cost comes from: one member's keys through that member's own client), 64-task throughput
//! with replicas against without, and failover: SIGKILL the owner of a key's shard, time until
//! that key — free — is granted again (its etcd lease running out; without replicas, then the
//! takeover grace).

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use lockbroker_sdk::Client;

use crate::cluster_fixture::{
    BenchCluster, Etcd, MAX_TTL_MS, OWNERSHIP_TTL_MS, lock_when_possible,
};
use crate::load::{System, run_throughput};
use crate::opts::Opts;
use crate::procs::Broker;
use crate::report::{Report, Target};
use crate::stats::{Lat, fmt_rate};

/// Acknowledged lock cycles (`lock` then `unlock().await`) on `keys`, round robin.
async fn lock_cycles(client: &Client, keys: &[String], window: Duration) -> Result<Lat> {
    let mut lat = Lat::default();
    let until = std::time::Instant::now() + window;
    let mut i = 0;
    while std::time::Instant::now() < until {
        let key = &keys[i % keys.len()];
        i += 1;
        let t = std::time::Instant::now();
        let g = client.lock(key.clone()).await?;
        g.unlock().await?;
        lat.record(t.elapsed());
    }
    Ok(lat)
}

/// Lock cycles with etcd's lock API: `lock(name)` (a key under a lease, waiting its turn) then
/// `unlock(key)`, on a lease granted once.
async fn etcd_cycles(endpoint: &str, keys: &[String], window: Duration) -> Result<Lat> {
    let mut client = etcd_client::Client::connect([endpoint], None).await?;
    let lease = client.lease_grant(30, None).await?.id();
    let mut lat = Lat::default();
    let until = std::time::Instant::now() + window;
    let mut i = 0;
    while std::time::Instant::now() < until {
        let key = &keys[i % keys.len()];
        i += 1;
        let t = std::time::Instant::now();
        let opts = etcd_client::LockOptions::new().with_lease(lease);
        let held = client.lock(key.as_str(), Some(opts)).await?;
        client.unlock(held.key()).await?;
        lat.record(t.elapsed());
    }
    Ok(lat)
}

/// The p50 of `a` against `b`, as a report row.
fn p50_row(report: &mut Report, figure: &str, a: &Lat, b: &Lat, b_is: &str, t: Option<Target>) {
    report.row(
        figure,
        format!("{:.1} µs", a.p50()),
        format!("{:.1} µs ({b_is})", b.p50()),
        Some(a.p50() / b.p50()),
        t,
    );
}

/// Kills the owner of each of `rounds` keys in turn and times until that key is granted
/// again; the killed member restarts and the cluster settles before the next round.
async fn failover(c: &mut BenchCluster, keys: &[String], rounds: usize) -> Result<Lat> {
    let mut waits = Lat::default();
    for round in 0..rounds {
        let key = &keys[round % keys.len()];
        let Some(owner) = c.owner_of(key).await else {
            bail!("no member serves {key}");
        };
        let killed = c.kill(owner)?;
        let granted = lock_when_possible(&c.routed, key, Duration::from_secs(60)).await?;
        waits.record(granted - killed);
        c.restart(owner).await?;
        c.settle(keys).await?;
        // Let the restarted member's backups come into sync before the next kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(waits)
}

pub async fn run(opts: &Opts, bin: &Path, single: &Broker, report: &mut Report) -> Result<()> {
    println!(
        "cluster: two clusters of 3 brokers (replicas 1 and 2) and etcd on this same machine, \
         next to the single broker"
    );
    let etcd = Etcd::start()?;
    let keys: Vec<String> = (0..64).map(|i| format!("bench-cluster/{i}")).collect();
    let mut plain = BenchCluster::start(bin, &etcd, "bench", 1, &keys).await?;
    let mut replicated = BenchCluster::start(bin, &etcd, "bench-r2", 2, &keys).await?;
    // Let the backups get their snapshots and be named in sync.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The acknowledged lock cycle, interleaved in rounds so that drift of the machine's load
    // hits all alike.
    let window = opts.seq_window * opts.seq_rounds as u32;
    let rounds = 6u32;
    let single_client = single.client_builder().connect().await?;
    // Where the overhead comes from: one member's own keys through a client of that member
    // only (no SDK routing; the broker's cluster checks) and through the routed client.
    let mut own_keys = Vec::new();
    for k in &keys {
        if plain.owner_of(k).await == Some(0) {
            own_keys.push(k.clone());
        }
    }
    let Some(member) = plain.member_client(0).filter(|_| !own_keys.is_empty()) else {
        bail!("member b0 owns none of the bench keys");
    };
    let [mut one, mut r1, mut r2, mut direct, mut routed_own] =
        std::array::from_fn(|_| Lat::default());
    let slice = window / rounds;
    for _ in 0..rounds {
        one.merge(&lock_cycles(&single_client, &keys, slice).await?);
        r1.merge(&lock_cycles(&plain.routed, &keys, slice).await?);
        r2.merge(&lock_cycles(&replicated.routed, &keys, slice).await?);
        direct.merge(&lock_cycles(member, &own_keys, slice).await?);
        routed_own.merge(&lock_cycles(&plain.routed, &own_keys, slice).await?);
    }
    let etcd_lock = etcd_cycles(&etcd.endpoint, &keys, window).await?;
    let single_is = "1 broker";
    let figure =
        "cluster: acked lock cycle p50, one member's keys, client of that member only vs 1 broker";
    p50_row(report, figure, &direct, &one, single_is, None);
    let figure =
        "cluster: acked lock cycle p50, one member's keys, routed client vs client of the member";
    p50_row(
        report,
        figure,
        &routed_own,
        &direct,
        "member's own client",
        None,
    );
    let figure = "cluster: acked lock cycle p50 (3 brokers, replicas 1, routed vs 1 broker)";
    p50_row(report, figure, &r1, &one, single_is, None);
    let figure = "cluster: acked lock cycle p50 (3 brokers, replicas 2, routed vs 1 broker)";
    p50_row(
        report,
        figure,
        &r2,
        &one,
        single_is,
        Some(Target::AtMost(1.5)),
    );
    let figure = "cluster: acked lock cycle p50, replicas 2 vs replicas 1";
    p50_row(report, figure, &r2, &r1, "replicas 1", None);
    report.row(
        "cluster: acked lock cycle p99 (replicas 2 vs 1 broker)",
        format!("{:.1} µs", r2.p99()),
        format!("{:.1} µs (1 broker)", one.p99()),
        Some(r2.p99() / one.p99()),
        None,
    );
    let figure = "cluster: acked lock cycle p50, replicas 2 vs etcd's lock API";
    p50_row(
        report,
        figure,
        &r2,
        &etcd_lock,
        "etcd lock+unlock",
        Some(Target::AtMost(1.0 / 3.0)),
    );

    // Throughput: 64 tasks on distinct keys through the one routed client, acknowledged and
    // fire-and-forget release, replicas 2 against replicas 1 (interleaved).
    for sys in [System::BrokerAck, System::BrokerFf] {
        let (mut with, mut without) = (0.0, 0.0);
        for _ in 0..2 {
            without += run_throughput(
                sys,
                64,
                std::slice::from_ref(&plain.routed),
                &[],
                opts.tp_window,
            )
            .await?;
            with += run_throughput(
                sys,
                64,
                std::slice::from_ref(&replicated.routed),
                &[],
                opts.tp_window,
            )
            .await?;
        }
        let release = if sys == System::BrokerAck {
            "acked unlock"
        } else {
            "lock+drop"
        };
        report.row(
            format!(
                "cluster: 64 tasks, 1 routed client, {release}: replicas 2 vs replicas 1 (cycles/s)"
            ),
            fmt_rate(with / 2.0),
            fmt_rate(without / 2.0),
            Some(with / without),
            None,
        );
    }

    // Failover: the owner of a key's shard SIGKILLed, until that key is granted again.
    let kills = if opts.quick { 2 } else { 6 };
    let mut rows = Vec::new();
    for (c, replicas, by_design) in [
        (
            &mut plain,
            1,
            format!(
                "lease {} s + grace {} s",
                OWNERSHIP_TTL_MS / 1000,
                MAX_TTL_MS / 1000
            ),
        ),
        (
            &mut replicated,
            2,
            format!("lease {} s, no grace", OWNERSHIP_TTL_MS / 1000),
        ),
    ] {
        let waits = failover(c, &keys, kills).await?;
        rows.push((replicas, by_design, waits));
    }
    for (replicas, by_design, waits) in rows {
        report.row(
            format!("cluster: failover, replicas {replicas}, kill → free key of its shard granted ({} kills)", waits.count()),
            format!("p50 {:.2} s, max {:.2} s", waits.p50() / 1e6, waits.max_us() / 1e6),
            by_design,
            None,
            None,
        );
    }
    drop(etcd);
    Ok(())
}
