//! Host-level mirror tests against real `redis-server` processes: the `redis` capability
//! (named connections only, error replies per command, refused commands, dead servers), the
//! redis-mirror plugin's calls (events, conflicts, restore), and the pipeline's behaviour when
//! Redis is down (bounded queue, drop-and-resync, counted, lock traffic never blocked).

use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker::mirror::MirrorMode;
use lockbroker::plugins::wit::{EventOutcome, LockEvent, LockEventKind, LockMode};
use lockbroker::plugins::{MirrorPlugin, PluginError};
use lockbroker::redis::{Connections, RedisError, RedisSettings};
use lockbroker::table::{AcquireRequest, Mode, Wait};

use crate::support::mirror::{RedisServer, config, mirror_wasm, server};

fn cmd(parts: &[&str]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.as_bytes().to_vec()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_capability_reaches_only_configured_connections() {
    let redis = RedisServer::start();
    let mut dead = RedisSettings::new("dead", "redis://127.0.0.1:1/0");
    dead.connect_timeout_ms = 200;
    dead.command_timeout_ms = 200;
    let all = Connections::new(&[RedisSettings::new("main", redis.url()), dead]).unwrap();
    let plugin_view = all.only(&["main".to_string()]).unwrap();
    assert_eq!(plugin_view.names().collect::<Vec<_>>(), vec!["main"]);

    let v = plugin_view
        .execute("main", cmd(&["SET", "k", "v"]))
        .await
        .unwrap();
    assert_eq!(v, redis::Value::Okay);
    let replies = plugin_view
        .pipeline(
            "main",
            vec![cmd(&["GET", "k"]), cmd(&["INCR", "k"]), cmd(&["PTTL", "k"])],
        )
        .await
        .unwrap();
    assert_eq!(replies[0], Ok(redis::Value::BulkString(b"v".to_vec())));
    assert!(
        matches!(&replies[1], Err(e) if e.starts_with("ERR")),
        "{replies:?}"
    );
    assert_eq!(replies[2], Ok(redis::Value::Int(-1)));

    assert!(matches!(
        plugin_view.execute("dead", cmd(&["PING"])).await,
        Err(RedisError::UnknownConnection(_))
    ));
    assert!(matches!(
        plugin_view.execute("main", cmd(&["FLUSHALL"])).await,
        Err(RedisError::Refused(_))
    ));
    assert!(all.only(&["nope".to_string()]).is_err());
    let started = Instant::now();
    assert!(matches!(
        all.execute("dead", cmd(&["PING"])).await,
        Err(RedisError::Connection(_))
    ));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeouts"
    );
}

