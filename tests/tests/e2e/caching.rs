//! Lock caching (issue 25). The broker's part over raw QUIC frames, as a caching client sends
//! them: a lease asked for with a fence block gets it, another client's request makes the
//! broker push `Recall` once, and the next grant is above the whole block. The SDK's part
//! (`ClientBuilder::cache_locks`): locks granted again in the process with the next fence, one
//! broker lease for them all; another client gets the key after the recall, ahead of the
//! caching client's next lock; tasks of one caching client take turns; idle leases go back on
//! recall and when the client goes; cancelled waits leave nothing stuck; a used-up block is
//! replaced without a `Busy`.

use std::time::Duration;

use bytes::Bytes;
use lockbroker_proto::{Acquire, Frame, Hello, Mode, Release, WaitSpec};
use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::raw::RawConn;

/// A client of `broker` that caches its locks, each kept up to `idle_s` seconds unused.
async fn caching_client(broker: &Broker, idle_s: u64) -> lockbroker_sdk::Client {
    broker
        .client_builder()
        .cache_locks(Duration::from_secs(idle_s))
        .connect()
        .await
        .expect("connect")
}

/// A raw session that said Hello.
async fn raw_session(broker: &Broker) -> RawConn {
    let mut c = RawConn::connect(broker.addr, &broker.ca()).await;
    c.send_frame(&Frame::Hello(Hello {
        token: None,
        client: "caching-client".into(),
    }))
    .await;
    match c.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Welcome(_)) => c,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacheable_lease_is_recalled_when_another_client_asks_and_later_fences_pass_its_block() {
    let broker = Broker::start();
    let key = Bytes::from_static(b"cache/k");
    let mut holder = raw_session(&broker).await;
    holder
        .send_frame(&Frame::Acquire(Acquire {
            id: 1,
            key: key.clone(),
            mode: Mode::Exclusive,
            ttl_ms: 30_000,
            wait: WaitSpec::NoWait,
            owner: Bytes::from_static(b"cache-holder"),
            ticket: 0,
            fence_block: 16,
        }))
        .await;
    let granted = match holder.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Granted(g)) => g,
        other => panic!("expected Granted, got {other:?}"),
    };
    assert_eq!(granted.fence_block, 16, "the block asked for");

    // Another client tries the key: refused, and the holder is asked to give it back.
    let other = broker.client().await;
    assert_eq!(other.try_lock("cache/k").await.err(), Some(Error::Busy));
    match holder.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Recall { key: k, fence }) => {
            assert_eq!((k, fence), (key.clone(), granted.fence));
        }
        other => panic!("expected Recall, got {other:?}"),
    }
    // A waiter queues; the lease was recalled already: no second recall.
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move { other.lock("cache/k").wait(Duration::from_secs(20)).await })
    };
    lockbroker_tests::util::wait_for_waiters(&broker.client().await, "cache/k", 1).await;
    assert_eq!(holder.next_frame(Duration::from_millis(300)).await, None);

    // The holder's local work is done: it gives the lease back; the waiter gets a fence above
    // every token of the block.
    holder
        .send_frame(&Frame::Release(Release {
            id: 2,
            key: key.clone(),
            fence: granted.fence,
            ack: true,
            secret: granted.secret,
        }))
        .await;
    assert_eq!(
        holder.next_frame(Duration::from_secs(5)).await,
        Some(Frame::Ok { id: 2 })
    );
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter is granted")
        .expect("waiter task")
        .expect("waiter lock");
    assert!(
        guard.fence() >= granted.fence + 16,
        "fence {} inside the recalled lease's block [{}, {})",
        guard.fence(),
        granted.fence,
        granted.fence + 16
    );
    guard.unlock().await.expect("unlock");
}

