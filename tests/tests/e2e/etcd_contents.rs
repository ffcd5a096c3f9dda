//! What the brokers read from etcd is checked, not trusted (issue 23, finding 8): stray member
//! and shard keys written by hand take no shard out of service, a second broker with a live
//! member's name refuses to start, a broker restores its member key when it is deleted or
//! overwritten, and shards nobody owns show in every broker's `/readyz` and `/metrics`.
//! Everything is done as an operator or intruder with `etcdctl` would (etcd's JSON gateway),
//! and observed with a user's tools: SDK locks, `/readyz`, `/metrics`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lockbroker_proto::shard_of;
use lockbroker_tests::etcd::{EtcdServer, cluster_config, free_udp_addr};
use lockbroker_tests::http::{self, sample};
use lockbroker_tests::util::eventually;
use lockbroker_tests::{Broker, TempDir};

use super::cluster::{
    all_served, cas_of, client_of, cluster_client, cluster_status, serves, settled,
    start_member_with,
};

/// The etcd prefix of the test cluster (`cluster_config` names it "test").
const PREFIX: &str = "/lockbroker/test/";
/// Shards of the test cluster (`cluster_config`).
const SHARDS: u32 = 8;
/// Bound of every wait below.
const LIMIT: Duration = Duration::from_secs(30);

fn admin(b: &Broker) -> SocketAddr {
    b.admin.expect("the broker's admin listener")
}

/// A gauge of the broker's `/metrics` (`None` if it is not there).
async fn metric(b: &Broker, name: &str) -> Option<f64> {
    sample(&http::get(admin(b), "/metrics").await.body, name)
}

/// `/readyz`: status and reason.
async fn readyz(b: &Broker) -> (u16, String) {
    let r = http::get(admin(b), "/readyz").await;
    let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
    (r.status, reason)
}

/// Two brokers, a client of both, and 24 keys every one of which is granted.
async fn two_brokers(etcd: &EtcdServer, max_ttl_ms: u64) -> (Broker, Broker, Vec<String>) {
    let b1 = start_member_with(etcd, "b1", free_udp_addr(), max_ttl_ms);
    let b2 = start_member_with(etcd, "b2", free_udp_addr(), max_ttl_ms);
    let c1 = client_of(&b1).await;
    let c2 = client_of(&b2).await;
    let keys: Vec<String> = (0..24).map(|i| format!("ec/{i}")).collect();
    settled(&c1, &c2, &keys).await;
    (b1, b2, keys)
}

/// Member keys without an etcd lease, or whose value is not a client URL, are ignored: before,
/// one `members/zz = "not a url"` made the members hand the shards rendezvous hashing gave
/// "zz" over to nobody — their holders lost their leases and acquires failed — while every
/// `/readyz` said 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_member_keys_take_no_shard_out_of_service() {
    let etcd = EtcdServer::start();
    let (b1, b2, keys) = two_brokers(&etcd, 8000).await;
    let client = cluster_client(&[b1.url(), b2.url()], cas_of(&[&b1, &b2])).await;
    all_served(&etcd, &client, &keys).await;
    let mut guards = Vec::new();
    for k in &keys[..8] {
        let g = client
            .lock(k.clone())
            .ttl(Duration::from_secs(8))
            .await
            .expect("lock before the stray keys");
        guards.push(g);
    }

    etcd.put(&format!("{PREFIX}members/zz"), "not a url", 0);
    etcd.put(&format!("{PREFIX}members/yy"), "quic://127.0.0.1:9", 0);
    let lease = etcd.lease_grant(60);
    etcd.put(&format!("{PREFIX}members/xx"), "quic://nowhere", lease);
    let written = Instant::now();

    // For 3 s (the brokers see the keys within milliseconds), every other key is granted at
    // once and no holder is told its lease ended.
    while written.elapsed() < Duration::from_secs(3) {
        for k in &keys[8..] {
            match client.try_lock(k.clone()).await {
                Ok(g) => g.unlock().await.expect("unlock"),
                Err(e) => panic!(
                    "{k} refused {:?} after the stray keys: {e}\n{}",
                    written.elapsed(),
                    cluster_status(&etcd)
                ),
            }
        }
        for g in &guards {
            assert!(!g.is_lost(), "{} lost after the stray keys", g.key_str());
        }
    }
    for b in [&b1, &b2] {
        eventually("the three stray keys counted", LIMIT, || async move {
            (metric(b, "lockbroker_cluster_ignored_keys").await == Some(3.0)).then_some(())
        })
        .await;
        assert_eq!(readyz(b).await.0, 200, "{:?}", readyz(b).await);
        assert_eq!(
            metric(b, "lockbroker_cluster_unowned_shards").await,
            Some(0.0)
        );
    }
    for g in guards {
        assert!(g.is_held().await.expect("is_held"), "{}", g.key_str());
        g.unlock().await.expect("unlock");
    }
}

