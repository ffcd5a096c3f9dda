//! The seeds' error cases over the wire: re-locking a held key (waits: not re-entrant), releasing a
//! lease that expired (`NotLocked`) or that someone else now holds (`NotOwner`), and the
//! per-session lease limit (`LimitExceeded`).

use std::time::Duration;

use lockbroker_sdk::{Error, UnlockOutcome};
use lockbroker_tests::Broker;
use lockbroker_tests::util::{inspect, wait_for_waiters};

/// Locks are not re-entrant, and ownership is per lease: a client locking a key it holds waits
/// its turn like anyone else (a `wait` deadline bounds it), and gets its own lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_client_locking_twice_waits_its_turn() {
    let broker = Broker::start();
    let a = broker.client().await;
    let g = a.lock("ah/k").await.unwrap();
    assert_eq!(a.try_lock("ah/k").await.err(), Some(Error::Busy));
    let r = a.lock("ah/k").wait(Duration::from_millis(200)).await;
    assert_eq!(r.err(), Some(Error::Timeout));
    assert!(matches!(
        a.read_lock("ah/k").no_wait().await,
        Err(Error::Busy)
    ));
    // Another client is Busy alike.
    let b = broker.client().await;
    assert_eq!(b.try_lock("ah/k").await.err(), Some(Error::Busy));

    // Two acquires of the same client queue FIFO with the other client's.
    let second = {
        let a = a.clone();
        tokio::spawn(async move { a.lock("ah/k").wait(Duration::from_secs(30)).await })
    };
    wait_for_waiters(&b, "ah/k", 1).await;
    let third = {
        let b = b.clone();
        tokio::spawn(async move { b.lock("ah/k").wait(Duration::from_secs(30)).await })
    };
    wait_for_waiters(&b, "ah/k", 2).await;
    let first_fence = g.fence();
    g.unlock().await.unwrap();
    let g2 = second.await.unwrap().expect("a's second acquire granted");
    assert_ne!(g2.fence(), first_fence);
    assert_eq!(inspect(&b, "ah/k").await.waiters, 1);
    g2.unlock().await.unwrap();
    let g3 = third
        .await
        .unwrap()
        .expect("b granted after a's two leases");
    assert!(g3.fence() > first_fence);
    g3.unlock().await.unwrap();

    // Shared: the same client holds two read leases at once, each released by its own guard.
    let r1 = a.read_lock("ah/s").await.unwrap();
    let r2 = a.read_lock("ah/s").await.unwrap();
    assert_ne!(r1.fence(), r2.fence());
    assert_eq!(inspect(&b, "ah/s").await.holders.len(), 2);
    r1.unlock().await.unwrap();
    assert_eq!(inspect(&b, "ah/s").await.holders.len(), 1);
    r2.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlocking_an_expired_lease_is_not_locked() {
    let broker = Broker::start();
    let a = broker.client().await;
    let g = a
        .lock("nl/k")
        .ttl(Duration::from_millis(300))
        .no_renew()
        .await
        .unwrap();
    let outcome = a
        .wait_until_unlocked_for("nl/k", Duration::from_secs(10))
        .await;
    assert_eq!(outcome, Ok(UnlockOutcome::Expired));
    assert_eq!(g.unlock().await, Err(Error::NotLocked));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlocking_a_lease_someone_else_now_holds_is_not_owner() {
    let broker = Broker::start();
    let a = broker.client().await;
    let b = broker.client().await;
    let ga = a
        .lock("no/k")
        .ttl(Duration::from_millis(300))
        .no_renew()
        .await
        .unwrap();
    // B waits and gets the key when A's lease runs out.
    let gb = b
        .lock("no/k")
        .wait(Duration::from_secs(10))
        .await
        .expect("b granted after a's lease expired");
    assert!(gb.fence() > ga.fence());
    // Extending the dead lease fails the same way.
    assert_eq!(
        ga.extend(Duration::from_secs(5)).await,
        Err(Error::NotOwner)
    );
    assert_eq!(ga.unlock().await, Err(Error::NotOwner));
    // B's lease is untouched.
    let info = inspect(&a, "no/k").await;
    assert_eq!(info.owner(), Some(b.session_id().await.unwrap()));
    assert_eq!(info.holders[0].fence, gb.fence());
    gb.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_lease_limit() {
    let broker = Broker::start_with_config("[limits]\nmax_leases_per_session = 2\n");
    let a = broker.client().await;
    let g1 = a.lock("lim/1").await.unwrap();
    let g2 = a.lock("lim/2").await.unwrap();
    let third = a.lock("lim/3").no_wait().await;
    assert!(
        matches!(third, Err(Error::LimitExceeded(_))),
        "third lease: {third:?}"
    );
    let third = a.lock("lim/3").wait(Duration::from_millis(100)).await;
    assert!(matches!(third, Err(Error::LimitExceeded(_))));
    // The limit is per session: another client is not affected.
    let b = broker.client().await;
    let gb = b.lock("lim/3").no_wait().await.expect("other session");
    // Releasing one lease makes room again.
    g1.unlock().await.unwrap();
    let g3 = a.lock("lim/4").no_wait().await.expect("room after release");
    drop((g2, g3, gb));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_waiter_limit() {
    let broker = Broker::start_with_config("[limits]\nmax_waiters_per_session = 1\n");
    let holder = broker.client().await;
    let a = broker.client().await;
    let g1 = holder.lock("wl/1").await.unwrap();
    let g2 = holder.lock("wl/2").await.unwrap();
    let first = {
        let a = a.clone();
        tokio::spawn(async move { a.lock("wl/1").wait(Duration::from_secs(30)).await })
    };
    wait_for_waiters(&holder, "wl/1", 1).await;
    let second = a.lock("wl/2").wait(Duration::from_secs(5)).await;
    assert!(
        matches!(second, Err(Error::LimitExceeded(_))),
        "second waiter: {second:?}"
    );
    // A try-lock does not wait, so the waiter limit does not apply to it.
    assert_eq!(a.try_lock("wl/2").await.err(), Some(Error::Busy));
    g1.unlock().await.unwrap();
    let ga = first.await.unwrap().expect("first waiter granted");
    drop((ga, g2));
}
