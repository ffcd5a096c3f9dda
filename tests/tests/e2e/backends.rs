//! Every SDK behaviour against both backends from one test body: `Client::embedded()` (the
//! table in this process) and a real broker over QUIC. `both!(name, body)` makes
//! `name::embedded` and `name::broker`; the body gets a [`Backend`] that hands out clients of
//! one lock service (for the embedded backend, clients sharing one in-process table).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lockbroker_sdk::{Client, Error, Mode, UnlockOutcome};
use lockbroker_tests::Broker;

const LIMIT: Duration = Duration::from_secs(10);

/// One lock service under test.
pub struct Backend {
    embedded: Option<Client>,
    broker: Option<Broker>,
}

impl Backend {
    fn embedded() -> Backend {
        Backend {
            embedded: Some(Client::embedded()),
            broker: None,
        }
    }

    fn broker() -> Backend {
        Backend {
            embedded: None,
            broker: Some(Broker::start()),
        }
    }

    /// Another client of the service: a new session at the broker, or a clone sharing the
    /// embedded table.
    async fn client(&self) -> Client {
        match (&self.embedded, &self.broker) {
            (Some(c), _) => c.clone(),
            (None, Some(b)) => b.client().await,
            (None, None) => unreachable!("a backend is one or the other"),
        }
    }
}

macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$body(super::Backend::embedded()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn broker() {
                super::$body(super::Backend::broker()).await;
            }
        }
    };
}

both!(lock_try_lock_and_fences, lock_try_lock_and_fences_body);
async fn lock_try_lock_and_fences_body(b: Backend) {
    let c = b.client().await;
    let g = c.lock("b/k").await.expect("lock");
    assert!(matches!(c.try_lock("b/k").await, Err(Error::Busy)));
    let f = g.fence();
    assert!(g.is_held().await.expect("is_held"));
    assert!(c.is_locked("b/k").await.expect("is_locked"));
    g.unlock().await.expect("unlock");
    assert!(!c.is_locked("b/k").await.expect("is_locked"));
    let g2 = c.try_lock("b/k").await.expect("free again");
    assert!(g2.fence() > f, "fences grow");
    drop(g2);
    // A dropped guard releases: the key is free again soon.
    let free = tokio::time::timeout(LIMIT, c.lock("b/k")).await;
    assert!(free.is_ok());
}

both!(waiters_are_granted_in_fifo_order, fifo_body);
async fn fifo_body(b: Backend) {
    let c = b.client().await;
    let g = c.lock("b/fifo").await.expect("lock");
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Waiters keep the key until the newcomer below has asked.
    let (go, gate) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let c = b.client().await;
        let (order, mut gate) = (order.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let g = c.lock("b/fifo").wait(LIMIT).await.expect("granted");
            order.lock().expect("order").push(i);
            gate.wait_for(|open| *open).await.expect("gate");
            g.unlock().await.expect("unlock");
        }));
        // Queued before the next one asks.
        let probe = b.client().await;
        lockbroker_tests::util::eventually("queued", LIMIT, || async {
            (probe.inspect("b/fifo").await.ok()?.waiters == i + 1).then_some(())
        })
        .await;
    }
    g.unlock().await.expect("unlock");
    // The release handed the key to the first waiter in the same table step: a newcomer
    // finding it free would have overtaken the queue (the embedded client grants a free key
    // directly, without queueing).
    assert!(matches!(c.try_lock("b/fifo").await, Err(Error::Busy)));
    go.send_replace(true);
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(*order.lock().expect("order"), vec![0, 1, 2, 3]);
}

/// A closed embedded client refuses every call, on the direct path as on the frame path, and
/// its guards' leases are gone with its session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_embedded_client_refuses_locks() {
    let c = Client::embedded();
    let g = c.lock("b/closed").await.expect("lock");
    c.close().await;
    assert!(matches!(
        c.lock("b/closed").await,
        Err(Error::Disconnected(_))
    ));
    assert!(matches!(
        c.try_lock("b/other").await,
        Err(Error::Disconnected(_))
    ));
    assert!(
        g.unlock().await.is_err(),
        "the session and its lease are gone"
    );
}

