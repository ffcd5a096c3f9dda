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
