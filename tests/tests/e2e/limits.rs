//! Limits against floods, with the real binary (issue 23 finding 6): anonymous clients —
//! from however many source addresses — take at most their share of the broker's sessions,
//! live keys and queue records (sync-mirror retries included), so an authenticated bystander
//! still gets a session, a new key and a place in a queue; a burst of handshakes is answered
//! with QUIC Retry; anonymous requests are read at a bounded rate; clients that never read
//! their answers stay within the global outbox budget.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Acquire, AcquireAll, ErrorCode, Frame, Mode, WaitSpec};
use lockbroker_tests::Broker;
use lockbroker_tests::http::{self, sample};
use lockbroker_tests::raw::RawConn;

const AUTH: &str = "[auth]\ntokens = { \"alice-token\" = \"alice\" }\n";
const LIMIT: Duration = Duration::from_secs(10);

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

fn acquire(id: u64, key: String, wait: WaitSpec) -> Frame {
    Frame::Acquire(Acquire {
        id,
        key: Bytes::from(key),
        mode: Mode::Exclusive,
        ttl_ms: 60_000,
        wait,
        owner: Bytes::new(),
        ticket: 0,
        fence_block: 1,
    })
}

/// Reads `n` answers; returns (granted, refusals' messages). Panics on anything else.
async fn answers(c: &mut RawConn, n: usize) -> (usize, Vec<String>) {
    let (mut granted, mut refused) = (0, Vec::new());
    for _ in 0..n {
        match c.next_frame(LIMIT).await {
            Some(Frame::Granted(_)) => granted += 1,
            Some(Frame::Error {
                code: ErrorCode::LimitExceeded,
                message,
                ..
            }) => refused.push(message),
            other => panic!("expected Granted or LimitExceeded, got {other:?}"),
        }
    }
    (granted, refused)
}

/// 8 source addresses open anonymous sessions up to the per-address limit (80 attempts,
/// `max_connections` 60): before, they took all 60 and the authenticated bystander was
/// refused; now anonymous sessions stop at their share (30) and alice gets in and locks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_sessions_from_many_addresses_leave_room_for_an_authenticated_client() {
    let b = Broker::start_with_config(&format!(
        "{AUTH}[limits]\nmax_connections = 60\nmax_connections_per_ip = 10\n"
    ));
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for n in 2..10 {
        for _ in 0..10 {
            match RawConn::try_hello_from(loopback(n), b.addr, &b.ca(), None).await {
                Ok(c) => held.push(c),
                Err(why) => refused.push(why),
            }
        }
    }
    eprintln!(
        "anonymous sessions: {} held, {} refused",
        held.len(),
        refused.len()
    );
    // The bystander, as a user would: retries a refused connection until a deadline.
    let deadline = Instant::now() + LIMIT;
    let mut last = String::new();
    let alice = loop {
        match RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), Some("alice-token")).await {
            Ok(c) => break c,
            Err(why) if Instant::now() < deadline => last = why,
            Err(why) => panic!(
                "alice got no session while {} anonymous ones were held: {why} (before: {last})",
                held.len()
            ),
        }
    };
    assert_eq!(held.len(), 30, "the anonymous share of 60 sessions");
    assert!(
        refused
            .iter()
            .all(|w| w.contains("LimitExceeded") && w.contains("anonymous_share_percent")),
        "{refused:?}"
    );
    let mut alice = alice;
    alice
        .send_frame(&acquire(1, "bystander".into(), WaitSpec::NoWait))
        .await;
    assert_eq!(answers(&mut alice, 1).await.0, 1);
}

