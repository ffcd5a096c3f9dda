//! Exclusion across broker restarts with a *frozen* holder (found with `lockbroker-chaos`):
//! the holder's whole runtime is blocked — as under SIGSTOP or a long GC pause — while the
//! broker restarts and another client asks for the key; right after it resumes, the holder asks
//! `is_lost()` (which reads the clock, so it needs no task to run). Its lease's TTL has not run
//! out, so it answers "held": the key must not have been granted to anyone else meanwhile.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use lockbroker_tests::redis::{RedisServer, mirror_config};
use lockbroker_tests::{Broker, TempDir};

const TTL: Duration = Duration::from_secs(5);

/// A client holding a lease on its own runtime thread, frozen after the grant.
struct FrozenHolder {
    fence: u64,
    resume: mpsc::Sender<()>,
    thread: JoinHandle<bool>,
}

impl FrozenHolder {
    /// Locks `key` on `broker`, then blocks the holder's runtime until [`FrozenHolder::resume`].
    fn lock(broker: &Broker, key: &'static str) -> FrozenHolder {
        let builder = broker.client_builder();
        let (fence_tx, fence_rx) = mpsc::channel();
        let (resume, resume_rx) = mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("holder runtime");
            let (client, guard) = rt.block_on(async {
                let client = builder.connect().await.expect("holder connects");
                let guard = client.lock(key).ttl(TTL).await.expect("holder locks");
                (client, guard)
            });
            fence_tx.send(guard.fence()).expect("report the fence");
            // Frozen: nothing of the holder runs (no watchdog, no connection driver).
            let _ = resume_rx.recv();
            let lost = guard.is_lost();
            rt.block_on(async move {
                drop(guard);
                drop(client);
            });
            lost
        });
        let fence = fence_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the holder got its lease");
        FrozenHolder {
            fence,
            resume,
            thread,
        }
    }

    /// Resumes the holder; returns what `is_lost()` said right away.
    fn resume(self) -> bool {
        let _ = self.resume.send(());
        self.thread.join().expect("holder thread")
    }
}

/// Graceful (SIGTERM) or SIGKILL restart on the same data dir.
fn restart(broker: Broker, graceful: bool, config: &str) -> Broker {
    let dir: TempDir = if graceful {
        let mut broker = broker;
        broker.signal("TERM");
        broker
            .wait_exit(Duration::from_secs(30))
            .expect("the broker exits on SIGTERM");
        broker.kill()
    } else {
        broker.kill()
    };
    Broker::start_in(dir, config)
}

/// Freezes a holder, restarts the broker, and has another client try the key for 1 s.
async fn frozen_holder_survives_restart(graceful: bool, config: &str) {
    let broker = Broker::start_with_config(config);
    let holder = FrozenHolder::lock(&broker, "restart/k");
    let broker = restart(broker, graceful, config);
    let other = broker.client().await;
    let taken = other
        .lock("restart/k")
        .ttl(TTL)
        .wait(Duration::from_secs(1))
        .await;
    let holder_fence = holder.fence;
    let holder_lost = holder.resume();
    if let Ok(g) = &taken {
        assert!(
            holder_lost,
            "two holders: fence {} still held by its (frozen) holder by its clock, and fence {} \
             granted to another client after the {} restart",
            holder_fence,
            g.fence(),
            if graceful { "graceful" } else { "SIGKILL" }
        );
    }
}

/// Control: with the sync mirror, a SIGKILLed broker restores the lease from Redis, so the key
/// stays held until the lease's TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mirror_sigkill_restart_keeps_a_frozen_holders_lease() {
    let redis = RedisServer::start();
    let config = mirror_config(&redis.url(), "sync", "");
    frozen_holder_survives_restart(false, &config).await;
}

/// A memory-only broker restarted after SIGKILL used to grant at once keys its previous run
/// had granted (fixed by the restart grace).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_sigkill_restart_keeps_a_frozen_holders_key() {
    frozen_holder_survives_restart(false, "").await;
}

/// A graceful shutdown used to release every connected session's leases without their
/// holders knowing (a frozen holder cannot read the close), so the restarted broker granted
/// them at once (fixed: a shutdown leaves leases to their TTL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_graceful_restart_keeps_a_frozen_holders_key() {
    frozen_holder_survives_restart(true, "").await;
}

/// The same with the sync mirror: the released leases used to be flushed to Redis at
/// shutdown, so nothing was restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_mirror_graceful_restart_keeps_a_frozen_holders_key() {
    let redis = RedisServer::start();
    let config = mirror_config(&redis.url(), "sync", "");
    frozen_holder_survives_restart(true, &config).await;
}
