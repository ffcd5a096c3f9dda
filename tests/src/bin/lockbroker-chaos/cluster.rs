//! The system under test as the orchestrator and the nemesis drive it: the broker process (its
//! spec and the current phase's config), the client pool and the broker↔Redis proxy.

use std::time::Duration;

use anyhow::Context;

use crate::broker::{BrokerProcess, BrokerSpec, PhaseConfig};
use crate::clients::ClientPool;
use lockbroker_tests::proxy::StallableProxy;

pub struct Cluster {
    pub spec: BrokerSpec,
    pub phase: PhaseConfig,
    /// `None` while the broker is down (killed, between phases).
    pub broker: Option<BrokerProcess>,
    pub clients: ClientPool,
    pub proxy: StallableProxy,
    /// Broker exits we did not cause (status), a finding in itself.
    pub unexpected_broker_exits: Vec<String>,
}

impl Cluster {
    /// Starts the broker with the current phase's config; a failed start is retried (3 times
    /// in all), since a port just freed by a killed broker may take a moment.
    pub async fn start_broker(&mut self) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match BrokerProcess::start(&self.spec, &self.phase).await {
                Ok(b) => {
                    self.broker = Some(b);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last
            .unwrap_or_else(|| anyhow::anyhow!("no attempt"))
            .context("cannot (re)start the broker"))
    }

    /// SIGKILLs the broker.
    pub async fn kill_broker(&mut self) {
        if let Some(b) = self.broker.take() {
            b.kill().await;
        }
    }

    /// Stops the broker gracefully (SIGTERM).
    pub async fn stop_broker(&mut self) {
        if let Some(b) = self.broker.take() {
            b.stop().await;
        }
    }

    pub fn pause_broker(&self) -> bool {
        self.broker.as_ref().is_some_and(BrokerProcess::pause)
    }

    pub fn resume_broker(&self) {
        if let Some(b) = &self.broker {
            b.resume();
        }
    }

    /// Restarts a broker or clients that ended on their own, recording it.
    pub async fn heal_crashes(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.broker.as_mut().and_then(BrokerProcess::exited) {
            self.unexpected_broker_exits.push(status.to_string());
            self.broker = None;
            self.start_broker().await?;
        }
        self.clients
            .respawn_exited()
            .context("respawn a client that exited")
    }
}
