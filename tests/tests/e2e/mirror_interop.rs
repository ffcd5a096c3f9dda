//! Interop with a Redis lock client nobody here wrote: redis-py's `Lock` (`SET NX PX` with a
//! random token, compare-and-delete on release). In `sync` mode the broker claims the Redis key
//! with NX before granting, so the two exclude each other in both directions; in `async` mode
//! only broker holds are visible to Redis clients (after the mirror's short lag).

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use lockbroker_sdk::Error;
use lockbroker_tests::Broker;
use lockbroker_tests::redis::{RedisServer, mirror_config, python, python_spawn};
use lockbroker_tests::util::eventually;

/// Reads one line of the child's stdout (blocking, on a blocking thread).
async fn line(out: &mut Option<BufReader<std::process::ChildStdout>>) -> String {
    let mut reader = out.take().expect("stdout");
    let (reader, line) = tokio::task::spawn_blocking(move || {
        let mut l = String::new();
        reader.read_line(&mut l).expect("read python stdout");
        (reader, l)
    })
    .await
    .expect("join");
    *out = Some(reader);
    line.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_lock_and_broker_exclude_each_other_in_sync_mode() {
    let redis = RedisServer::start();
    let broker = Broker::start_with_config(&mirror_config(&redis.url(), "sync", ""));
    let client = broker.client().await;

    // Redis client first: the broker sees the key as busy, and a waiting acquire gets it
    // once redis-py releases.
    let mut py = python_spawn(
        &redis,
        "l = r.lock('inv/1', timeout=10)\nassert l.acquire(blocking=False)\nprint('locked', flush=True)\ntime.sleep(1.0)\nl.release()\nprint('released', flush=True)\n",
    );
    let mut out = py.stdout.take().map(BufReader::new);
    assert_eq!(line(&mut out).await, "locked");
    match client.try_lock("inv/1").await {
        Err(Error::Busy) => {}
        other => panic!("a key held by redis-py must be Busy to broker clients: {other:?}"),
    }
    let started = Instant::now();
    let g = client
        .lock("inv/1")
        .wait(Duration::from_secs(10))
        .await
        .expect("granted after redis-py released");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "not before the release"
    );
    assert_eq!(line(&mut out).await, "released");
    assert_eq!(redis.get("inv/1"), Some(format!("lb:{}", g.fence())));
    let _ = py.wait();

    // Broker first: redis-py cannot take the key until the broker releases it.
    let out = python(
        &redis,
        "print(r.lock('inv/1', timeout=5).acquire(blocking=False))\n",
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "False");
    g.unlock().await.expect("unlock");
    eventually("redis-py gets the key after the broker released it", Duration::from_secs(10), || async {
        let out = python(&redis, "l = r.lock('inv/1', timeout=5)\nok = l.acquire(blocking=False)\nprint(ok)\nok and l.release()\n");
        (String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_async_mode_broker_holds_are_visible_to_redis_clients() {
    let redis = RedisServer::start();
    let broker = Broker::start_with_config(&mirror_config(&redis.url(), "async", ""));
    let client = broker.client().await;
    let g = client.lock("inv/2").await.expect("lock");
    eventually(
        "redis-py sees the broker's hold",
        Duration::from_secs(10),
        || async {
            let out = python(
                &redis,
                "print(r.lock('inv/2', timeout=5).acquire(blocking=False))\n",
            );
            (String::from_utf8_lossy(&out.stdout).trim() == "False").then_some(())
        },
    )
    .await;
    g.unlock().await.expect("unlock");
    eventually("released for redis-py", Duration::from_secs(10), || async {
        let out = python(&redis, "l = r.lock('inv/2', timeout=5)\nok = l.acquire(blocking=False)\nprint(ok)\nok and l.release()\n");
        (String::from_utf8_lossy(&out.stdout).trim() == "True").then_some(())
    })
    .await;
}
