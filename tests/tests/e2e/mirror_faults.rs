//! Mirror faults end to end: in `sync` mode, with Redis down, acquires fail with a clear
//! `Unavailable`, nothing is granted that is not in Redis, and a renewal Redis cannot confirm
//! ends the lease (its holder is told); once Redis is back, grants resume and land in Redis.
//! With the broker↔Redis link stalled, a holder is told `lost` before a Redis client can take
//! its key (issue 11 finding 4). (Async mode with Redis down: see `mirror_async`.)

use std::time::Duration;

use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::redis::{RedisServer, mirror_config};
use lockbroker_tests::util::{eventually, inspect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mode_refuses_grants_while_redis_is_down() {
    let redis = RedisServer::start();
    let broker = Broker::start_with_config(&mirror_config(&redis.url(), "sync", ""));
    let client = broker.client().await;
    let held = client.lock("before").await.expect("lock with Redis up");
    let port = redis.kill();

    for key in ["down/1", "down/2"] {
        match client.lock(key).wait(Duration::from_secs(2)).await {
            Err(Error::Unavailable(msg)) => assert!(msg.contains("mirror"), "{msg}"),
            other => panic!("sync mode with Redis down must fail: {other:?}"),
        }
        assert!(
            !inspect(&client, key).await.is_locked(),
            "{key}: nothing granted"
        );
    }
    // A lease taken before the outage cannot be renewed without Redis (Redis would let its key
    // expire under it): the renewal is refused, the broker ends the lease and tells its holder.
    match held.extend(Duration::from_secs(30)).await {
        Err(Error::NotLocked) => {}
        other => panic!("a renewal Redis cannot confirm must end the lease: {other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(5), held.lost())
        .await
        .expect("the holder is told at once");
    assert!(!inspect(&client, "before").await.is_locked());

    let redis = RedisServer::start_on(port);
    let g = eventually(
        "grants resume once Redis is back",
        Duration::from_secs(20),
        || async { client.lock("down/1").await.ok() },
    )
    .await;
    assert_eq!(redis.get("down/1"), Some(format!("lb:{}", g.fence())));
    // Renewals are confirmed again.
    g.extend(Duration::from_secs(30))
        .await
        .expect("extend with Redis up");
    assert!(
        redis.pttl("down/1") > 20_000,
        "the new deadline reached Redis"
    );
}

/// Finding 4: with the broker↔Redis link stalled, A held `sync/k` (3 s TTL) and kept renewing
/// with `lost = false` for 12 s while a Redis client's `SET NX` on the key succeeded at 3 s:
/// `Extend` was answered without Redis. Now a renewal waits for Redis; when it cannot be
/// confirmed the lease ends and its holder is told — before the key can expire in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_link_ends_the_lease_before_redis_can_give_the_key_away() {
    use lockbroker_tests::proxy::StallableProxy;
    let redis = RedisServer::start();
    let target = redis
        .url()
        .trim_start_matches("redis://")
        .trim_end_matches("/0")
        .parse();
    let proxy = StallableProxy::start(target.expect("redis addr"))
        .await
        .expect("proxy");
    let broker = Broker::start_with_config(&mirror_config(&proxy.url(), "sync", ""));
    let a = broker.client().await;
    let held = a
        .lock("sync/k")
        .ttl(Duration::from_secs(3))
        .await
        .expect("lock with Redis up");
    assert!(redis.pttl("sync/k") > 0, "the hold is in Redis");
    proxy.set_stalled(true);
    // A Redis client tries the key every 20 ms, as a redlock client would.
    let taken = tokio::task::spawn_blocking({
        let redis_url = redis.url();
        move || {
            let client = ::redis::Client::open(redis_url).expect("redis client");
            let mut conn = client.get_connection().expect("redis conn");
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            while std::time::Instant::now() < deadline {
                let ok: Option<String> = ::redis::cmd("SET")
                    .arg("sync/k")
                    .arg("redis-client")
                    .arg("NX")
                    .arg("PX")
                    .arg(10_000)
                    .query(&mut conn)
                    .expect("SET NX");
                if ok.is_some() {
                    return std::time::Instant::now();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("the Redis key never expired");
        }
    });
    let lost_at = tokio::time::timeout(Duration::from_secs(10), held.lost())
        .await
        .map(|_| std::time::Instant::now())
        .expect("the holder is told its lease is lost");
    let taken_at = taken.await.expect("redis client task");
    assert!(
        lost_at < taken_at,
        "the holder was told {:?} after a Redis client took the key",
        lost_at - taken_at
    );
    proxy.set_stalled(false);
    // The broker does not list A any more (its lease ended), and sees the key held in Redis.
    assert!(!inspect(&a, "sync/k").await.is_locked());
    assert_eq!(a.try_lock("sync/k").await.err(), Some(Error::Busy));
}
