//! In-process entry for the `session` fuzz target (`fuzz/`), compiled only with
//! `--cfg fuzzing` (cargo fuzz sets it): a real [`Broker`] and real sessions, fed decoded
//! frames straight into the command layer — no QUIC, no sockets — with the table's internal
//! invariants checked after every frame.

use std::sync::Arc;

use lockbroker_proto::Frame;

use super::cmd;
use super::policy::Policy;
use super::session::Session;
use crate::broker::Broker;
use crate::config::Config;
use crate::horizon::Previous;
use crate::identity::Identity;

/// A broker for fuzzing: default config (short TTLs so expiry runs), data dir under /tmp.
pub fn broker() -> Arc<Broker> {
    let mut cfg = Config::default();
    cfg.data_dir = std::env::temp_dir().join(format!("lockbroker-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&cfg.data_dir);
    cfg.locks.default_ttl_ms = 50;
    cfg.locks.max_ttl_ms = 200;
    cfg.limits.max_leases_per_session = 64;
    cfg.limits.max_waiters_per_session = 64;
    Broker::new(cfg, 1, Identity::from_bytes(&[7; 32]), Previous::Clean)
}

/// Runs `frames` (each tagged with one of four sessions) through the command layer, expiring
/// due deadlines between frames, then closes the sessions (cleanly or not, by `clean`).
pub async fn run(broker: &Arc<Broker>, frames: Vec<(u8, Frame)>, clean: bool) {
    let policy = Arc::new(Policy::default());
    let sessions: Vec<Session> = (0..4)
        .map(|i| {
            let (id, handle) = broker.open_session(&format!("fuzz-{}", i % 2));
            Session {
                broker: broker.clone(),
                policy: policy.clone(),
                id,
                handle,
            }
        })
        .collect();
    let mut alive = [true; 4];
    for (who, frame) in frames {
        let i = usize::from(who % 4);
        if !alive[i] {
            continue;
        }
        if cmd::apply(&sessions[i], frame).await.is_err() {
            // A protocol error ends that session, as the read loop would.
            alive[i] = false;
            broker.close_session(sessions[i].id, false);
        }
        broker.with_table(|t, now, out| {
            t.expire_some(now, 64, out);
            t.check_invariants();
        });
    }
    for (i, s) in sessions.iter().enumerate() {
        if alive[i] {
            broker.close_session(s.id, clean);
        }
    }
    broker.with_table(|t, _, _| t.check_invariants());
}