/// A shard ownership key without a lease (here one overwritten by hand, naming a member that
/// does not exist) would never expire: before, nobody could claim the shard again and its keys
/// were refused for good. Now it is ignored and replaced by the shard's preferred owner; the
/// holder there adopts its lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_key_without_a_lease_is_replaced_by_a_real_owner() {
    let etcd = EtcdServer::start();
    let (b1, b2, keys) = two_brokers(&etcd, 3000).await;
    let c1 = client_of(&b1).await;
    let client = cluster_client(&[b1.url(), b2.url()], cas_of(&[&b1, &b2])).await;
    let mut on_b1 = None;
    for k in &keys {
        if serves(&c1, k).await == Some(true) {
            on_b1 = Some(k.clone());
            break;
        }
    }
    let k = on_b1.expect("b1 serves a key");
    let guard = client
        .lock(k.clone())
        .ttl(Duration::from_secs(3))
        .await
        .expect("lock at b1");
    let shard = shard_of(k.as_bytes(), SHARDS);
    let owner_key = format!("{PREFIX}shards/{shard}");

    etcd.put(&owner_key, "zz 0", 0);

    let others: Vec<String> = keys.iter().filter(|o| **o != k).cloned().collect();
    all_served(&etcd, &client, &others).await;
    let entry = etcd.get(&owner_key).expect("the shard has an owner key");
    assert!(
        entry.lease != 0 && entry.value.starts_with(b"b1 "),
        "{entry:?}\n{}",
        cluster_status(&etcd)
    );
    eventually("the holder holds its lease again", LIMIT, || async {
        guard.is_held().await.ok().filter(|h| *h)
    })
    .await;
    assert!(!guard.is_lost(), "the holder lost its lease");
    guard.unlock().await.expect("unlock");
}

/// A second broker started with the name of a live member refuses to start and says why; the
/// live member keeps its registration and its shards. Before, it took the member entry over,
/// and when it stopped the real member was left serving nothing while saying "serving".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_with_a_live_members_name_refuses_to_start() {
    let etcd = EtcdServer::start();
    let (b1, b2, keys) = two_brokers(&etcd, 3000).await;
    let dir = TempDir::new("dup-b1");
    let config = dir.path().join("broker.toml");
    std::fs::write(&config, cluster_config(&etcd, "b1", free_udp_addr(), 3000))
        .expect("write config");
    let mut dup = tokio::process::Command::new(lockbroker_tests::lockbroker_bin())
        .arg("serve")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--admin-listen")
        .arg("127.0.0.1:0")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the duplicate");
    let stderr = dup.stderr.take().expect("stderr");
    let exited = tokio::time::timeout(Duration::from_secs(20), dup.wait()).await;
    let Ok(status) = exited else {
        let _ = dup.kill().await;
        panic!(
            "a second broker named b1 is still running 20 s after it started\n{}",
            cluster_status(&etcd)
        );
    };
    let status = status.expect("wait for the duplicate");
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(stderr), &mut text)
        .await
        .expect("read its stderr");
    assert!(!status.success(), "{text}");
    assert!(
        text.contains("\"b1\"") && text.contains("already"),
        "the refusal does not say why: {text}"
    );
    eprintln!("the duplicate said: {}", text.trim());

    let entry = etcd
        .get(&format!("{PREFIX}members/b1"))
        .expect("b1's entry");
    assert_eq!(entry.value, b1.url().into_bytes());
    let client = cluster_client(&[b1.url(), b2.url()], cas_of(&[&b1, &b2])).await;
    all_served(&etcd, &client, &keys).await;
    assert!(metric(&b1, "lockbroker_shards_owned").await > Some(0.0));
    assert_eq!(readyz(&b1).await.0, 200);
}

