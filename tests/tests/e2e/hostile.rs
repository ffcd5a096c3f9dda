//! What an unfriendly neighbour or client could do, against the real binary (issue 13):
//! files and secrets others could read or plant; connections that never say `Hello` or send a
//! huge one; streams cut inside a frame; idle connections at shutdown.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Acquire, ErrorCode, Frame, Hello, Mode, WaitSpec, encode};
use lockbroker_tests::raw::RawConn;
use lockbroker_tests::{Broker, TempDir};

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o777
}

/// The data dir (broker key, dev key, precompiled plugin code) is the broker user's alone: a
/// fresh one is 0700 and its keys 0600, and a data dir created open by someone else's umask
/// is tightened at start.
#[test]
fn the_data_dir_and_its_keys_are_owner_only() {
    let dir = TempDir::new("private");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let b = Broker::start_in(dir, "");
    let data = b.data_dir.path();
    assert_eq!(mode(data), 0o700, "data dir");
    assert_eq!(mode(&data.join("dev-key.pem")), 0o600, "dev key");
    assert_eq!(mode(&data.join("broker.key")), 0o600, "broker key");
}

const LIMIT: Duration = Duration::from_secs(10);

/// A connection that opens its stream but never sends `Hello` is told and closed at the Hello
/// deadline — before authentication, it may not hold broker memory indefinitely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_hello_is_closed_at_the_deadline() {
    let b = Broker::start_with_config("[limits]\nhello_timeout_ms = 500\n");
    let mut raw = RawConn::connect(b.addr, &b.ca()).await;
    raw.send_bytes(&[0, 0]).await; // opens the stream, half a length prefix
    match raw.next_frame(LIMIT).await {
        Some(Frame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::ProtocolOrder, "{message}");
            assert!(message.contains("no Hello within 500 ms"), "{message}");
        }
        other => panic!("expected the Hello deadline error, got {other:?}"),
    }
    assert!(raw.closed(LIMIT).await.is_some(), "not closed");
}

/// `Hello` is bounded (4 KiB by default) before any authentication: a 60 KB one is refused
/// with `FrameTooLarge` as soon as its length prefix arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_hello_is_refused_before_authentication() {
    let b = Broker::start();
    let mut raw = RawConn::connect(b.addr, &b.ca()).await;
    raw.send_frame(&Frame::Hello(Hello {
        token: Some("t".repeat(60_000)),
        client: "big".into(),
    }))
    .await;
    match raw.next_frame(LIMIT).await {
        Some(Frame::Error { code, .. }) => assert_eq!(code, ErrorCode::FrameTooLarge),
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert!(raw.closed(LIMIT).await.is_some(), "not closed");
}

