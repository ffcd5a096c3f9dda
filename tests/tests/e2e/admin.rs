//! The admin HTTP listener against the real binary: the address in the banner, `/healthz`
//! and `/readyz`, `/metrics` counting a lock, `/api/locks` (holders, paging, waiters),
//! `/api/sessions`, and `POST /api/release` ending a held lease at once (the guard's `lost()`
//! fires) with the token rule. The token check for non-loopback peers is unit-tested in
//! `broker/src/admin/auth.rs` (a test has no second interface to come from); what loopback
//! peers, other Hosts and Origins may do is `admin_trust.rs`.

use std::time::Duration;

use lockbroker_tests::Broker;
use lockbroker_tests::http::{self, sample};
use lockbroker_tests::util::eventually;
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(10);

fn admin(broker: &Broker) -> std::net::SocketAddr {
    broker
        .admin
        .unwrap_or_else(|| panic!("no admin address in the banner {:?}", broker.banner))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_answer_and_the_banner_names_the_admin_address() {
    let broker = Broker::start();
    let addr = admin(&broker);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let h = http::get(addr, "/healthz").await;
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.json()["ok"], json!(true));
    let ready = eventually("readyz 200", LIMIT, || async {
        let r = http::get(addr, "/readyz").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(ready.json()["reason"], json!("serving"));
    let page = http::get(addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>lockbroker status</title>"));
    assert_eq!(http::get(addr, "/status.js").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_lock_and_its_hold_time() {
    let broker = Broker::start();
    let addr = admin(&broker);
    let before = http::get(addr, "/metrics").await;
    assert_eq!(before.status, 200);
    let grants = sample(&before.body, "lockbroker_grants_total").expect("grants counter");
    let client = broker.client().await;
    let guard = client.lock("metrics/k").await.expect("lock");
    let during = http::get(addr, "/metrics").await.body;
    assert_eq!(
        sample(&during, "lockbroker_grants_total"),
        Some(grants + 1.0)
    );
    assert_eq!(sample(&during, "lockbroker_held_leases"), Some(1.0));
    assert_eq!(sample(&during, "lockbroker_sessions"), Some(1.0));
    assert!(sample(&during, "lockbroker_connections").is_some_and(|c| c >= 1.0));
    guard.unlock().await.expect("unlock");
    let after = http::get(addr, "/metrics").await.body;
    assert_eq!(sample(&after, "lockbroker_releases_total"), Some(1.0));
    assert_eq!(sample(&after, "lockbroker_held_leases"), Some(0.0));
    assert!(sample(&after, "lockbroker_acquire_wait_seconds_count").is_some_and(|c| c >= 1.0));
    // Hold times are sampled on one lease in 16 (by fence): 32 more lock cycles have
    // consecutive fences, so exactly two of them are measured.
    for _ in 0..32 {
        client
            .lock("metrics/k")
            .await
            .expect("lock")
            .unlock()
            .await
            .expect("unlock");
    }
    let sampled = http::get(addr, "/metrics").await.body;
    let holds = sample(&sampled, "lockbroker_hold_seconds_count").expect("hold histogram");
    assert!(
        (2.0..=3.0).contains(&holds),
        "{holds} hold times for 33 leases"
    );
    assert!(
        !after.contains("metrics/k"),
        "a key leaked into the metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_lists_locks_with_holders_and_waiters_and_pages() {
    let broker = Broker::start();
    let addr = admin(&broker);
    let a = broker.client().await;
    let b = broker.client().await;
    let ga = a.lock("api/a").await.expect("lock api/a");
    let _gb = a.lock("api/b").await.expect("lock api/b");
    let _gc = a.lock("other/c").await.expect("lock other/c");
    // A second session waits on api/a.
    let waiter = tokio::spawn({
        let b = b.clone();
        async move { b.lock("api/a").wait(Duration::from_secs(30)).await }
    });
    let listed = eventually("api/a shows its waiter", LIMIT, || async {
        let r = http::get(addr, "/api/locks?prefix=api/").await.json();
        (r["locks"][0]["waiters"] == json!(1)).then_some(r)
    })
    .await;
    let locks = listed["locks"].as_array().expect("locks");
    assert_eq!(locks.len(), 2, "{listed}");
    assert_eq!(locks[0]["key"], json!("api/a"));
    assert_eq!(locks[1]["key"], json!("api/b"));
    let holder = &locks[0]["holders"][0];
    assert_eq!(holder["fence"], json!(ga.fence().to_string()));
    assert_eq!(holder["mode"], json!("exclusive"));
    assert_eq!(holder["principal"], json!("anonymous"));
    assert_eq!(holder["owner"], json!(null));
    assert!(holder["ttl_remaining_ms"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(listed["next"], json!(null));

    // Paging: one key per page, following `next`.
    let p1 = http::get(addr, "/api/locks?prefix=api/&limit=1")
        .await
        .json();
    assert_eq!(p1["locks"][0]["key"], json!("api/a"));
    // The cursor is opaque (URL-safe base64 of the last key: keys need not be UTF-8).
    let next = p1["next"].as_str().expect("a cursor").to_owned();
    let p2 = http::get(
        addr,
        &format!("/api/locks?prefix=api/&limit=1&cursor={next}"),
    )
    .await
    .json();
    assert_eq!(p2["locks"][0]["key"], json!("api/b"));
    assert_eq!(p2["next"], json!(null));
    let all = http::get(addr, "/api/locks").await.json();
    assert_eq!(all["locks"].as_array().map(Vec::len), Some(3));

    let sessions = http::get(addr, "/api/sessions").await.json();
    let list = sessions["sessions"].as_array().expect("sessions");
    assert_eq!(list.len(), 2, "{sessions}");
    let holding = list
        .iter()
        .find(|s| s["leases"] == json!(3))
        .expect("a's session");
    assert_eq!(holding["principal"], json!("anonymous"));
    assert!(
        holding["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:"))
    );
    assert!(
        holding["connected_since_ms"]
            .as_u64()
            .is_some_and(|t| t > 0)
    );
    assert!(list.iter().any(|s| s["waiting"] == json!(1)), "{sessions}");
    let first = http::get(addr, "/api/sessions?limit=1").await.json();
    assert_eq!(first["sessions"].as_array().map(Vec::len), Some(1));
    assert!(first["next"].is_string(), "{first}");

    ga.unlock().await.expect("unlock");
    let g = waiter.await.expect("join").expect("the waiter got api/a");
    drop(g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_release_ends_the_lease_at_once_and_tells_the_holder() {
    let broker = Broker::start_with_config(
        "[admin]\ntokens = { \"0123456789abcdef-ops\" = \"ops-alice\" }\n",
    );
    let addr = admin(&broker);
    let holder = broker.client().await;
    let other = broker.client().await;
    let guard = holder
        .lock("stuck/job")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let fence = guard.fence();

    // A wrong token is refused, even from loopback, and nothing is released.
    let refused = http::post_json(
        addr,
        "/api/release",
        &[("Authorization", "Bearer not-a-known-token-000")],
        &json!({ "key": "stuck/job" }),
    )
    .await;
    assert_eq!(refused.status, 401, "{refused:?}");
    assert!(!guard.is_lost());
    // Bad bodies are refused.
    let bad = http::post_json(
        addr,
        "/api/release",
        &[("Authorization", "Bearer 0123456789abcdef-ops")],
        &json!({ "nokey": 1 }),
    )
    .await;
    assert_eq!(bad.status, 400, "{bad:?}");

    // The right token.
    let released = http::post_json(
        addr,
        "/api/release",
        &[("Authorization", "Bearer 0123456789abcdef-ops")],
        &json!({ "key": "stuck/job" }),
    )
    .await;
    assert_eq!(released.status, 200, "{released:?}");
    let body = released.json();
    assert_eq!(
        body["revoked"][0]["fence"],
        json!(fence.to_string()),
        "{body}"
    );
    assert_eq!(body["revoked"][0]["principal"], json!("anonymous"));
    let why = tokio::time::timeout(Duration::from_secs(2), guard.lost())
        .await
        .expect("the holder was told within 2 s (TTL 60 s)");
    assert!(why.to_string().contains("operator"), "{why}");
    let taken = other.try_lock("stuck/job").await.expect("free at once");
    assert!(taken.fence() > fence);
    drop(taken);

    // Loopback needs a token too; releasing a free key revokes nothing.
    let nothing = http::post_json(addr, "/api/release", &[], &json!({ "key": "free/key" })).await;
    assert_eq!(nothing.status, 401, "{nothing:?}");
    let nothing = http::post_json(
        addr,
        "/api/release",
        &[("Authorization", "Bearer 0123456789abcdef-ops")],
        &json!({ "key": "free/key" }),
    )
    .await;
    assert_eq!(nothing.status, 200);
    assert_eq!(nothing.json()["revoked"], json!([]));
    let m = http::get(addr, "/metrics").await.body;
    assert_eq!(sample(&m, "lockbroker_revocations_total"), Some(1.0));
}

/// The operator commands against the real binary: `lockbroker locks` lists a key the SDK
/// holds (fence, principal, waiters), `sessions` lists the holder's session, `release` without
/// `--force` refuses, `release --force` without a token is refused (the lease stays), and with
/// `--data-dir` (the broker's `admin-token`) ends the lease at once (the guard's `lost()`
/// fires).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_sessions_and_release_force_from_the_cli() {
    use lockbroker_tests::lockbroker_bin;
    use lockbroker_tests::util::run_bounded;
    let broker = Broker::start();
    let url = format!("http://{}", admin(&broker));
    let holder = broker.client().await;
    let waiter = broker.client().await;
    let guard = holder
        .lock("ops/cli/job")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let queued = tokio::spawn(async move {
        waiter
            .lock("ops/cli/job")
            .wait(Duration::from_secs(30))
            .await
            .map(|g| g.fence())
    });
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(lockbroker_bin());
        cmd.args(args).arg("--admin").arg(&url);
        cmd
    };
    // The waiter is queued (bounded wait) before the listing.
    eventually("the waiter queued", LIMIT, || async {
        let out = run_bounded(cli(&["locks", "--prefix", "ops/cli/"]), LIMIT).await;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.contains("ops/cli/job") && l.trim_end().ends_with(" 1"))
            .then_some(())
    })
    .await;
    let out = run_bounded(cli(&["locks", "--prefix", "ops/"]), LIMIT).await;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{listed}");
    assert!(listed.contains("ops/cli/job"), "{listed}");
    assert!(listed.contains(&guard.fence().to_string()), "{listed}");
    assert!(listed.contains("anonymous"), "{listed}");
    let out = run_bounded(cli(&["sessions"]), LIMIT).await;
    let sessions = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && sessions.contains("anonymous"),
        "{sessions}"
    );
    assert!(
        sessions.lines().count() >= 3,
        "two sessions and a header: {sessions}"
    );
    let out = run_bounded(cli(&["release", "ops/cli/job"]), LIMIT).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(!guard.is_lost());
    let out = run_bounded(cli(&["release", "--force", "ops/cli/job"]), LIMIT).await;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "released without a token");
    assert!(err.contains("401") && err.contains("--data-dir"), "{err}");
    assert!(!guard.is_lost());
    let data_dir = broker.data_dir.path().to_str().expect("a UTF-8 path");
    let out = run_bounded(
        cli(&["release", "--force", "ops/cli/job", "--data-dir", data_dir]),
        LIMIT,
    )
    .await;
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains(&guard.fence().to_string()), "{said}");
    tokio::time::timeout(LIMIT, guard.lost())
        .await
        .expect("the holder was told at once");
    let next = tokio::time::timeout(LIMIT, queued)
        .await
        .expect("the waiter is granted")
        .expect("join")
        .expect("granted");
    assert!(next > guard.fence());
}

/// Owner labels: a lock taken with `.owner(…)` shows its label in the SDK's `inspect`, the
/// admin API, `lockbroker locks` and `lockbroker inspect`; `lockbroker lock` labels its lease
/// `HOSTNAME:PID` by default; a queued client's `inspect` tells its place in the queue; a
/// forced release reaches the holder as revoked by an operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_labels_and_queue_positions_are_shown_everywhere() {
    use lockbroker_tests::util::run_bounded;
    use lockbroker_tests::{cli, lockbroker_bin};
    let broker = Broker::start();
    let addr = admin(&broker);
    let holder = broker.client().await;
    let guard = holder
        .lock("own/k")
        .owner("worker-7@host-3")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let info = holder.inspect("own/k").await.expect("inspect");
    assert_eq!(info.owner_label(), Some("worker-7@host-3"), "{info:?}");
    assert_eq!(info.queue_position, None, "the holder is not queued");

    // Two queued clients: each is told its own place.
    let first = broker.client().await;
    let second = broker.client().await;
    let queue = |c: lockbroker_sdk::Client| {
        tokio::spawn(async move {
            c.lock("own/k")
                .wait(Duration::from_secs(30))
                .await
                .map(|g| g.fence())
        })
    };
    let q1 = queue(first.clone());
    eventually("the first waiter queued", LIMIT, || async {
        (first.inspect("own/k").await.ok()?.queue_position == Some(1)).then_some(())
    })
    .await;
    let q2 = queue(second.clone());
    eventually("the second waiter queued", LIMIT, || async {
        (second.inspect("own/k").await.ok()?.queue_position == Some(2)).then_some(())
    })
    .await;

    let locks = http::get(addr, "/api/locks?prefix=own/").await.json();
    assert_eq!(
        locks["locks"][0]["holders"][0]["owner"],
        json!("worker-7@host-3"),
        "{locks}"
    );
    let url = format!("http://{addr}");
    let mut cmd = std::process::Command::new(lockbroker_bin());
    cmd.args(["locks", "--prefix", "own/", "--admin", &url]);
    let out = run_bounded(cmd, LIMIT).await;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("worker-7@host-3"), "{listed}");
    let mut cmd = cli(&broker);
    cmd.args(["inspect", "own/k"]);
    let out = run_bounded(cmd, LIMIT).await;
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(shown.contains("owner=worker-7@host-3"), "{shown}");
    assert!(shown.contains("waiters: 2"), "{shown}");

    // The CLI's default label: HOSTNAME:PID of the `lock` process.
    let mut cmd = cli(&broker);
    cmd.args(["lock", "own/cli", "--", "sleep", "5"]);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .expect("run lockbroker lock");
    let pid = child.id().expect("pid");
    let label = eventually("the CLI's lease listed", LIMIT, || async {
        let locks = http::get(addr, "/api/locks?prefix=own/cli").await.json();
        locks["locks"][0]["holders"][0]["owner"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    assert!(label.ends_with(&format!(":{pid}")), "{label}");
    let _ = child.kill().await;

    // A forced release (with the broker's admin-token): the holder is told it was revoked,
    // and the queue moves on in order.
    let released = broker.force_release("own/k").await;
    assert_eq!(released.status, 200, "{released:?}");
    let why = tokio::time::timeout(LIMIT, guard.lost())
        .await
        .expect("told at once");
    assert!(why.to_string().contains("revoked"), "{why}");
    let f1 = q1.await.expect("join").expect("first granted");
    assert!(f1 > guard.fence());
    let again = broker.force_release("own/k").await;
    assert_eq!(again.status, 200, "{again:?}");
    let f2 = q2.await.expect("join").expect("second granted");
    assert!(f2 > f1);
}
