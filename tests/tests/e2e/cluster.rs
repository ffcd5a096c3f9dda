//! Cluster mode on a real etcd (issue 12, first part): shards owned by one broker each, keys
//! of another broker's shard answered `Moved` with its URL, failover after the owner is
//! SIGKILLed — nothing new granted on its shards before the takeover grace ended, fences above
//! every fence of the earlier owner, leases adopted by their holders with their secret — and
//! self-fencing when etcd goes away.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Frame, Hello, Mode, Reclaim};
use lockbroker_sdk::{Client, Error};
use lockbroker_tests::etcd::{EtcdServer, cluster_config, free_udp_addr};
use lockbroker_tests::raw::RawConn;
use lockbroker_tests::{Broker, TempDir};

/// A broker of the test cluster, on an address of its own.
fn start_member(etcd: &EtcdServer, name: &str, addr: SocketAddr) -> Broker {
    let toml = cluster_config(&etcd.endpoint(), name, addr, "");
    Broker::start_at(TempDir::new(name), &toml, addr)
}

/// A client of one broker only.
async fn client_of(b: &Broker) -> Client {
    b.client_builder()
        .request_timeout(Duration::from_secs(2))
        .idle_timeout(Duration::from_secs(2))
        .keep_alive(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect")
}

/// Whether `b` serves `key`: a try-lock there is granted (then released) or busy, not moved.
async fn serves(c: &Client, key: &str) -> Option<bool> {
    match c.try_lock(key.to_string()).await {
        Ok(g) => {
            g.unlock().await.ok()?;
            Some(true)
        }
        Err(Error::Busy) => Some(true),
        Err(Error::Unavailable(m)) if m.contains("another broker") => Some(false),
        Err(_) => None,
    }
}

/// Waits until every one of `keys` is served by exactly one of the two clients; returns, per
/// key, whether the first serves it.
async fn settled(a: &Client, b: &Client, keys: &[String]) -> Vec<bool> {
    let start = Instant::now();
    loop {
        let mut owners = Vec::new();
        for k in keys {
            match (serves(a, k).await, serves(b, k).await) {
                (Some(x), Some(y)) if x != y => owners.push(x),
                _ => break,
            }
        }
        if owners.len() == keys.len() {
            return owners;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "shards were not all claimed within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_waits_out_the_grace_and_fences_only_grow() {
    let etcd = EtcdServer::start();
    let (a1, a2) = (free_udp_addr(), free_udp_addr());
    let b1 = start_member(&etcd, "b1", a1);
    let b2 = start_member(&etcd, "b2", a2);
    let c1 = client_of(&b1).await;
    let c2 = client_of(&b2).await;
    let keys: Vec<String> = (0..24).map(|i| format!("cl/{i}")).collect();
    let on_b1 = settled(&c1, &c2, &keys).await;
    assert!(
        on_b1.iter().any(|x| *x) && on_b1.iter().any(|x| !*x),
        "both own shards"
    );
    let k1 = keys[on_b1.iter().position(|x| *x).unwrap_or(0)].clone();
    let k2 = keys[on_b1.iter().position(|x| !*x).unwrap_or(0)].clone();

    // A key of b2's shard asked at b1: moved, naming b2.
    match c1.try_lock(k2.clone()).await {
        Err(Error::Unavailable(m)) => assert!(m.contains(&a2.to_string()), "{m}"),
        other => panic!("expected Moved to b2: {other:?}"),
    }

    // A holder on b1 — raw, so the test keeps its lease secret.
    let mut raw = RawConn::connect(b1.addr, &b1.ca()).await;
    raw.send_frame(&Frame::Hello(Hello {
        token: None,
        client: "cluster-test".into(),
    }))
    .await;
    assert!(matches!(
        raw.next_frame(Duration::from_secs(5)).await,
        Some(Frame::Welcome(_))
    ));
    raw.send_frame(&Frame::Acquire(lockbroker_proto::Acquire {
        id: 1,
        key: Bytes::from(k1.clone()),
        mode: Mode::Exclusive,
        ttl_ms: 3000,
        wait: lockbroker_proto::WaitSpec::NoWait,
    }))
    .await;
    let held = match raw.next_frame(Duration::from_secs(5)).await {
        Some(Frame::Granted(g)) => g,
        other => panic!("expected Granted on b1, got {other:?}"),
    };

    // b1 dies. b2 takes its shards over once b1's etcd lease expired, then waits out the
    // grace (the longest TTL b1 could have granted) before granting anew.
    let killed_at = Instant::now();
    drop(b1.kill());
    let waiter = {
        let c2 = c2.clone();
        let k1 = k1.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            loop {
                match c2.lock(k1.clone()).wait(Duration::from_secs(10)).await {
                    Ok(g) => return g,
                    Err(e) => {
                        assert!(start.elapsed() < Duration::from_secs(30), "{e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    };
    // Meanwhile the holder adopts its lease on b2 with its secret (same cluster key).
    let mut adopted = None;
    let mut raw2 = RawConn::connect(b2.addr, &b2.ca()).await;
    raw2.send_frame(&Frame::Hello(Hello {
        token: None,
        client: "cluster-test".into(),
    }))
    .await;
    assert!(matches!(
        raw2.next_frame(Duration::from_secs(5)).await,
        Some(Frame::Welcome(_))
    ));
    for id in 1..100u64 {
        raw2.send_frame(&Frame::Reclaim(Reclaim {
            id,
            key: Bytes::from(k1.clone()),
            fence: held.fence,
            mode: Mode::Exclusive,
            ttl_ms: 2000,
            secret: held.secret,
        }))
        .await;
        match raw2.next_frame(Duration::from_secs(5)).await {
            Some(Frame::Granted(g)) => {
                adopted = Some((g, killed_at.elapsed()));
                break;
            }
            Some(Frame::Error { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("reclaim at b2: {other:?}"),
        }
    }
    let (adopted, after) = adopted.expect("the holder adopts its lease at the new owner");
    assert_eq!(adopted.fence, held.fence);
    assert!(
        after < Duration::from_secs(6),
        "adopted {after:?} after the kill"
    );
    // Give it back: the waiter is still held by the grace.
    raw2.send_frame(&Frame::Release(lockbroker_proto::Release {
        id: 500,
        key: Bytes::from(k1.clone()),
        fence: held.fence,
        ack: true,
        secret: held.secret,
    }))
    .await;
    assert!(matches!(
        raw2.next_frame(Duration::from_secs(5)).await,
        Some(Frame::Ok { id: 500 })
    ));
    let g = waiter.await.expect("waiter task");
    let granted_after = killed_at.elapsed();
    // b1's lease (2 s) had to expire, then the grace of 3 s ran.
    assert!(
        granted_after >= Duration::from_secs(3),
        "granted {granted_after:?} after the kill, inside the grace"
    );
    assert!(
        g.fence() > held.fence,
        "fence {} of the new owner not above {} of the old",
        g.fence(),
        held.fence
    );
    eprintln!(
        "failover: adopted after {after:?}, first new grant {granted_after:?} after the kill"
    );
    g.unlock().await.expect("unlock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_without_etcd_stops_granting_within_its_ownership_lease() {
    let etcd = EtcdServer::start();
    let addr = free_udp_addr();
    let b = start_member(&etcd, "solo", addr);
    let c = client_of(&b).await;
    let start = Instant::now();
    while serves(&c, "solo/k").await != Some(true) {
        assert!(start.elapsed() < Duration::from_secs(30), "never claimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed = etcd.kill();
    let cut_at = Instant::now();
    // Within the ownership lease (2 s) the broker refuses: it cannot vouch for its shards.
    let refused_after = loop {
        match c.try_lock("solo/k").await {
            Ok(g) => {
                g.unlock().await.ok();
                assert!(cut_at.elapsed() < Duration::from_secs(2), "still granting");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Error::Unavailable(_)) => break cut_at.elapsed(),
            Err(e) => panic!("{e}"),
        }
    };
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");
    // etcd back: the broker claims its shards again and grants after the grace.
    let _etcd = EtcdServer::restart(killed);
    let start = Instant::now();
    loop {
        match c.lock("solo/k").wait(Duration::from_secs(10)).await {
            Ok(g) => {
                g.unlock().await.ok();
                break;
            }
            Err(_) => {
                assert!(start.elapsed() < Duration::from_secs(40), "never resumed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
