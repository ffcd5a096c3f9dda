//! Exclusion under misuse and faults (issue 11): many tasks sharing one client, lease secrets
//! and reclaim by principal,
//! `Guard::extend` to a shorter TTL, guards that report `lost` by their own clock, and no
//! silent carry-over of a guard to an independent broker.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{ErrorCode, Frame, Hello, LeaseSecret, Reclaim, Release};
use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::raw::RawConn;

const TOKENS: &str = r#"
[auth]
tokens = { "alice-token" = "alice", "bob-token" = "bob" }
"#;

/// A raw session authenticated with `token` (or anonymous).
async fn raw_session(broker: &Broker, token: Option<&str>) -> RawConn {
    let mut c = RawConn::connect(broker.addr, &broker.ca()).await;
    c.send_frame(&Frame::Hello(Hello {
        token: token.map(str::to_owned),
        client: "exclusion-test".into(),
    }))
    .await;
    match c.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Welcome(_)) => c,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

async fn reclaim(c: &mut RawConn, id: u64, key: &str, fence: u64, secret: LeaseSecret) -> Frame {
    c.send_frame(&Frame::Reclaim(Reclaim {
        id,
        key: Bytes::copy_from_slice(key.as_bytes()),
        fence,
        mode: lockbroker_proto::Mode::Exclusive,
        ttl_ms: 3_600_000,
        secret,
        owner: Bytes::new(),
    }))
    .await;
    c.next_frame(Duration::from_secs(5))
        .await
        .expect("an answer to Reclaim")
}

fn is_not_owner(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Error {
            code: ErrorCode::NotOwner,
            ..
        }
    )
}

/// Finding 1: 32 tasks sharing 4 clients guard a cache refill of one key. Each task's lock
/// waits its turn (the second task of a client used to get `AlreadyHeld`), every grant is its
/// own lease with a higher fence, and no two tasks are inside at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_sharing_a_client_each_wait_their_turn() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let broker = Broker::start();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(broker.client().await);
    }
    let inside = Arc::new(AtomicBool::new(false));
    let last_fence = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..32 {
        let client = clients[t % 4].clone();
        let (inside, last_fence) = (inside.clone(), last_fence.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let g = client
                    .lock("refill/k")
                    .wait(Duration::from_secs(30))
                    .await?;
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                let prev = last_fence.swap(g.fence(), Ordering::SeqCst);
                assert!(g.fence() > prev, "fence {} after {prev}", g.fence());
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside.store(false, Ordering::SeqCst);
                g.unlock().await?;
            }
            Ok::<(), Error>(())
        }));
    }
    for t in tasks {
        t.await
            .expect("task ran")
            .expect("every lock was granted in turn");
    }
}

/// Finding 2: a second principal (or an anonymous session) guessing the holder's fence took
/// the lease over through `Reclaim`; now a reclaim needs the lease's secret, which is bound to
/// the principal it was granted to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_needs_the_lease_secret_of_the_same_principal() {
    let broker = Broker::start_with_config(TOKENS);
    let alice = broker
        .client_builder()
        .token("alice-token")
        .connect()
        .await
        .expect("alice connects");
    let guard = alice
        .lock("jobs/report")
        .ttl(Duration::from_secs(60))
        .no_renew()
        .await
        .expect("alice locks");
    let (fence, secret) = (guard.fence(), guard.secret());

    let mut bob = raw_session(&broker, Some("bob-token")).await;
    let guessed = reclaim(&mut bob, 1, "jobs/report", fence, LeaseSecret::default()).await;
    assert!(
        is_not_owner(&guessed),
        "bob guessing the fence: {guessed:?}"
    );
    let stolen = reclaim(&mut bob, 2, "jobs/report", fence, secret).await;
    assert!(is_not_owner(&stolen), "bob with alice's secret: {stolen:?}");

    let mut anon = raw_session(&broker, None).await;
    let anon_try = reclaim(&mut anon, 1, "jobs/report", fence, secret).await;
    assert!(
        is_not_owner(&anon_try),
        "anonymous with the secret: {anon_try:?}"
    );
    anon.send_frame(&Frame::Release(Release {
        id: 2,
        key: Bytes::from_static(b"jobs/report"),
        fence,
        ack: true,
        secret: LeaseSecret::default(),
    }))
    .await;
    let released = anon
        .next_frame(Duration::from_secs(5))
        .await
        .expect("answer");
    assert!(
        is_not_owner(&released),
        "release without the secret: {released:?}"
    );

    // The holder is untouched: it still renews.
    guard
        .extend(Duration::from_secs(60))
        .await
        .expect("alice still holds her lease");
    assert!(!guard.is_lost());

    // Alice herself, on a second connection, may take the lease over with its secret.
    let mut alice_raw = raw_session(&broker, Some("alice-token")).await;
    match reclaim(&mut alice_raw, 1, "jobs/report", fence, secret).await {
        Frame::Granted(g) => {
            assert_eq!(g.fence, fence);
            assert_eq!(g.secret, secret, "the same lease keeps its secret");
        }
        other => panic!("alice's reclaim: {other:?}"),
    }
}

