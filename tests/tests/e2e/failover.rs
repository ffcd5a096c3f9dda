//! Cluster clients as README shows them (issue 22). Guards ride out a failover by themselves:
//! three brokers on a real etcd, one client of all three (every setting at its default), and
//! a holder that does nothing but hold. Its shard's owner is SIGKILLed, later the next owner is
//! SIGSTOPped past its ownership lease, then the owner after it leaves (SIGTERM); the guard renews in the background — reclaiming its lease at
//! whichever broker serves the shard now — and is never lost. The next client is granted the
//! key only after the holder unlocks, with a larger fence. And the cluster quickstart: the CLI
//! given every broker's URL and dev certificate locks keys of each and exits right after CMD.
//! Planned moves and replicated shards (issue 24): no grace, waiting acquires keep their order.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lockbroker_sdk::{Client, Error};
use lockbroker_tests::etcd::{EtcdServer, cluster_config, free_udp_addr};
use lockbroker_tests::{Broker, TempDir};

/// The TTL cap of the test cluster (and the takeover grace of a shard whose owner vanished).
const MAX_TTL_MS: u64 = 10_000;
/// The holder's TTL: 4× the 2 s ownership lease, as README advises.
const HOLD_TTL: Duration = Duration::from_secs(8);

fn start_member(etcd: &EtcdServer, name: &str, addr: SocketAddr) -> Broker {
    let toml = cluster_config(&etcd, name, addr, MAX_TTL_MS);
    Broker::start_at(TempDir::new(name), &toml, addr)
}

/// A client of every broker in `brokers`, each dev certificate trusted, defaults otherwise.
async fn client_of_all(brokers: &[&Broker]) -> Client {
    let mut builder = Client::builder();
    let mut cas = Vec::new();
    for b in brokers {
        builder = builder.broker(b.url());
        cas.extend(std::fs::read(b.ca()).expect("dev certificate"));
    }
    builder.ca_pem(cas).connect().await.expect("connect")
}

/// Which of `brokers` serves `key`: the one whose own client's try-lock is answered (granted
/// or busy) while the others refuse it; `None` while that is not exactly one.
async fn owner_of(brokers: &[&Broker], key: &str) -> Option<usize> {
    let mut serving = Vec::new();
    for (i, b) in brokers.iter().enumerate() {
        let c = b
            .client_builder()
            .request_timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        match c.try_lock(key.to_string()).await {
            Ok(g) => {
                g.unlock().await.ok()?;
                serving.push(i);
            }
            Err(Error::Busy) => serving.push(i),
            Err(_) => {}
        }
        c.close().await;
    }
    (serving.len() == 1).then(|| serving[0])
}

