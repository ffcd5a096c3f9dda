//! The broker process's life: SIGTERM shuts it down cleanly (exit 0, sessions ended, leases
//! released rather than left to expire), fencing tokens keep growing across restarts on the
//! same data dir (the epoch is persisted), and the `serve` banner tells clients how to connect.

use std::time::{Duration, Instant};

use lockbroker_sdk::Error;
use lockbroker_tests::util::{run_bounded, wait_for_waiters};
use lockbroker_tests::{Broker, lockbroker_bin};

/// Sends SIGTERM and waits (bounded, off the async workers) for the broker to exit.
async fn terminate(mut broker: Broker) -> (Broker, std::process::ExitStatus) {
    broker.signal("TERM");
    tokio::task::spawn_blocking(move || {
        let status = broker
            .wait_exit(Duration::from_secs(30))
            .expect("broker exited within 30 s of SIGTERM");
        (broker, status)
    })
    .await
    .expect("wait task")
}

fn epoch_of(banner: &[String]) -> u64 {
    banner
        .iter()
        .find_map(|l| {
            l.split_once("(epoch ")
                .and_then(|(_, r)| r.strip_suffix(')'))
                .and_then(|e| e.parse().ok())
        })
        .unwrap_or_else(|| panic!("no epoch in banner {banner:?}"))
}

fn is_disconnect(e: &Error) -> bool {
    matches!(
        e,
        Error::Disconnected(_) | Error::Connect(_) | Error::Unavailable(_) | Error::Lost(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_0_and_ends_sessions() {
    let broker = Broker::start();
    let key = "life/k";
    let holder = broker
        .client_builder()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap();
    let waiter = broker.client().await;
    let watcher = broker.client().await;
    let guard = holder
        .lock(key)
        .ttl(Duration::from_secs(3))
        .await
        .expect("holder locks");
    let waiting = {
        let waiter = waiter.clone();
        tokio::spawn(async move { waiter.lock(key).await })
    };
    wait_for_waiters(&watcher, key, 1).await;
    let watching = {
        let watcher = watcher.clone();
        tokio::spawn(async move { watcher.wait_until_unlocked(key).await })
    };
    // Let the watcher's request reach the broker before the shutdown.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let start = Instant::now();
    let (_broker, status) = terminate(broker).await;
    assert!(
        status.success(),
        "broker exit status after SIGTERM: {status:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "shutdown took {:?}",
        start.elapsed()
    );

    // Pending requests end instead of hanging. The shutdown does not release the holder's
    // lease (it runs to its TTL, and the next start waits it out), so the watcher is never
    // told the key was released or expired.
    let watched = tokio::time::timeout(Duration::from_secs(10), watching)
        .await
        .expect("watcher answered after shutdown")
        .unwrap();
    match &watched {
        Ok(outcome) => panic!("the shutdown must not end the holder's lease: {outcome:?}"),
        Err(e) => assert!(is_disconnect(e), "watcher: {e:?}"),
    }
    let waited = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("waiter answered after shutdown")
        .unwrap();
    if let Err(e) = &waited {
        assert!(is_disconnect(e), "waiter: {e:?}");
    }
    eprintln!(
        "after SIGTERM: watcher {watched:?}, waiter {:?}",
        waited.as_ref().map(|g| g.fence())
    );

    // The holder sees the broker gone: requests fail, and its guard reports the lease lost.
    let r = holder.inspect(key).await;
    assert!(
        matches!(&r, Err(e) if is_disconnect(e)),
        "inspect after shutdown: {r:?}"
    );
    let lost = tokio::time::timeout(Duration::from_secs(15), guard.lost())
        .await
        .expect("guard reports the lease lost once the broker is gone");
    assert!(matches!(lost, Error::Lost(_)), "{lost:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fences_keep_growing_across_restarts() {
    let broker = Broker::start();
    let epoch1 = epoch_of(&broker.banner);
    let c = broker.client().await;
    let mut last = 0;
    for _ in 0..3 {
        let g = c.lock("epoch/k").await.unwrap();
        assert!(g.fence() > last);
        last = g.fence();
        g.unlock().await.unwrap();
    }
    let cert_before = std::fs::read(broker.ca()).unwrap();
    c.close().await;

    // Graceful restart on the same data dir.
    let (broker, _) = terminate(broker).await;
    let dir = broker.kill();
    let broker = Broker::start_in(dir, "");
    let epoch2 = epoch_of(&broker.banner);
    assert!(epoch2 > epoch1, "epoch {epoch1} → {epoch2}");
    assert_eq!(
        std::fs::read(broker.ca()).unwrap(),
        cert_before,
        "the dev certificate is kept across restarts"
    );
    let c = broker.client().await;
    let g = c.lock("epoch/k").await.unwrap();
    assert!(
        g.fence() > last,
        "fence after restart {} not above {last}",
        g.fence()
    );
    last = g.fence();
    // A different key too: tokens are above everything issued before.
    let g2 = c.lock("epoch/other").await.unwrap();
    assert!(g2.fence() > last - 1);
    drop((g, g2));
    c.close().await;

    // Crash restart (SIGKILL): still growing.
    let dir = broker.kill();
    let broker = Broker::start_in(dir, "");
    assert!(epoch_of(&broker.banner) > epoch2);
    let c = broker.client().await;
    let g = c.lock("epoch/k").await.unwrap();
    assert!(
        g.fence() > last,
        "fence after crash restart {} not above {last}",
        g.fence()
    );
    g.unlock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banner_names_the_dev_cert_and_a_working_client_command() {
    let broker = Broker::start();
    let banner = broker.banner.join("\n");
    let ca = std::fs::canonicalize(broker.ca()).expect("dev cert exists");
    let ca = ca.display().to_string();
    assert!(
        banner.contains(&format!("lockbroker listening on {}/udp", broker.addr)),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("generated a self-signed dev certificate: {ca}")),
        "banner should name the dev cert {ca}: {banner}"
    );
    let export = broker
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("export "))
        .unwrap_or_else(|| panic!("no export line: {banner}"));
    assert_eq!(
        export,
        format!("LOCKBROKER_URL={} LOCKBROKER_CA={ca}", broker.url())
    );
    let line = broker
        .banner
        .iter()
        .find_map(|l| l.trim().strip_prefix("lockbroker lock "))
        .unwrap_or_else(|| panic!("no client command line: {banner}"));
    assert!(line.contains(&format!("--ca {ca}")), "{line}");
    assert!(
        line.contains(&format!("--broker {}", broker.url())),
        "{line}"
    );

    // The printed command works as printed (no LOCKBROKER_* environment needed).
    let mut cmd = std::process::Command::new(lockbroker_bin());
    cmd.arg("lock")
        .args(line.split_whitespace())
        .env_remove("LOCKBROKER_URL")
        .env_remove("LOCKBROKER_CA");
    let out = run_bounded(cmd, Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "printed command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "locked");

    // So do the printed environment variables.
    let mut cmd = std::process::Command::new(lockbroker_bin());
    cmd.args(["inspect", "my-key"]);
    for kv in export.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        cmd.env(k, v);
    }
    let out = run_bounded(cmd, Duration::from_secs(60)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("state: unlocked"));

    // On a restart the existing certificate is named again, not regenerated.
    let dir = broker.kill();
    let broker = Broker::start_in(dir, "");
    let banner = broker.banner.join("\n");
    assert!(!banner.contains("generated"), "{banner}");
    assert!(banner.contains(&format!("LOCKBROKER_CA={ca}")), "{banner}");
}