/// Finding 3: `extend` to a shorter TTL left the renewer on the old schedule and deadline:
/// another client got the key at 1.02 s, the guard said `lost` at 9.8 s. Now the renewer
/// follows the new TTL, so the lease stays held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_to_a_shorter_ttl_is_followed_by_the_renewer() {
    let broker = Broker::start();
    let a = broker.client().await;
    let b = broker.client().await;
    let guard = a
        .lock("shrink")
        .ttl(Duration::from_secs(30))
        .await
        .expect("lock");
    let before = guard.deadline();
    // 2 s rather than the finding's 1 s: the same bug (B granted at the new TTL), with room for
    // a loaded CI machine's scheduling between renewals.
    guard.extend(Duration::from_secs(2)).await.expect("extend");
    assert_eq!(guard.ttl(), Duration::from_secs(2));
    assert!(guard.deadline() < before, "the local deadline moved in");
    let until = Instant::now() + Duration::from_millis(4_000);
    while Instant::now() < until {
        match b.try_lock("shrink").await {
            Err(Error::Busy) => {}
            Ok(g) => panic!(
                "another client was granted the key (fence {}) while the guard renews; lost = {}",
                g.fence(),
                guard.is_lost()
            ),
            Err(e) => panic!("try_lock: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!guard.is_lost());
}

/// Finding 3, without renewal: after `extend` to 1 s the guard must say `lost` before the
/// broker can hand the key to anyone else — by its own clock, with the safety margin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_reports_lost_before_anyone_else_is_granted() {
    let broker = Broker::start();
    // A margin well above scheduling hiccups of a loaded 2-core CI machine.
    let a = broker
        .client_builder()
        .lease_margin(Duration::from_millis(400))
        .connect()
        .await
        .expect("connect");
    let b = broker.client().await;
    let guard = a
        .lock("expiring")
        .ttl(Duration::from_secs(30))
        .no_renew()
        .await
        .expect("lock");
    guard.extend(Duration::from_secs(1)).await.expect("extend");
    let waiter = tokio::spawn(async move {
        let g = b
            .lock("expiring")
            .wait(Duration::from_secs(10))
            .await
            .expect("the waiter is granted after the expiry");
        (Instant::now(), g.fence())
    });
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .expect("lost() resolves");
    let lost_at = Instant::now();
    assert!(matches!(lost, Error::Lost(_)), "{lost:?}");
    let (granted_at, fence) = waiter.await.expect("waiter");
    assert!(fence > guard.fence());
    assert!(
        lost_at <= granted_at,
        "the holder was told lost ({lost_at:?}) only after the next grant ({granted_at:?})"
    );
}

/// Finding 9 (issue 13): clients given `[b1, b2]` (independent brokers) held one key at once
/// with the same fence; then a guard was kept from moving to a broker with another identity —
/// but issue 23 finding 12 showed the list itself was the fault: a client that reached b2
/// while b1 was down took `jobs/nightly` there beside b1's holder (both held it for 12 s).
/// Now a list of brokers is accepted only for the members of one cluster: a broker that is
/// not in cluster mode is refused, and so is a client given independent brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_independent_brokers_is_refused() {
    let b1 = Broker::start();
    let b2 = Broker::start();
    // Independent brokers still hand out disjoint fences (each fresh data dir draws its first
    // epoch from its identity).
    let (c1, c2) = (b1.client().await, b2.client().await);
    let (g1, g2) = (
        c1.try_lock("one/k").await.expect("lock on b1"),
        c2.try_lock("one/k").await.expect("lock on b2"),
    );
    assert_ne!(
        g1.fence(),
        g2.fence(),
        "independent brokers' fences collide"
    );
    // Trust both brokers' dev certificates: the refusal is not a TLS one.
    let mut both = std::fs::read(b1.ca()).expect("b1 ca");
    both.extend(std::fs::read(b2.ca()).expect("b2 ca"));
    let refused = b1
        .client_builder()
        .ca_pem(both)
        .broker(b2.url())
        .connect_timeout(Duration::from_millis(500))
        .connect()
        .await
        .err();
    match refused {
        Some(Error::Invalid(why)) => assert!(why.contains("one cluster"), "{why}"),
        other => panic!("a client of two independent brokers: {other:?}"),
    }
}