/// One anonymous session creates keys until refused: before, it filled the broker's
/// `max_keys` (200) and alice's new key was refused "live keys"; now it stops at its share
/// (100) with a refusal naming the per-principal limit, and alice locks a new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_key_flood_leaves_room_for_an_authenticated_client() {
    let b = Broker::start_with_config(&format!("{AUTH}[limits]\nmax_keys = 200\n"));
    let mut anon = RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), None)
        .await
        .expect("anonymous session");
    for id in 1..=300 {
        anon.send_frame(&acquire(id, format!("flood/{id}"), WaitSpec::NoWait))
            .await;
    }
    let (granted, refused) = answers(&mut anon, 300).await;
    eprintln!(
        "anonymous keys: {granted} granted, {} refused",
        refused.len()
    );
    let mut alice = RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), Some("alice-token"))
        .await
        .expect("alice's session");
    alice
        .send_frame(&acquire(1, "alice/new".into(), WaitSpec::NoWait))
        .await;
    let (alice_granted, alice_refused) = answers(&mut alice, 1).await;
    assert_eq!(alice_granted, 1, "alice refused: {alice_refused:?}");
    assert_eq!(granted, 100, "the anonymous share of 200 keys");
    assert!(
        refused
            .iter()
            .all(|m| m.contains("live keys of this principal")),
        "{refused:?}"
    );
}

/// One anonymous session pipelines 600 acquires of new keys on a broker allowing anonymous
/// clients 200 requests a second (after a burst of 20): before, all 600 were answered at once
/// (an anonymous flood took a worker whole); now they take at least (600 − 20 − 64) / 200 =
/// 2.6 s, and alice — connecting after they were sent — locks before the last is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_requests_are_read_at_a_bounded_rate_and_alice_locks_meanwhile() {
    let b = Broker::start_with_config(&format!(
        "{AUTH}[limits]\nanonymous_requests_per_sec = 200\n"
    ));
    let mut anon = RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), None)
        .await
        .expect("anonymous session");
    let sent = Instant::now();
    for id in 1..=600 {
        anon.send_frame(&acquire(id, format!("rate/{id}"), WaitSpec::NoWait))
            .await;
    }
    let anon_answers = tokio::spawn(async move {
        let (granted, refused) = answers(&mut anon, 600).await;
        (granted, refused, Instant::now())
    });
    let mut alice = RawConn::try_hello_from(loopback(2), b.addr, &b.ca(), Some("alice-token"))
        .await
        .expect("alice's session");
    alice
        .send_frame(&acquire(1, "alice/k".into(), WaitSpec::NoWait))
        .await;
    let (alice_granted, _) = answers(&mut alice, 1).await;
    let alice_done = Instant::now();
    let (granted, refused, anon_done) = anon_answers.await.expect("anonymous reader");
    eprintln!(
        "anonymous: 600 answered in {:?}; alice locked after {:?}",
        anon_done - sent,
        alice_done - sent
    );
    assert_eq!((granted, refused.len(), alice_granted), (600, 0, 1));
    assert!(
        anon_done - sent >= Duration::from_secs(2),
        "600 anonymous requests answered in {:?}: not held to 200 a second",
        anon_done - sent
    );
    assert!(
        alice_done < anon_done,
        "alice waited behind the anonymous requests"
    );
}

/// Anonymous acquires queue on a held key until refused (a 4-key group counts 4 records):
/// before, they took the whole `max_queued_total` (100) and alice's acquire was refused; now
/// they stop at their share (50), and alice's acquire is queued (no refusal before the
/// `Pong` of a ping sent after it: answers leave in order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_queue_flood_leaves_room_for_an_authenticated_waiter() {
    let b = Broker::start_with_config(&format!("{AUTH}[limits]\nmax_queued_total = 100\n"));
    let mut holder = RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), None)
        .await
        .expect("holder");
    for id in 0..4 {
        holder
            .send_frame(&acquire(id + 1, format!("q/{id}"), WaitSpec::NoWait))
            .await;
    }
    assert_eq!(answers(&mut holder, 4).await.0, 4);
    let mut anon = RawConn::try_hello_from(loopback(2), b.addr, &b.ca(), None)
        .await
        .expect("anonymous waiter");
    anon.send_frame(&Frame::AcquireAll(AcquireAll {
        id: 1,
        keys: (0..4).map(|k| Bytes::from(format!("q/{k}"))).collect(),
        ttl_ms: 60_000,
        wait: WaitSpec::Forever,
        owner: Bytes::new(),
    }))
    .await;
    for id in 2..=150 {
        anon.send_frame(&acquire(id, "q/0".into(), WaitSpec::Forever))
            .await;
    }
    anon.send_frame(&Frame::Ping { id: 999 }).await;
    let mut refused = Vec::new();
    loop {
        match anon.next_frame(LIMIT).await {
            Some(Frame::Pong { .. }) => break,
            Some(Frame::Error {
                code: ErrorCode::LimitExceeded,
                message,
                ..
            }) => refused.push(message),
            other => panic!("expected refusals then Pong, got {other:?}"),
        }
    }
    eprintln!("anonymous waiters: {} refused of 150", refused.len());
    let mut alice = RawConn::try_hello_from(loopback(3), b.addr, &b.ca(), Some("alice-token"))
        .await
        .expect("alice");
    alice
        .send_frame(&acquire(1, "q/0".into(), WaitSpec::Forever))
        .await;
    alice.send_frame(&Frame::Ping { id: 2 }).await;
    match alice.next_frame(LIMIT).await {
        Some(Frame::Pong { .. }) => {}
        other => panic!("alice's acquire was not queued: {other:?}"),
    }
    // 4 records for the group and 46 single acquires: 50 in all.
    assert_eq!(refused.len(), 150 - 47, "{:?}", refused.first());
    assert!(
        refused
            .iter()
            .all(|m| m.contains("queued requests of this principal")),
        "{refused:?}"
    );
}

