//! Mirror faults end to end: in `sync` mode, with Redis down, acquires fail with a clear
//! `Unavailable` and nothing is granted that is not in Redis; once Redis is back, grants resume
//! and land in Redis. (Async mode with Redis down: see `mirror_async`.)

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
    // Leases taken before the outage are unaffected (the broker keeps serving them).
    held.extend(Duration::from_secs(30)).await.expect("extend");

    let redis = RedisServer::start_on(port);
    let g = eventually(
        "grants resume once Redis is back",
        Duration::from_secs(20),
        || async { client.lock("down/1").await.ok() },
    )
    .await;
    assert_eq!(redis.get("down/1"), Some(format!("lb:{}", g.fence())));
    // The resync restored the hold that was taken before the outage.
    eventually(
        "pre-outage hold resynced",
        Duration::from_secs(10),
        || async { (redis.get("before") == Some(format!("lb:{}", held.fence()))).then_some(()) },
    )
    .await;
}
