//! `--only attack`: bystander latency under attack (issue 13): one well-behaved SDK client's
//! acknowledged lock cycle (lock, then `unlock().await`) with no attack, and while each attack
//! runs alone against the same broker: a slow reader (floods `Inspect`s of a key with 200
//! holders and never reads the answers), a watcher storm (50,000 `wait_until_unlocked` on one
//! key, all timing out in the window), a connection flood (raw QUIC connections opened
//! without ever saying `Hello`) and admin listing (a table of `--mem-locks` held keys —
//! 1M by default — while 16 loops page `/api/locks` 1,000 keys at a time and scrape
//! `/metrics`, as 16 open status pages and a Prometheus would, only without pause). Last, on
//! a broker of its own with default limits, a per-address flood: 11 loopback addresses open
//! anonymous sessions as fast as they are admitted and fill them with keys, and then a
//! bystander with a token connects and locks (before per-principal limits it was refused).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use lockbroker_proto::{Frame, WaitSpec, encode};
use lockbroker_sdk::Client;

use crate::opts::Opts;
use crate::procs::{Broker, admin_get};
use crate::raw;
use crate::report::Report;
use crate::stats::Lat;

/// Lock cycles of the bystander on its own key for `window`.
async fn bystander(client: &Client, window: Duration) -> Result<Lat> {
    let mut lat = Lat::default();
    let until = Instant::now() + window;
    while Instant::now() < until {
        let t = Instant::now();
        client.lock("bystander/k").await?.unlock().await?;
        lat.record(t.elapsed());
    }
    Ok(lat)
}

/// A raw session that has said `Hello`: its send stream, kept with its connection.
async fn raw_session(
    b: &Broker,
) -> Result<(quinn::Endpoint, quinn::Connection, quinn::SendStream)> {
    let (ep, conn, send, _recv) = raw::open(b.addr, &b.ca(), "lockbroker-bench attacker").await?;
    Ok((ep, conn, send))
}

fn frames(n: u64, frame: impl Fn(u64) -> Frame) -> Vec<u8> {
    let mut out = Vec::new();
    for id in 1..=n {
        encode(&frame(id), &mut out);
    }
    out
}

pub async fn run(opts: &Opts, bin: &Path, report: &mut Report) -> Result<()> {
    let b = Broker::start(
        bin,
        "[limits]\nmax_queued_per_key = 100000\nmax_queued_total = 200000\n\
         max_waiters_per_session = 20000\noutbox_stall_ms = 60000\n\
         max_leases_per_session = 1000000\nmax_keys = 2000000\n",
    )?;
    let window = if opts.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(4)
    };
    let client = b.client_builder().connect().await?;
    bystander(&client, Duration::from_millis(500)).await?; // warm up
    let quiet = bystander(&client, window).await?;

    // Slow reader: 200 holders make every Inspect answer ~40× its request.
    let holder = b.client_builder().connect().await?;
    let mut permits = Vec::new();
    for _ in 0..200 {
        permits.push(
            holder
                .semaphore("wide/k", 200)
                .ttl(Duration::from_secs(600))
                .await?,
        );
    }
    let (_ep, conn, mut send) = raw_session(&b).await?;
    let flood = frames(1000, |id| Frame::Inspect {
        id,
        key: Bytes::from_static(b"wide/k"),
    });
    let reader = tokio::spawn(async move { while send.write_all(&flood).await.is_ok() {} });
    let slow = bystander(&client, window).await?;
    reader.abort();
    conn.close(0u32.into(), b"bye");
    drop(permits);

    // Watcher storm: 5 sessions × 10,000 watchers on a held key, all timing out mid-window.
    let _held = holder.lock("storm/k").ttl(Duration::from_secs(600)).await?;
    let mut storm = Vec::new();
    for s in 0..5u64 {
        let (ep, conn, mut send) = raw_session(&b).await?;
        let batch = frames(10_000, |id| Frame::WaitUnlocked {
            id: s * 100_000 + id,
            key: Bytes::from_static(b"storm/k"),
            wait: WaitSpec::Millis(window.as_millis() as u64 / 2 + 500),
        });
        send.write_all(&batch).await?;
        storm.push((ep, conn, send));
    }
    let stormy = bystander(&client, window).await?;
    drop(storm);

    // Connection flood: new connections that never say Hello, as fast as they handshake.
    let ca = b.ca();
    let addr = b.addr;
    let flooding = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let Ok(ep) = raw::endpoint(&ca) else {
                break;
            };
            let Ok(connecting) = ep.connect(addr, "localhost") else {
                break;
            };
            if let Ok(c) = connecting.await {
                open.push((ep, c));
            }
        }
    });
    let flooded = bystander(&client, window).await?;
    flooding.abort();

    let (big, listed) = admin_listing(opts, &b, &client, window).await?;
    drop(b);
    let (flood_quiet, flood) = address_flood(bin, window).await?;

    for (name, lat) in [
        ("a slow reader (Inspect flood, never reads)", &slow),
        ("a watcher storm (50k timeouts at once)", &stormy),
        ("a connection flood (no Hello)", &flooded),
        ("no attack, the big table held", &big),
        ("16 admin listing loops over the big table", &listed),
    ] {
        row(report, name, lat, &quiet);
    }
    flood_rows(report, &flood_quiet, &flood);
    Ok(())
}