/// Issue 23 finding 12: acquires retrying against the sync mirror (their key held in Redis
/// by someone else) were outside every queue limit — 3,000 of them with `max_queued_total` at
/// 1,000, and the waiters gauge said 0. Now they count as queued requests: past the limit an
/// acquire is answered `LimitExceeded`, and the gauge shows them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquires_polling_the_sync_mirror_count_in_the_queue_limit() {
    use lockbroker_proto::{Acquire, Mode, WaitSpec};
    use lockbroker_tests::http::{self, sample};
    use lockbroker_tests::redis::{RedisServer, mirror_config};

    let redis = RedisServer::start();
    let config = mirror_config(&redis.url(), "sync", "") + "\n[limits]\nmax_queued_total = 10\n";
    let broker = Broker::start_with_config(&config);
    // 30 keys, each held in Redis by someone else: every acquire is granted by the table,
    // refused by the mirror, and would retry outside the table.
    let key = |id: u64| Bytes::from(format!("poll/{id}"));
    for id in 1..=30 {
        redis::cmd("SET")
            .arg(&key(id)[..])
            .arg("theirs")
            .arg("PX")
            .arg(30_000)
            .exec(&mut redis.conn())
            .expect("a Redis client holds the key");
    }
    let mut raw = raw_session(&broker, None).await;
    for id in 1..=30 {
        raw.send_frame(&Frame::Acquire(Acquire {
            id,
            key: key(id),
            mode: Mode::Exclusive,
            ttl_ms: 5_000,
            wait: WaitSpec::Millis(20_000),
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        }))
        .await;
    }
    let mut refused = 0;
    while let Some(frame) = raw.next_frame(Duration::from_secs(2)).await {
        match frame {
            Frame::Error {
                code: ErrorCode::LimitExceeded,
                message,
                ..
            } => {
                assert!(message.contains("queued requests in total"), "{message}");
                refused += 1;
            }
            other => panic!("only refusals while Redis holds the key: {other:?}"),
        }
    }
    assert_eq!(refused, 20, "10 may wait, 20 are past the limit");
    let metrics = http::get(broker.admin.expect("admin"), "/metrics")
        .await
        .body;
    assert_eq!(
        sample(&metrics, "lockbroker_waiters"),
        Some(10.0),
        "{metrics}"
    );
}

/// Finding 5: in sync-mirror mode a `Cancel` for an acquire that polls Redis (the key is held
/// there by another client) was ignored; the `Granted` came seconds later. Now the poll stops
/// at its next turn and the acquire is answered `Cancelled`; nothing is granted afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_an_acquire_polling_the_sync_mirror() {
    use lockbroker_proto::{Acquire, Mode, WaitSpec};
    use lockbroker_tests::redis::{RedisServer, mirror_config};

    let redis = RedisServer::start();
    let config =
        mirror_config(&redis.url(), "sync", "") + "\n[limits]\nmax_waiters_per_session = 2\n";
    let broker = Broker::start_with_config(&config);
    redis::cmd("SET")
        .arg("sync/k")
        .arg("theirs")
        .arg("PX")
        .arg(30_000)
        .exec(&mut redis.conn())
        .expect("a Redis client holds the key");
    let mut raw = raw_session(&broker, None).await;
    raw.send_frame(&Frame::Acquire(Acquire {
        id: 7,
        key: Bytes::from_static(b"sync/k"),
        mode: Mode::Exclusive,
        ttl_ms: 5_000,
        wait: WaitSpec::Millis(20_000),
        owner: Bytes::new(),
        ticket: 0,
        fence_block: 1,
    }))
    .await;
    // Polling Redis: nothing comes yet.
    assert_eq!(raw.next_frame(Duration::from_millis(300)).await, None);
    // Polls count toward the session's limit of pending requests (2 here), and their ids
    // stay taken.
    let acquire = |id| {
        Frame::Acquire(Acquire {
            id,
            key: Bytes::from_static(b"sync/k"),
            mode: Mode::Exclusive,
            ttl_ms: 5_000,
            wait: WaitSpec::Millis(20_000),
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        })
    };
    raw.send_frame(&acquire(7)).await;
    match raw.next_frame(Duration::from_secs(2)).await {
        Some(Frame::Error {
            id: 7,
            code: ErrorCode::DuplicateRequest,
            ..
        }) => {}
        other => panic!("a polling acquire's id is taken: {other:?}"),
    }
    raw.send_frame(&acquire(8)).await;
    assert_eq!(raw.next_frame(Duration::from_millis(300)).await, None);
    raw.send_frame(&acquire(9)).await;
    match raw.next_frame(Duration::from_secs(2)).await {
        Some(Frame::Error {
            id: 9,
            code: ErrorCode::LimitExceeded,
            ..
        }) => {}
        other => panic!("two polls fill a limit of two: {other:?}"),
    }
    raw.send_frame(&Frame::Cancel { id: 8 }).await;
    match raw.next_frame(Duration::from_secs(2)).await {
        Some(Frame::Error {
            id: 8,
            code: ErrorCode::Cancelled,
            ..
        }) => {}
        other => panic!("a cancelled poll is answered Cancelled: {other:?}"),
    }
    raw.send_frame(&Frame::Cancel { id: 7 }).await;
    match raw.next_frame(Duration::from_secs(2)).await {
        Some(Frame::Error {
            id: 7,
            code: ErrorCode::Cancelled,
            ..
        }) => {}
        other => panic!("a cancelled poll is answered Cancelled: {other:?}"),
    }
    // The Redis holder lets go: a poll still running would now be granted.
    redis::cmd("DEL")
        .arg("sync/k")
        .exec(&mut redis.conn())
        .expect("DEL");
    assert_eq!(
        raw.next_frame(Duration::from_millis(600)).await,
        None,
        "nothing is granted after the cancel"
    );
    let client = broker.client().await;
    let info = client.inspect("sync/k").await.expect("inspect");
    assert!(info.holders.is_empty(), "{info:?}");
    assert_eq!(
        redis.get("sync/k"),
        None,
        "the broker took nothing in Redis"
    );
}

