//! Restore after restart: with the mirror in `sync` mode, every acknowledged lock survives a
//! SIGKILL of the broker — it is reloaded from Redis before the first client is served, with
//! its fence and remaining TTL; fencing tokens continue above the highest ever handed out (even
//! with a fresh data dir); restored leases run to their TTL unless reclaimed by fence.

use std::time::Duration;

use lockbroker_proto::{Frame, Reclaim};
use lockbroker_sdk::Error;
use lockbroker_tests::raw::RawConn;
use lockbroker_tests::redis::{RedisServer, mirror_config};
use lockbroker_tests::util::inspect;
use lockbroker_tests::{Broker, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_locks_survive_sigkill_with_their_fences() {
    let redis = RedisServer::start();
    let config = mirror_config(&redis.url(), "sync", "");
    let broker = Broker::start_with_config(&config);
    let client = broker.client().await;
    let mut held = Vec::new();
    for i in 0..20 {
        let g = client
            .lock(format!("jobs/{i}"))
            .ttl(Duration::from_secs(60))
            .no_renew()
            .await
            .expect("lock");
        held.push((format!("jobs/{i}"), g.fence(), g.secret()));
        std::mem::forget(g); // no release: the broker dies holding it
    }
    let short = client
        .lock("short")
        .ttl(Duration::from_millis(1500))
        .no_renew()
        .await
        .expect("lock short");
    let short_fence = short.fence();
    std::mem::forget(short);
    let max_before = held.iter().map(|h| h.1).max().unwrap().max(short_fence);

    let dir = broker.kill();
    let broker = Broker::start_in(dir, &config);
    let client = broker.client().await;
    for (key, fence, _) in &held {
        let info = inspect(&client, key).await;
        assert_eq!(info.holders.len(), 1, "{key} restored");
        assert_eq!(info.holders[0].fence, *fence, "{key} keeps its fence");
        assert!(info.holders[0].remaining > Duration::from_secs(40));
        assert_eq!(redis.get(key), Some(format!("lb:{fence}")));
    }
    match client.try_lock("jobs/0").await {
        Err(Error::Busy) => {}
        other => panic!("a restored lock is held: {other:?}"),
    }
    let fresh = client.lock("fresh").await.expect("lock fresh");
    assert!(
        fresh.fence() > max_before,
        "fences continue above the restored ones"
    );

    // A restored lease runs to its TTL, then the next waiter gets a new fence.
    let next = client
        .lock("short")
        .wait(Duration::from_secs(10))
        .await
        .expect("short expires");
    assert!(next.fence() > max_before);

    // The holder reclaims its lease by (key, fence, secret) on a new connection: the secret
    // was issued before the crash and still verifies (same data dir, same broker key).
    let (key, fence, secret) = held[3].clone();
    let mut raw = RawConn::hello(broker.addr, &broker.ca()).await;
    raw.send_frame(&Frame::Reclaim(Reclaim {
        id: 1,
        key: key.clone().into(),
        fence,
        mode: lockbroker_proto::Mode::Exclusive,
        ttl_ms: 5_000,
        secret,
        owner: bytes::Bytes::new(),
    }))
    .await;
    match raw.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Granted(g)) => assert_eq!(g.fence, fence),
        other => panic!("reclaim of a restored lease: {other:?}"),
    }
    let info = inspect(&client, &key).await;
    assert!(
        info.holders[0].remaining <= Duration::from_secs(5),
        "reclaimed with its new TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_are_never_reused_even_with_a_fresh_data_dir() {
    let redis = RedisServer::start();
    let config = mirror_config(&redis.url(), "sync", "");
    let broker = Broker::start_with_config(&config);
    let client = broker.client().await;
    let mut max = 0;
    for i in 0..5 {
        let g = client.lock(format!("k/{i}")).await.expect("lock");
        max = max.max(g.fence());
        g.unlock().await.expect("unlock");
    }
    drop(client);
    drop(broker.kill());
    // A new data dir starts the epoch over; the mirror's stored max fence keeps tokens rising.
    let broker = Broker::start_in(TempDir::new("fresh"), &config);
    let client = broker.client().await;
    let g = client.lock("k/0").await.expect("lock after restart");
    assert!(
        g.fence() > max,
        "fence {} reused (max was {max})",
        g.fence()
    );
}
