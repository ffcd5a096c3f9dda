//! Lock modes: shared (readers–writer, writers not starved by later readers), counting
//! semaphores, and refusing a mode that does not match the key's current one.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbroker_sdk::{Error, Mode};
use lockbroker_tests::Broker;
use lockbroker_tests::util::{eventually, inspect, wait_for_waiters};

const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_share_and_a_waiting_writer_is_not_starved() {
    let broker = Broker::start();
    let key = "rw/k";
    let r1 = broker.client().await;
    let r2 = broker.client().await;
    let w = broker.client().await;
    let r3 = broker.client().await;
    let probe = broker.client().await;

    // Two readers at once.
    let g1 = r1.read_lock(key).no_wait().await.expect("reader 1");
    let g2 = r2.read_lock(key).no_wait().await.expect("reader 2 shares");
    assert_eq!(g1.mode(), Mode::Shared);
    let info = inspect(&probe, key).await;
    assert_eq!(info.holders.len(), 2);
    assert!(info.holders.iter().all(|h| h.mode == Mode::Shared));
    assert_eq!(info.owner(), None, "a shared lock has no single owner");
    // A writer may not join them.
    assert_eq!(w.try_lock(key).await.err(), Some(Error::Busy));

    let log = Arc::new(Mutex::new(Vec::<&'static str>::new()));
    let writer = {
        let (w, log) = (w.clone(), log.clone());
        tokio::spawn(async move {
            let g = w.lock(key).wait(LONG).await.expect("writer granted");
            log.lock().unwrap().push("writer");
            g
        })
    };
    wait_for_waiters(&probe, key, 1).await;
    // A reader arriving after the waiting writer queues behind it instead of joining the
    // current readers.
    assert_eq!(r3.read_lock(key).no_wait().await.err(), Some(Error::Busy));
    let reader3 = {
        let (r3, log) = (r3.clone(), log.clone());
        tokio::spawn(async move {
            let g = r3
                .read_lock(key)
                .wait(LONG)
                .await
                .expect("reader 3 granted");
            log.lock().unwrap().push("reader3");
            g
        })
    };
    wait_for_waiters(&probe, key, 2).await;
    assert_eq!(inspect(&probe, key).await.holders.len(), 2);

    // Readers leave → the writer gets it, reader 3 still waits.
    g1.unlock().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!writer.is_finished(), "writer granted while a reader holds");
    g2.unlock().await.unwrap();
    let wg = tokio::time::timeout(LONG, writer)
        .await
        .expect("writer in time")
        .unwrap();
    let info = inspect(&probe, key).await;
    assert_eq!(info.owner(), Some(w.session_id().await.unwrap()));
    assert_eq!(info.holders[0].mode, Mode::Exclusive);
    assert_eq!(info.waiters, 1);
    assert!(
        !reader3.is_finished(),
        "reader granted alongside the writer"
    );

    let writer_fence = wg.fence();
    wg.unlock().await.unwrap();
    let g3 = tokio::time::timeout(LONG, reader3)
        .await
        .expect("reader 3 in time")
        .unwrap();
    assert_eq!(*log.lock().unwrap(), vec!["writer", "reader3"]);
    assert!(g3.fence() > writer_fence);
    g3.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_admits_n_holders() {
    let broker = Broker::start();
    let key = "sem/k";
    let a = broker.client().await;
    let b = broker.client().await;
    let c = broker.client().await;

    let ga = a.semaphore(key, 2).no_wait().await.expect("first permit");
    let gb = b.semaphore(key, 2).no_wait().await.expect("second permit");
    assert_eq!(ga.mode(), Mode::Semaphore(2));
    assert_ne!(ga.fence(), gb.fence());
    assert_eq!(
        c.semaphore(key, 2).no_wait().await.err(),
        Some(Error::Busy),
        "a third holder of a 2-permit semaphore"
    );
    let info = inspect(&c, key).await;
    assert_eq!(info.holders.len(), 2);

    // Release one permit → the third client can take it.
    ga.unlock().await.unwrap();
    let gc = eventually("a free permit", Duration::from_secs(10), || {
        let c = c.clone();
        async move { c.semaphore(key, 2).no_wait().await.ok() }
    })
    .await;
    assert!(gc.fence() > gb.fence());
    assert_eq!(inspect(&a, key).await.holders.len(), 2);

    // A queued semaphore waiter is granted when a permit frees.
    let waiting = {
        let a = a.clone();
        tokio::spawn(async move { a.semaphore(key, 2).wait(LONG).await })
    };
    wait_for_waiters(&c, key, 1).await;
    drop(gb); // fire-and-forget release of a permit
    let ga2 = tokio::time::timeout(LONG, waiting)
        .await
        .expect("waiter in time")
        .unwrap()
        .expect("permit granted");
    gc.unlock().await.unwrap();
    ga2.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_mismatch_is_invalid() {
    let broker = Broker::start();
    let a = broker.client().await;
    let b = broker.client().await;

    let g = a.semaphore("mm/sem", 2).await.unwrap();
    assert!(
        matches!(b.lock("mm/sem").no_wait().await, Err(Error::Invalid(_))),
        "exclusive lock on a semaphore key"
    );
    assert!(
        matches!(
            b.read_lock("mm/sem").no_wait().await,
            Err(Error::Invalid(_))
        ),
        "shared lock on a semaphore key"
    );
    assert!(
        matches!(
            b.semaphore("mm/sem", 3).no_wait().await,
            Err(Error::Invalid(_))
        ),
        "semaphore with another permit count"
    );
    assert!(
        matches!(b.semaphore("mm/zero", 0).await, Err(Error::Invalid(_))),
        "zero-permit semaphore"
    );
    let x = a.lock("mm/excl").await.unwrap();
    assert!(
        matches!(
            b.semaphore("mm/excl", 2).no_wait().await,
            Err(Error::Invalid(_))
        ),
        "semaphore on an exclusively held key"
    );
    // The refused requests left nothing behind and the client still works.
    assert_eq!(inspect(&b, "mm/sem").await.holders.len(), 1);
    assert_eq!(inspect(&b, "mm/sem").await.waiters, 0);
    let ok = b
        .semaphore("mm/sem", 2)
        .no_wait()
        .await
        .expect("matching mode");
    ok.unlock().await.unwrap();
    g.unlock().await.unwrap();
    x.unlock().await.unwrap();
}