both!(shared_locks_and_semaphores, modes_body);
async fn modes_body(b: Backend) {
    let c = b.client().await;
    let r1 = c.read_lock("b/cfg").await.expect("reader 1");
    let r2 = c.read_lock("b/cfg").await.expect("reader 2");
    assert!(matches!(c.try_lock("b/cfg").await, Err(Error::Busy)));
    let info = c.inspect("b/cfg").await.expect("inspect");
    assert_eq!(info.holders_total, 2);
    assert!(info.holders.iter().all(|h| h.mode == Mode::Shared));
    drop((r1, r2));
    let w = c
        .lock("b/cfg")
        .wait(LIMIT)
        .await
        .expect("writer after readers");
    drop(w);
    let s1 = c.semaphore("b/pool", 2).await.expect("permit 1");
    let s2 = c.semaphore("b/pool", 2).await.expect("permit 2");
    assert!(matches!(
        c.semaphore("b/pool", 2).no_wait().await,
        Err(Error::Busy)
    ));
    drop(s1);
    let s3 = c
        .semaphore("b/pool", 2)
        .wait(LIMIT)
        .await
        .expect("a permit came back");
    drop((s2, s3));
}

both!(
    a_lease_that_is_not_renewed_ends_and_its_guard_is_told,
    ttl_body
);
async fn ttl_body(b: Backend) {
    let c = b.client().await;
    let g = c
        .lock("b/ttl")
        .ttl(Duration::from_millis(600))
        .no_renew()
        .await
        .expect("lock");
    let why = tokio::time::timeout(LIMIT, g.lost())
        .await
        .expect("lost within the TTL");
    assert!(matches!(why, Error::Lost(_)), "{why}");
    let next = c.lock("b/ttl").wait(LIMIT).await.expect("granted after");
    assert!(next.fence() > g.fence());
    // The old guard's unlock finds its lease gone.
    assert!(g.unlock().await.is_err());
}

both!(
    renewal_keeps_a_lock_past_its_ttl_and_extend_moves_it,
    renew_body
);
async fn renew_body(b: Backend) {
    let c = b.client().await;
    let g = c
        .lock("b/renew")
        .ttl(Duration::from_secs(2))
        .await
        .expect("lock");
    // 2.5 TTLs: renewed (every third of the TTL) at least six times meanwhile. (A 600 ms TTL
    // was lost once with the whole e2e suite on two cores: a renewal late by 300 ms.)
    tokio::time::sleep(Duration::from_millis(5000)).await;
    assert!(!g.is_lost());
    assert!(g.is_held().await.expect("is_held"));
    g.extend(Duration::from_secs(20)).await.expect("extend");
    assert_eq!(g.ttl(), Duration::from_secs(20));
    g.unlock().await.expect("unlock");
}

both!(
    inspect_shows_owner_labels_waiters_and_queue_positions,
    inspect_body
);
async fn inspect_body(b: Backend) {
    let c = b.client().await;
    let g = c.lock("b/insp").owner("web-1:4711").await.expect("lock");
    let waiter = b.client().await;
    let queued = tokio::spawn({
        let w = waiter.clone();
        async move { w.lock("b/insp").wait(LIMIT).await.map(|g| g.fence()) }
    });
    let info = lockbroker_tests::util::eventually("queued", LIMIT, || async {
        let i = waiter.inspect("b/insp").await.ok()?;
        (i.waiters == 1).then_some(i)
    })
    .await;
    assert_eq!(info.owner_label(), Some("web-1:4711"));
    assert_eq!(info.holders[0].fence, g.fence());
    assert_eq!(
        c.leader("b/insp").await.expect("leader").as_deref(),
        Some("web-1:4711")
    );
    // The embedded clients share one session: the holder's own inspect sees the queued
    // request too; at a broker only the waiter's session does.
    assert_eq!(info.queue_position, Some(1));
    g.unlock().await.expect("unlock");
    let next = tokio::time::timeout(LIMIT, queued)
        .await
        .expect("granted")
        .expect("join")
        .expect("granted");
    assert!(next > 0);
}

