//! Lease secrets under hostile input (issue 23, findings 2 and 7): what a second principal can
//! do with the key that signs lease secrets, or with what etcd holds; and a lease's mode, which
//! its secret binds, so a reclaim cannot change it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{
    Acquire, ErrorCode, Extend, Frame, Hello, LeaseSecret, Mode, Reclaim, Release, WaitSpec,
};
use lockbroker_sdk::{Client, Guard};
use lockbroker_tests::etcd::{
    Access, ClusterStore, EtcdServer, EtcdUser, cluster_config, free_udp_addr,
};
use lockbroker_tests::raw::RawConn;
use lockbroker_tests::{Broker, TempDir};
use ring::hmac;

const TOKENS: &str = r#"
[auth]
tokens = { "alice-token" = "alice", "bob-token" = "bob" }
"#;

/// A lease secret as the broker computes it (`broker/src/identity.rs`), under `hmac_key` —
/// as an attacker who has a key would. Each test checks this against a secret the broker
/// handed out, so it cannot drift from the broker's.
fn secret_of(hmac_key: &[u8], key: &str, fence: u64, principal: &str, mode: Mode) -> LeaseSecret {
    let k = hmac::Key::new(hmac::HMAC_SHA256, hmac_key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(b"lockbroker lease secret v2");
    ctx.update(&(key.len() as u64).to_le_bytes());
    ctx.update(key.as_bytes());
    ctx.update(&fence.to_le_bytes());
    ctx.update(&(principal.len() as u64).to_le_bytes());
    ctx.update(principal.as_bytes());
    let (tag, n) = match mode {
        Mode::Exclusive => (0u8, 0u32),
        Mode::Shared => (1, 0),
        Mode::Semaphore(n) => (2, n),
    };
    ctx.update(&[tag]);
    ctx.update(&n.to_le_bytes());
    let tag = ctx.sign();
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag.as_ref()[..16]);
    LeaseSecret(out)
}

