//! The system under test as the orchestrator and the nemesis drive it: the broker processes
//! (one, or the members of a cluster on etcd; each with its spec) and the current phase's
//! config, the client pool, the broker↔Redis proxy and, in cluster mode, etcd.

use std::time::Duration;

use anyhow::Context;

use crate::broker::{BrokerProcess, BrokerSpec, PhaseConfig};
use crate::clients::ClientPool;
use lockbroker_tests::etcd::EtcdServer;
use lockbroker_tests::proxy::StallableProxy;

/// One broker: what it is started with, and its process while it runs.
pub struct BrokerSlot {
    pub spec: BrokerSpec,
    /// `None` while the broker is down (killed, left, between phases).
    pub process: Option<BrokerProcess>,
}

pub struct Cluster {
    pub brokers: Vec<BrokerSlot>,
    pub phase: PhaseConfig,
    pub clients: ClientPool,
    pub proxy: StallableProxy,
    /// The etcd of cluster mode (kept alive for the run).
    pub etcd: Option<EtcdServer>,
    /// Broker exits we did not cause (broker, status), a finding in itself.
    pub unexpected_broker_exits: Vec<String>,
}

impl Cluster {
    /// Starts broker `i` with the current phase's config; a failed start is retried (3 times
    /// in all), since a port just freed by a killed broker may take a moment.
    pub async fn start_broker(&mut self, i: usize) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match BrokerProcess::start(&self.brokers[i].spec, &self.phase).await {
                Ok(b) => {
                    self.brokers[i].process = Some(b);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
            .context(format!("cannot (re)start {}", self.brokers[i].spec.name)))
    }

    /// Starts every broker that is down.
    pub async fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.brokers.len() {
            if self.brokers[i].process.is_none() {
                self.start_broker(i).await?;
            }
        }
        Ok(())
    }

    /// Brokers that are running (maybe paused).
    pub fn up(&self) -> Vec<usize> {
        (0..self.brokers.len())
            .filter(|&i| self.brokers[i].process.is_some())
            .collect()
    }

    /// SIGKILLs broker `i`.
    pub async fn kill_broker(&mut self, i: usize) {
        if let Some(b) = self.brokers[i].process.take() {
            b.kill().await;
        }
    }

    /// Stops broker `i` gracefully (SIGTERM; in a cluster it hands its shards over).
    pub async fn stop_broker(&mut self, i: usize) {
        if let Some(b) = self.brokers[i].process.take() {
            b.stop().await;
        }
    }

    /// Stops every broker gracefully.
    pub async fn stop_all(&mut self) {
        for i in 0..self.brokers.len() {
            self.stop_broker(i).await;
        }
    }

    pub fn pause_broker(&self, i: usize) -> bool {
        self.brokers[i]
            .process
            .as_ref()
            .is_some_and(BrokerProcess::pause)
    }

    pub fn resume_broker(&self, i: usize) {
        if let Some(b) = &self.brokers[i].process {
            b.resume();
        }
    }

    /// Restarts brokers or clients that ended on their own, recording it.
    pub async fn heal_crashes(&mut self) -> anyhow::Result<()> {
        for i in 0..self.brokers.len() {
            let slot = &mut self.brokers[i];
            if let Some(status) = slot.process.as_mut().and_then(BrokerProcess::exited) {
                self.unexpected_broker_exits
                    .push(format!("{}: {status}", slot.spec.name));
                slot.process = None;
                self.start_broker(i).await?;
            }
        }
        self.clients
            .respawn_exited()
            .context("respawn a client that exited")
    }
}
