//! The nemesis: every 1–3 s (seeded) it injects one fault into the cluster and schedules its
//! undo (SIGCONT, respawn, restart, unstall). At most one broker-side fault (pause, kill,
//! leave, stalled Redis) is active at a time — in a cluster, so a majority of brokers stays; client faults overlap freely with everything. At the
//! end of a phase the broker-side faults are undone at once, so the broker is whole when it is
//! restarted with the next phase's config; client faults carry on across that restart (a
//! client may be stopped through it, as it could be through any planned restart). At the end
//! of the run every fault is undone.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::broker::{OWNERSHIP_TTL, PhaseConfig};
use crate::clients::SlotState;
use crate::clock::mono_ns;
use crate::cluster::Cluster;
use crate::faults::{FaultKind, FaultLog};

/// What undoes a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Undo {
    RespawnClient(usize),
    ResumeClient(usize),
    ResumeBroker(usize),
    RestartBroker(usize),
    Unstall,
}

impl Undo {
    fn is_broker_side(self) -> bool {
        matches!(
            self,
            Undo::ResumeBroker(_) | Undo::RestartBroker(_) | Undo::Unstall
        )
    }
}

struct Pending {
    due: Instant,
    undo: Undo,
    /// Index in the fault log.
    fault: usize,
}

pub struct Nemesis {
    rng: StdRng,
    ttl: Duration,
    pub log: FaultLog,
    pending: Vec<Pending>,
}

impl Nemesis {
    pub fn new(seed: u64, ttl: Duration) -> Nemesis {
        Nemesis {
            rng: StdRng::seed_from_u64(seed),
            ttl,
            log: FaultLog::default(),
            pending: Vec::new(),
        }
    }

    /// A random duration between `lo` and `hi` times the TTL.
    fn ttl_times(&mut self, lo: f64, hi: f64) -> Duration {
        self.ttl.mul_f64(self.rng.random_range(lo..=hi))
    }

    /// A random duration between `lo` and `hi` times the cluster's ownership lease.
    fn ownership_times(&mut self, lo: f64, hi: f64) -> Duration {
        OWNERSHIP_TTL.mul_f64(self.rng.random_range(lo..=hi))
    }

    /// Injects faults until `end`, then undoes the broker-side faults still active.
    ///
    /// Bounded: every pass sleeps until the next due time or acts on one, no fault starts at
    /// or after `end`, and at `end` the pending broker-side undos run without waiting.
    pub async fn run_until(&mut self, cluster: &mut Cluster, end: Instant) -> anyhow::Result<()> {
        let mut next_fault = Instant::now() + self.gap();
        loop {
            let now = Instant::now();
            if now >= end {
                return self.undo_now(cluster, Undo::is_broker_side).await;
            }
            let mut wake = next_fault.min(end).min(now + Duration::from_millis(100));
            if let Some(due) = self.pending.iter().map(|p| p.due).min() {
                wake = wake.min(due);
            }
            tokio::time::sleep_until(wake.into()).await;
            let now = Instant::now();
            while let Some(i) = self.pending.iter().position(|p| p.due <= now) {
                let p = self.pending.swap_remove(i);
                self.undo(cluster, p).await?;
            }
            if now >= next_fault && now < end {
                self.inject(cluster).await?;
                next_fault = now + self.gap();
            }
            if !self.broker_side_active() {
                cluster.heal_crashes().await?;
            }
        }
    }

    /// The pause between two faults: 1–3 s.
    fn gap(&mut self) -> Duration {
        Duration::from_millis(self.rng.random_range(1000..=3000))
    }

    fn broker_side_active(&self) -> bool {
        self.pending.iter().any(|p| p.undo.is_broker_side())
    }

    fn schedule(&mut self, after: Duration, undo: Undo, fault: usize) {
        self.pending.push(Pending {
            due: Instant::now() + after,
            undo,
            fault,
        });
    }