/// A raw session of `addr` trusting `ca`, authenticated with `token` (or anonymous).
async fn raw_session(addr: SocketAddr, ca: &std::path::Path, token: Option<&str>) -> RawConn {
    let mut c = RawConn::connect(addr, ca).await;
    c.send_frame(&Frame::Hello(Hello {
        token: token.map(str::to_owned),
        client: "secrets-test".into(),
    }))
    .await;
    match next_answer(&mut c).await {
        Frame::Welcome(_) => c,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// The next frame that is not a pushed shard map.
async fn next_answer(c: &mut RawConn) -> Frame {
    loop {
        match c.next_frame(Duration::from_secs(10)).await {
            Some(Frame::ShardMap(_)) => continue,
            Some(f) => return f,
            None => panic!("no answer within 10 s"),
        }
    }
}

async fn ask(c: &mut RawConn, f: Frame) -> Frame {
    c.send_frame(&f).await;
    next_answer(c).await
}

fn reclaim(id: u64, key: &str, fence: u64, mode: Mode, secret: LeaseSecret) -> Frame {
    Frame::Reclaim(Reclaim {
        id,
        key: Bytes::copy_from_slice(key.as_bytes()),
        fence,
        mode,
        ttl_ms: 30_000,
        secret,
        owner: Bytes::new(),
    })
}

fn extend(id: u64, key: &str, fence: u64, secret: LeaseSecret) -> Frame {
    Frame::Extend(Extend {
        id,
        key: Bytes::copy_from_slice(key.as_bytes()),
        fence,
        ttl_ms: 30_000,
        secret,
    })
}

fn release(id: u64, key: &str, fence: u64, secret: LeaseSecret) -> Frame {
    Frame::Release(Release {
        id,
        key: Bytes::copy_from_slice(key.as_bytes()),
        fence,
        ack: true,
        secret,
    })
}

fn is_not_owner(f: &Frame) -> bool {
    matches!(
        f,
        Frame::Error {
            code: ErrorCode::NotOwner,
            ..
        }
    )
}

/// `bob` tries every request about alice's lease (`key`, `fence`) with `secret`: each must be
/// refused `NotOwner`. `what` names the secret in a failure.
async fn bob_is_refused(bob: &mut RawConn, key: &str, fence: u64, secret: LeaseSecret, what: &str) {
    for (name, frame) in [
        ("extend", extend(1, key, fence, secret)),
        ("release", release(2, key, fence, secret)),
        ("reclaim", reclaim(3, key, fence, Mode::Exclusive, secret)),
    ] {
        let answer = ask(bob, frame).await;
        assert!(
            is_not_owner(&answer),
            "bob's {name} of alice's lease with {what}: {answer:?}"
        );
    }
}

/// Alice's lease still renews: nobody took it over.
async fn alice_still_holds(guard: &Guard) {
    guard
        .extend(Duration::from_secs(30))
        .await
        .expect("alice still holds her lease");
    assert!(!guard.is_lost());
}

/// Finding 2 (c): a second principal with the broker key — so with a secret that is valid for
/// *itself* on alice's fence — cannot release, extend or reclaim alice's live lease: the
/// broker checks the lease's recorded principal, whatever the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_valid_for_another_principal_takes_no_lease_over() {
    let broker = Broker::start_with_config(TOKENS);
    let alice = broker
        .client_builder()
        .token("alice-token")
        .connect()
        .await
        .expect("alice connects");
    let guard = alice
        .lock("jobs/report")
        .ttl(Duration::from_secs(30))
        .no_renew()
        .await
        .expect("alice locks");
    let fence = guard.fence();
    let broker_key = std::fs::read(broker.data_dir.path().join("broker.key")).expect("broker key");
    assert_eq!(
        secret_of(&broker_key, "jobs/report", fence, "alice", Mode::Exclusive),
        guard.secret(),
        "the test computes secrets as the broker does"
    );
    let forged = secret_of(&broker_key, "jobs/report", fence, "bob", Mode::Exclusive);
    let mut bob = raw_session(broker.addr, &broker.ca(), Some("bob-token")).await;
    bob_is_refused(
        &mut bob,
        "jobs/report",
        fence,
        forged,
        "a secret valid for bob",
    )
    .await;
    bob_is_refused(
        &mut bob,
        "jobs/report",
        fence,
        guard.secret(),
        "alice's own secret",
    )
    .await;
    alice_still_holds(&guard).await;
}

/// Finding 2 (a): everything etcd holds under the cluster's prefix, read as a user with read
/// access only (etcd with auth and a role limited to the prefix, as README sets it up), yields
/// no key that signs alice's lease secrets: tried as the key (raw, or hex-decoded), no value
/// reproduces her secret, and the secrets bob computes from each take nothing over. The key
/// is in the key file only. Alice's lease stays hers. (Before: `/lockbroker/test/secret` held
/// the key; bob's reclaim with a secret made from it was `Granted`, with alice's fence, and
/// alice's next extend got `NotOwner`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_read_access_gives_no_lease_takeover() {
    let etcd = EtcdServer::start();
    let prefix = "/lockbroker/test/";
    etcd.enable_auth(&[
        EtcdUser {
            name: "lockbroker",
            password: "broker-password",
            access: Access::ReadWrite,
            prefix,
        },
        EtcdUser {
            name: "snoop",
            password: "snoop-password",
            access: Access::Read,
            prefix,
        },
    ]);
    let addr = free_udp_addr();
    let toml = cluster_config(&etcd, "s1", addr, 30_000)
        + "username = \"lockbroker\"\npassword = \"broker-password\"\n"
        + TOKENS;
    let broker = Broker::start_at(TempDir::new("secrets-s1"), &toml, addr);
    let alice = broker
        .client_builder()
        .token("alice-token")
        .connect()
        .await
        .expect("alice connects");
    let key = "jobs/report";
    let guard = lock_eventually(&alice, key).await;
    let fence = guard.fence();

    // The key that signs secrets: the cluster's key file (which the test, unlike the snoop,
    // can read). Checked first, so the attempts below use the broker's own scheme.
    let cluster_key = std::fs::read(etcd.key_file()).expect("the cluster key file");
    let cluster_key = hex(&cluster_key).expect("the key file holds hex");
    assert_eq!(
        secret_of(&cluster_key, key, fence, "alice", Mode::Exclusive),
        guard.secret(),
        "the test computes secrets as the broker does"
    );

    let seen = etcd.read_prefix("snoop", "snoop-password", prefix);
    let names: Vec<String> = seen
        .iter()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n.ends_with("/key-fingerprint")),
        "the snoop reads the cluster's keys: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n.ends_with("/secret")),
        "no key in etcd: {names:?}"
    );
    let mut bob = raw_session(broker.addr, &broker.ca(), Some("bob-token")).await;
    for (name, value) in &seen {
        let name = String::from_utf8_lossy(name);
        let mut candidates = vec![value.clone()];
        if let Some(decoded) = hex(value) {
            candidates.push(decoded);
        }
        for candidate in candidates {
            let forged = secret_of(&candidate, key, fence, "bob", Mode::Exclusive);
            bob_is_refused(
                &mut bob,
                key,
                fence,
                forged,
                &format!("the value of {name}"),
            )
            .await;
            assert_ne!(
                secret_of(&candidate, key, fence, "alice", Mode::Exclusive),
                guard.secret(),
                "the value of {name} signs alice's lease secrets"
            );
        }
    }
    // Even with the key itself, bob's own secret for alice's fence takes nothing over.
    let forged = secret_of(&cluster_key, key, fence, "bob", Mode::Exclusive);
    bob_is_refused(&mut bob, key, fence, forged, "the cluster key").await;
    alice_still_holds(&guard).await;
}

