//! The SDK's client metrics (`lockbroker_sdk::metrics`) against the real broker: acquire waits
//! by mode and outcome, hold times ended by unlock, drop and loss (an operator's forced
//! release), lost leases — and no key in any name or label. They are read from a `metrics-util`
//! `DebuggingRecorder` set as this thread's *local* recorder around a current-thread runtime:
//! every SDK task (the connection, the guards' watchdogs) runs on this thread and records into
//! it, while the other tests' clients, on their own threads, record into nothing.

use std::time::Duration;

use lockbroker_sdk::Error;
use lockbroker_sdk::metrics::{ACQUIRE_WAIT_SECONDS, ACQUIRES, HOLD_SECONDS, LOST_LEASES};
use lockbroker_tests::Broker;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

/// One metric of a snapshot: name, labels in order, value.
type Recorded = (String, Vec<(String, String)>, DebugValue);

/// What was recorded since the previous snapshot (a snapshot drains the recorder).
fn take(snapshotter: &Snapshotter) -> Vec<Recorded> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            (key.name().to_string(), labels, value)
        })
        .collect()
}

fn matches(r: &Recorded, name: &str, labels: &[(&str, &str)]) -> bool {
    r.0 == name
        && r.1.len() == labels.len()
        && r.1
            .iter()
            .zip(labels)
            .all(|(a, b)| a.0 == b.0 && a.1 == b.1)
}

/// The samples of the histogram `name` with exactly `labels`.
fn samples(taken: &[Recorded], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    taken
        .iter()
        .filter(|r| matches(r, name, labels))
        .flat_map(|r| match &r.2 {
            DebugValue::Histogram(v) => v.iter().map(|x| x.into_inner()).collect::<Vec<f64>>(),
            other => panic!("{name} is not a histogram: {other:?}"),
        })
        .collect()
}

/// The increments of the counter `name` with exactly `labels`.
fn count(taken: &[Recorded], name: &str, labels: &[(&str, &str)]) -> u64 {
    taken
        .iter()
        .filter(|r| matches(r, name, labels))
        .map(|r| match &r.2 {
            DebugValue::Counter(n) => *n,
            other => panic!("{name} is not a counter: {other:?}"),
        })
        .sum()
}

fn no_key_in(taken: &[Recorded]) {
    for (name, labels, _) in taken {
        assert!(
            !name.contains("sdk-metrics") && !labels.iter().any(|(_, v)| v.contains("sdk-metrics")),
            "a key leaked into a metric: {name} {labels:?}"
        );
    }
}

const EXCLUSIVE: (&str, &str) = ("mode", "exclusive");

/// The exclusive acquire waits that ended with `outcome`.
fn exclusive_waits(taken: &[Recorded], outcome: &str) -> Vec<f64> {
    samples(
        taken,
        ACQUIRE_WAIT_SECONDS,
        &[EXCLUSIVE, ("outcome", outcome)],
    )
}

#[test]
fn the_sdk_records_waits_holds_and_lost_leases() {
    let broker = Broker::start();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime");
        rt.block_on(async {
            let client = broker.client().await;
            let held = client
                .lock("sdk-metrics/a")
                .ttl(Duration::from_secs(30))
                .await
                .expect("lock");
            // While it is held: a try-lock and a bounded wait run out; a dropped acquire is
            // cancelled.
            assert_eq!(
                client.try_lock("sdk-metrics/a").await.map(drop),
                Err(Error::Busy)
            );
            assert_eq!(
                client
                    .lock("sdk-metrics/a")
                    .wait(Duration::from_millis(200))
                    .await
                    .map(drop),
                Err(Error::Timeout)
            );
            let dropped =
                tokio::time::timeout(Duration::from_millis(100), client.lock("sdk-metrics/a"))
                    .await;
            assert!(dropped.is_err(), "the acquire was still waiting");
            held.unlock().await.expect("unlock");
            let shared = client.read_lock("sdk-metrics/r").await.expect("read lock");
            drop(shared);

            let taken = take(&snapshotter);
            let wait = |outcome| exclusive_waits(&taken, outcome);
            assert_eq!(wait("granted").len(), 1, "{taken:?}");
            let timeouts = wait("timeout");
            assert_eq!(timeouts.len(), 2, "try-lock and bounded wait: {taken:?}");
            assert!(
                timeouts.iter().any(|&s| s >= 0.2),
                "the bounded wait took its 200 ms: {timeouts:?}"
            );
            assert_eq!(wait("cancelled").len(), 1, "{taken:?}");
            assert_eq!(
                samples(
                    &taken,
                    ACQUIRE_WAIT_SECONDS,
                    &[("mode", "shared"), ("outcome", "granted")]
                )
                .len(),
                1
            );
            let holds = samples(&taken, HOLD_SECONDS, &[EXCLUSIVE]);
            assert_eq!(holds.len(), 1, "{taken:?}");
            assert!(
                holds[0] >= 0.3,
                "held through a 200 ms wait and a 100 ms cancel: {holds:?}"
            );
            assert_eq!(
                samples(&taken, HOLD_SECONDS, &[("mode", "shared")]).len(),
                1,
                "a dropped guard's hold"
            );
            assert_eq!(count(&taken, ACQUIRES, &[EXCLUSIVE]), 4);
            assert_eq!(count(&taken, ACQUIRES, &[("mode", "shared")]), 1);
            assert_eq!(count(&taken, LOST_LEASES, &[EXCLUSIVE]), 0);
            no_key_in(&taken);

            // An operator ends a lease (with the broker's admin token): the guard reports it
            // lost.
            let doomed = client
                .lock("sdk-metrics/lost")
                .ttl(Duration::from_secs(60))
                .await
                .expect("lock");
            let revoked = broker.force_release("sdk-metrics/lost").await;
            assert_eq!(revoked.status, 200, "{revoked:?}");
            tokio::time::timeout(Duration::from_secs(2), doomed.lost())
                .await
                .expect("the holder was told within 2 s (TTL 60 s)");
            // The hold ended at the loss: dropping the guard observes nothing more.
            drop(doomed);
            let taken = take(&snapshotter);
            assert_eq!(count(&taken, LOST_LEASES, &[EXCLUSIVE]), 1, "{taken:?}");
            assert_eq!(samples(&taken, HOLD_SECONDS, &[EXCLUSIVE]).len(), 1);
            assert_eq!(exclusive_waits(&taken, "granted").len(), 1);
            no_key_in(&taken);

            // A multi-key lock is one acquire (exclusive) with one wait; each key's guard
            // has its own hold.
            let both = client
                .lock_all(["sdk-metrics/x", "sdk-metrics/y"])
                .await
                .expect("lock_all");
            drop(both);
            let taken = take(&snapshotter);
            assert_eq!(count(&taken, ACQUIRES, &[EXCLUSIVE]), 1, "{taken:?}");
            assert_eq!(exclusive_waits(&taken, "granted").len(), 1);
            assert_eq!(samples(&taken, HOLD_SECONDS, &[EXCLUSIVE]).len(), 2);
            no_key_in(&taken);
        });
        // The runtime's tasks end under the local recorder too.
        drop(rt);
    });
}