/// Acquires retrying against the sync mirror (their keys held in Redis by someone else)
/// count in the principal's queue records: 30 anonymous ones stop at the anonymous share (10
/// of `max_queued_total` 20) — before, they took all 20 — and alice's 5 retry too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mirror_retries_count_per_principal() {
    use lockbroker_tests::redis::{RedisServer, mirror_config};

    let redis = RedisServer::start();
    let config = mirror_config(&redis.url(), "sync", "")
        + "\n[limits]\nmax_queued_total = 20\n"
        + "\n[auth]\ntokens = { \"alice-token\" = \"alice\" }\n";
    let b = Broker::start_with_config(&config);
    for id in 1..=35 {
        redis::cmd("SET")
            .arg(format!("poll/{id}"))
            .arg("theirs")
            .arg("PX")
            .arg(60_000)
            .exec(&mut redis.conn())
            .expect("a Redis client holds the key");
    }
    let mut anon = RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), None)
        .await
        .expect("anonymous");
    for id in 1..=30 {
        anon.send_frame(&acquire(id, format!("poll/{id}"), WaitSpec::Millis(30_000)))
            .await;
    }
    let (granted, refused) = answers(&mut anon, 20).await;
    assert_eq!(granted, 0);
    assert!(
        refused
            .iter()
            .all(|m| m.contains("queued requests of this principal")),
        "{refused:?}"
    );
    let mut alice = RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), Some("alice-token"))
        .await
        .expect("alice");
    for id in 31..=35 {
        alice
            .send_frame(&acquire(id, format!("poll/{id}"), WaitSpec::Millis(30_000)))
            .await;
    }
    let admin = b.admin.expect("admin");
    let deadline = Instant::now() + LIMIT;
    loop {
        let metrics = http::get(admin, "/metrics").await.body;
        let waiters = sample(&metrics, "lockbroker_waiters");
        if waiters == Some(15.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "10 anonymous and 5 of alice's acquires retrying, not {waiters:?}"
        );
        // Nothing refused alice meanwhile.
        if let Some(f) = alice.next_frame(Duration::from_millis(100)).await {
            panic!("alice's acquire was answered: {f:?}");
        }
    }
}

/// The broker's resident memory (kB), from /proc.
fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// 300 clients connect at once: past `limits.retry_above_handshakes` (8 here) handshakes in
/// progress, new ones are sent a QUIC Retry (counted by `lockbroker_quic_retries_total`) —
/// and every client still gets its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_handshakes_is_answered_with_retry_and_every_client_gets_in() {
    let b = Broker::start_with_config("[limits]\nretry_above_handshakes = 8\n");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        let (addr, ca) = (b.addr, b.ca());
        let from = loopback(u8::try_from(2 + i % 200).expect("small"));
        tasks.spawn(async move { RawConn::try_hello_from(from, addr, &ca, None).await });
    }
    let mut held = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(c) => held.push(c),
            Err(why) => panic!("a client got no session: {why}"),
        }
    }
    let metrics = http::get(b.admin.expect("admin"), "/metrics").await.body;
    let retries = sample(&metrics, "lockbroker_quic_retries_total");
    eprintln!("300 concurrent handshakes: {retries:?} retries");
    assert!(
        retries.is_some_and(|r| r > 0.0),
        "no Retry under load: {retries:?}"
    );
    assert_eq!(held.len(), 300);
}