/// A broker restarted at once after a crash finds its old member key still there under its
/// old, dying lease: it waits for that lease to end (at most its TTL) and then serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_after_a_crash_waits_out_its_old_lease() {
    let etcd = EtcdServer::start();
    let addr = free_udp_addr();
    let toml = cluster_config(&etcd, "r1", addr, 3000);
    let b = Broker::start_at(TempDir::new("r1"), &toml, addr);
    let c = client_of(&b).await;
    super::cluster::wait_served(&c, "crash/k", LIMIT).await;
    drop(c);
    let dir = b.kill();
    assert!(etcd.get(&format!("{PREFIX}members/r1")).is_some());
    let restarted = Instant::now();
    let b = Broker::start_at(dir, &toml, addr);
    let c = client_of(&b).await;
    super::cluster::wait_served(&c, "crash/k", LIMIT).await;
    eprintln!(
        "restarted after a crash: serving {:?} later",
        restarted.elapsed()
    );
}

/// A broker's member key deleted (or overwritten) while it runs is put back at once; the
/// broker keeps its shards. Before, it stayed gone: the member handed every shard over and
/// served nothing while saying "serving".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_overwritten_member_key_is_restored() {
    let etcd = EtcdServer::start();
    let (b1, b2, keys) = two_brokers(&etcd, 3000).await;
    let member = format!("{PREFIX}members/b1");
    let restored = |what: &'static str| {
        let (etcd, member, url) = (&etcd, member.clone(), b1.url().into_bytes());
        eventually(what, LIMIT, move || {
            let (member, url) = (member.clone(), url.clone());
            async move {
                etcd.get(&member)
                    .filter(|e| e.value == url && e.lease != 0)
                    .map(|_| ())
            }
        })
    };

    etcd.delete(&member);
    restored("b1's member key put back after its deletion").await;
    etcd.put(&member, "quic://127.0.0.1:9", 0);
    restored("b1's member key put back after it was overwritten").await;

    let client = cluster_client(&[b1.url(), b2.url()], cas_of(&[&b1, &b2])).await;
    all_served(&etcd, &client, &keys).await;
    let c1 = client_of(&b1).await;
    let c2 = client_of(&b2).await;
    let on_b1 = settled(&c1, &c2, &keys).await;
    assert!(on_b1.iter().any(|x| *x), "b1 serves no key");
    assert_eq!(readyz(&b1).await.0, 200);
}

/// Shards nobody owns — here those rendezvous hashing gives to members that are registered
/// (with a lease and a URL) but never claim — show in every broker's `/metrics`
/// (`cluster_unowned_shards`) at once, and make every `/readyz` 503 with the reason once they
/// stayed unowned longer than twice the ownership TTL. Before, every `/readyz` said 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unowned_shards_show_in_readyz_and_metrics() {
    let etcd = EtcdServer::start();
    let (b1, b2, keys) = two_brokers(&etcd, 3000).await;
    let lease = etcd.lease_grant(60);
    for ghost in ["ghost1", "ghost2", "ghost3"] {
        etcd.put(
            &format!("{PREFIX}members/{ghost}"),
            "quic://127.0.0.1:9",
            lease,
        );
    }
    for b in [&b1, &b2] {
        let reason = eventually("/readyz 503 for unowned shards", LIMIT, || async move {
            let (status, reason) = readyz(b).await;
            (status == 503 && reason.contains("unowned")).then_some(reason)
        })
        .await;
        eprintln!("/readyz: {reason}");
        let n = metric(b, "lockbroker_cluster_unowned_shards").await;
        assert!(n.is_some_and(|n| n >= 1.0), "{n:?}");
    }

    etcd.lease_revoke(lease);
    for b in [&b1, &b2] {
        eventually(
            "/readyz 200 once every shard is owned",
            LIMIT,
            || async move { (readyz(b).await.0 == 200).then_some(()) },
        )
        .await;
        assert_eq!(
            metric(b, "lockbroker_cluster_unowned_shards").await,
            Some(0.0)
        );
    }
    let client = cluster_client(&[b1.url(), b2.url()], cas_of(&[&b1, &b2])).await;
    all_served(&etcd, &client, &keys).await;
}