/// Waits (bounded) until `key` is served by exactly one of `brokers`, the same one twice a
/// second apart; returns its index.
pub(crate) async fn settled_owner(brokers: &[&Broker], key: &str) -> usize {
    let start = Instant::now();
    let mut last = None;
    loop {
        let now = owner_of(brokers, key).await;
        if now.is_some() && now == last {
            return now.unwrap_or_default();
        }
        last = now;
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{key}: no settled owner"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The holder's checks after a fault: its guard is not lost and the cluster still has its
/// lease.
async fn assert_still_held(guard: &lockbroker_sdk::Guard, after: &str) {
    assert!(!guard.is_lost(), "the guard was lost after {after}");
    assert!(
        guard.is_held().await.expect("is_held"),
        "the cluster no longer has the lease after {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_only_holds_keeps_its_lock_across_sigkill_and_sigstop_of_its_owner() {
    let etcd = EtcdServer::start();
    let addrs = [free_udp_addr(), free_udp_addr(), free_udp_addr()];
    let b1 = start_member(&etcd, "b1", addrs[0]);
    let b2 = start_member(&etcd, "b2", addrs[1]);
    let b3 = start_member(&etcd, "b3", addrs[2]);
    let client = client_of_all(&[&b1, &b2, &b3]).await;
    // A key of b1's, the first broker the client names: its default connection dies too.
    let keys: Vec<String> = (0..32).map(|i| format!("hold/{i}")).collect();
    let mut key = None;
    for k in &keys {
        if settled_owner(&[&b1, &b2, &b3], k).await == 0 {
            key = Some(k.clone());
            break;
        }
    }
    let key = key.expect("b1 owns one of 32 keys");

    // The user's action: lock, then only hold.
    let guard = client
        .lock(key.clone())
        .ttl(HOLD_TTL)
        .await
        .expect("lock on b1's shard");
    let fence = guard.fence();

    // Fault 1: the owner is SIGKILLed. Wait twice the TTL.
    drop(b1.kill());
    tokio::time::sleep(2 * HOLD_TTL).await;
    assert_still_held(&guard, "SIGKILL of its shard's owner").await;

    // Fault 2: the shard's new owner is SIGSTOPped past its ownership lease (2 s), then
    // resumes; the other broker takes the shard over meanwhile.
    let rest = [&b2, &b3];
    let owner = rest[settled_owner(&rest, &key).await];
    owner.signal("STOP");
    tokio::time::sleep(Duration::from_secs(12)).await;
    owner.signal("CONT");
    tokio::time::sleep(HOLD_TTL).await;
    assert_still_held(&guard, "SIGSTOP of its shard's owner").await;

    // Fault 3: a planned leave — the shard's owner now is stopped by SIGTERM (as an operator
    // or a rolling deploy does); the last broker takes the shard over.
    let owner = rest[settled_owner(&rest, &key).await];
    owner.signal("TERM");
    tokio::time::sleep(2 * HOLD_TTL).await;
    assert_still_held(&guard, "SIGTERM of its shard's owner").await;

    // The next client waits for the holder: granted only after the unlock, with a larger
    // fence.
    let next = client_of_all(&rest).await;
    let waiter = {
        let key = key.clone();
        tokio::spawn(async move {
            let g = next.lock(key).wait(Duration::from_secs(30)).await;
            (g, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished(), "granted while the holder holds");
    let unlocked_at = Instant::now();
    guard.unlock().await.expect("unlock");
    let (granted, at) = waiter.await.expect("waiter task");
    let granted = granted.expect("the next client is granted");
    assert!(at >= unlocked_at, "granted before the unlock");
    assert!(
        granted.fence() > fence,
        "fence {} after {fence}",
        granted.fence()
    );
    granted.unlock().await.expect("unlock");
}

/// README's cluster quickstart, followed as written: three brokers with only `[cluster]` in
/// their config (each its own dev certificate; one cluster key file, which the first broker
/// to start creates), and `lockbroker lock` given every broker's URL
/// and every dev certificate (`LOCKBROKER_URL`, `LOCKBROKER_CA`, comma-separated). It takes a
/// key of each broker's, and exits as soon as CMD has and the release is acknowledged —
/// it used to wait out a 1 s close timeout whenever the key's owner was not the first broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_quickstart_locks_keys_of_every_broker_and_exits_after_cmd() {
    let etcd = EtcdServer::start();
    let keys = TempDir::new("qs-key");
    let key_file = keys.path().join("cluster.key");
    let addrs = [free_udp_addr(), free_udp_addr(), free_udp_addr()];
    let brokers: Vec<Broker> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let toml = format!(
                "[cluster]\netcd = [{:?}]\nkey_file = {:?}\nbroker = \"b{i}\"\n\
                 advertise = \"{addr}\"\n",
                etcd.endpoint(),
                key_file.display().to_string()
            );
            Broker::start_at(TempDir::new(&format!("qs{i}")), &toml, *addr)
        })
        .collect();
    let all: Vec<&Broker> = brokers.iter().collect();
    let urls: Vec<String> = all.iter().map(|b| b.url()).collect();
    let cas: Vec<String> = all.iter().map(|b| b.ca().display().to_string()).collect();
    // One key of each broker's.
    let mut keys: Vec<Option<String>> = vec![None, None, None];
    for i in 0..64 {
        let k = format!("qs/{i}");
        let owner = settled_owner(&all, &k).await;
        if keys[owner].is_none() {
            keys[owner] = Some(k);
        }
        if keys.iter().all(Option::is_some) {
            break;
        }
    }
    // Shards handed over as the brokers joined are in their takeover grace (30 s by default):
    // wait until each chosen key is granted at once, as a user would see the cluster settle.
    let observer = client_of_all(&all).await;
    for key in keys.iter().flatten() {
        let start = Instant::now();
        loop {
            match observer.try_lock(key.clone()).await {
                Ok(g) => {
                    g.unlock().await.expect("unlock");
                    break;
                }
                Err(e) => assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{key} never granted: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let dir = TempDir::new("qs-cmd");
    let mut after_cmd = Vec::new();
    for (owner, key) in keys.iter().enumerate() {
        let key = key.as_deref().expect("each broker owns one of 64 keys");
        let stamp = dir.path().join(format!("cmd-{owner}"));
        let mut child = std::process::Command::new(lockbroker_tests::lockbroker_bin())
            .args(["lock", "--wait", "20s", key, "--", "sh", "-c"])
            .arg(format!("date +%s%N > {}", stamp.display()))
            .env("LOCKBROKER_URL", urls.join(","))
            .env("LOCKBROKER_CA", cas.join(","))
            .spawn()
            .expect("run lockbroker lock");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "lock never exited"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let exited = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        assert!(status.success(), "lock of {key} (owner b{owner}): {status}");
        let ran: u128 = std::fs::read_to_string(&stamp)
            .expect("CMD ran")
            .trim()
            .parse()
            .expect("a time stamp");
        after_cmd.push(Duration::from_nanos(
            u64::try_from(exited.saturating_sub(ran)).unwrap_or(u64::MAX),
        ));
    }
    // Trusting only the first broker: a key of another is a TLS failure, named as one with the
    // broker, not "unavailable".
    let other_key = keys[1].as_deref().expect("a key of b1");
    let out = std::process::Command::new(lockbroker_tests::lockbroker_bin())
        .args(["lock", "--wait", "5s", other_key, "--", "true"])
        .env("LOCKBROKER_URL", urls.join(","))
        .env("LOCKBROKER_CA", &cas[0])
        .output()
        .expect("run lockbroker lock");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("TLS") && stderr.contains(&addrs[1].port().to_string()),
        "{stderr}"
    );
    eprintln!("quickstart: exit after CMD, by key owner: {after_cmd:?}");
    // Before the fix every key of the second and third broker took >= 1 s (a close timeout
    // waiting on a connection nobody closed); the quicker of the two shows it is gone.
    let others = after_cmd[1].min(after_cmd[2]);
    assert!(
        others < Duration::from_secs(1),
        "lockbroker lock waited {others:?} after CMD for a key of another broker"
    );
}

/// Issue 24, a planned restart: an operator restarts the three brokers one after another
/// (SIGTERM, start again on the same data dir and address) while 8 tasks lock and release
/// keys of their own (never contended) across every shard, and a holder only holds. Each
/// leaving broker hands its shards over with their leases, each rejoining one gets its shards
/// handed back the same way: no request fails, the holder's guard is never lost, and no
/// acquire of a free key waits a takeover grace (10 s here). The longest wait is printed; the
/// target is 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_waits_no_grace_and_loses_no_lease() {
    rolling_restart_under_load(1).await;
}

/// The same rolling restart with replicated shards (`replicas = 2`): every move is a hand-over
/// and every shard's backup is fed throughout; the same guarantees hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_a_rolling_restart_under_load_waits_no_grace_and_loses_no_lease() {
    rolling_restart_under_load(2).await;
}

/// Restarts three brokers with `replicas` one after another under load (see above).
async fn rolling_restart_under_load(replicas: u32) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    let etcd = EtcdServer::start();
    let addrs = [free_udp_addr(), free_udp_addr(), free_udp_addr()];
    let names = ["r1", "r2", "r3"];
    // The shipped ownership lease (6 s), not the tests' 2 s: on two loaded cores a keep-alive
    // confirmed too late is an unplanned failure, which (replicas not built) costs a grace —
    // not what this test measures.
    let config = |i: usize| {
        cluster_config(&etcd, names[i], addrs[i], MAX_TTL_MS)
            .replace("ownership_ttl_ms = 2000", "ownership_ttl_ms = 6000")
            + &format!("replicas = {replicas}\n")
    };
    let mut brokers: Vec<Broker> = (0..3)
        .map(|i| Broker::start_at(TempDir::new(names[i]), &config(i), addrs[i]))
        .collect();
    let client = client_of_all(&brokers.iter().collect::<Vec<_>>()).await;
    // Every broker serves a shard before the load starts.
    let keys: Vec<String> = (0..24).map(|i| format!("roll/{i}")).collect();
    for k in &keys {
        settled_owner(&brokers.iter().collect::<Vec<_>>(), k).await;
    }

    // The user's action: lock, then only hold.
    let held = client
        .lock("roll/held".to_string())
        .ttl(HOLD_TTL)
        .await
        .expect("lock the held key");

    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicU64::new(0));
    let longest = Arc::new(Mutex::new((Duration::ZERO, String::new())));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..8usize {
        let client = client.clone();
        let (stop, cycles) = (stop.clone(), cycles.clone());
        let (longest, failures) = (longest.clone(), failures.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                // Worker w's own keys: nobody else ever holds one.
                let key = format!("roll/{w}/{}", i % 16);
                let asked = Instant::now();
                let guard = match client
                    .lock(key.clone())
                    .ttl(Duration::from_secs(5))
                    .wait(Duration::from_secs(30))
                    .await
                {
                    Ok(g) => g,
                    Err(e) => {
                        failures.lock().unwrap().push(format!("lock {key}: {e}"));
                        continue;
                    }
                };
                let waited = asked.elapsed();
                {
                    let mut l = longest.lock().unwrap();
                    if waited > l.0 {
                        *l = (waited, key.clone());
                    }
                }
                // A short piece of work: a steady load that leaves the brokers' etcd
                // keep-alives their time on two cores (a late one is a failure, with a grace).
                tokio::time::sleep(Duration::from_millis(20)).await;
                let (fence, lost) = (guard.fence(), guard.is_lost());
                if let Err(e) = guard.unlock().await {
                    // What the cluster has of the key now, for the failure message.
                    let now = client.inspect(key.clone()).await.map(|i| i.holders);
                    failures.lock().unwrap().push(format!(
                        "unlock {key} (fence {fence:#x}, lost: {lost}): {e}; the key now: {now:?}"
                    ));
                }
                cycles.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The operator's action: restart each broker in turn, waiting a few seconds between.
    for i in 0..3 {
        brokers[i].signal("TERM");
        assert!(
            brokers[i].wait_exit(Duration::from_secs(20)).is_some(),
            "{} did not exit on SIGTERM",
            names[i]
        );
        let old = brokers.remove(i);
        let dir = old.kill();
        brokers.insert(i, Broker::start_at(dir, &config(i), addrs[i]));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(Duration::from_secs(40), w)
            .await
            .expect("a worker finished")
            .expect("a worker did not panic");
    }
    let (waited, key) = longest.lock().unwrap().clone();
    eprintln!(
        "rolling restart, replicas {replicas}: {} lock cycles; the longest acquire of a free key \
         waited {:.0} ms ({key})",
        cycles.load(Ordering::Relaxed),
        waited.as_secs_f64() * 1000.0
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    // Issue 24's target with replicas is 1 s (measured 157 ms; 106 ms without replicas, where
    // what is asserted is only "no grace": an etcd keep-alive confirmed late on two loaded
    // cores is an unplanned failure, which costs a grace there).
    let bound = if replicas > 1 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(MAX_TTL_MS / 2)
    };
    assert!(
        waited < bound,
        "an acquire of a free key waited {waited:?} ({key}) with replicas {replicas}"
    );
    assert_still_held(&held, "a rolling restart of every broker").await;
    let other = client_of_all(&brokers.iter().collect::<Vec<_>>()).await;
    assert!(
        matches!(
            other.try_lock("roll/held".to_string()).await,
            Err(Error::Busy)
        ),
        "another client got the held key"
    );
    held.unlock().await.expect("unlock after the restarts");
}

/// Issue 24, finding 3: three brokers started one after another, as README shows. The first
/// claims every shard, then hands each joiner its shards with their (here: no) leases — so no
/// shard starts its life in a takeover grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_cluster_starts_without_a_grace() {
    let etcd = EtcdServer::start();
    let addrs = [free_udp_addr(), free_udp_addr(), free_udp_addr()];
    let mut brokers = Vec::new();
    for (i, name) in ["f1", "f2", "f3"].into_iter().enumerate() {
        brokers.push(start_member(&etcd, name, addrs[i]));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let status = spread_over(&etcd, &["f1", "f2", "f3"], 8);
    assert!(
        in_grace(&status).is_empty(),
        "a shard of a fresh cluster is in a grace:\n{status}"
    );
}

/// `cluster status` of a cluster of `shards` once every shard is owned and each of `names`
/// owns some (bounded: 30 s).
fn spread_over(etcd: &EtcdServer, names: &[&str], shards: u32) -> String {
    let start = Instant::now();
    loop {
        let status = crate::cluster::cluster_status_of(etcd, shards);
        let shards: Vec<&str> = status.lines().filter(|l| l.starts_with("shard ")).collect();
        let spread = names
            .iter()
            .all(|n| shards.iter().any(|l| l.contains(&format!("owner {n} "))));
        if spread && !shards.is_empty() && !shards.iter().any(|l| l.contains("unowned")) {
            return status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the shards never spread over {names:?}:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The shards of `status` in a takeover grace.
fn in_grace(status: &str) -> Vec<&str> {
    status
        .lines()
        .filter(|l| l.starts_with("shard ") && !l.ends_with("grace_left_ms 0"))
        .collect()
}

/// Issue 24, planned moves: a broker stopped with SIGTERM hands every shard it serves over,
/// many at once. Its session loop hands shards over too as the leave begins (a leaving broker
/// prefers nobody); a shard that loop was still writing when the leave revoked the etcd lease
/// lost its record, and its next owner waited the whole grace. The operator's action: stop one
/// of two brokers, start it again, three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_with_sigterm_hands_every_shard_over() {
    let etcd = EtcdServer::start();
    let names = ["h1", "h2"];
    let addrs = [free_udp_addr(), free_udp_addr()];
    let config = |i: usize| {
        cluster_config(&etcd, names[i], addrs[i], MAX_TTL_MS).replace("shards = 8", "shards = 64")
    };
    let mut brokers: Vec<Broker> = (0..2)
        .map(|i| Broker::start_at(TempDir::new(names[i]), &config(i), addrs[i]))
        .collect();
    spread_over(&etcd, &names, 64);
    for round in 0..3 {
        brokers[0].signal("TERM");
        assert!(
            brokers[0].wait_exit(Duration::from_secs(20)).is_some(),
            "h1 did not exit on SIGTERM"
        );
        let status = spread_over(&etcd, &names[1..], 64);
        let graced = in_grace(&status);
        assert!(
            graced.is_empty(),
            "round {round}: {} shards of the broker that left wait a grace at h2:\n{}",
            graced.len(),
            graced.join("\n")
        );
        let old = brokers.remove(0);
        brokers.insert(0, Broker::start_at(old.kill(), &config(0), addrs[0]));
        let status = spread_over(&etcd, &names, 64);
        assert!(
            in_grace(&status).is_empty(),
            "round {round}: h1 rejoined with a grace:\n{status}"
        );
    }
}

/// Issue 24, planned moves: acquires waiting for a key when its shard's owner leaves (SIGTERM)
/// keep their queue order at the next owner. Five clients queue one after another behind a
/// holder; the owner leaves; the holder finishes its work and unlocks; each waiter, granted in
/// turn, unlocks — and the grants come in the order the clients queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_acquires_keep_their_queue_order_when_the_owner_leaves() {
    let etcd = EtcdServer::start();
    let addrs = [free_udp_addr(), free_udp_addr()];
    let mut brokers = vec![
        start_member(&etcd, "q1", addrs[0]),
        start_member(&etcd, "q2", addrs[1]),
    ];
    let key = "queue/{order}";
    let owner = settled_owner(&[&brokers[0], &brokers[1]], key).await;
    let holder = client_of_all(&[&brokers[0], &brokers[1]]).await;
    let guard = holder.lock(key).ttl(HOLD_TTL).await.expect("holder locks");
    let granted = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..5u32 {
        let client = client_of_all(&[&brokers[0], &brokers[1]]).await;
        let granted = granted.clone();
        waiters.push(tokio::spawn(async move {
            let g = client
                .lock(key)
                .ttl(HOLD_TTL)
                .wait(Duration::from_secs(60))
                .await
                .map_err(|e| format!("waiter {i}: {e}"))?;
            granted.lock().push(i);
            g.unlock()
                .await
                .map_err(|e| format!("waiter {i} unlock: {e}"))?;
            client.close().await;
            Ok::<_, String>(())
        }));
        lockbroker_tests::util::wait_for_waiters(&holder, key, i + 1).await;
    }
    let mut leaving = brokers.remove(owner);
    leaving.signal("TERM");
    assert!(
        leaving.wait_exit(Duration::from_secs(20)).is_some(),
        "the owner did not exit on SIGTERM"
    );
    guard
        .unlock()
        .await
        .expect("the holder unlocks at the next owner");
    for w in waiters {
        tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .expect("every waiter is granted")
            .expect("waiter task")
            .expect("waiter");
    }
    assert_eq!(
        *granted.lock(),
        [0, 1, 2, 3, 4],
        "granted out of queue order"
    );
}

/// Issue 24's bound on a free key's wait after its shard's owner failed, with replicas: the
/// ownership lease (`cluster_config`'s 2 s) + 1 s.
const TAKEOVER_BOUND: Duration = Duration::from_millis(2000 + 1000);

/// Issue 24, replicated shards: with `replicas = 2`, the SIGKILL of a shard's owner, and then
/// the SIGSTOP of the next one past its ownership lease, cost a free key of that shard only
/// the ownership lease (2 s here), not the takeover grace: the backup already holds every
/// acknowledged lease. When the stopped owner resumes, no grace either. The holder of a key
/// of that shard only holds and keeps its lock; another client cannot take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_a_killed_owners_free_keys_wait_no_grace_and_its_holder_keeps_the_lock() {
    let etcd = EtcdServer::start();
    let names = ["p1", "p2", "p3"];
    let addrs = [free_udp_addr(), free_udp_addr(), free_udp_addr()];
    let config =
        |i: usize| cluster_config(&etcd, names[i], addrs[i], MAX_TTL_MS) + "replicas = 2\n";
    let mut brokers: Vec<Option<Broker>> = (0..3)
        .map(|i| {
            Some(Broker::start_at(
                TempDir::new(names[i]),
                &config(i),
                addrs[i],
            ))
        })
        .collect();
    let all: Vec<&Broker> = brokers.iter().flatten().collect();
    let client = client_of_all(&all).await;
    // A held key and a free key of one shard (one `{tag}`), and the broker that owns it.
    let held_key = "{t}/held".to_string();
    let owner = settled_owner(&all, &held_key).await;
    let free_key = held_key.replace("/held", "/free");
    let guard = client
        .lock(held_key.clone())
        .ttl(HOLD_TTL)
        .await
        .expect("lock the held key");
    // Let the backup get its snapshot and be named in sync.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // What the operator sees: `cluster status` names the shard's backup in sync, and the
    // owner's `/metrics` counts its shards in sync and the changes not yet acknowledged.
    let shard = lockbroker_proto::shard_of(held_key.as_bytes(), 8);
    let status = crate::cluster::cluster_status_of(&etcd, 8);
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("shard {shard} ")))
        .unwrap_or_default();
    assert!(
        line.contains(" in_sync p") && line.contains(&format!("owner {}", names[owner])),
        "the held key's shard {shard} shows no backup in sync:\n{status}"
    );
    let metrics = lockbroker_tests::http::get(all[owner].admin.expect("admin"), "/metrics")
        .await
        .body;
    let gauge = |name| lockbroker_tests::http::sample(&metrics, name);
    assert!(
        gauge("lockbroker_replicated_shards_in_sync") >= Some(1.0)
            && gauge("lockbroker_replicated_shards")
                >= gauge("lockbroker_replicated_shards_in_sync")
            && gauge("lockbroker_replication_lag_changes").is_some(),
        "the owner's /metrics shows no shard in sync:\n{metrics}"
    );

    // The fault: the owner is SIGKILLed.
    let killed_at = Instant::now();
    drop(brokers[owner].take().map(Broker::kill));
    let free = client
        .lock(free_key.clone())
        .wait(Duration::from_secs(30))
        .await
        .expect("the free key is granted");
    let waited = killed_at.elapsed();
    free.unlock().await.expect("unlock the free key");
    eprintln!("replicas: a free key of the killed owner's shard waited {waited:?}");
    // Issue 24's bound: the ownership lease + 1 s (measured 2.0–2.3 s; a grace is 10 s).
    assert!(
        waited < TAKEOVER_BOUND,
        "a free key waited {waited:?} after its owner's SIGKILL: more than its ownership lease + 1 s"
    );
    assert_still_held(&guard, "SIGKILL of its shard's owner, with replicas").await;

    // Fault 2: the new owner is SIGSTOPped past its ownership lease; the last broker, its
    // backup, takes over. Then it resumes (and gets its shards handed back, no grace).
    let rest: Vec<&Broker> = brokers.iter().flatten().collect();
    let owner = rest[settled_owner(&rest, &held_key).await];
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = Instant::now();
    owner.signal("STOP");
    let free = client
        .lock(held_key.replace("/held", "/free2"))
        .wait(Duration::from_secs(30))
        .await
        .expect("the free key is granted");
    let waited = stopped_at.elapsed();
    free.unlock().await.expect("unlock the free key");
    tokio::time::sleep(Duration::from_secs(4)).await;
    owner.signal("CONT");
    eprintln!("replicas: a free key of the stopped owner's shard waited {waited:?}");
    // Measured 1.6–2.4 s. It was 3.0 s while the client, left unanswered by the stopped
    // owner, asked another broker, was sent back by `Moved` (the stopped owner's lease still
    // ran) and waited one more bound there: a broker left for silence is now not gone back to
    // until it answers (`sdk/src/route/silence.rs`).
    assert!(
        waited < TAKEOVER_BOUND,
        "a free key waited {waited:?} after its owner's SIGSTOP: more than its ownership lease + 1 s"
    );
    tokio::time::sleep(HOLD_TTL).await;
    let resumed_at = Instant::now();
    let free = client
        .lock(held_key.replace("/held", "/free3"))
        .wait(Duration::from_secs(30))
        .await
        .expect("the free key is granted");
    let waited = resumed_at.elapsed();
    free.unlock().await.expect("unlock the free key");
    assert!(
        waited < Duration::from_secs(1),
        "a free key waited {waited:?} after the stopped owner resumed: a grace"
    );
    assert_still_held(&guard, "SIGSTOP of its shard's owner, with replicas").await;
    let other = client_of_all(&rest).await;
    assert!(
        matches!(other.try_lock(held_key.clone()).await, Err(Error::Busy)),
        "another client got the held key"
    );
    guard.unlock().await.expect("unlock");
}

/// Issue 24: replicated shards on brokers that require client certificates. The members'
/// replication links carry none (they prove the cluster key instead); before, the broker
/// refused their handshake, so no backup was ever in sync and every failover waited the
/// grace. Now the link comes up (`cluster status` names the held key's backup in sync), a
/// client with a certificate of the client CA locks as before, and one without is refused
/// `Denied` before it can send a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_brokers_that_require_client_certificates_keep_their_backups_in_sync() {
    let etcd = EtcdServer::start();
    let pki = lockbroker_tests::plugins::client_pki("carol");
    let dir = TempDir::new("mtls-ca");
    let ca = dir.path().join("clients-ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write the client CA");
    let names = ["m1", "m2"];
    let addrs = [free_udp_addr(), free_udp_addr()];
    let brokers: Vec<Broker> = (0..2)
        .map(|i| {
            let toml = cluster_config(&etcd, names[i], addrs[i], MAX_TTL_MS)
                + &format!(
                    "replicas = 2\n[tls]\nclient_ca = {:?}\nrequire_client_cert = true\n",
                    ca.display().to_string()
                );
            Broker::start_at(TempDir::new(names[i]), &toml, addrs[i])
        })
        .collect();
    let mut builder = Client::builder();
    let mut cas = Vec::new();
    for b in &brokers {
        builder = builder.broker(b.url());
        cas.extend(std::fs::read(b.ca()).expect("dev certificate"));
    }
    let carol = builder
        .ca_pem(cas.clone())
        .client_cert(pki.cert_pem.clone(), pki.key_pem.clone())
        .connect()
        .await
        .expect("connect with a client certificate");
    let key = "{m}/held".to_string();
    let guard = carol
        .lock(key.clone())
        .wait(Duration::from_secs(30))
        .await
        .expect("carol locks");
    // The backup of the key's shard comes into sync (bounded: 20 s).
    let shard = lockbroker_proto::shard_of(key.as_bytes(), 8);
    let start = Instant::now();
    loop {
        let status = crate::cluster::cluster_status_of(&etcd, 8);
        let line = status
            .lines()
            .find(|l| l.starts_with(&format!("shard {shard} ")))
            .unwrap_or_default()
            .to_string();
        if line.contains(" in_sync m") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the shard's backup never came into sync under require_client_cert:\n{status}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // A client without a certificate: refused, naming why.
    let mut anonymous = Client::builder();
    for b in &brokers {
        anonymous = anonymous.broker(b.url());
    }
    let refused = match anonymous.ca_pem(cas).connect().await {
        Ok(c) => c.try_lock(key.clone()).await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(
        matches!(&refused, Err(Error::Denied(m)) if m.contains("client certificate")),
        "a client without a certificate: {refused:?}"
    );
    guard.unlock().await.expect("unlock");
}