/// An ordinary lease (no block) is never recalled: its holder is not a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_lease_is_not_recalled() {
    let broker = Broker::start();
    let mut holder = raw_session(&broker).await;
    holder
        .send_frame(&Frame::Acquire(Acquire {
            id: 1,
            key: Bytes::from_static(b"plain/k"),
            mode: Mode::Exclusive,
            ttl_ms: 30_000,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 0,
        }))
        .await;
    match holder.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Granted(g)) => assert_eq!(g.fence_block, 1),
        other => panic!("expected Granted, got {other:?}"),
    }
    let other = broker.client().await;
    assert_eq!(other.try_lock("plain/k").await.err(), Some(Error::Busy));
    assert_eq!(holder.next_frame(Duration::from_millis(500)).await, None);
    let info = other.inspect("plain/k").await.expect("inspect");
    assert!(
        !info.holders[0].cached,
        "an ordinary lease is not shown as cached"
    );
}

/// A client that caches keeps the lease after its unlock: its next locks of the key are
/// granted in the process, each with the next fence of the lease's block, and the broker still
/// shows the one lease it granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_lock_is_granted_again_in_the_process_with_the_next_fence() {
    let broker = Broker::start();
    let client = caching_client(&broker, 30).await;
    let observer = broker.client().await;
    let first = client.lock("cached/k").await.expect("lock");
    let lease = first.fence();
    first.unlock().await.expect("unlock");
    let mut last = lease;
    for _ in 0..20 {
        let g = client.lock("cached/k").await.expect("lock again");
        assert_eq!(g.fence(), last + 1, "each local grant takes the next fence");
        last = g.fence();
        g.unlock().await.expect("unlock");
    }
    let info = observer.inspect("cached/k").await.expect("inspect");
    assert_eq!(
        info.holders.iter().map(|h| h.fence).collect::<Vec<_>>(),
        [lease],
        "the broker granted one lease for all of them"
    );
    assert!(info.holders[0].cached, "inspect shows the lease as cached");
    // The operator sees it as a cached lease.
    let admin = broker.admin.expect("the admin listener");
    let listed = lockbroker_tests::http::get(admin, "/api/locks?prefix=cached/")
        .await
        .json();
    assert_eq!(listed["locks"][0]["holders"][0]["cached"], true, "{listed}");
}

/// Another client asking for a key a client caches gets it once the caching client's holder
/// unlocks (the broker recalled the lease), with a fence above every local one; the caching
/// client's next lock queues behind it at the broker and gets a fence above that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_client_gets_a_cached_key_after_the_recall_with_a_larger_fence() {
    let broker = Broker::start();
    let cacher = caching_client(&broker, 30).await;
    let other = broker.client().await;
    cacher
        .lock("recall/k")
        .await
        .expect("lock")
        .unlock()
        .await
        .expect("unlock");
    let local = cacher.lock("recall/k").await.expect("a local grant");
    let waiter = {
        let other = other.clone();
        tokio::spawn(async move { other.lock("recall/k").wait(Duration::from_secs(20)).await })
    };
    lockbroker_tests::util::wait_for_waiters(&other, "recall/k", 1).await;
    // While recalled, the caching client's next lock does not jump the other client's turn.
    let next_local = {
        let cacher = cacher.clone();
        tokio::spawn(async move { cacher.lock("recall/k").wait(Duration::from_secs(20)).await })
    };
    let local_fence = local.fence();
    local.unlock().await.expect("the local holder unlocks");
    let theirs = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the other client is granted")
        .expect("task")
        .expect("lock");
    assert!(theirs.fence() > local_fence);
    assert!(
        !next_local.is_finished(),
        "the caching client jumped the queue"
    );
    let their_fence = theirs.fence();
    theirs.unlock().await.expect("unlock");
    let mine = tokio::time::timeout(Duration::from_secs(10), next_local)
        .await
        .expect("granted after the other client")
        .expect("task")
        .expect("lock");
    assert!(mine.fence() > their_fence);
    mine.unlock().await.expect("unlock");
    // The operator's view: one recall, timed from the recall to the cached lease's release
    // (the caching client's next lock asked without a cached lease, recalling nothing).
    let admin = broker.admin.expect("the admin listener");
    let m = lockbroker_tests::http::get(admin, "/metrics").await.body;
    assert_eq!(
        lockbroker_tests::http::sample(&m, "lockbroker_recalls_total"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        lockbroker_tests::http::sample(&m, "lockbroker_recall_seconds_count"),
        Some(1.0),
        "{m}"
    );
}

