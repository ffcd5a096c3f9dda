//! Waiting for a lock: FIFO grant order, try-lock (`Busy`) and bounded waits (`Timeout`), and
//! cancellation — dropping a waiting acquire frees its queue slot so the next release goes to
//! the next live waiter.

use std::future::IntoFuture;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::util::{inspect, wait_for_waiters};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_granted_in_queue_order() {
    let broker = Broker::start();
    let key = "fifo/k";
    let holder = broker.client().await;
    let guard = holder.lock(key).await.expect("holder locks");

    const N: usize = 6;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    let mut sessions = Vec::new();
    for i in 0..N {
        let c = broker.client().await;
        sessions.push(c.session_id().await.expect("session id"));
        let order = order.clone();
        tasks.push(tokio::spawn(async move {
            let g = c
                .lock(key)
                .wait(LONG)
                .await
                .unwrap_or_else(|e| panic!("waiter {i}: {e}"));
            order.lock().unwrap().push((i, g.fence()));
            // Hold a moment so a wrong grant order could not be masked by timing.
            tokio::time::sleep(Duration::from_millis(20)).await;
            g.unlock().await.expect("waiter unlocks");
            c.close().await;
        }));
        // Enqueue in a known order: the next waiter only starts once this one is queued.
        wait_for_waiters(&holder, key, i as u32 + 1).await;
    }
    let info = inspect(&holder, key).await;
    assert_eq!(info.waiters, N as u32);
    assert_eq!(info.holders.len(), 1);
    assert_eq!(info.holders[0].fence, guard.fence());

    guard.unlock().await.expect("holder unlocks");
    for t in tasks {
        tokio::time::timeout(LONG, t)
            .await
            .expect("waiter finished in time")
            .expect("waiter task");
    }
    let order = order.lock().unwrap().clone();
    let idx: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    assert_eq!(idx, (0..N).collect::<Vec<_>>(), "grants not in queue order");
    let fences: Vec<u64> = order.iter().map(|(_, f)| *f).collect();
    assert!(
        fences.windows(2).all(|w| w[0] < w[1]),
        "fences not increasing in grant order: {fences:?}"
    );
    let info = inspect(&holder, key).await;
    assert!(!info.is_locked());
    assert_eq!(info.waiters, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn try_lock_is_busy_and_bounded_wait_times_out() {
    let broker = Broker::start();
    let a = broker.client().await;
    let b = broker.client().await;
    let guard = a.lock("busy/k").await.expect("a locks");

    assert_eq!(b.try_lock("busy/k").await.err(), Some(Error::Busy));
    assert_eq!(b.lock("busy/k").no_wait().await.err(), Some(Error::Busy));

    let start = Instant::now();
    let r = b.lock("busy/k").wait(Duration::from_millis(200)).await;
    let elapsed = start.elapsed();
    assert_eq!(r.err(), Some(Error::Timeout));
    assert!(
        elapsed >= Duration::from_millis(190),
        "timed out after only {elapsed:?}, asked to wait 200 ms"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "timeout took {elapsed:?}"
    );
    // The timed-out request left no waiter behind.
    let info = inspect(&b, "busy/k").await;
    assert_eq!(info.waiters, 0);
    assert_eq!(info.holders[0].fence, guard.fence());

    // Once free, the same client gets it (try and bounded wait both succeed).
    guard.unlock().await.expect("unlock");
    let g = b
        .try_lock("busy/k")
        .await
        .expect("free key: try_lock succeeds");
    g.unlock().await.expect("unlock");
    let g = b
        .lock("busy/k")
        .wait(Duration::from_millis(200))
        .await
        .expect("free key: bounded wait succeeds");
    g.unlock().await.expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_acquire_frees_its_queue_slot() {
    let broker = Broker::start();
    let key = "cancel/k";
    let a = broker.client().await;
    let b = broker.client().await;
    let c = broker.client().await;
    let b_session = b.session_id().await.unwrap();
    let c_session = c.session_id().await.unwrap();
    let guard = a.lock(key).await.expect("a locks");

    // A client-side timeout drops the acquire future: the broker must forget the waiter.
    let r = tokio::time::timeout(Duration::from_millis(300), b.lock(key)).await;
    assert!(
        r.is_err(),
        "b should still be waiting when its timeout fires"
    );
    wait_for_waiters(&a, key, 0).await;

    // B queues again (first), C queues behind it; then B gives up by dropping its future.
    let (give_up, gave_up) = tokio::sync::oneshot::channel::<()>();
    let b_task = {
        let b = b.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = b.lock(key) => panic!("b must not be granted: {:?}", r.map(|g| g.fence())),
                _ = gave_up => {}
            }
        })
    };
    wait_for_waiters(&a, key, 1).await;
    let c_task = {
        let c = c.clone();
        tokio::spawn(async move { c.lock(key).wait(LONG).await })
    };
    wait_for_waiters(&a, key, 2).await;
    give_up.send(()).unwrap();
    b_task.await.expect("b task");
    wait_for_waiters(&a, key, 1).await;

    // The next release goes to C, the next live waiter.
    guard.unlock().await.expect("a unlocks");
    let c_guard = tokio::time::timeout(LONG, c_task)
        .await
        .expect("c granted in time")
        .expect("c task")
        .expect("c granted");
    let info = inspect(&a, key).await;
    assert_eq!(info.owner(), Some(c_session), "holder is not C: {info:?}");
    assert_ne!(info.owner(), Some(b_session));
    assert_eq!(info.holders[0].fence, c_guard.fence());
    assert_eq!(info.waiters, 0);
    // B holds nothing: it may queue again without AlreadyHeld, and times out behind C.
    assert_eq!(
        b.lock(key).wait(Duration::from_millis(100)).await.err(),
        Some(Error::Timeout)
    );
    c_guard.unlock().await.expect("c unlocks");
    let g = b.try_lock(key).await.expect("b gets the free key");
    g.unlock().await.unwrap();
}

/// Giving up on an acquire and asking again at once must work, even when the broker granted
/// the first acquire before it saw the cancel (the grant "crosses" the cancel on the wire).
/// The SDK holds a new acquire of the key until the abandoned one is resolved (its crossed
/// grant released), so the broker never sees the session holding the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_again_right_after_abandoning_one() {
    let broker = Broker::start();
    let c = broker.client().await;
    for i in 0..20 {
        // Poll the acquire once (so it is sent), then drop it: on a free key the broker grants
        // it before it reads the cancel.
        let mut acquire = c.lock("abandon/k").into_future();
        // (On a loaded machine the grant can arrive before the first poll ends: then the
        // guard is dropped here, a fire-and-forget release, and the round still must work.)
        let _pending =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut acquire).poll(cx).is_pending()))
                .await;
        drop(acquire);
        let again = c.lock("abandon/k").wait(Duration::from_secs(10)).await;
        let g = again.unwrap_or_else(|e| panic!("round {i}: acquire after abandoning: {e}"));
        g.unlock().await.unwrap();
    }
}