/// A stream that ends inside a frame is a broken client, not a goodbye: it gets an error frame
/// and its leases run to their TTL (a clean close would release them at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ending_inside_a_frame_is_a_protocol_error_not_a_clean_close() {
    let b = Broker::start();
    let mut raw = RawConn::hello(b.addr, &b.ca()).await;
    raw.send_frame(&Frame::Acquire(Acquire {
        id: 1,
        key: Bytes::from_static(b"trunc/k"),
        mode: Mode::Exclusive,
        ttl_ms: 30_000,
        wait: WaitSpec::NoWait,
        owner: Bytes::new(),
        ticket: 0,
        fence_block: 1,
    }))
    .await;
    assert!(matches!(
        raw.next_frame(LIMIT).await,
        Some(Frame::Granted(_))
    ));
    let mut next = Vec::new();
    encode(&Frame::Ping { id: 2 }, &mut next);
    raw.send_bytes(&next[..next.len() / 2]).await;
    raw.send.finish().expect("finish");
    match raw.next_frame(LIMIT).await {
        Some(Frame::Error { code, message, .. }) => {
            assert_eq!(code, ErrorCode::Malformed, "{message}");
            assert!(message.contains("inside a frame"), "{message}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    // Not released: another client finds the key still held.
    let c = b.client().await;
    assert!(matches!(
        c.try_lock("trunc/k").await,
        Err(lockbroker_sdk::Error::Busy)
    ));
}

/// A broker shutting down does not wait for connections that never got as far as `Hello`.
#[test]
fn shutdown_does_not_wait_for_connections_without_a_session() {
    let mut b = Broker::start_with_config("[quic]\nshutdown_grace_ms = 3000\n");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _raw = rt.block_on(async {
        let mut raw = RawConn::connect(b.addr, &b.ca()).await;
        raw.send_bytes(&[0]).await;
        raw
    });
    let start = Instant::now();
    b.signal("TERM");
    let status = b.wait_exit(Duration::from_secs(20)).expect("exited");
    assert!(status.success(), "{status}");
    // Before: the idle connection held the shutdown for twice the grace (6 s).
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "took {:?}",
        start.elapsed()
    );
}

/// Thousands of shared holders on one key: an `Inspect` of it used to build a `LockInfo`
/// larger than the client's frame limit, and the SDK dropped its connection over that one
/// answer — orphaning its own leases until their TTL. The broker now lists the oldest holders
/// that fit and says how many there are; the connection (and its leases) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspecting_thousands_of_shared_holders_is_bounded_and_disconnects_no_one() {
    const HOLDERS: usize = 3_000;
    const KEY: &str = "wide/shared";
    let b = Broker::start();
    let holder = b.client().await;
    let observer = b.client().await;
    let session = holder.session_id().await.expect("session");
    let mut guards = Vec::with_capacity(HOLDERS);
    for _ in 0..HOLDERS / 500 {
        let batch: Vec<_> = (0..500)
            .map(|_| {
                let c = holder.clone();
                tokio::spawn(async move {
                    c.read_lock(KEY)
                        .ttl(Duration::from_secs(120))
                        .no_renew()
                        .await
                })
            })
            .collect();
        for t in batch {
            guards.push(t.await.expect("task").expect("shared lock"));
        }
    }

    let info = observer.inspect(KEY).await.expect("inspect answers");
    assert!(info.is_locked());
    assert!(
        !info.holders.is_empty() && info.holders.len() < HOLDERS,
        "{} holders listed",
        info.holders.len()
    );
    assert_eq!(info.holders_total, HOLDERS);
    assert!(info.is_truncated());
    // The oldest leases, in fence order.
    let mut fences: Vec<u64> = guards.iter().map(|g| g.fence()).collect();
    fences.sort_unstable();
    let listed: Vec<u64> = info.holders.iter().map(|h| h.fence).collect();
    assert_eq!(listed[..], fences[..listed.len()]);

    // The CLI says it shows only some of them.
    let mut cmd = lockbroker_tests::cli(&b);
    cmd.args(["inspect", KEY]);
    let out = lockbroker_tests::util::run_bounded(cmd, LIMIT).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("(showing {} of {HOLDERS} holders)", listed.len())),
        "{stdout}"
    );

    // The holder's own connection survives its own inspect of the key, and still renews.
    let own = holder.inspect(KEY).await.expect("the holder's inspect");
    assert_eq!(own.holders.len(), info.holders.len());
    guards[0]
        .extend(Duration::from_secs(120))
        .await
        .expect("the holder's connection survived the big answer");
    assert_eq!(holder.session_id().await.expect("session"), session);
}

/// Resident memory of a process (kB), from /proc.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A client that sends requests and never reads the answers — here `Inspect`s of a key with 200
/// holders, each ~40× larger than its request — costs the broker at most its outbox cap
/// (1 MiB) plus a constant: past the cap the broker stops reading, QUIC flow control stops the
/// client, and after `outbox_stall_ms` the connection is closed with its own close code.
/// Meanwhile other clients are served. (Without the cap the broker grew by 690 MB in these 4 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_at_most_its_outbox_cap() {
    let b = Broker::start_with_config("[limits]\noutbox_stall_ms = 3000\n");
    let holder = b.client().await;
    let mut held = Vec::new();
    for _ in 0..200 {
        held.push(
            holder
                .semaphore("wide/k", 200)
                .ttl(Duration::from_secs(60))
                .await
                .expect("a permit"),
        );
    }
    let mut raw = RawConn::hello(b.addr, &b.ca()).await;
    let mut batch = Vec::new();
    for id in 0..1000u64 {
        encode(
            &Frame::Inspect {
                id: id + 10,
                key: Bytes::from_static(b"wide/k"),
            },
            &mut batch,
        );
    }
    let before = rss_kb(b.pid());
    // Flood for 4 s (the writes block once the broker stops reading).
    let flood = async {
        loop {
            if raw.send.write_all(&batch).await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(4), flood).await;
    let grown_kb = rss_kb(b.pid()).saturating_sub(before);
    // A bystander is served meanwhile.
    let other = b.client().await;
    other
        .lock("bystander/k")
        .await
        .expect("bystander lock")
        .unlock()
        .await
        .expect("unlock");
    eprintln!("never-reading client: the broker grew by {grown_kb} kB during the flood");
    // 1 MiB cap + QUIC buffers and allocator slack.
    assert!(grown_kb < 48 * 1024, "the broker grew by {grown_kb} kB");
    // Still not reading: closed with the slow-reader code.
    match raw.closed(Duration::from_secs(15)).await {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            // CLOSE_SLOW_READER in broker/src/server/session.rs.
            assert_eq!(c.error_code, quinn::VarInt::from_u32(3), "{c}");
        }
        other => panic!("expected the slow-reader close, got {other:?}"),
    }
    drop(held);
}