/// Tasks of one caching client locking one key take turns: never two inside at once, fences
/// strictly growing in the order they entered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_a_caching_client_take_turns_with_growing_fences() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let broker = Broker::start();
    let client = caching_client(&broker, 30).await;
    let inside = Arc::new(AtomicBool::new(false));
    let fences = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (client, inside, fences) = (client.clone(), inside.clone(), fences.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let g = client.lock("turns/k").await.expect("lock");
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                fences.lock().push(g.fence());
                tokio::task::yield_now().await;
                inside.store(false, Ordering::SeqCst);
                g.unlock().await.expect("unlock");
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("tasks finish")
            .expect("task");
    }
    let fences = fences.lock();
    assert_eq!(fences.len(), 200);
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences out of order: {fences:?}"
    );
}

/// A cached lease nobody holds goes back at once when another client asks; a client dropped
/// with cached leases gives them back (the next holder does not wait out a TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_cached_leases_go_back_on_recall_and_when_the_client_goes() {
    let broker = Broker::start();
    let cacher = caching_client(&broker, 60).await;
    let other = broker.client().await;
    for key in ["idle/a", "idle/b"] {
        let g = cacher
            .lock(key)
            .ttl(Duration::from_secs(60))
            .await
            .expect("lock");
        g.unlock().await.expect("unlock");
    }
    // Cached and unused: the other client's acquire recalls it and is granted at once.
    let start = std::time::Instant::now();
    let g = other
        .lock("idle/a")
        .wait(Duration::from_secs(10))
        .await
        .expect("granted after the recall");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "waited {:?} for an idle cached lease (its TTL is 60 s)",
        start.elapsed()
    );
    g.unlock().await.expect("unlock");
    // The caching client goes away with "idle/b" cached.
    drop(cacher);
    let start = std::time::Instant::now();
    let g = other
        .lock("idle/b")
        .wait(Duration::from_secs(10))
        .await
        .expect("granted after the caching client went");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "waited {:?} after the caching client was dropped",
        start.elapsed()
    );
    g.unlock().await.expect("unlock");
}

/// A local wait that times out and a lock cancelled while it asks the broker leave nothing
/// behind: the key is granted to the next locker as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_local_waits_and_asks_leave_no_stuck_key() {
    let broker = Broker::start();
    let cacher = caching_client(&broker, 30).await;
    let other = broker.client().await;
    // A local wait behind a local holder runs out.
    let held = cacher.lock("cancel/k").await.expect("lock");
    assert_eq!(
        cacher
            .lock("cancel/k")
            .wait(Duration::from_millis(200))
            .await
            .err(),
        Some(lockbroker_sdk::Error::Timeout)
    );
    assert_eq!(
        cacher.try_lock("cancel/k").await.err(),
        Some(lockbroker_sdk::Error::Busy)
    );
    held.unlock().await.expect("unlock");
    let again = cacher
        .lock("cancel/k")
        .wait(Duration::from_secs(5))
        .await
        .expect("granted after the timed-out wait");
    again.unlock().await.expect("unlock");
    // Another client holds "cancel/j": the caching client's lock of it is dropped while it
    // waits at the broker; a later lock of it still works once the other client unlocks.
    let theirs = other.lock("cancel/j").await.expect("lock");
    let asking = tokio::time::timeout(Duration::from_millis(300), cacher.lock("cancel/j")).await;
    assert!(asking.is_err(), "granted while another client holds it");
    let next = {
        let cacher = cacher.clone();
        tokio::spawn(async move { cacher.lock("cancel/j").wait(Duration::from_secs(10)).await })
    };
    lockbroker_tests::util::wait_for_waiters(&other, "cancel/j", 1).await;
    theirs.unlock().await.expect("unlock");
    let mine = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .expect("granted")
        .expect("task")
        .expect("lock");
    mine.unlock().await.expect("unlock");
}

