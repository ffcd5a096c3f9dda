//! Leases over real connections: a SIGKILLed holder keeps the lock until its TTL, a clean
//! disconnect frees it at once, background renewal keeps a lock past its TTL, and
//! `wait_until_unlocked` tells Released from Expired, and a waiter queued past its TTL gets a
//! usable lease.

use std::time::{Duration, Instant};

use lockbroker_sdk::{Error, UnlockOutcome};
use lockbroker_tests::util::{
    child_pids, eventually, inspect, sigkill, wait_for_holder, wait_for_waiters,
};
use lockbroker_tests::{Broker, cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_holder_keeps_the_lock_until_its_ttl() {
    let broker = Broker::start();
    let key = "crash/k";
    let observer = broker.client().await;
    let mut holder = cli(&broker)
        .args(["lock", "--ttl", "2s", key, "--", "sleep", "60"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn lockbroker lock");
    let pid = holder.id();
    let info = wait_for_holder(&observer, key, Duration::from_secs(60)).await;
    let fence = info.holders[0].fence;
    // Let a renewal or two happen, so the lease is being kept alive by the CLI.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(inspect(&observer, key).await.holders[0].fence, fence);

    // SIGKILL: no clean close, no release — only the TTL can free the key.
    let grandchildren = child_pids(pid);
    holder.kill().expect("SIGKILL the holder");
    let killed_at = Instant::now();
    let _ = holder.wait();
    for p in grandchildren {
        sigkill(p); // the orphaned `sleep 60`
    }

    // Renewal happened every ttl/3, so at least ~1.33 s were left at the kill.
    let check_at = killed_at + Duration::from_millis(800);
    tokio::time::sleep_until(check_at.into()).await;
    let busy = observer.try_lock(key).await;
    let checked_after = killed_at.elapsed();
    assert_eq!(
        busy.as_ref().err(),
        Some(&Error::Busy),
        "the key was free {checked_after:?} after the holder died (TTL 2 s, renewed every ttl/3)"
    );

    let outcome = observer
        .wait_until_unlocked_for(key, Duration::from_secs(4))
        .await
        .expect("the lease expired within ~4 s of the kill");
    assert_eq!(outcome, UnlockOutcome::Expired);
    let freed_after = killed_at.elapsed();
    assert!(
        freed_after < Duration::from_secs(5),
        "freed {freed_after:?} after the kill, TTL is 2 s"
    );
    let g = observer.try_lock(key).await.expect("free after expiry");
    assert!(g.fence() > fence);
    g.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_disconnect_frees_the_lock_at_once() {
    let broker = Broker::start();
    let key = "close/k";
    let a = broker.client().await;
    let b = broker.client().await;
    let w = broker.client().await;
    let a_guard = a
        .lock(key)
        .ttl(Duration::from_secs(30))
        .await
        .expect("a locks");
    let watcher = {
        let w = w.clone();
        tokio::spawn(async move { w.wait_until_unlocked(key).await })
    };
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move { b.lock(key).wait(Duration::from_secs(60)).await })
    };
    wait_for_waiters(&w, key, 1).await;

    let closed_at = Instant::now();
    a.close().await;
    let b_guard = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("b granted")
        .expect("b task")
        .expect("b lock");
    let granted_after = closed_at.elapsed();
    assert!(
        granted_after < Duration::from_secs(5),
        "b was granted {granted_after:?} after a's clean close (TTL 30 s)"
    );
    assert!(b_guard.fence() > a_guard.fence());
    let outcome = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("watcher resolved")
        .expect("watcher task")
        .expect("wait_until_unlocked");
    assert_eq!(outcome, UnlockOutcome::Released);
    // A's guard is moot now; dropping it must not disturb B's lease.
    drop(a_guard);
    let info = inspect(&w, key).await;
    assert_eq!(info.owner(), Some(b.session_id().await.unwrap()));
    b_guard.unlock().await.expect("b unlocks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_lock_past_its_ttl() {
    let broker = Broker::start();
    let key = "renew/k";
    let a = broker.client().await;
    let b = broker.client().await;
    let guard = a
        .lock(key)
        .ttl(Duration::from_secs(1))
        .await
        .expect("a locks");
    assert_eq!(guard.ttl(), Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert!(!guard.is_lost(), "the renewed lease was reported lost");
    let info = inspect(&b, key).await;
    assert_eq!(info.holders.len(), 1, "not held 3 s into a 1 s lease");
    assert_eq!(info.holders[0].fence, guard.fence());
    assert_eq!(info.owner(), Some(a.session_id().await.unwrap()));
    assert!(info.holders[0].remaining <= Duration::from_secs(1));
    assert_eq!(b.try_lock(key).await.err(), Some(Error::Busy));
    guard.unlock().await.expect("unlock after renewals");
    assert!(!inspect(&b, key).await.is_locked());
}

/// A waiter queued longer than its own TTL gets a lease it can use: the lease's clock starts
/// when the acquire was sent, so such a grant arrives past its local deadline and is renewed
/// before it is handed out. Before, the guard's watchdog started with the grant, found the
/// deadline past and declared the lease lost at once (the cluster checker saw every waiter of
/// a queue lose its grant in turn behind a dead holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_queued_longer_than_its_ttl_gets_a_lease_that_is_not_lost() {
    let broker = Broker::start();
    let key = "queued/k";
    let a = broker.client().await;
    let b = broker.client().await;
    let held = a
        .lock(key)
        .ttl(Duration::from_secs(30))
        .await
        .expect("a locks");
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.lock(key)
                .ttl(Duration::from_secs(1))
                .wait(Duration::from_secs(20))
                .await
        })
    };
    wait_for_waiters(&a, key, 1).await;
    // The holder's work takes longer than the waiter's TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    held.unlock().await.expect("a unlocks");
    let guard = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("b granted")
        .expect("b task")
        .expect("b lock");
    assert!(!guard.is_lost(), "a fresh grant read as lost: {guard:?}");
    let lost = tokio::time::timeout(Duration::from_millis(300), guard.lost()).await;
    assert!(lost.is_err(), "a fresh grant was declared lost: {lost:?}");
    assert_eq!(inspect(&a, key).await.holders[0].fence, guard.fence());
    guard.unlock().await.expect("b unlocks its lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_until_unlocked_reports_released_and_expired() {
    let broker = Broker::start();
    let holder = broker.client().await;
    let watcher = broker.client().await;

    // A free key: Released at once.
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        watcher.wait_until_unlocked("wu/free"),
    )
    .await
    .expect("answered at once");
    assert_eq!(r, Ok(UnlockOutcome::Released));

    // Released: the holder unlocks while the watcher waits.
    let g = holder.lock("wu/released").await.unwrap();
    let w = {
        let watcher = watcher.clone();
        tokio::spawn(async move { watcher.wait_until_unlocked("wu/released").await })
    };
    // The watcher is not a queued acquire; give its request a moment to reach the broker, and
    // check it has not resolved while the lock is held.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!w.is_finished(), "wait_until_unlocked resolved while held");
    g.unlock().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), w)
        .await
        .expect("resolved after unlock")
        .expect("task");
    assert_eq!(r, Ok(UnlockOutcome::Released));

    // Expired: a lease that is not renewed runs out.
    let start = Instant::now();
    let g = holder
        .lock("wu/expired")
        .ttl(Duration::from_millis(700))
        .no_renew()
        .await
        .unwrap();
    let r = watcher
        .wait_until_unlocked_for("wu/expired", Duration::from_secs(10))
        .await;
    assert_eq!(r, Ok(UnlockOutcome::Expired));
    assert!(
        start.elapsed() >= Duration::from_millis(600),
        "expired after only {:?}",
        start.elapsed()
    );
    assert!(!inspect(&watcher, "wu/expired").await.is_locked());
    drop(g);

    // A bounded wait on a key that stays held times out.
    let g = holder.lock("wu/held").await.unwrap();
    let r = watcher
        .wait_until_unlocked_for("wu/held", Duration::from_millis(200))
        .await;
    assert_eq!(r, Err(Error::Timeout));
    g.unlock().await.unwrap();
    // Everything is idle again.
    eventually("keys idle", Duration::from_secs(5), || {
        let watcher = watcher.clone();
        async move { (!inspect(&watcher, "wu/held").await.is_locked()).then_some(()) }
    })
    .await;
}