/// A lease that runs out while its holder is still connected is pushed to the holder as
/// `LeaseEnded` (rather than found out at the next renewal), and the SDK's guard reports
/// `lost` on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_expires_is_pushed_to_its_holder() {
    use lockbroker_proto::{Acquire, EndReason, Mode, WaitSpec};
    let broker = Broker::start();
    let mut c = raw_session(&broker, None).await;
    c.send_frame(&Frame::Acquire(Acquire {
        id: 1,
        key: Bytes::from_static(b"ended/k"),
        mode: Mode::Exclusive,
        ttl_ms: 300,
        wait: WaitSpec::NoWait,
        owner: Bytes::new(),
        ticket: 0,
        fence_block: 1,
    }))
    .await;
    let fence = match c.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Granted(g)) => g.fence,
        other => panic!("expected Granted, got {other:?}"),
    };
    match c.next_frame(Duration::from_secs(5)).await {
        Some(Frame::LeaseEnded {
            key,
            fence: f,
            reason: EndReason::Expired,
            ..
        }) => assert_eq!((&key[..], f), (&b"ended/k"[..], fence)),
        other => panic!("expected LeaseEnded, got {other:?}"),
    }
}

/// Sync mirror: a queued acquire whose turn comes while a Redis-lock client outside lockbroker
/// holds the key keeps waiting for it, within its wait bound, as an acquire that arrives then
/// does — it was answered `Busy` at once (and `cancel_stops_an_acquire_polling_the_sync_mirror`
/// failed whenever its second acquire queued behind the first one's retry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_acquire_refused_by_redis_keeps_waiting_its_turn() {
    use lockbroker_tests::redis::{RedisServer, mirror_config};

    let redis = RedisServer::start();
    let broker = Broker::start_with_config(&mirror_config(&redis.url(), "sync", ""));
    let holder = broker.client().await;
    let waiter = broker.client().await;
    let held = holder
        .lock("sync/q")
        .ttl(Duration::from_secs(30))
        .await
        .expect("the holder's lock");
    let queued = tokio::spawn(async move {
        waiter
            .lock("sync/q")
            .wait(Duration::from_secs(20))
            .await
            .map(|g| g.fence())
    });
    // The waiter is in the queue once the broker counts it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while holder.inspect("sync/q").await.expect("inspect").waiters == 0 {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A client outside lockbroker takes the key in Redis, then the holder lets go.
    redis::cmd("SET")
        .arg("sync/q")
        .arg("theirs")
        .arg("PX")
        .arg(30_000)
        .exec(&mut redis.conn())
        .expect("a Redis client takes the key");
    let _ = held.unlock().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !queued.is_finished(),
        "the waiter was answered while the key is held in Redis: {:?}",
        queued.await
    );
    redis::cmd("DEL")
        .arg("sync/q")
        .exec(&mut redis.conn())
        .expect("the Redis client lets go");
    let granted = tokio::time::timeout(Duration::from_secs(10), queued)
        .await
        .expect("granted within its wait")
        .expect("task");
    assert!(granted.is_ok(), "{granted:?}");
}
