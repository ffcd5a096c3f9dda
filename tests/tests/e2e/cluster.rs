//! Cluster mode on a real etcd (issue 12, first part): shards owned by one broker each, keys
//! of another broker's shard answered `Moved` with its URL, failover after the owner is
//! SIGKILLed — nothing new granted on its shards before the takeover grace ended, fences above
//! every fence of the earlier owner, leases adopted by their holders with their secret — and
//! self-fencing when etcd goes away.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Frame, Hello, Mode, Reclaim, shard_of};
use lockbroker_sdk::{Client, Error};
use lockbroker_tests::etcd::{EtcdServer, cluster_config, free_udp_addr};
use lockbroker_tests::raw::RawConn;
use lockbroker_tests::{Broker, TempDir};

/// A broker of the test cluster, on an address of its own.
pub(crate) fn start_member(etcd: &EtcdServer, name: &str, addr: SocketAddr) -> Broker {
    start_member_with(etcd, name, addr, 3000)
}

/// [`start_member`] without replicas (`replicas = 1`; the default is 2): for the tests of the
/// takeover grace a shard without an in-sync backup waits.
pub(crate) fn start_unreplicated(etcd: &EtcdServer, name: &str, addr: SocketAddr) -> Broker {
    let toml = cluster_config(&etcd, name, addr, 3000) + "replicas = 1\n";
    Broker::start_at(TempDir::new(name), &toml, addr)
}

/// [`start_member`] with a TTL cap (and takeover grace) of `max_ttl_ms`.
pub(crate) fn start_member_with(
    etcd: &EtcdServer,
    name: &str,
    addr: SocketAddr,
    max_ttl_ms: u64,
) -> Broker {
    let toml = cluster_config(&etcd, name, addr, max_ttl_ms);
    Broker::start_at(TempDir::new(name), &toml, addr)
}

/// The dev certificates of `brokers`, one PEM after the other (a client trusting them all).
pub(crate) fn cas_of(brokers: &[&Broker]) -> Vec<u8> {
    brokers
        .iter()
        .flat_map(|b| std::fs::read(b.ca()).expect("dev certificate"))
        .collect()
}

/// One client for the cluster: `urls` tried in order, trusting `cas`, with timeouts short
/// enough that a dead broker is noticed and left within a failover (the idle timeout does
/// that: a request to a killed broker fails when its connection times out). The request
/// timeout stays at 5 s: a live broker of a debug build, busy with a takeover on a loaded
/// 2-core CI machine, once took longer than 2 s to answer a release (the run failed about
/// 2 s past its usual length, at the last unlock).
pub(crate) async fn cluster_client(urls: &[String], cas: Vec<u8>) -> Client {
    let mut builder = Client::builder()
        .ca_pem(cas)
        .request_timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_millis(500))
        .idle_timeout(Duration::from_secs(1))
        .keep_alive(Duration::from_millis(200));
    for url in urls {
        builder = builder.broker(url.clone());
    }
    builder.connect().await.expect("connect")
}

/// The next frame on a raw connection that is not a pushed shard map.
async fn next_answer(raw: &mut RawConn) -> Option<Frame> {
    for _ in 0..100 {
        match raw.next_frame(Duration::from_secs(5)).await {
            Some(Frame::ShardMap(_)) => continue,
            other => return other,
        }
    }
    None
}

/// A client of one broker only.
pub(crate) async fn client_of(b: &Broker) -> Client {
    b.client_builder()
        .request_timeout(Duration::from_secs(2))
        .idle_timeout(Duration::from_secs(2))
        .keep_alive(Duration::from_millis(300))
        .connect()
        .await
        .expect("connect")
}

/// Whether the broker of `c` (a client that trusts that broker only, so it cannot follow the
/// shard map elsewhere) serves `key`: a try-lock there is granted (then released) or busy.
pub(crate) async fn serves(c: &Client, key: &str) -> Option<bool> {
    match c.try_lock(key.to_string()).await {
        Ok(g) => {
            g.unlock().await.ok()?;
            Some(true)
        }
        Err(Error::Busy) => Some(true),
        // Not served here; or served by a broker this client does not trust (`Moved` there).
        Err(Error::Unavailable(_) | Error::Tls(_)) => Some(false),
        Err(_) => None,
    }
}