/// The cluster key is the key file's, the same on every broker: a broker whose file holds
/// another key refuses to start, naming the file (etcd holds the fingerprint of the key the
/// first broker used); and cluster mode without `key_file` is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_another_cluster_key_refuses_to_start_naming_its_key_file() {
    let etcd = EtcdServer::start();
    let addr = free_udp_addr();
    let first = Broker::start_at(
        TempDir::new("key-first"),
        &cluster_config(&etcd, "k1", addr, 3000),
        addr,
    );
    let dir = TempDir::new("key-other");
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, format!("{}\n", "5a".repeat(32))).expect("write a key");
    let other = cluster_config(&etcd, "k2", free_udp_addr(), 3000).replace(
        &format!("key_file = {:?}", etcd.key_file().display().to_string()),
        &format!("key_file = {:?}", other_key.display().to_string()),
    );
    let out = serve(&dir, "other", &other).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started with another key: {stderr}");
    assert!(
        stderr.contains(&other_key.display().to_string()) && stderr.contains("fingerprint"),
        "the error names the key file: {stderr}"
    );
    let keyless: String = other
        .lines()
        .filter(|l| !l.starts_with("key_file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let out = serve(&dir, "keyless", &keyless).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started without a key file: {stderr}"
    );
    assert!(stderr.contains("cluster.key_file"), "{stderr}");
    drop(first);
}

/// Runs `lockbroker serve` with config `toml` (data dir `<dir>/<name>`) to its exit (bounded).
async fn serve(dir: &TempDir, name: &str, toml: &str) -> std::process::Output {
    let config = dir.path().join(format!("{name}.toml"));
    std::fs::write(&config, toml).expect("write config");
    let mut cmd = std::process::Command::new(lockbroker_tests::lockbroker_bin());
    cmd.arg("serve")
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join(name))
        .arg("--config")
        .arg(&config);
    lockbroker_tests::util::run_bounded(cmd, Duration::from_secs(60)).await
}

/// The bytes a hex string (a file's or etcd value's text, whitespace trimmed) stands for.
fn hex(text: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(text).ok()?.trim();
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Locks `key` through `c`, retrying (bounded) while the cluster cannot grant it yet.
async fn lock_eventually(c: &Client, key: &str) -> Guard {
    let start = Instant::now();
    loop {
        match c
            .lock(key.to_string())
            .ttl(Duration::from_secs(30))
            .no_renew()
            .wait(Duration::from_secs(10))
            .await
        {
            Ok(g) => return g,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{key} never granted: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Acquires `key` in `mode` on a raw session: (fence, secret).
async fn acquire(c: &mut RawConn, id: u64, key: &str, mode: Mode) -> (u64, LeaseSecret) {
    let answer = ask(
        c,
        Frame::Acquire(Acquire {
            id,
            key: Bytes::copy_from_slice(key.as_bytes()),
            mode,
            ttl_ms: 30_000,
            wait: WaitSpec::NoWait,
            owner: Bytes::new(),
            ticket: 0,
            fence_block: 1,
        }),
    )
    .await;
    match answer {
        Frame::Granted(g) => (g.fence, g.secret),
        other => panic!("acquire {key} {mode:?}: {other:?}"),
    }
}

/// Finding 7: two readers share a key; the broker crashes and restarts into its grace. One
/// reader reclaiming its lease as *exclusive* used to be granted — and the other reader's
/// reclaim was then refused, its lease lost. The secret binds the mode now: the exclusive
/// reclaim is refused, and both readers get their shared leases back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_reader_cannot_reclaim_its_lease_as_exclusive_in_the_restart_grace() {
    let broker = Broker::start();
    let addr = broker.addr;
    let key = "reports/daily";
    let mut a = raw_session(addr, &broker.ca(), None).await;
    let mut b = raw_session(addr, &broker.ca(), None).await;
    let (fence_a, secret_a) = acquire(&mut a, 1, key, Mode::Shared).await;
    let (fence_b, secret_b) = acquire(&mut b, 1, key, Mode::Shared).await;
    // The crash: the readers' connections stay open (a clean close would release their leases).
    let broker = Broker::start_at(broker.kill(), "", addr);
    let banner = broker.banner.join("\n");
    assert!(banner.contains("restart grace"), "{banner}");

    let mut a2 = raw_session(addr, &broker.ca(), None).await;
    let mut b2 = raw_session(addr, &broker.ca(), None).await;
    let upgraded = ask(&mut a2, reclaim(1, key, fence_a, Mode::Exclusive, secret_a)).await;
    assert!(
        is_not_owner(&upgraded),
        "a shared lease reclaimed as exclusive: {upgraded:?}"
    );
    let other = ask(&mut b2, reclaim(1, key, fence_b, Mode::Shared, secret_b)).await;
    assert!(
        matches!(&other, Frame::Granted(g) if g.fence == fence_b && g.secret == secret_b),
        "the other reader's reclaim: {other:?}"
    );
    let again = ask(&mut a2, reclaim(2, key, fence_a, Mode::Shared, secret_a)).await;
    assert!(
        matches!(&again, Frame::Granted(g) if g.fence == fence_a),
        "the first reader's reclaim as shared: {again:?}"
    );
    drop((a, b));
}
