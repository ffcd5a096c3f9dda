//! Restart grace (issue 11 finding 8): a broker restarted after a crash without restoring its
//! leases (memory only) used to hand out every key at once, beside holders of its previous run
//! that were still working. Now it grants nothing new until those leases may have ended, while
//! their holders reclaim them at once. A shutdown keeps held leases too; an idle broker needs
//! no grace.

use std::time::{Duration, Instant};

use lockbroker_sdk::Error;
use lockbroker_tests::http::{self, sample};
use lockbroker_tests::util::eventually;
use lockbroker_tests::{Broker, TempDir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_broker_grants_nothing_its_previous_run_may_still_hold() {
    let broker = Broker::start();
    let addr = broker.addr;
    let a = broker
        .client_builder()
        .keep_alive(Duration::from_millis(200))
        .idle_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    let held = a
        .lock("rs/k")
        .ttl(Duration::from_secs(4))
        .await
        .expect("lock");
    let crashed_at = Instant::now();
    let broker = Broker::start_at(broker.kill(), "", addr);
    let banner = broker.banner.join("\n");
    assert!(banner.contains("restart grace"), "{banner}");

    // Another client, 0.5 s after the restart: nothing is granted — neither the held key nor
    // any other, since the broker does not know what its previous run handed out.
    let b = broker.client().await;
    assert_eq!(b.try_lock("rs/k").await.err(), Some(Error::Busy));
    assert_eq!(b.try_lock("rs/other").await.err(), Some(Error::Busy));
    let info = b.inspect("rs/other").await.expect("inspect");
    assert!(
        info.blocked_for > Duration::from_secs(1),
        "inspect shows the grace: {info:?}"
    );

    // The holder's guard reconnects (once its client noticed the old connection is gone) and
    // reclaims its lease at once: it never loses it.
    let mut extended = Err(Error::Timeout);
    for _ in 0..30 {
        extended = held.extend(Duration::from_secs(4)).await;
        if extended.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    extended.expect("the holder keeps its lease across the restart");
    assert!(!held.is_lost());
    let info = b.inspect("rs/k").await.expect("inspect");
    assert_eq!(info.holders.len(), 1, "{info:?}");
    assert_eq!(info.holders[0].fence, held.fence());

    // A waiting acquire of another key is granted once the grace is over (the previous lease
    // ran 4 s plus the horizon's slack), not before.
    let other = b
        .lock("rs/other")
        .wait(Duration::from_secs(20))
        .await
        .expect("granted after the grace");
    assert!(
        crashed_at.elapsed() >= Duration::from_secs(4),
        "granted {:?} after the crash, inside the old lease's TTL",
        crashed_at.elapsed()
    );
    other.unlock().await.expect("unlock");
    held.unlock().await.expect("unlock");
    let g = b
        .try_lock("rs/k")
        .await
        .expect("free after the holder released");
    g.unlock().await.expect("unlock");
}

/// A shutdown does not release connected holders' leases (a paused holder could not be told
/// in time): the restart waits them out, and their holders reclaim them meanwhile. With nothing
/// held at the shutdown, or after a crash once the table had been empty, there is no grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_keeps_held_leases_and_an_idle_broker_needs_no_grace() {
    let broker = Broker::start();
    let addr = broker.addr;
    let holder = broker
        .client_builder()
        .keep_alive(Duration::from_millis(200))
        .request_timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("connect");
    let g = holder
        .lock("cs/k")
        .ttl(Duration::from_secs(4))
        .await
        .expect("lock");
    broker.signal("TERM");
    let mut broker = broker;
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some(), "exits");
    let broker = Broker::start_at(broker.kill(), "", addr);
    let banner = broker.banner.join("\n");
    assert!(banner.contains("restart grace"), "{banner}");
    let other = broker.client().await;
    assert_eq!(other.try_lock("cs/k").await.err(), Some(Error::Busy));
    let mut extended = Err(Error::Timeout);
    for _ in 0..30 {
        extended = g.extend(Duration::from_secs(4)).await;
        if extended.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    extended.expect("the holder reclaims its lease after the restart");
    g.unlock().await.expect("unlock");
    other.close().await;
    holder.close().await;

    // Nothing held at the shutdown: no grace.
    broker.signal("TERM");
    let mut broker = broker;
    assert!(broker.wait_exit(Duration::from_secs(20)).is_some(), "exits");
    let broker = Broker::start_at(broker.kill(), "", addr);
    let banner = broker.banner.join("\n");
    assert!(!banner.contains("restart grace"), "{banner}");
    let c = broker.client().await;
    let g = c.try_lock("cs/k").await.expect("granted at once");
    g.unlock().await.expect("unlock");
    c.close().await;

    // A crash once every lease has ended (the table was empty for a while) needs none either.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let broker = Broker::start_at(broker.kill(), "", addr);
    let banner = broker.banner.join("\n");
    assert!(!banner.contains("restart grace"), "{banner}");
    let c = broker.client().await;
    c.try_lock("cs/k")
        .await
        .expect("granted at once")
        .unlock()
        .await
        .expect("unlock");
}

/// A broker restarted on the same address and data dir resets the QUIC connections of its
/// previous run (its stateless-reset key comes from the broker key), so clients notice at once
/// and reconnect — they used to wait for their idle timeout (10 s by default), failing every
/// request meanwhile (found by the chaos checker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_restarted_broker_reconnect_without_waiting_for_the_idle_timeout() {
    let broker = Broker::start();
    let addr = broker.addr;
    // Default idle timeout (10 s) and keep-alive (2 s).
    let c = broker.client().await;
    c.inspect("rr/k").await.expect("inspect");
    let broker = Broker::start_at(broker.kill(), "", addr);
    let restarted = Instant::now();
    loop {
        if c.inspect("rr/k").await.is_ok() {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(8),
            "still cut off {:?} after the restart",
            restarted.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(broker);
}

/// Issue 23 finding 1: a grant used to be answered although its lease horizon could not be
/// written (only logged), so a crash then restarted with no grace beside a live holder. Now a
/// lease whose deadline the file does not cover is refused (`Unavailable`, saying why), the
/// broker is unready and counts the failures, and all is well again once the file can be
/// written. (`lease-horizon` points at /dev/full: every write fails, as on a full disk.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_the_horizon_file_cannot_cover_is_refused_and_the_broker_is_unready() {
    let dir = TempDir::new("horizon-full");
    let horizon = dir.path().join("lease-horizon");
    std::os::unix::fs::symlink("/dev/full", &horizon).expect("symlink");
    let broker = Broker::start_in(dir, "[locks]\ndefault_ttl_ms = 1000\nmax_ttl_ms = 1000\n");
    let admin = broker.admin.expect("admin listener");
    // An unreadable horizon is explained: the broker waits the longest lease (1 s here).
    let banner = broker.banner.join("\n");
    assert!(
        banner.contains("restart grace") && banner.contains("corrupt"),
        "{banner}"
    );
    // The operator looks at /readyz: once the grace is over it names the failing write.
    let reason = eventually(
        "readyz names the horizon",
        Duration::from_secs(10),
        || async {
            let r = http::get(admin, "/readyz").await;
            let reason = r.json()["reason"].as_str().unwrap_or_default().to_string();
            (r.status == 503 && reason.contains("lease horizon")).then_some(reason)
        },
    )
    .await;
    assert!(reason.contains("cannot write"), "{reason}");

    let c = broker.client().await;
    match c.try_lock("hf/k").await {
        Err(Error::Unavailable(why)) => assert!(why.contains("lease horizon"), "{why}"),
        other => panic!("a lease the horizon cannot cover was answered: {other:?}"),
    }
    let metrics = http::get(admin, "/metrics").await.body;
    assert!(
        sample(&metrics, "lockbroker_horizon_write_failures_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "lockbroker_horizon_writable"), Some(0.0));
    // Nothing was lost: the refused lease was given back.
    let info = c.inspect("hf/k").await.expect("inspect");
    assert!(info.holders.is_empty(), "{info:?}");

    // The disk is fixed: the next lease is written durably and answered.
    std::fs::remove_file(&horizon).expect("remove the symlink");
    let g = c
        .try_lock("hf/k")
        .await
        .expect("granted once the file can be written");
    assert!(
        std::fs::read_to_string(&horizon)
            .expect("horizon")
            .starts_with("until ")
    );
    let r = http::get(admin, "/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    g.unlock().await.expect("unlock");
}

/// Issue 23 finding 1, as the attacker did it: with `lease-horizon.tmp` made a directory the
/// horizon (written through that temp file) could not move past `clean`, a 60 s lease was
/// answered anyway, and after a SIGKILL the restarted broker granted the key again at once.
/// Now the file is rewritten in place (opened once: neither a temp file nor a new descriptor
/// is needed), and the restart waits for the lease. The broker also raises its open-file
/// limit to the hard limit at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_temp_path_cannot_make_a_crash_forget_a_held_lease() {
    let broker = Broker::start();
    let addr = broker.addr;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).expect("limits");
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let nums: Vec<&str> = files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        nums.first(),
        nums.get(1),
        "soft limit raised to the hard one: {files}"
    );
    std::fs::create_dir(broker.data_dir.path().join("lease-horizon.tmp")).expect("mkdir");

    let a = broker.client().await;
    let held = a
        .lock("ht/k")
        .ttl(Duration::from_secs(60))
        .await
        .expect("lock");
    let broker = Broker::start_at(broker.kill(), "", addr);
    let banner = broker.banner.join("\n");
    assert!(banner.contains("restart grace"), "{banner}");
    let b = broker.client().await;
    assert_eq!(
        b.try_lock("ht/k").await.err(),
        Some(Error::Busy),
        "granted beside the previous run's holder"
    );
    drop(held);
}