/// `--only address-flood`: the flood from 11 addresses alone (its own broker).
pub async fn run_address_flood(opts: &Opts, bin: &Path, report: &mut Report) -> Result<()> {
    let window = if opts.quick {
        Duration::from_secs(2)
    } else {
        Duration::from_secs(4)
    };
    let (quiet, flood) = address_flood(bin, window).await?;
    flood_rows(report, &quiet, &flood);
    Ok(())
}

/// The bystander's rows under the flood from 11 addresses (or what it was told).
fn flood_rows(report: &mut Report, quiet: &Lat, flood: &Result<Lat, String>) {
    match flood {
        Ok(lat) => row(
            report,
            "a flood from 11 addresses (sessions and keys)",
            lat,
            quiet,
        ),
        Err(refused) => report.row(
            "bystander lock cycle under a flood from 11 addresses".to_string(),
            format!("refused: {refused}"),
            format!("{:.1} µs (no attack)", quiet.p99()),
            None,
            None,
        ),
    }
}

/// The p50 and p99 rows of the bystander under attack `name`.
fn row(report: &mut Report, name: &str, lat: &Lat, quiet: &Lat) {
    {
        report.row(
            format!("bystander lock cycle p50 under {name} vs no attack"),
            format!("{:.1} µs", lat.p50()),
            format!("{:.1} µs (no attack)", quiet.p50()),
            Some(lat.p50() / quiet.p50()),
            None,
        );
        report.row(
            format!("bystander lock cycle p99 under {name} vs no attack"),
            format!("{:.1} µs", lat.p99()),
            format!("{:.1} µs (no attack)", quiet.p99()),
            Some(lat.p99() / quiet.p99()),
            None,
        );
    }
}

/// Holds `--mem-locks` keys (4 raw sessions, pipelined), measures the bystander with the
/// table that large, then while 16 loops page through `/api/locks` (1,000 keys a page, from
/// the start again at the end) and scrape `/metrics` without pause.
async fn admin_listing(
    opts: &Opts,
    b: &Broker,
    client: &Client,
    window: Duration,
) -> Result<(Lat, Lat)> {
    let admin = b
        .admin
        .ok_or_else(|| anyhow::anyhow!("the broker printed no admin address"))?;
    let n = opts.mem_locks;
    let per = n.div_ceil(4);
    let mut set = tokio::task::JoinSet::new();
    for s in 0..4 {
        let keys: Vec<Bytes> = (s * per..((s + 1) * per).min(n))
            .map(|i| Bytes::from(format!("big/{i:08}")))
            .collect();
        let (addr, ca) = (b.addr, b.ca());
        set.spawn(async move { raw::hold(addr, &ca, keys, 3_600_000, 1000).await });
    }
    let mut holders = Vec::new();
    while let Some(r) = set.join_next().await {
        holders.push(r??);
    }
    let big = bystander(client, window).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = tokio::task::JoinSet::new();
    for i in 0..16u32 {
        let stop = stop.clone();
        loops.spawn(async move {
            let mut pages = 0u64;
            // Bounded by `stop`, set after the window.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Each loop starts at its own place in the key space.
                let from = format!(
                    "big/{:08}",
                    (u64::from(i) * 61_000 + pages * 1000) % 1_000_000
                );
                let cursor = URL_SAFE_NO_PAD.encode(from.as_bytes());
                admin_get(admin, &format!("/api/locks?limit=1000&cursor={cursor}")).await?;
                if pages.is_multiple_of(4) {
                    admin_get(admin, "/metrics").await?;
                }
                pages += 1;
            }
            anyhow::Ok(pages)
        });
    }
    let listed = bystander(client, window).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut pages = 0;
    while let Some(r) = loops.join_next().await {
        pages += r??;
    }
    println!(
        "  admin listing: {pages} pages of 1,000 keys (and a /metrics scrape every 4th) in {:.1} s \
         over {n} held keys",
        window.as_secs_f64()
    );
    for h in &holders {
        h.close();
    }
    Ok((big, listed))
}

