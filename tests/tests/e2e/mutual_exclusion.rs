//! Mutual exclusion under contention: many SDK clients (one QUIC connection each) hammer a few
//! keys; a fencing checker asserts that no two exclusive holders of a key ever overlap and that
//! fencing tokens strictly grow per key, over more than 10 000 grants. Releases mix acknowledged
//! `unlock().await` and fire-and-forget drops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbroker_tests::Broker;
use lockbroker_tests::fencing::FenceChecker;

const CLIENTS: usize = 16;
const KEYS: usize = 4;
const GRANTS_PER_CLIENT: usize = 640; // 16 × 640 = 10 240 grants

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_two_exclusive_holders_overlap_and_fences_grow() {
    let broker = Broker::start();
    let checker = Arc::new(FenceChecker::new(KEYS));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(broker.client().await);
    }
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (c, client) in clients.into_iter().enumerate() {
        let checker = checker.clone();
        tasks.spawn(async move {
            let mut last_fence_seen = [0u64; KEYS];
            for i in 0..GRANTS_PER_CLIENT {
                // Spread clients over the keys, changing key every few rounds.
                let k = (c + i / 3) % KEYS;
                let guard = client
                    .lock(format!("mx/{k}"))
                    .ttl(Duration::from_secs(30))
                    .wait(Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|e| panic!("client {c} round {i}: lock mx/{k}: {e}"));
                let fence = guard.fence();
                checker.granted(k, fence);
                assert!(
                    fence > last_fence_seen[k],
                    "client {c}: fence {fence} on mx/{k} not above its previous {}",
                    last_fence_seen[k]
                );
                last_fence_seen[k] = fence;
                if i % 7 == 0 {
                    // Hold across a scheduling point so overlaps would have a chance to show.
                    tokio::task::yield_now().await;
                }
                checker.releasing(k, fence);
                if i % 2 == 0 {
                    guard
                        .unlock()
                        .await
                        .unwrap_or_else(|e| panic!("client {c} round {i}: unlock mx/{k}: {e}"));
                } else {
                    drop(guard); // fire-and-forget release
                }
            }
            client.close().await;
        });
    }
    let all = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            r.expect("client task panicked");
        }
    })
    .await;
    let elapsed = start.elapsed();
    checker.assert_clean();
    assert!(
        all.is_ok(),
        "contention run did not finish within 120 s ({} grants so far)",
        checker.grants()
    );
    assert_eq!(checker.grants(), (CLIENTS * GRANTS_PER_CLIENT) as u64);
    eprintln!(
        "{} grants over {KEYS} keys by {CLIENTS} clients in {elapsed:?}",
        checker.grants()
    );

    // Every key is free at the end: the fire-and-forget releases all landed.
    let probe = broker.client().await;
    for k in 0..KEYS {
        let info = lockbroker_tests::util::eventually(
            "all keys free after the run",
            Duration::from_secs(10),
            || {
                let probe = probe.clone();
                async move {
                    let info = probe.inspect(format!("mx/{k}")).await.expect("inspect");
                    (!info.is_locked()).then_some(info)
                }
            },
        )
        .await;
        assert_eq!(info.waiters, 0);
    }
}

/// Acquires given up at random moments (client-side timeouts racing the grant) must neither
/// break exclusion nor leak a lease: a grant that crosses the cancel on the wire is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_acquires_never_leak_a_lease() {
    let broker = Broker::start();
    const ABANDON_CLIENTS: usize = 8;
    const ABANDON_KEYS: usize = 2;
    const ROUNDS: usize = 300;
    let checker = Arc::new(FenceChecker::new(ABANDON_KEYS));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..ABANDON_CLIENTS {
        let client = broker.client().await;
        let checker = checker.clone();
        tasks.spawn(async move {
            let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1);
            let mut granted = 0usize;
            for i in 0..ROUNDS {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let k = (seed as usize) % ABANDON_KEYS;
                let patience = Duration::from_micros(seed % 3000);
                match tokio::time::timeout(patience, client.lock(format!("ab/{k}"))).await {
                    Ok(Ok(g)) => {
                        granted += 1;
                        checker.granted(k, g.fence());
                        tokio::task::yield_now().await;
                        checker.releasing(k, g.fence());
                        if i % 2 == 0 {
                            g.unlock().await.expect("unlock");
                        } else {
                            drop(g);
                        }
                    }
                    Ok(Err(e)) => panic!("client {c} round {i}: {e}"),
                    Err(_) => {} // gave up: the acquire future is dropped mid-wait
                }
            }
            client.close().await;
            granted
        });
    }
    let mut granted = 0;
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            granted += r.expect("client task panicked");
        }
    })
    .await;
    checker.assert_clean();
    assert!(done.is_ok(), "abandon run did not finish within 120 s");
    assert!(granted > 0, "no acquire was ever granted");
    // No lease or waiter is left behind by abandoned acquires.
    let probe = broker.client().await;
    for k in 0..ABANDON_KEYS {
        let key = format!("ab/{k}");
        lockbroker_tests::util::eventually(
            &format!("{key} idle after the run"),
            Duration::from_secs(10),
            || {
                let (probe, key) = (probe.clone(), key.clone());
                async move {
                    let info = probe.inspect(key).await.expect("inspect");
                    (!info.is_locked() && info.waiters == 0).then_some(())
                }
            },
        )
        .await;
        let g = probe
            .try_lock(key)
            .await
            .expect("key lockable after the run");
        g.unlock().await.unwrap();
    }
    eprintln!(
        "{granted} of {} acquires granted, the rest abandoned",
        ABANDON_CLIENTS * ROUNDS
    );
}