/// A cached lease whose fence block is used up is given back and a new one asked for: a
/// try-lock right then is not refused by the client's own spent lease, and fences keep
/// growing across the blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_block_is_replaced_without_a_busy_try_lock() {
    let broker = Broker::start();
    let cacher = caching_client(&broker, 30).await;
    let observer = broker.client().await;
    let mut last = 0;
    let mut leases = std::collections::BTreeSet::new();
    for i in 0..2500 {
        let g = cacher
            .try_lock("blocks/k")
            .await
            .unwrap_or_else(|e| panic!("try-lock {i}: {e}"));
        assert!(g.fence() > last, "fence {} after {last}", g.fence());
        last = g.fence();
        if i % 500 == 0 || i == 2499 {
            let info = observer.inspect("blocks/k").await.expect("inspect");
            leases.extend(info.holders.iter().map(|h| h.fence));
        }
        g.unlock().await.expect("unlock");
    }
    assert!(
        leases.len() >= 3,
        "2,500 locks with 1,024 fences per lease took {} leases",
        leases.len()
    );
}

/// A local holder whose cached lease ends under it — here an operator's forced release — is
/// told so by its `unlock()` (an error, as for any guard whose lease was lost), not `Ok`: its
/// work may have overlapped another holder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlocking_a_local_hold_whose_cached_lease_was_lost_reports_the_loss() {
    let broker = Broker::start();
    let client = caching_client(&broker, 30).await;
    client
        .lock("cached/lost")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock")
        .unlock()
        .await
        .expect("unlock");
    // The user's lock is granted from the cached lease, in the process.
    let local = client
        .lock("cached/lost")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock again");
    let revoked = broker.force_release("cached/lost").await;
    assert_eq!(revoked.status, 200, "{revoked:?}");
    tokio::time::timeout(Duration::from_secs(5), local.lost())
        .await
        .expect("the local holder is told within 5 s (TTL 60 s)");
    match local.unlock().await {
        Err(Error::Lost(_)) => {}
        other => panic!("unlock of a lost local hold: {other:?}"),
    }
    // The key is free for the next locker.
    let again = client
        .try_lock("cached/lost")
        .await
        .expect("lock after the loss");
    again.unlock().await.expect("unlock");
}

/// Two caching clients taking turns on one key pay a recall each once, not every turn: a key
/// whose lease was recalled is contended, and its locks ask for ordinary leases while it stays
/// so (the client's idle time). Fences keep growing throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_caching_clients_taking_turns_stop_recalling_each_other() {
    let broker = Broker::start();
    let (a, b) = (
        caching_client(&broker, 30).await,
        caching_client(&broker, 30).await,
    );
    let mut last = 0;
    for _ in 0..10 {
        for c in [&a, &b] {
            let g = c
                .lock("turns/k")
                .wait(Duration::from_secs(10))
                .await
                .expect("lock");
            assert!(g.fence() > last, "fences grow turn after turn");
            last = g.fence();
            g.unlock().await.expect("unlock");
        }
    }
    // a's first lease was recalled by b's first lock, b's by a's second: then no more.
    let admin = broker.admin.expect("the admin listener");
    let m = lockbroker_tests::http::get(admin, "/metrics").await.body;
    assert_eq!(
        lockbroker_tests::http::sample(&m, "lockbroker_recalls_total"),
        Some(2.0),
        "{m}"
    );
}
