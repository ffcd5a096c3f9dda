//! The owner's side of the replication link (issue 24): one task per backup member. It
//! connects to the backup, proves it holds the cluster key and checks the backup's proof,
//! then for each shard the driver assigns to that backup sends a snapshot (taken under the
//! table lock, together with the feed's restart) and streams the feed's changes in batches,
//! as they are recorded. Acknowledgements move the feeds on; a snapshot's acknowledgement
//! asks the driver to name the backup in sync in etcd.
//!
//! When the backup refuses a stream, stops acknowledging for [`ACK_TIMEOUT`], or the link
//! breaks, the task asks the driver to take the backup out of the in-sync set (etcd first,
//! then the feed releases its waiting answers: `driver.rs`), and starts again.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockbroker_proto::shard_of;
use tokio::sync::{Notify, mpsc, watch};

use super::handover::{HandedLease, Handover};
use super::peer::{self, LinkError, Role};
use super::peer_wire::PeerMsg;
use super::replicator::Replicator;
use crate::broker::Broker;

/// How long a backup may leave a change unacknowledged before it is taken out of sync.
pub(super) const ACK_TIMEOUT: Duration = Duration::from_millis(500);
/// Most changes in one batch.
const BATCH: usize = 256;

/// What a link asks of the driver, which owns the etcd session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum InSyncOp {
    /// Name `backup` in sync for `shard` in the owner's term `epoch`: it acknowledged the
    /// feed's snapshot `generation`.
    Add {
        shard: u32,
        backup: String,
        epoch: u64,
        generation: u64,
    },
    /// Take `shard`'s backup out of the in-sync set (term `epoch`).
    Remove { shard: u32, epoch: u64 },
}

/// What every link task shares.
#[derive(Clone)]
pub(super) struct LinkContext {
    pub me: String,
    pub key: Arc<[u8]>,
    pub shards: u32,
    pub broker: Arc<Broker>,
    pub replicator: Arc<Replicator>,
    pub endpoint: quinn::Endpoint,
    pub client_config: quinn::ClientConfig,
    pub in_sync: mpsc::UnboundedSender<InSyncOp>,
    /// Woken when a change is recorded.
    pub recorded: Arc<Notify>,
}

/// A running link to one backup: the shards assigned to it.
pub(super) struct Link {
    pub url: String,
    pub shards: watch::Sender<BTreeSet<u32>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// Starts the link to `backup` at `url` (`quic://host:port`).
    pub fn start(ctx: LinkContext, backup: String, url: String) -> Link {
        let (shards, rx) = watch::channel(BTreeSet::new());
        let task = tokio::spawn(run(ctx, backup, url.clone(), rx));
        Link { url, shards, task }
    }
}