both!(wait_until_unlocked_and_bounded_waits, waits_body);
async fn waits_body(b: Backend) {
    let c = b.client().await;
    assert_eq!(
        c.wait_until_unlocked("b/w").await.expect("free"),
        UnlockOutcome::Released
    );
    let g = c.lock("b/w").await.expect("lock");
    let watcher = tokio::spawn({
        let c = b.client().await;
        async move { c.wait_until_unlocked("b/w").await }
    });
    let timed_out = c.lock("b/w").wait(Duration::from_millis(200)).await;
    assert!(matches!(timed_out, Err(Error::Timeout)), "{timed_out:?}");
    g.unlock().await.expect("unlock");
    let outcome = tokio::time::timeout(LIMIT, watcher)
        .await
        .expect("resolved")
        .expect("join")
        .expect("watch");
    assert_eq!(outcome, UnlockOutcome::Released);
}

both!(a_dropped_acquire_gives_up_its_place, cancel_body);
async fn cancel_body(b: Backend) {
    let c = b.client().await;
    let g = c.lock("b/cancel").await.expect("lock");
    // An acquire abandoned while queued: it never holds the key.
    let abandoned = tokio::time::timeout(Duration::from_millis(200), c.lock("b/cancel")).await;
    assert!(abandoned.is_err());
    lockbroker_tests::util::eventually("the abandoned request left the queue", LIMIT, || async {
        (c.inspect("b/cancel").await.ok()?.waiters == 0).then_some(())
    })
    .await;
    g.unlock().await.expect("unlock");
    let again = c
        .try_lock("b/cancel")
        .await
        .expect("free: nobody else took it");
    drop(again);
}