/// The token of the flood case's bystander.
const BYSTANDER_TOKEN: &str = "bench-bystander-token-00000001";

/// A broker with default limits (plus the `[limits]` lines of `$LOCKBROKER_FLOOD_LIMITS`, for
/// A/B runs of limits) and one token; the bystander's lock cycle quiet, then — after
/// 11 loopback addresses have opened anonymous sessions as fast as they were admitted for 3 s,
/// each pipelining acquires of new keys — of a bystander that connects then, with its token.
/// `Err`: the bystander could not connect or lock (what it was told).
async fn address_flood(bin: &Path, window: Duration) -> Result<(Lat, Result<Lat, String>)> {
    let b = Broker::start(
        bin,
        &format!(
            "[auth]\ntokens = {{ \"{BYSTANDER_TOKEN}\" = \"bystander\" }}\n[limits]\n{}\n",
            std::env::var("LOCKBROKER_FLOOD_LIMITS").unwrap_or_default()
        ),
    )?;
    let bystander_client = || b.client_builder().token(BYSTANDER_TOKEN).connect();
    let quiet_client = bystander_client().await?;
    bystander(&quiet_client, Duration::from_millis(500)).await?;
    let quiet = bystander(&quiet_client, window).await?;
    drop(quiet_client);

    // The attacker runs on a thread and runtime of its own, as it would on another host: its
    // client-side handshakes must not starve the bystander's client in this process.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let (addr, ca, stop) = (b.addr, b.ca(), stop.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || runtime.block_on(flood_from_11_addresses(addr, ca, stop)))
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let flooded = match bystander_client().await {
        Ok(c) => bystander(&c, window).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sessions = tokio::task::spawn_blocking(move || attacker.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the attacker thread panicked"))??;
    println!("  address flood: {sessions} anonymous sessions opened from 11 addresses");
    Ok((quiet, flooded))
}

/// 11 tasks, one per loopback address 127.0.0.2–12, open anonymous sessions as fast as they
/// are admitted, each pipelining 1,000 acquires of new keys, until `stop`; how many opened.
async fn flood_from_11_addresses(
    addr: std::net::SocketAddr,
    ca: std::path::PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<usize> {
    let mut flood = tokio::task::JoinSet::new();
    for host in 2..=12u8 {
        let (ca, stop) = (ca.clone(), stop.clone());
        flood.spawn(async move {
            let from = std::net::IpAddr::from([127, 0, 0, host]);
            let mut sessions = Vec::new();
            let mut next_key = 0u64;
            // Bounded by `stop`; every attempt is one handshake.
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok((ep, conn, mut send, recv)) =
                    raw::open_from(addr, &ca, "lockbroker-bench flood", from).await
                else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let base = next_key;
                next_key += 1000;
                let acquires = frames(1000, |id| {
                    Frame::Acquire(lockbroker_proto::Acquire {
                        id,
                        key: Bytes::from(format!("flood/{host}/{}", base + id)),
                        mode: lockbroker_proto::Mode::Exclusive,
                        ttl_ms: 600_000,
                        wait: WaitSpec::NoWait,
                        owner: Bytes::new(),
                        ticket: 0,
                        fence_block: 1,
                    })
                });
                let _ = send.write_all(&acquires).await;
                sessions.push((ep, conn, send, recv));
            }
            sessions.len()
        });
    }
    let mut sessions = 0;
    while let Some(n) = flood.join_next().await {
        sessions += n?;
    }
    Ok(sessions)
}
