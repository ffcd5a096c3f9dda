//! The mirror task: takes batches from the queue, ships each as one plugin call (one Redis
//! pipeline), reports sync-mode outcomes, and — after dropped or failed events — rebuilds the
//! mirror from a table snapshot (`resync`), retrying every `retry_ms` while it fails. Lock
//! traffic never waits for it (except sync-mode grants, which wait for their own outcome).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::Mirror;
use super::convert::{self, Modes};
use super::queue::{Item, fence_of};
use super::stats::Counters;
use crate::broker::wire::millis_until;
use crate::broker::{Broker, Confirmation};
use crate::plugins::wit;
use crate::table::Fence;
use lockbroker_proto::EndReason;

/// Health, for logging transitions only once.
struct Health {
    failing: bool,
    errors_since: u64,
    retry_at: Option<Instant>,
    last_error: String,
}

/// Runs until `Mirror::stop` is called and the queue is empty.
pub async fn run(m: Arc<Mirror>, broker: Arc<Broker>, mut modes: Modes) {
    let mut health = Health {
        failing: false,
        errors_since: 0,
        retry_at: None,
        last_error: String::new(),
    };
    let retry = Duration::from_millis(m.cfg.retry_ms.max(1));
    loop {
        let resync = m.queue.resync_pending();
        if !resync && m.queue.is_empty() {
            if m.stopping.load(Ordering::Acquire) {
                return;
            }
            m.idle.store(true, Ordering::Release);
            tokio::select! {
                () = m.queue.notify.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        }
        m.idle.store(false, Ordering::Release);
        if resync {
            if let Some(at) = health.retry_at
                && Instant::now() < at
            {
                let why = format!("mirror unavailable: {}", health.last_error);
                m.queue.drain_failing(&why);
                if m.stopping.load(Ordering::Acquire) {
                    return;
                }
                tokio::select! {
                    () = m.queue.notify.notified() => {}
                    () = tokio::time::sleep_until(at.into()) => {}
                }
                continue;
            }
            match resync_now(&m, &broker, &mut modes).await {
                Ok(n) => {
                    if health.failing {
                        tracing::info!(
                            target: "lockbroker::mirror",
                            holds = n,
                            errors = health.errors_since,
                            "mirror recovered: resynced from a table snapshot"
                        );
                    }
                    health = Health {
                        failing: false,
                        errors_since: 0,
                        retry_at: None,
                        last_error: String::new(),
                    };
                }
                Err(e) => {
                    fail(&m, &mut health, e);
                    health.retry_at = Some(Instant::now() + retry);
                }
            }
            continue;
        }
        // Async mode: let a batch fill for `linger_ms` — fewer, larger plugin calls and
        // pipelines, and more leases that start and end inside one batch (never shipped).
        if !m.is_sync() && m.cfg.linger_ms > 0 && m.queue.len() < m.cfg.batch_max {
            tokio::time::sleep(Duration::from_millis(m.cfg.linger_ms)).await;
        }
        let batch = m.queue.take_batch(m.cfg.batch_max);
        if let Err(e) = ship(&m, batch, &mut modes).await {
            fail(&m, &mut health, e);
            health.retry_at = Some(Instant::now() + retry);
        }
    }
}

fn fail(m: &Mirror, health: &mut Health, e: String) {
    Counters::add(&m.stats.errors, 1);
    health.errors_since += 1;
    if !health.failing {
        tracing::warn!(
            target: "lockbroker::mirror",
            "mirror write failed: {e}; lock traffic continues, the mirror will be resynced"
        );
    } else {
        tracing::debug!(target: "lockbroker::mirror", "mirror still failing: {e}");
    }
    health.failing = true;
    health.last_error = e;
    m.queue.request_resync();
}

/// Ships one batch. `Err` when the batch as a whole failed (a resync is then needed).
async fn ship(m: &Mirror, batch: Vec<Item>, modes: &mut Modes) -> Result<(), String> {
    if batch.is_empty() {
        return Ok(());
    }
    let batch = coalesce(batch, &m.stats);
    let now = Instant::now();
    let at = crate::broker::wire::unix_ms();
    let events: Vec<wit::LockEvent> = batch
        .iter()
        .map(|i| convert::event(&i.event, modes, now, at))
        .collect();
    let outcomes = match m.plugin.on_events(&events).await {
        Ok(o) => o,
        Err(e) => {
            let why = e.to_string();
            for item in batch {
                if let Some(tx) = item.confirm {
                    let _ = tx.send(Confirmation::Failed(why.clone()));
                }
            }
            return Err(why);
        }
    };
    Counters::add(&m.stats.batches, 1);
    Counters::add(&m.stats.events, batch.len() as u64);
    let mut failed = None;
    for (item, outcome) in batch.into_iter().zip(outcomes) {
        let outcome = outcome_of(outcome);
        match &outcome {
            Confirmation::Ok => {}
            Confirmation::Conflict(why) if item.confirm.is_none() => {
                Counters::add(&m.stats.conflicts, 1);
                tracing::warn!(
                    target: "lockbroker::mirror",
                    fence = fence_of(&item.event),
                    "mirror refused a hold: {why}"
                );
            }
            Confirmation::Conflict(_) => {}
            Confirmation::Failed(why) | Confirmation::Moved(why) => failed = Some(why.clone()),
        }
        if let Some(tx) = item.confirm {
            let _ = tx.send(outcome);
        }
    }
    match failed {
        Some(why) => Err(why),
        None => Ok(()),
    }
}

/// Drops, from one batch, the leases that start and end inside it (their `Acquired`, any
/// `Extended` and the `Released`/`Expired`): the mirror holds current state, and such a lease
/// is not held by the end of the batch. Sync-mode acquisitions (with a confirmation) are kept,
/// and so is the lease with the batch's highest fence, so the stored max fence keeps up.
fn coalesce(batch: Vec<Item>, stats: &Counters) -> Vec<Item> {
    use crate::table::LockEvent as E;
    let ended: HashSet<Fence> = batch
        .iter()
        .filter(|i| matches!(i.event, E::Released { .. } | E::Expired { .. }))
        .map(|i| fence_of(&i.event))
        .collect();
    if ended.is_empty() {
        return batch;
    }
    let mut gone: HashSet<Fence> = batch
        .iter()
        .filter(|i| matches!(i.event, E::Acquired { .. }) && i.confirm.is_none())
        .map(|i| fence_of(&i.event))
        .filter(|f| ended.contains(f))
        .collect();
    if let Some(top) = batch
        .iter()
        .filter(|i| matches!(i.event, E::Acquired { .. }))
        .map(|i| fence_of(&i.event))
        .max()
    {
        gone.remove(&top);
    }
    if gone.is_empty() {
        return batch;
    }
    let before = batch.len();
    let kept: Vec<Item> = batch
        .into_iter()
        .filter(|i| !gone.contains(&fence_of(&i.event)))
        .collect();
    Counters::add(&stats.coalesced, (before - kept.len()) as u64);
    kept
}

/// Rebuilds the mirror from a snapshot of the table. Returns the number of holds written.
async fn resync_now(m: &Mirror, broker: &Arc<Broker>, modes: &mut Modes) -> Result<usize, String> {
    let (holds, items) = broker.with_table(|t, _now, _out| {
        let holds = t.holds();
        let (items, _) = m.queue.take_all_for_resync();
        (holds, items)
    });
    let now = Instant::now();
    let snapshot: Vec<wit::HeldLock> = holds
        .iter()
        .filter(|(_, h)| h.deadline > now)
        .map(|(key, h)| wit::HeldLock {
            key: key.to_vec(),
            mode: h.mode.into(),
            owner_session: h.session,
            fence: h.fence,
            remaining_ttl_ms: millis_until(h.deadline, now),
        })
        .collect();
    let max_fence = snapshot
        .iter()
        .map(|h| h.fence)
        .max()
        .unwrap_or(0)
        .max(m.queue.max_fence.load(Ordering::Relaxed));
    modes.reset(holds.iter().map(|(_, h)| (h.fence, h.mode)));
    let outcomes = match m.plugin.resync(&snapshot, max_fence).await {
        Ok(o) => o,
        Err(e) => {
            let why = e.to_string();
            for item in items {
                if let Some(tx) = item.confirm {
                    let _ = tx.send(Confirmation::Failed(why.clone()));
                }
            }
            return Err(why);
        }
    };
    Counters::add(&m.stats.resyncs, 1);
    let mut by_fence: HashMap<Fence, Confirmation> = HashMap::with_capacity(snapshot.len());
    for (h, o) in snapshot.iter().zip(outcomes) {
        by_fence.insert(h.fence, outcome_of(o));
    }
    let mut confirmed = std::collections::HashSet::new();
    for item in items {
        if let Some(tx) = item.confirm {
            let fence = fence_of(&item.event);
            confirmed.insert(fence);
            let o = by_fence.get(&fence).cloned().unwrap_or_else(|| {
                Confirmation::Failed("the lease ended before it was mirrored".into())
            });
            let _ = tx.send(o);
        }
    }
    for h in &snapshot {
        if let Some(Confirmation::Conflict(why)) = by_fence.get(&h.fence)
            && !confirmed.contains(&h.fence)
        {
            Counters::add(&m.stats.conflicts, 1);
            tracing::warn!(target: "lockbroker::mirror", fence = h.fence, "resync: mirror refused a hold: {why}");
            // Sync mode promises exclusion in both directions: a lease Redis gave to someone
            // else while the link was down ends here, and its holder is told.
            if m.is_sync() {
                let why = format!("the key is held in Redis by someone else: {why}");
                broker.revoke(&h.key, h.fence, EndReason::Mirror, &why);
            }
        }
    }
    Ok(snapshot.len())
}

fn outcome_of(o: wit::EventOutcome) -> Confirmation {
    match o {
        wit::EventOutcome::Ok => Confirmation::Ok,
        wit::EventOutcome::Conflict(w) => Confirmation::Conflict(w),
        wit::EventOutcome::Failed(w) => Confirmation::Failed(w),
    }
}