/// After etcd was cut off at `cut_at`: try-locks `key` until the broker refuses
/// (`Unavailable`), asserting no grant came later than `grants_until` after the cut; returns
/// when it refused.
async fn refused_after_cut(
    c: &Client,
    key: &str,
    cut_at: Instant,
    grants_until: Duration,
) -> Duration {
    loop {
        // A grant is judged by when its request was sent: the broker decided somewhere between
        // then and the answer, and on a loaded machine the answer can come much later.
        let sent = cut_at.elapsed();
        match c.try_lock(key.to_string()).await {
            Ok(g) => {
                assert!(
                    sent < grants_until,
                    "granted a request sent {sent:?} after etcd was cut off"
                );
                // Fire-and-forget: an acknowledged unlock refused as the shard becomes
                // unavailable retries until the lease's local deadline (cluster mode), which
                // is not the refusal being timed here (it once made this 5 s).
                drop(g);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Error::Unavailable(_)) => return cut_at.elapsed(),
            Err(e) => panic!("{e}"),
        }
        assert!(cut_at.elapsed() < Duration::from_secs(10), "never refused");
    }
}

/// Locks `key` through `c`, retrying (bounded by `limit`) while the cluster cannot grant it yet
/// (a shard without owner, a takeover grace, etcd coming back).
pub(crate) async fn lock_eventually(
    c: &Client,
    key: &str,
    limit: Duration,
) -> lockbroker_sdk::Guard {
    let start = Instant::now();
    loop {
        match c.lock(key.to_string()).wait(Duration::from_secs(10)).await {
            Ok(g) => return g,
            Err(e) => {
                assert!(start.elapsed() < limit, "{key} never granted: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// `lockbroker cluster status` of the cluster on `etcd` (members, shard owners, grace), for
/// a failure message.
pub(crate) fn cluster_status(etcd: &EtcdServer) -> String {
    cluster_status_of(etcd, 8)
}

/// [`cluster_status`] of a cluster of `shards` shards.
pub(crate) fn cluster_status_of(etcd: &EtcdServer, shards: u32) -> String {
    let dir = TempDir::new("status");
    let config = dir.path().join("status.toml");
    let toml = cluster_config(&etcd, "observer", free_udp_addr(), 1000)
        .replace("shards = 8", &format!("shards = {shards}"));
    if let Err(e) = std::fs::write(&config, toml) {
        return format!("(cluster status unavailable: {e})");
    }
    match std::process::Command::new(lockbroker_tests::lockbroker_bin())
        .args(["cluster", "status", "--config"])
        .arg(&config)
        .output()
    {
        Ok(out) => format!(
            "cluster status:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("(cluster status unavailable: {e})"),
    }
}

/// Waits (bounded, 40 s) until the routed client `c` is granted every one of `keys` in a row
/// (every shard has an owner that grants). On failure it shows the cluster as etcd has it.
pub(crate) async fn all_served(etcd: &EtcdServer, c: &Client, keys: &[String]) {
    let start = Instant::now();
    'again: loop {
        for k in keys {
            match c.try_lock(k.clone()).await {
                Ok(g) => g.unlock().await.expect("unlock"),
                Err(e) => {
                    if start.elapsed() >= Duration::from_secs(40) {
                        panic!("{k}: {e}\n{}", cluster_status(etcd));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'again;
                }
            }
        }
        return;
    }
}

/// Waits (bounded by `limit`) until the broker of `c` serves `key` (its shard is claimed).
pub(crate) async fn wait_served(c: &Client, key: &str, limit: Duration) {
    let start = Instant::now();
    while serves(c, key).await != Some(true) {
        assert!(start.elapsed() < limit, "{key}: never claimed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every one of `keys` served by exactly one of the two clients: per key, whether the first
/// serves it. `None` while some key is served by neither or both (a claim or hand-over).
async fn assignment(a: &Client, b: &Client, keys: &[String]) -> Option<Vec<bool>> {
    let mut owners = Vec::new();
    for k in keys {
        match (serves(a, k).await, serves(b, k).await) {
            (Some(x), Some(y)) if x != y => owners.push(x),
            _ => return None,
        }
    }
    Some(owners)
}

/// Waits until the assignment of `keys` to the two brokers is complete and stable (the same
/// twice, a second apart, with both brokers serving some: the second broker's arrival may make
/// the first hand shards over); returns, per key, whether the first serves it.
pub(crate) async fn settled(a: &Client, b: &Client, keys: &[String]) -> Vec<bool> {
    let start = Instant::now();
    let mut last: Option<Vec<bool>> = None;
    loop {
        let now = assignment(a, b, keys).await;
        if let Some(owners) = &now
            && last.as_ref() == Some(owners)
            && owners.iter().any(|x| *x)
            && owners.iter().any(|x| !*x)
        {
            return owners.clone();
        }
        last = now;
        if start.elapsed() > Duration::from_secs(40) {
            let mut seen = Vec::new();
            for k in keys {
                seen.push(format!(
                    "{k}: {:?}/{:?}",
                    serves(a, k).await,
                    serves(b, k).await
                ));
            }
            panic!("shards did not settle within 40 s: {}", seen.join(", "));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_waits_out_the_grace_and_fences_only_grow() {
    let etcd = EtcdServer::start();
    let (a1, a2) = (free_udp_addr(), free_udp_addr());
    let b1 = start_unreplicated(&etcd, "b1", a1);
    let b2 = start_unreplicated(&etcd, "b2", a2);
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

    // A key of b2's shard asked at b1: moved, naming b2 (which this client, trusting b1's
    // certificate only, cannot follow: it says so, naming b2).
    match c1.try_lock(k2.clone()).await {
        Err(Error::Unavailable(m) | Error::Tls(m)) => assert!(m.contains(&a2.to_string()), "{m}"),
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
        next_answer(&mut raw).await,
        Some(Frame::Welcome(_))
    ));
    raw.send_frame(&Frame::Acquire(lockbroker_proto::Acquire {
        id: 1,
        key: Bytes::from(k1.clone()),
        mode: Mode::Exclusive,
        ttl_ms: 3000,
        wait: lockbroker_proto::WaitSpec::NoWait,
        owner: Bytes::new(),
        ticket: 0,
        fence_block: 1,
    }))
    .await;
    let held = match next_answer(&mut raw).await {
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
        tokio::spawn(async move { lock_eventually(&c2, &k1, Duration::from_secs(30)).await })
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
        next_answer(&mut raw2).await,
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
            owner: Bytes::new(),
        }))
        .await;
        match next_answer(&mut raw2).await {
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
        next_answer(&mut raw2).await,
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
    wait_served(&c, "solo/k", Duration::from_secs(30)).await;
    let killed = etcd.kill();
    let cut_at = Instant::now();
    // Nothing is granted once etcd may have expired the broker's ownership lease (2 s after
    // its last keep-alive, so at most 2 s after the cut; checked by send time inside), and the
    // broker refuses soon after (room for a loaded 2-core machine).
    let refused_after = refused_after_cut(&c, "solo/k", cut_at, Duration::from_secs(2)).await;
    assert!(refused_after < Duration::from_secs(6), "{refused_after:?}");
    // etcd back: the broker claims its shards again and grants after the grace.
    let _etcd = EtcdServer::restart(killed);
    lock_eventually(&c, "solo/k", Duration::from_secs(40))
        .await
        .unlock()
        .await
        .ok();
}

/// One SDK client for the whole cluster: given the brokers' list it routes every key to its
/// shard's owner (the shard map is pushed in `Welcome`'s wake), and when the broker it first
/// connected to dies, it carries on with the other — its guard on a key of the dead broker's
/// shard adopts the lease at the new owner during the takeover grace and is never lost (its
/// 8 s TTL leaves room for the 2 s ownership lease to run out, the reconnect and the claim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_routes_by_shard_and_survives_the_loss_of_its_first_broker() {
    let etcd = EtcdServer::start();
    let (a1, a2) = (free_udp_addr(), free_udp_addr());
    let b1 = start_member_with(&etcd, "b1", a1, 8000);
    let b2 = start_member_with(&etcd, "b2", a2, 8000);
    let client = cluster_client(&[b1.url(), b2.url()], cas_of(&[&b1, &b2])).await;
    // Every key of every shard is granted through the one client, once all are owned.
    let keys: Vec<String> = (0..24).map(|i| format!("one/{i}")).collect();
    all_served(&etcd, &client, &keys).await;
    // Which broker serves which key, seen from single-broker clients.
    let c1 = client_of(&b1).await;
    let c2 = client_of(&b2).await;
    let on_b1 = settled(&c1, &c2, &keys).await;
    let k1 = keys[on_b1.iter().position(|x| *x).expect("b1 owns a key")].clone();
    let k2 = keys[on_b1.iter().position(|x| !*x).expect("b2 owns a key")].clone();
    drop((c1, c2));
    let g1 = client
        .lock(k1.clone())
        .ttl(Duration::from_secs(8))
        .await
        .expect("lock on b1's shard");
    let g2 = client
        .lock(k2.clone())
        .ttl(Duration::from_secs(8))
        .await
        .expect("lock on b2's shard");

    drop(b1.kill());
    // The holder does nothing for two TTLs: the guard on b1's shard reclaims at b2 by itself
    // once b2 took the shard over, before it is lost.
    tokio::time::sleep(Duration::from_secs(16)).await;
    assert!(
        !g1.is_lost(),
        "the guard lost its lease across the failover"
    );
    assert!(
        g1.is_held().await.expect("is_held"),
        "b2 does not hold the lease"
    );
    assert!(!g2.is_lost(), "b2's lease is untouched");
    // The key stays exclusive: another lock of it waits until the guard lets go.
    assert!(client.try_lock(k1.clone()).await.is_err());
    let fence = g1.fence();
    g1.unlock().await.expect("unlock at the new owner");
    let next = client
        .lock(k1.clone())
        .wait(Duration::from_secs(20))
        .await
        .expect("granted after the grace");
    assert!(next.fence() > fence, "{} after {fence}", next.fence());
    next.unlock().await.expect("unlock");
    g2.unlock().await.expect("unlock of b2's lease");
}

/// An owner paused (SIGSTOP) longer than its ownership lease, without replicas: the other
/// broker takes its shards over only after the paused one's lease ended and the takeover
/// grace ran, the paused holder's
/// guard has reported `lost` by then, and when the paused broker resumes it grants nothing for
/// the shards it lost — it rejoins, and shards handed back to it get fences above the interim
/// owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_stops_serving_before_another_takes_over() {
    let etcd = EtcdServer::start();
    let (a1, a2) = (free_udp_addr(), free_udp_addr());
    let b1 = start_unreplicated(&etcd, "b1", a1);
    let b2 = start_unreplicated(&etcd, "b2", a2);
    let c1 = client_of(&b1).await;
    let c2 = client_of(&b2).await;
    let keys: Vec<String> = (0..24).map(|i| format!("ps/{i}")).collect();
    let on_b1 = settled(&c1, &c2, &keys).await;
    let k1 = keys[on_b1.iter().position(|x| *x).expect("b1 owns a key")].clone();
    let g1 = c1
        .lock(k1.clone())
        .ttl(Duration::from_secs(3))
        .await
        .expect("lock at b1");

    b1.signal("STOP");
    let paused_at = Instant::now();
    let taken = lock_eventually(&c2, &k1, Duration::from_secs(40)).await;
    let granted_after = paused_at.elapsed();
    assert!(
        g1.is_lost(),
        "the paused broker's holder was told before the takeover grant"
    );
    // b1's lease (2 s) had to run out, then the grace (3 s).
    assert!(granted_after >= Duration::from_secs(4), "{granted_after:?}");
    assert!(taken.fence() > g1.fence());

    b1.signal("CONT");
    // Resumed, b1 cannot vouch for the shard any more: it grants nothing for it.
    for _ in 0..5 {
        if let Ok(g) = c1.try_lock(k1.clone()).await {
            panic!("the resumed broker granted {} (fence {})", k1, g.fence());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let interim = taken.fence();
    // b2 may already have handed the shard back to b1 (the lease is then adopted at b1, which
    // this b2-only client cannot reach): release it fire-and-forget; b1's takeover grace
    // covers it either way.
    drop(taken);
    // It rejoins: its preferred shards come back to it (after a grace), fences still growing.
    let back = lock_eventually(&c1, &k1, Duration::from_secs(40)).await;
    assert!(back.fence() > interim, "{} after {interim}", back.fence());
    back.unlock().await.expect("unlock");
}

/// etcd loses quorum (two of three members stopped): the broker fails closed — it stops
/// granting within its ownership lease — and resumes once quorum is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_etcd_quorum_fails_closed_and_quorum_back_resumes() {
    let mut etcd = lockbroker_tests::etcd::EtcdCluster::start();
    let addr = free_udp_addr();
    let toml = cluster_config(&etcd, "q1", addr, 3000);
    let b = Broker::start_at(TempDir::new("q1"), &toml, addr);
    let c = client_of(&b).await;
    wait_served(&c, "q/k", Duration::from_secs(40)).await;
    etcd.stop(1);
    etcd.stop(2);
    let cut_at = Instant::now();
    // The leader may confirm keep-alives until it notices it lost quorum (its election
    // timeout, 1 s); from its last confirmation the broker serves at most one ownership TTL
    // (2 s). No other broker can take a shard meanwhile: etcd without quorum changes nothing,
    // and renews every lease on a new leader.
    // Grants stop within those 3 s (checked by send time inside); the first refusal must come
    // soon after, with room for a loaded 2-core machine (it took just over 4 s there once).
    let refused_after = refused_after_cut(&c, "q/k", cut_at, Duration::from_secs(3)).await;
    assert!(refused_after < Duration::from_secs(8), "{refused_after:?}");
    // Still refusing a while later: no quorum, no grants.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(matches!(
        c.try_lock("q/k").await,
        Err(Error::Unavailable(_))
    ));
    etcd.restart(1);
    lock_eventually(&c, "q/k", Duration::from_secs(60))
        .await
        .unlock()
        .await
        .ok();
}

/// A broker joins a running cluster: the shards rendezvous hashing now gives it are handed
/// over by their owner (planned move). A guard held across the move is told its shard moved and
/// adopts its lease at the new owner (during its grace) without being lost, and the one client
/// keeps locking keys of every shard throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_broker_takes_its_shards_and_held_leases_follow() {
    let etcd = EtcdServer::start();
    let (a1, a2) = (free_udp_addr(), free_udp_addr());
    let b1 = start_member_with(&etcd, "b1", a1, 5000);
    // b2's certificate must be trusted before it exists: start it once to create its data dir
    // and dev certificate, then stop it until the join.
    let b2_dir = TempDir::new("b2-join");
    let b2 = Broker::start_at(b2_dir, &cluster_config(&etcd, "b2", a2, 5000), a2);
    let cas = cas_of(&[&b1, &b2]);
    let b2_dir = b2.kill();
    let client = cluster_client(&[b1.url()], cas).await;
    let keys: Vec<String> = (0..24).map(|i| format!("join/{i}")).collect();
    // Wait until b1 alone serves every key (b2's first run has left the cluster).
    all_served(&etcd, &client, &keys).await;
    let held: Vec<_> = {
        let mut v = Vec::new();
        for k in keys.iter().take(8) {
            v.push(
                client
                    .lock(k.clone())
                    .ttl(Duration::from_secs(5))
                    .await
                    .expect("lock before the join"),
            );
        }
        v
    };
    let b2 = Broker::start_at(b2_dir, &cluster_config(&etcd, "b2", a2, 5000), a2);
    // The holders only hold across the move (their guards renew in the background and adopt
    // their leases at the new owner); none may be lost.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(8) {
        for g in &held {
            assert!(!g.is_lost(), "{} lost across the move", g.key_str());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for g in held {
        assert!(!g.is_lost(), "{} lost across the move", g.key_str());
        g.unlock().await.expect("unlock where the lease lives now");
    }
    // Both brokers serve shards now, and the one client locks every key.
    let c1 = client_of(&b1).await;
    let c2 = client_of(&b2).await;
    let on_b1 = settled(&c1, &c2, &keys).await;
    assert!(on_b1.iter().any(|x| !*x), "b2 took no shard");
    for k in &keys {
        let g = client
            .lock(k.clone())
            .wait(Duration::from_secs(15))
            .await
            .expect("every key is granted after the move");
        g.unlock().await.expect("unlock");
    }
}

/// `lockbroker cluster status` prints the members and, per shard, its owner and the epoch of
/// its ownership (read from etcd).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_lists_members_owners_and_epochs() {
    let etcd = EtcdServer::start();
    let addr = free_udp_addr();
    let b = start_member(&etcd, "st1", addr);
    let c = client_of(&b).await;
    wait_served(&c, "st/k", Duration::from_secs(30)).await;
    let config = b.data_dir.path().join("broker.toml");
    let out = std::process::Command::new(lockbroker_tests::lockbroker_bin())
        .args(["cluster", "status", "--config"])
        .arg(&config)
        .output()
        .expect("run lockbroker cluster status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("member st1 quic://{addr}")),
        "{text}"
    );
    assert!(text.contains("shards owned: 8/8"), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.starts_with("shard "))
            .all(|l| l.contains("owner st1 in_sync - epoch ")),
        "{text}"
    );
}

/// `lockbroker cluster drain` moves every shard off a broker: a guard held there adopts its
/// lease at the new owner without being lost, the drained broker serves nothing, and
/// `undrain` lets it own shards again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_moves_every_shard_off_a_broker_and_holders_keep_their_leases() {
    let etcd = EtcdServer::start();
    let (a1, a2) = (free_udp_addr(), free_udp_addr());
    let b1 = start_member_with(&etcd, "d1", a1, 5000);
    let b2 = start_member_with(&etcd, "d2", a2, 5000);
    let client = cluster_client(&[b1.url(), b2.url()], cas_of(&[&b1, &b2])).await;
    let c1 = client_of(&b1).await;
    let c2 = client_of(&b2).await;
    let keys: Vec<String> = (0..24).map(|i| format!("drain/{i}")).collect();
    let on_b1 = settled(&c1, &c2, &keys).await;
    let k1 = keys[on_b1.iter().position(|x| *x).expect("d1 owns a key")].clone();
    let g = client
        .lock(k1.clone())
        .ttl(Duration::from_secs(5))
        .await
        .expect("lock at d1");

    let config = b1.data_dir.path().join("broker.toml");
    let drain = tokio::task::spawn_blocking(move || {
        std::process::Command::new(lockbroker_tests::lockbroker_bin())
            .args(["cluster", "drain", "--wait", "30s", "--config"])
            .arg(&config)
            .output()
            .expect("run lockbroker cluster drain")
    });
    // The holder only holds across the hand-over; its guard must never be lost.
    let start = Instant::now();
    while !drain.is_finished() {
        assert!(!g.is_lost(), "the guard lost its lease during the drain");
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "drain never finished"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let out = drain.await.expect("drain task");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("d1 is drained"), "{text}");
    // The guard now lives at d2 (adopted by its background renewal), and is still held after
    // a whole TTL of doing nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!g.is_lost(), "the guard lost its lease after the drain");
    assert!(
        g.is_held().await.expect("is_held"),
        "d2 does not hold the lease"
    );
    for k in &keys {
        assert_eq!(
            serves(&c1, k).await,
            Some(false),
            "drained d1 still serves {k}"
        );
    }
    g.unlock().await.expect("unlock at d2");

    // Undrained, d1 owns shards again.
    let config = b1.data_dir.path().join("broker.toml");
    let out = std::process::Command::new(lockbroker_tests::lockbroker_bin())
        .args(["cluster", "undrain", "--config"])
        .arg(&config)
        .output()
        .expect("run lockbroker cluster undrain");
    assert!(out.status.success());
    settled(&c1, &c2, &keys).await;
}

/// Planned moves under load: while eight tasks of one client lock keys of every shard in a
/// loop, a third broker joins (its shards are handed over to it) and then one of the first two
/// leaves (SIGTERM: it hands all its shards over). No request fails — the client follows the
/// moves and acquires wait through the takeover grace — and no two tasks ever hold a key at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_joining_and_leaving_under_load_fail_no_request() {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let etcd = EtcdServer::start();
    let (a1, a2, a3) = (free_udp_addr(), free_udp_addr(), free_udp_addr());
    let b1 = start_member_with(&etcd, "l1", a1, 3000);
    let b2 = start_member_with(&etcd, "l2", a2, 3000);
    // b3's certificate must be trusted before it joins: a first run creates it.
    let b3 = Broker::start_at(
        TempDir::new("l3"),
        &cluster_config(&etcd, "l3", a3, 3000),
        a3,
    );
    let cas = cas_of(&[&b1, &b2, &b3]);
    let b3_dir = b3.kill();
    let client = cluster_client(&[b1.url(), b2.url()], cas).await;
    let keys: Vec<String> = (0..24).map(|i| format!("move/{i}")).collect();
    all_served(&etcd, &client, &keys).await;

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let inside = Arc::new(Mutex::new(HashSet::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..8usize {
        let (client, keys) = (client.clone(), keys.clone());
        let (stop, done) = (stop.clone(), done.clone());
        let (failures, inside) = (failures.clone(), inside.clone());
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i = (i + 7) % keys.len();
                let key = &keys[i];
                let guard = match client
                    .lock(key.clone())
                    .ttl(Duration::from_secs(5))
                    .wait(Duration::from_secs(20))
                    .await
                {
                    Ok(g) => g,
                    Err(e) => {
                        failures.lock().unwrap().push(format!("lock {key}: {e}"));
                        continue;
                    }
                };
                if !inside.lock().unwrap().insert(key.clone()) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("{key}: two holders at once"));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.lock().unwrap().remove(key);
                if let Err(e) = guard.unlock().await {
                    failures.lock().unwrap().push(format!("unlock {key}: {e}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_join = done.load(Ordering::Relaxed);
    let b3 = Broker::start_at(b3_dir, &cluster_config(&etcd, "l3", a3, 3000), a3);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before_leave = done.load(Ordering::Relaxed);
    b1.signal("TERM");
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("a worker finished")
            .expect("a worker did not panic");
    }
    let total = done.load(Ordering::Relaxed);
    eprintln!(
        "rebalancing under load: {before_join} cycles before the join, {} during it, {} \
         after the leave",
        before_leave - before_join,
        total - before_leave
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    assert!(total > before_leave, "nothing was granted after the leave");
    // The one client still reaches every key, now served by l2 and l3.
    let c3 = client_of(&b3).await;
    let c2 = client_of(&b2).await;
    let on_b2 = settled(&c2, &c3, &keys).await;
    assert!(on_b2.iter().any(|x| !*x), "l3 took no shard");
}

/// etcd over TLS: `https://` endpoints verified with `cluster.etcd_ca`, and a client
/// certificate (`etcd_cert`/`etcd_key`) for an etcd that requires one. A broker's dev
/// certificate (self-signed for 127.0.0.1) serves as etcd's certificate, its CA and the
/// brokers' client certificate. Without the client certificate etcd turns the broker away and
/// it serves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_mode_reaches_etcd_over_tls_with_a_client_certificate() {
    let certs = Broker::start().kill();
    let (cert, key) = (
        certs.path().join("dev-cert.pem"),
        certs.path().join("dev-key.pem"),
    );
    let etcd = EtcdServer::start_tls(&cert, &key);
    assert!(etcd.endpoint().starts_with("https://"));
    let tls = format!("etcd_ca = {cert:?}\netcd_cert = {cert:?}\netcd_key = {key:?}\n",);
    let addr = free_udp_addr();
    let toml = cluster_config(&etcd, "tls1", addr, 3000) + &tls;
    let b = Broker::start_at(TempDir::new("tls1"), &toml, addr);
    let c = client_of(&b).await;
    wait_served(&c, "tls/k", Duration::from_secs(30)).await;

    // The CA alone is not enough for this etcd: no client certificate, no cluster.
    let addr2 = free_udp_addr();
    let toml2 = cluster_config(&etcd, "tls2", addr2, 3000) + &format!("etcd_ca = {cert:?}\n");
    let outcome =
        std::panic::catch_unwind(|| Broker::start_at(TempDir::new("tls2"), &toml2, addr2));
    assert!(
        outcome.is_err(),
        "a broker without a client certificate started in cluster mode"
    );
}

/// Multi-key locks in cluster mode: keys sharing a `{tag}` (one shard) are locked together;
/// keys of different shards are refused with an error that names the rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_locks_need_keys_of_one_shard() {
    let etcd = EtcdServer::start();
    let b1 = start_member(&etcd, "b1", free_udp_addr());
    let c = client_of(&b1).await;
    all_served(&etcd, &c, &["acct/{42}/balance".to_owned()]).await;
    let gs = c
        .lock_all(["acct/{42}/balance", "acct/{42}/history"])
        .wait(Duration::from_secs(10))
        .await
        .expect("one shard: granted");
    assert_eq!(gs.len(), 2);
    drop(gs);
    let shards = 8;
    let other = (0..100)
        .map(|i| format!("other/{i}"))
        .find(|k| shard_of(k.as_bytes(), shards) != shard_of(b"acct/{42}/balance", shards))
        .expect("a key of another shard");
    let refused = c
        .lock_all(["acct/{42}/balance".to_owned(), other])
        .no_wait()
        .await;
    let err = refused.expect_err("different shards are refused");
    assert!(err.to_string().contains("share one shard"), "{err}");
}