/// A holder whose connection is lost (not closed) keeps its lease until the TTL; then the key
/// stays blocked for `lock_delay` before the next grant (Chubby's lock-delay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_holder_expires_then_lock_delay_blocks_the_key() {
    let broker = Broker::start_with_config(
        "[quic]\nidle_timeout_ms = 1500\nkeep_alive_ms = 300\n\n[locks]\nlock_delay_ms = 3000\n",
    );
    let key = "delay/k";
    let observer = broker.client().await;
    let mut holder = cli(&broker)
        .args(["lock", "--ttl", "5s", key, "--", "sleep", "60"])
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn lockbroker lock");
    let fence = wait_for_holder(&observer, key, Duration::from_secs(60))
        .await
        .holders[0]
        .fence;
    let grandchildren = child_pids(holder.id());
    holder.kill().expect("SIGKILL the holder");
    let _ = holder.wait();
    for p in grandchildren {
        sigkill(p);
    }
    let waiter = {
        let c = broker.client().await;
        tokio::spawn(async move {
            let g = c.lock(key).wait(Duration::from_secs(30)).await;
            (g, Instant::now(), c)
        })
    };
    wait_for_waiters(&observer, key, 1).await;

    let outcome = observer
        .wait_until_unlocked_for(key, Duration::from_secs(15))
        .await
        .expect("the lost holder's lease expires");
    let expired_at = Instant::now();
    assert_eq!(outcome, UnlockOutcome::Expired);
    // Expired, but the key is held back for the lock delay: nobody is granted yet.
    let info = inspect(&observer, key).await;
    assert!(!info.is_locked(), "{info:?}");
    assert!(
        info.blocked_for > Duration::ZERO,
        "no lock-delay block after a lost holder's lease expired: {info:?}"
    );
    assert!(info.blocked_for <= Duration::from_secs(3));
    assert_eq!(info.waiters, 1);
    assert!(!waiter.is_finished(), "granted during the lock delay");

    let (g, granted_at, _c) = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .expect("waiter granted after the lock delay")
        .unwrap();
    let g = g.expect("waiter granted");
    assert!(g.fence() > fence);
    let gap = granted_at - expired_at;
    assert!(
        gap >= Duration::from_millis(1500),
        "granted {gap:?} after expiry, lock delay is 3 s"
    );
    g.unlock().await.unwrap();
}
