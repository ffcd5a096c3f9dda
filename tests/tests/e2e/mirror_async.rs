//! Async mirroring end to end: the broker's holds appear in Redis in redlock format
//! (`key` = `lb:<fence>`, PX = remaining TTL) and disappear on release; shared holds get one
//! key per holder; killing Redis does not stop lock traffic, and when Redis comes back the
//! mirror resyncs to the table's current holds.

use std::time::Duration;

use lockbroker_tests::Broker;
use lockbroker_tests::redis::{RedisServer, mirror_config};
use lockbroker_tests::util::eventually;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_are_mirrored_in_redlock_format_and_removed_on_release() {
    let redis = RedisServer::start();
    let broker = Broker::start_with_config(&mirror_config(&redis.url(), "async", ""));
    let client = broker.client().await;

    let guard = client
        .lock("orders/1")
        .ttl(Duration::from_secs(20))
        .no_renew()
        .await
        .expect("lock");
    let token = format!("lb:{}", guard.fence());
    eventually("hold mirrored", LIMIT, || async {
        (redis.get("orders/1").as_deref() == Some(token.as_str())).then_some(())
    })
    .await;
    let pttl = redis.pttl("orders/1");
    assert!(
        (15_000..=20_000).contains(&pttl),
        "PX follows the TTL: {pttl}"
    );

    guard.extend(Duration::from_secs(60)).await.expect("extend");
    eventually("extension mirrored", LIMIT, || async {
        (redis.pttl("orders/1") > 40_000).then_some(())
    })
    .await;

    // Shared holds: one key per holder, never the plain key (redlock clients cannot express them).
    let r1 = client.read_lock("reports").await.expect("read lock");
    let other = broker.client().await;
    let r2 = other.read_lock("reports").await.expect("read lock 2");
    let want = vec![
        format!("reports#lb:{}:s", r1.fence()),
        format!("reports#lb:{}:s", r2.fence()),
    ];
    eventually("shared holds mirrored", LIMIT, || async {
        let mut want = want.clone();
        want.sort();
        (redis.keys("reports*") == want).then_some(())
    })
    .await;

    let top = r1.fence().max(r2.fence());
    guard.unlock().await.expect("unlock");
    r1.unlock().await.expect("unlock r1");
    r2.unlock().await.expect("unlock r2");
    eventually("releases mirrored", LIMIT, || async {
        (redis.get("orders/1").is_none() && redis.keys("reports*").is_empty()).then_some(())
    })
    .await;
    // The max fence is kept.
    let max: u64 = redis
        .get("lockbroker:max-fence")
        .expect("max fence stored")
        .parse()
        .expect("decimal");
    assert!(max >= top, "{max} < {top}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_keeps_serving_and_resyncs_when_back() {
    let redis = RedisServer::start();
    let url = redis.url();
    let broker = Broker::start_with_config(&mirror_config(&url, "async", ""));
    let client = broker.client().await;
    let before = client
        .lock("a")
        .ttl(Duration::from_secs(30))
        .await
        .expect("lock a");
    eventually("a mirrored", LIMIT, || async { redis.get("a").map(|_| ()) }).await;

    let port = redis.kill();
    // Lock traffic continues while Redis is down.
    for i in 0..20 {
        let g = client
            .lock(format!("during/{i}"))
            .ttl(Duration::from_secs(30))
            .await
            .expect("lock while Redis is down");
        g.unlock().await.expect("unlock while Redis is down");
    }
    let kept = client
        .lock("kept")
        .ttl(Duration::from_secs(30))
        .await
        .expect("lock kept");
    before.unlock().await.expect("unlock a");

    // Redis comes back empty: the resync writes the current holds only.
    let redis = RedisServer::start_on(port);
    let token = format!("lb:{}", kept.fence());
    eventually(
        "resync after Redis returned",
        Duration::from_secs(20),
        || async { (redis.get("kept").as_deref() == Some(token.as_str())).then_some(()) },
    )
    .await;
    assert_eq!(redis.get("a"), None, "released while down: not resurrected");
    assert!(redis.keys("during/*").is_empty());
    kept.unlock().await.expect("unlock kept");
    eventually("release after resync", LIMIT, || async {
        redis.get("kept").is_none().then_some(())
    })
    .await;
}