    /// Picks one applicable fault at random and injects it.
    async fn inject(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        let running: Vec<usize> = (0..cluster.clients.len())
            .filter(|&i| cluster.clients.state(i) == SlotState::Running)
            .collect();
        let clustered = matches!(cluster.phase, PhaseConfig::Cluster { .. });
        let up = cluster.up();
        let mut kinds = Vec::new();
        if !running.is_empty() {
            kinds.extend([FaultKind::KillClient, FaultKind::PauseClient]);
        }
        if !self.broker_side_active() && !up.is_empty() {
            kinds.extend([FaultKind::PauseBroker, FaultKind::KillBroker]);
            match cluster.phase {
                PhaseConfig::SyncMirror { .. } => kinds.push(FaultKind::StallRedis),
                PhaseConfig::Cluster { .. } => kinds.push(FaultKind::LeaveBroker),
                PhaseConfig::Memory => {}
            }
        }
        let Some(&kind) = kinds.choose(&mut self.rng) else {
            return Ok(());
        };
        let client = running.choose(&mut self.rng).copied().unwrap_or(0);
        let broker = up.choose(&mut self.rng).copied().unwrap_or(0);
        let broker_name = cluster.brokers[broker].spec.name.clone();
        match kind {
            FaultKind::KillClient => {
                let fault = self.log.start(kind, format!("client {client}"), mono_ns());
                cluster.clients.kill(client).await;
                let down = Duration::from_millis(self.rng.random_range(100..=500));
                self.schedule(down, Undo::RespawnClient(client), fault);
            }
            FaultKind::PauseClient => {
                let fault = self.log.start(kind, format!("client {client}"), mono_ns());
                cluster.clients.pause(client);
                let pause = self.ttl_times(0.5, 3.0);
                self.schedule(pause, Undo::ResumeClient(client), fault);
            }
            FaultKind::PauseBroker => {
                let fault = self.log.start(kind, broker_name, mono_ns());
                cluster.pause_broker(broker);
                let pause = if clustered {
                    self.ownership_times(1.25, 2.0)
                } else {
                    self.ttl_times(1.5, 2.0)
                };
                self.schedule(pause, Undo::ResumeBroker(broker), fault);
            }
            FaultKind::KillBroker => {
                let fault = self.log.start(kind, broker_name, mono_ns());
                cluster.kill_broker(broker).await;
                let down = if clustered {
                    self.ownership_times(1.5, 3.0)
                } else {
                    Duration::from_millis(self.rng.random_range(0..=300))
                };
                self.schedule(down, Undo::RestartBroker(broker), fault);
            }
            FaultKind::LeaveBroker => {
                let fault = self.log.start(kind, broker_name, mono_ns());
                cluster.stop_broker(broker).await;
                let down = self.ownership_times(1.0, 2.5);
                self.schedule(down, Undo::RestartBroker(broker), fault);
            }
            FaultKind::StallRedis => {
                let fault = self.log.start(kind, "broker<->redis".into(), mono_ns());
                cluster.proxy.set_stalled(true);
                let stall = self.ttl_times(1.0, 3.0);
                self.schedule(stall, Undo::Unstall, fault);
            }
            FaultKind::PhaseSwitch => {}
        }
        Ok(())
    }

    async fn undo(&mut self, cluster: &mut Cluster, p: Pending) -> anyhow::Result<()> {
        match p.undo {
            Undo::RespawnClient(i) => cluster.clients.spawn(i)?,
            Undo::ResumeClient(i) => cluster.clients.resume(i),
            Undo::ResumeBroker(i) => cluster.resume_broker(i),
            Undo::RestartBroker(i) => cluster.start_broker(i).await?,
            Undo::Unstall => cluster.proxy.set_stalled(false),
        }
        self.log.end(p.fault, mono_ns());
        Ok(())
    }

    /// Undoes every active fault now (end of the run).
    pub async fn undo_all(&mut self, cluster: &mut Cluster) -> anyhow::Result<()> {
        self.undo_now(cluster, |_| true).await
    }

    /// Undoes the active faults `which` selects now, in the order they were due.
    async fn undo_now(
        &mut self,
        cluster: &mut Cluster,
        which: fn(Undo) -> bool,
    ) -> anyhow::Result<()> {
        self.pending.sort_by_key(|p| p.due);
        let (now, later) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition::<Vec<_>, _>(|p| which(p.undo));
        self.pending = later;
        for p in now {
            self.undo(cluster, p).await?;
        }
        Ok(())
    }
}