/// Connections are limited in all and per source IP: past the limit a client is told
/// `LimitExceeded` naming the limit (not left hanging), and a closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_past_the_limit_is_told_which_limit() {
    let b = Broker::start_with_config("[limits]\nmax_connections_per_ip = 2\n");
    let c1 = b.client().await;
    let c2 = b.client().await;
    c1.inspect("conn/k").await.expect("c1");
    c2.inspect("conn/k").await.expect("c2");
    match b.client_builder().connect().await {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("max_connections_per_ip"), "{text}");
        }
        Ok(_) => panic!("a third connection from 127.0.0.1 was admitted"),
    }
    drop(c2);
    // The closed connection's place is freed (bounded wait: the broker sees the close).
    let start = Instant::now();
    loop {
        match b.client_builder().connect().await {
            Ok(c) => {
                c.inspect("conn/k").await.expect("inspect");
                break;
            }
            Err(e) => {
                assert!(start.elapsed() < LIMIT, "never admitted again: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// One key cannot stall everyone: 100k `wait_until_unlocked` watchers on one key (10 sessions)
/// all time out at once, and a bystander's `inspect` of another key stays fast meanwhile —
/// each timeout leaves its queue in O(log n) and expiry runs in slices that let other requests
/// in. (Before: with the watchers in a vector, the storm held the table for seconds: an
/// unrelated `inspect` waited 4.5 s.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_timeout_storm_does_not_stall_a_bystander() {
    let b = Broker::start_with_config(
        "[limits]\nmax_queued_per_key = 200000\nmax_queued_total = 200000\n",
    );
    let holder = b.client().await;
    let _held = holder
        .lock("storm/k")
        .ttl(Duration::from_secs(120))
        .await
        .expect("held");
    let mut raws = Vec::new();
    for s in 0..10u64 {
        let mut raw = RawConn::hello(b.addr, &b.ca()).await;
        let mut batch = Vec::new();
        for i in 0..10_000u64 {
            encode(
                &Frame::WaitUnlocked {
                    id: s * 100_000 + i + 1,
                    key: Bytes::from_static(b"storm/k"),
                    wait: WaitSpec::Millis(6_000),
                },
                &mut batch,
            );
        }
        raw.send_bytes(&batch).await;
        raws.push(raw);
    }
    // Measure a bystander across the moment they all time out.
    let bystander = b.client().await;
    let started = Instant::now();
    let mut worst = Duration::ZERO;
    let mut samples = Vec::new();
    while started.elapsed() < Duration::from_secs(12) {
        let t = Instant::now();
        bystander.inspect("bystander/k").await.expect("inspect");
        let took = t.elapsed();
        worst = worst.max(took);
        samples.push(took);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    samples.sort();
    let p99 = samples[samples.len() * 99 / 100];
    eprintln!(
        "watcher storm: bystander inspect p99 {p99:?}, worst {worst:?} over {} samples",
        samples.len()
    );
    // Debug build on 2 cores, the storm's 100k answers included: a generous bound, far
    // below the seconds-long stall this guards against.
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    drop(raws);
}

/// A connection flood from one address is refused before the TLS handshake once it passes its
/// handshake rate (bystander p99 went to 6.5× under a flood): the attempt past the burst gets a
/// clear refusal, another attempt succeeds once the bucket has refilled, and connections that
/// were admitted are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_handshake_rate_are_refused_before_tls() {
    let b = Broker::start_with_config(
        "[limits]\nhandshake_rate_per_ip = 2\nhandshake_burst_per_ip = 3\n",
    );
    let mut admitted = Vec::new();
    let mut refused = None;
    // Bounded: the burst is 3, and at 2 a second at most a couple refill meanwhile.
    for _ in 0..20 {
        match b.client_builder().connect().await {
            Ok(c) => admitted.push(c),
            Err(e) => {
                refused = Some(e.to_string());
                break;
            }
        }
    }
    let refused = refused.expect("20 connections in a row were all admitted");
    assert!(refused.to_lowercase().contains("refused"), "{refused}");
    assert!(admitted.len() >= 3, "the burst of 3 was not admitted");
    for c in &admitted {
        c.inspect("rate/k")
            .await
            .expect("an admitted client still works");
    }
    // The bucket refills (2 a second): a new connection is admitted again.
    let start = Instant::now();
    loop {
        match b.client_builder().connect().await {
            Ok(c) => {
                c.inspect("rate/k").await.expect("inspect");
                break;
            }
            Err(e) => {
                assert!(start.elapsed() < LIMIT, "never admitted again: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}