/// Connects, serves, and after a failure starts again (bounded pace), until aborted.
async fn run(
    ctx: LinkContext,
    backup: String,
    url: String,
    mut assigned: watch::Receiver<BTreeSet<u32>>,
) {
    loop {
        let result = serve(&ctx, &backup, &url, &mut assigned).await;
        if let Err(e) = result {
            tracing::info!(target: "lockbroker::cluster", backup, "replication link: {e}");
        }
        // Whatever was in sync is not any more.
        for shard in assigned.borrow().iter() {
            out_of_sync(&ctx, *shard);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Asks the driver to take `shard`'s backup out of sync, if etcd may name it now.
pub(super) fn out_of_sync(ctx: &LinkContext, shard: u32) {
    let epoch = ctx
        .replicator
        .with_feed(shard, |f| f.is_named().then(|| f.epoch()))
        .flatten();
    if let Some(epoch) = epoch {
        let _ = ctx.in_sync.send(InSyncOp::Remove { shard, epoch });
    }
}

/// One connection's life.
async fn serve(
    ctx: &LinkContext,
    backup: &str,
    url: &str,
    assigned: &mut watch::Receiver<BTreeSet<u32>>,
) -> Result<(), LinkError> {
    let addr: SocketAddr = url
        .strip_prefix("quic://")
        .unwrap_or(url)
        .parse()
        .map_err(|_| LinkError::Protocol(format!("not a broker address: {url}")))?;
    let connecting = ctx
        .endpoint
        .connect_with(ctx.client_config.clone(), addr, "lockbroker-peer")
        .map_err(|e| LinkError::Protocol(e.to_string()))?;
    let conn = tokio::time::timeout(Duration::from_secs(2), connecting)
        .await
        .map_err(|_| LinkError::Protocol("connect timed out".into()))??;
    let (mut send, mut recv) = conn.open_bi().await?;
    let exporter = peer::exporter(&conn)?;
    let hello = PeerMsg::Hello {
        name: ctx.me.clone(),
        proof: peer::proof(&ctx.key, Role::Owner, &ctx.me, &exporter),
    };
    peer::write(&mut send, &hello).await?;
    match tokio::time::timeout(ACK_TIMEOUT * 4, peer::read(&mut recv)).await {
        Ok(Ok(PeerMsg::Hello { name, proof }))
            if name == backup && peer::verify(&ctx.key, Role::Backup, &name, &exporter, &proof) => {
        }
        Ok(Err(e)) => return Err(e),
        _ => return Err(LinkError::Proof),
    }
    // A new connection starts every assigned shard from a snapshot (the backup may have
    // missed what the last one carried).
    for shard in assigned.borrow().iter() {
        ctx.replicator.with_feed(*shard, |f| f.restart());
    }
    // Acknowledgements, read beside the sending.
    let (acks_tx, mut acks) = mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            match peer::read(&mut recv).await {
                Ok(msg) => {
                    if acks_tx.send(msg).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let _reader = AbortOnDrop(reader);
    // Per shard on this connection: the snapshot's next change and generation (until it is
    // acknowledged).
    let mut snapshots: HashMap<u32, (u64, u64)> = HashMap::new();
    let mut progress = Instant::now();
    let mut tick = tokio::time::interval(ACK_TIMEOUT / 5);
    loop {
        // Registered before the feeds are read: a change filed from here on wakes the loop.
        let recorded = ctx.recorded.notified();
        tokio::pin!(recorded);
        recorded.as_mut().enable();
        let shards: BTreeSet<u32> = assigned.borrow().clone();
        snapshots.retain(|s, _| shards.contains(s));
        for &shard in &shards {
            let streaming = ctx.replicator.with_feed(shard, |f| f.is_streaming());
            if streaming == Some(false)
                && let Some((sent, msg)) = snapshot(ctx, backup, shard)
            {
                send_bounded(&mut send, &msg).await?;
                snapshots.insert(shard, sent);
            }
            let epoch = ctx.replicator.with_feed(shard, |f| f.epoch());
            while let Some((seq, changes)) = ctx
                .replicator
                .with_feed(shard, |f| f.next_batch(backup, BATCH))
                .flatten()
            {
                let epoch = epoch.unwrap_or_default();
                let msg = PeerMsg::Changes {
                    shard,
                    epoch,
                    seq,
                    changes,
                };
                send_bounded(&mut send, &msg).await?;
            }
        }
        let lagging = shards
            .iter()
            .any(|&s| ctx.replicator.with_feed(s, |f| f.lag() > 0) == Some(true))
            || !snapshots.is_empty();
        if !lagging {
            progress = Instant::now();
        } else if progress.elapsed() > ACK_TIMEOUT {
            return Err(LinkError::Protocol(format!(
                "no acknowledgement for {} ms",
                ACK_TIMEOUT.as_millis()
            )));
        }
        tokio::select! {
            _ = &mut recorded => {}
            _ = tick.tick() => {}
            changed = assigned.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                // Shards no longer assigned here are out of sync with this backup.
                let now: BTreeSet<u32> = assigned.borrow().clone();
                for s in shards.difference(&now) {
                    out_of_sync(ctx, *s);
                }
            }
            msg = acks.recv() => {
                let Some(msg) = msg else {
                    return Err(LinkError::Protocol("the backup closed the link".into()));
                };
                progress = Instant::now();
                match msg {
                    PeerMsg::Ack { shard, epoch, next_seq } => {
                        let same_term = ctx.replicator.with_feed(shard, |f| {
                            if f.epoch() == epoch {
                                f.acked(backup, next_seq);
                                true
                            } else {
                                false
                            }
                        });
                        let snapshot = snapshots.get(&shard).copied();
                        if let (Some(true), Some((from, generation))) = (same_term, snapshot)
                            && from <= next_seq
                        {
                            snapshots.remove(&shard);
                            let _ = ctx.in_sync.send(InSyncOp::Add {
                                shard,
                                backup: backup.to_string(),
                                epoch,
                                generation,
                            });
                        }
                    }
                    PeerMsg::Refused { shard, why, .. } => {
                        tracing::info!(target: "lockbroker::cluster", shard, backup, "the backup refused the stream: {why}");
                        snapshots.remove(&shard);
                        out_of_sync(ctx, shard);
                        ctx.replicator.with_feed(shard, |f| f.restart());
                    }
                    other => {
                        return Err(LinkError::Protocol(format!("unexpected message: {other:?}")));
                    }
                }
            }
        }
    }
}

/// `shard`'s snapshot, taken under the table lock together with the feed's restart (no
/// change falls between them): the next change's number, the snapshot's generation, and
/// the message.
fn snapshot(ctx: &LinkContext, backup: &str, shard: u32) -> Option<((u64, u64), PeerMsg)> {
    let count = ctx.shards;
    ctx.broker.with_table(|t, now, _| {
        let keys = t.keys_where(|k| shard_of(k, count) == shard);
        let mut leases = Vec::new();
        for key in keys {
            let Some(info) = t.inspect(&key) else {
                continue;
            };
            for h in info.holders {
                if h.deadline > now {
                    leases.push(HandedLease {
                        key: key.clone(),
                        fence: h.fence,
                        mode: h.mode,
                        left: h.deadline - now,
                        owner: h.owner.unwrap_or_default(),
                    });
                }
            }
        }
        let (epoch, grace_until, (next_seq, generation)) =
            ctx.replicator.with_feed(shard, |f| {
                (f.epoch(), f.grace_until(), f.snapshot_sent(backup))
            })?;
        let grace_left = grace_until.map_or(Duration::ZERO, |g| g.saturating_duration_since(now));
        let record = Handover {
            grace_left,
            leases,
            queues: Vec::new(),
        };
        Some((
            (next_seq, generation),
            PeerMsg::Snapshot {
                shard,
                epoch,
                next_seq,
                record,
            },
        ))
    })
}

/// Writes one message, bounded by [`ACK_TIMEOUT`]: a backup that stops reading fills the
/// stream's flow-control window, and a write that waits for it must not keep the link from
/// noticing (answers would wait with it).
async fn send_bounded(send: &mut quinn::SendStream, msg: &PeerMsg) -> Result<(), LinkError> {
    match tokio::time::timeout(ACK_TIMEOUT, peer::write(send, msg)).await {
        Ok(r) => r,
        Err(_) => Err(LinkError::Protocol(format!(
            "the backup read nothing for {} ms",
            ACK_TIMEOUT.as_millis()
        ))),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