fn event(kind: LockEventKind, key: &str, fence: u64) -> LockEvent {
    LockEvent {
        kind,
        key: key.as_bytes().to_vec(),
        mode: LockMode::Exclusive,
        owner_session: 1,
        fence,
        ttl_ms: 10_000,
        at_unix_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_plugin_writes_refuses_and_restores() {
    // Fences of epoch 1, as a broker issues them (the plugin restores nothing below 2^40).
    const E: u64 = 1 << 40;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&redis.url(), dir.path());
    let conns = Connections::new(&cfg.redis).unwrap();
    let plugin = MirrorPlugin::load(cfg.mirror.plugin_settings(), dir.path(), conns).unwrap();
    // A Redis client holds `x` with its own token.
    redis::cmd("SET")
        .arg("x")
        .arg("theirs")
        .arg("PX")
        .arg(10_000)
        .exec(&mut redis.conn())
        .unwrap();

    let out = plugin
        .on_events(&[
            event(LockEventKind::Acquired, "a", E | 5),
            event(LockEventKind::Acquired, "b", E | 6),
            event(LockEventKind::Acquired, "x", E | 7),
            event(LockEventKind::Released, "a", E | 5),
        ])
        .await
        .unwrap();
    assert!(matches!(out[0], EventOutcome::Ok), "{out:?}");
    assert!(matches!(out[1], EventOutcome::Ok), "{out:?}");
    assert!(matches!(out[2], EventOutcome::Conflict(_)), "{out:?}");
    assert!(matches!(out[3], EventOutcome::Ok), "{out:?}");
    assert_eq!(redis.get("a"), None);
    assert_eq!(
        redis.get("b").as_deref(),
        Some(format!("lb:{}", E | 6).as_str())
    );
    assert_eq!(
        redis.get("x").as_deref(),
        Some("theirs"),
        "never overwritten"
    );
    // Compare-and-delete: releasing with a wrong fence leaves the key alone.
    plugin
        .on_events(&[event(LockEventKind::Released, "b", E | 99)])
        .await
        .unwrap();
    assert_eq!(
        redis.get("b").as_deref(),
        Some(format!("lb:{}", E | 6).as_str())
    );

    let state = plugin.restore().await.unwrap();
    assert_eq!(state.locks.len(), 1, "only broker tokens are restored");
    assert_eq!(state.locks[0].key, b"b");
    assert_eq!(state.locks[0].fence, E | 6);
    assert!(state.locks[0].remaining_ttl_ms > 5_000);
    assert_eq!(state.max_fence, E | 7);

    // Redis down: the batch fails as a whole, the plugin does not crash.
    drop(redis);
    assert!(
        plugin
            .on_events(&[event(LockEventKind::Acquired, "c", E | 8)])
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_drops_and_resyncs_without_blocking_lock_traffic() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&redis.url(), dir.path());
    cfg.mirror.queue_capacity = 8;
    cfg.mirror.mode = MirrorMode::Async;
    let (server, mirror) = server(cfg).await;
    let broker = server.broker().clone();
    let (session, _handle) = broker.open_session("test");
    let port = redis.kill();

    let mut slowest = Duration::ZERO;
    for i in 0..200u64 {
        let started = Instant::now();
        let grant = broker
            .with_table(|t, now, out| {
                t.acquire(
                    now,
                    AcquireRequest {
                        session,
                        req: i,
                        key: Bytes::from(format!("k/{}", i % 10)),
                        mode: Mode::Exclusive,
                        ttl: Duration::from_secs(30),
                        wait: Wait::No,
                        owner: None,
                        ticket: 0,
                        fence_block: 1,
                    },
                    out,
                )
            })
            .expect("acquire")
            .expect("granted");
        broker
            .with_table(|t, now, out| t.release(now, session, &grant.key, grant.fence, out))
            .expect("release");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(50),
        "lock traffic blocked: {slowest:?}"
    );
    let kept = broker
        .with_table(|t, now, out| {
            t.acquire(
                now,
                AcquireRequest {
                    session,
                    req: 1_000,
                    key: Bytes::from_static(b"kept"),
                    mode: Mode::Exclusive,
                    ttl: Duration::from_secs(30),
                    wait: Wait::No,
                    owner: None,
                    ticket: 0,
                    fence_block: 1,
                },
                out,
            )
        })
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = mirror.stats();
    assert!(stats.dropped > 0, "{stats:?}");
    assert!(stats.errors > 0, "{stats:?}");

    let redis = RedisServer::start_on(port);
    let started = Instant::now();
    // The resync writes Redis before its counter moves: wait for both (the counter alone
    // raced the write under load).
    while redis.get("kept") != Some(format!("lb:{}", kept.fence)) || mirror.stats().resyncs == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no resync: {:?}",
            mirror.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mirror.settle(Duration::from_secs(5)).await);
    assert_eq!(redis.get("k/0"), None, "released holds are not resurrected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_of_another_world_is_refused_as_mirror() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&redis.url(), dir.path());
    cfg.mirror.path = Some(mirror_wasm().with_file_name("ttl_clamp.wasm"));
    let conns = Connections::new(&cfg.redis).unwrap();
    match MirrorPlugin::load(cfg.mirror.plugin_settings(), dir.path(), conns) {
        Err(PluginError::WrongWorld { .. }) => {}
        Err(other) => panic!("expected WrongWorld, got {other}"),
        Ok(_) => panic!("a TTL policy loaded as mirror"),
    }
}