/// 200 raw sessions send requests whose answers (10 KB inspects) they never read, through a
/// 16 KB receive window: before, each held its own 1 MiB outbox cap — 200 MiB of answers
/// (467 MB RSS reported) until the stall close; now the sessions over their fair share of
/// `limits.max_outbox_total_bytes` (64 MiB) stop being read, and the queued answers settle
/// within that budget. The broker's RSS is printed, not asserted (noisy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_never_read_stay_within_the_global_outbox_budget() {
    const SESSIONS: usize = 200;
    let b = Broker::start_with_config("[limits]\noutbox_stall_ms = 120000\n");
    let admin = b.admin.expect("admin");
    let rss_idle = rss_kb(b.pid());
    // 60 shared leases with 120-byte owner labels: an inspect answer of about 10 KB.
    let mut holder = RawConn::try_hello_from(loopback(1), b.addr, &b.ca(), None)
        .await
        .expect("holder");
    for id in 1..=60 {
        holder
            .send_frame(&Frame::Acquire(Acquire {
                id,
                key: Bytes::from_static(b"big"),
                mode: Mode::Shared,
                ttl_ms: 600_000,
                wait: WaitSpec::NoWait,
                owner: Bytes::from(format!("{id:03}-{}", "o".repeat(116))),
                ticket: 0,
                fence_block: 1,
            }))
            .await;
    }
    assert_eq!(answers(&mut holder, 60).await.0, 60);
    let mut idle = Vec::new();
    for i in 0..SESSIONS {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(16_384u32.into());
        transport.receive_window(16_384u32.into());
        let from = loopback(u8::try_from(2 + i % 100).expect("small"));
        let endpoint = lockbroker_tests::raw::client_endpoint_from(
            &b.ca(),
            Some(transport),
            std::net::SocketAddr::new(from, 0),
        );
        let conn = endpoint
            .connect(b.addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (mut send, recv) = conn.open_bi().await.expect("stream");
        let mut bytes = Vec::new();
        lockbroker_proto::encode(
            &Frame::Hello(lockbroker_proto::Hello {
                token: None,
                client: "never-reads".into(),
            }),
            &mut bytes,
        );
        for id in 1..=150 {
            lockbroker_proto::encode(
                &Frame::Inspect {
                    id,
                    key: Bytes::from_static(b"big"),
                },
                &mut bytes,
            );
        }
        send.write_all(&bytes).await.expect("requests");
        idle.push((endpoint, conn, send, recv));
    }
    // Settled: the queued answers no longer move (five samples alike).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut last, mut same) = (None, 0);
    let queued = loop {
        let metrics = http::get(admin, "/metrics").await.body;
        let q = sample(&metrics, "lockbroker_outbox_queued_bytes");
        same = if q == last { same + 1 } else { 0 };
        last = q;
        if same >= 5 && q.is_some_and(|q| q > 16.0 * 1048576.0) {
            break q.unwrap_or(0.0);
        }
        assert!(
            Instant::now() < deadline,
            "the queued answers did not settle: {q:?}"
        );
    };
    let rss = rss_kb(b.pid());
    eprintln!(
        "{SESSIONS} sessions that never read: {:.1} MiB of answers queued; broker RSS {} MB \
         (idle {} MB)",
        queued / 1048576.0,
        rss / 1024,
        rss_idle / 1024
    );
    // The budget, plus at most one 10 KB answer a session past its share.
    assert!(
        queued <= (64.0 + 3.0) * 1048576.0,
        "{:.1} MiB queued: past the 64 MiB budget",
        queued / 1048576.0
    );
    drop(idle);
}
