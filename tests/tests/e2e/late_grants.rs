//! A grant that arrives after its acquire was given up, in a cluster: the acquire's answer is
//! on its way when the key's shard moves (found by CI: a rolling restart with replicated
//! shards, where the grant waits for the backup's acknowledgement while the owner hands the
//! shard over). The client asks the new owner again at once; the late grant's lease moved
//! there with the hand-over, so it must be released there, or the key stays blocked for the
//! lease's whole TTL.

use std::time::{Duration, Instant};

use lockbroker_sdk::Client;
use lockbroker_tests::etcd::{EtcdServer, cluster_config, free_udp_addr};
use lockbroker_tests::udp_relay::UdpRelay;
use lockbroker_tests::{Broker, TempDir};

use crate::failover::settled_owner;

/// The TTL cap of the test cluster; the late grant's TTL (longer than the user's wait).
const TTL_MS: u64 = 30_000;

/// Broker "a" answers through a relay that holds its answers; "b" is reached directly. The
/// user's action: lock a key of a's shard, waiting at most 15 s. While a's grant is held on
/// the way, the operator drains a (its shard and the new lease go to b). Then a's answers
/// arrive. The lock must be granted — by b — within the wait, not after the late lease's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_answered_as_its_shard_moves_is_released_at_the_new_owner() {
    let etcd = EtcdServer::start();
    let (a_addr, b_addr) = (free_udp_addr(), free_udp_addr());
    let relay = UdpRelay::start(a_addr).await.expect("start the UDP relay");
    let a_toml = cluster_config(&etcd, "a", a_addr, TTL_MS).replace(
        &format!("advertise = \"{a_addr}\""),
        &format!("advertise = \"{}\"", relay.addr),
    );
    let a = Broker::start_at(TempDir::new("a"), &a_toml, a_addr);
    let b_toml = cluster_config(&etcd, "b", b_addr, TTL_MS);
    let b = Broker::start_at(TempDir::new("b"), &b_toml, b_addr);
    let mut cas = std::fs::read(a.ca()).expect("a's dev certificate");
    cas.extend(std::fs::read(b.ca()).expect("b's dev certificate"));
    // The client knows b; the shard map sends it to a (through the relay) for a's keys.
    let client = Client::builder()
        .broker(b.url())
        .ca_pem(cas)
        .connect()
        .await
        .expect("connect to b");

    let mut key = None;
    for i in 0..32 {
        let k = format!("late/{i}");
        if settled_owner(&[&a, &b], &k).await == 0 {
            key = Some(k);
            break;
        }
    }
    let key = key.expect("a serves one of 32 keys");
    // The client's connection to a is open (a lock and unlock through the relay).
    client
        .try_lock(key.clone())
        .await
        .expect("lock at a")
        .unlock()
        .await
        .expect("unlock at a");

    relay.hold_answers(true);
    let locker = {
        let (client, key) = (client.clone(), key.clone());
        tokio::spawn(async move {
            let asked = Instant::now();
            let got = client
                .lock(key)
                .ttl(Duration::from_millis(TTL_MS))
                .wait(Duration::from_secs(15))
                .await;
            (got, asked.elapsed())
        })
    };
    // a granted the key (its answer is held in the relay).
    let direct = a.client_builder().connect().await.expect("connect to a");
    let start = Instant::now();
    while direct
        .inspect(key.clone())
        .await
        .expect("inspect at a")
        .holders
        .is_empty()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a never granted {key}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    direct.close().await;

    // The operator's action: drain a (a planned move of its shards, leases included).
    let config = a.data_dir.path().join("broker.toml");
    let drain = tokio::task::spawn_blocking(move || {
        std::process::Command::new(lockbroker_tests::lockbroker_bin())
            .args(["cluster", "drain", "--wait", "20s", "--config"])
            .arg(&config)
            .output()
            .expect("run lockbroker cluster drain")
    })
    .await
    .expect("drain task");
    assert!(
        drain.status.success(),
        "{}",
        String::from_utf8_lossy(&drain.stderr)
    );
    relay.hold_answers(false);

    let (got, waited) = locker.await.expect("the locking task");
    let guard = got.unwrap_or_else(|e| {
        panic!("lock {key} after its shard moved with a late grant: {e} (after {waited:?})")
    });
    guard.unlock().await.expect("unlock at b");
}