both!(tasks_sharing_a_client_exclude_each_other, exclusion_body);
async fn exclusion_body(b: Backend) {
    let c = b.client().await;
    let inside = Arc::new(AtomicUsize::new(0));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, inside, overlaps) = (c.clone(), inside.clone(), overlaps.clone());
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..20 {
                let g = c.lock("b/excl").wait(LIMIT).await.expect("lock");
                assert!(g.fence() > last);
                last = g.fence();
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.unlock().await.expect("unlock");
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

both!(leader_election_hands_over_in_order, election_body);
async fn election_body(b: Backend) {
    let c = b.client().await;
    assert_eq!(c.leader("svc/leader").await.expect("leader"), None);
    let first = c.elect("svc/leader", "node-a").await.expect("a leads");
    let second = tokio::spawn({
        let c = b.client().await;
        async move { c.elect("svc/leader", "node-b").await }
    });
    assert_eq!(
        c.leader("svc/leader").await.expect("leader").as_deref(),
        Some("node-a")
    );
    first.unlock().await.expect("a steps down");
    let b_leads = tokio::time::timeout(LIMIT, second)
        .await
        .expect("b elected")
        .expect("join")
        .expect("b leads");
    assert_eq!(
        c.leader("svc/leader").await.expect("leader").as_deref(),
        Some("node-b")
    );
    drop(b_leads);
}

both!(lock_all_grants_every_key_at_once_or_none, lock_all_body);
async fn lock_all_body(b: Backend) {
    let c = b.client().await;
    let gs = c.lock_all(["acct/1", "acct/2"]).await.expect("both");
    assert_eq!(gs.len(), 2);
    assert_eq!(gs[0].key(), b"acct/1");
    assert!(gs[1].fence() != gs[0].fence());
    // All or none: one key held elsewhere → nothing of the request is held while it waits.
    let mut gs = gs.into_iter();
    let held = gs.next().expect("acct/1");
    drop(gs); // releases acct/2 (on the same connection, before the requests below)
    let waiting = tokio::spawn({
        let c = b.client().await;
        async move { c.lock_all(["acct/2", "acct/1"]).wait(LIMIT).await }
    });
    lockbroker_tests::util::eventually("the group queued", LIMIT, || async {
        (c.inspect("acct/1").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    // acct/2 was released with the vector's other guard, but the group holds nothing yet.
    assert!(!c.is_locked("acct/2").await.expect("inspect"));
    assert!(matches!(
        c.lock_all(["acct/1", "acct/3"]).no_wait().await,
        Err(Error::Busy)
    ));
    held.unlock().await.expect("unlock");
    let got = tokio::time::timeout(LIMIT, waiting)
        .await
        .expect("granted")
        .expect("join")
        .expect("both keys");
    assert_eq!(got[0].key(), b"acct/2");
    assert_eq!(got[1].key(), b"acct/1");
    // Released one by one.
    let mut got = got.into_iter();
    got.next().expect("acct/2").unlock().await.expect("unlock");
    assert!(c.is_locked("acct/1").await.expect("inspect"));
    drop(got);
    let refused = c.lock_all(["dup", "dup"]).no_wait().await;
    assert!(refused.is_err(), "{refused:?}");
}

both!(
    opposite_order_multi_key_locks_never_deadlock,
    no_deadlock_body
);
async fn no_deadlock_body(b: Backend) {
    let inside = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let mut tasks = Vec::new();
    for t in 0..12usize {
        let c = b.client().await;
        let inside = inside.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..15usize {
                // Pairs in both orders and single keys, interleaved.
                let names: Vec<usize> = match (t + round) % 4 {
                    0 => vec![0, 1],
                    1 => vec![1, 0],
                    2 => vec![2, 0, 1],
                    _ => vec![t % 3],
                };
                let keys: Vec<String> = names.iter().map(|i| format!("dl/{i}")).collect();
                let guards = c.lock_all(keys).wait(LIMIT).await.expect("no deadlock");
                for i in &names {
                    assert_eq!(inside[*i].fetch_add(1, Ordering::SeqCst), 0, "two holders");
                }
                tokio::task::yield_now().await;
                for i in &names {
                    inside[*i].fetch_sub(1, Ordering::SeqCst);
                }
                drop(guards);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("every task finishes: no deadlock")
            .expect("join");
    }
}

both!(
    a_multi_key_lock_is_not_starved_by_single_key_traffic,
    starvation_body
);
async fn starvation_body(b: Backend) {
    let c = b.client().await;
    // A stream of overlapping single-key holders on both keys: one key is always held.
    let a = c.lock("sv/a").await.expect("a");
    let group = tokio::spawn({
        let c = b.client().await;
        async move { c.lock_all(["sv/a", "sv/b"]).wait(LIMIT).await }
    });
    lockbroker_tests::util::eventually("the group queued", LIMIT, || async {
        (c.inspect("sv/a").await.ok()?.waiters == 1).then_some(())
    })
    .await;
    // Later single-key requests on sv/b queue behind the group (FIFO per key): they do not
    // take sv/b while the group waits for sv/a.
    let later_b = tokio::spawn({
        let c = b.client().await;
        async move { c.lock("sv/b").wait(LIMIT).await.map(|g| g.fence()) }
    });
    lockbroker_tests::util::eventually("the later request queued", LIMIT, || async {
        (c.inspect("sv/b").await.ok()?.waiters == 2).then_some(())
    })
    .await;
    assert!(
        !c.is_locked("sv/b").await.expect("inspect"),
        "sv/b kept for the group"
    );
    a.unlock().await.expect("unlock");
    let got = tokio::time::timeout(LIMIT, group)
        .await
        .expect("granted")
        .expect("join")
        .expect("group");
    let group_b = got[1].fence();
    drop(got);
    let later = tokio::time::timeout(LIMIT, later_b)
        .await
        .expect("granted")
        .expect("join")
        .expect("later");
    assert!(
        later > group_b,
        "the later single-key request came after the group"
    );
}
