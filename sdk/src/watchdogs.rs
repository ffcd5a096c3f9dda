//! Lazy watchdogs. A guard's watchdog task (renewals, `lost()` by the clock, the broker's
//! `LeaseEnded` pushes — see `guard.rs`) has nothing to do before the lease's first renewal, a
//! third of its TTL after the grant; most locks are released long before. So a guard does not
//! spawn its watchdog at once: it leaves it *scheduled* with the client's [`Starter`], one
//! task per client that starts each watchdog when its first renewal falls due — or at once
//! when the broker pushes `LeaseEnded` for that lease, or when the guard is extended. A lock
//! released before then never had a task (spawning and aborting one cost more than the rest of
//! an in-process lock cycle).
//!
//! Safety is unchanged: the watchdog starts no later than it would have first acted (its
//! first renewal; `lost()` by the clock is later still: the local deadline minus a margin of
//! at most half the TTL), `Guard::is_lost` reads the clock, and the guard subscribes to the
//! pushes at the grant, so none is missed while the watchdog waits to start.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::{Notify, broadcast};

use crate::shards::LeaseEnd;

/// The `LeaseEnded` pushes a client's connections pass on.
pub(crate) type Ended = broadcast::Sender<LeaseEnd>;

/// A lease whose watchdog the starter starts (the guard's `Lease`, which keeps whether its
/// watchdog is scheduled, running or over — no allocation per guard beyond the lease).
pub(crate) trait Watched: Send + Sync {
    /// The lease's fence (what `LeaseEnded` pushes name).
    fn fence(&self) -> u64;
    /// Starts the watchdog unless it runs or ended.
    fn start(self: Arc<Self>);
}

/// Where a scheduled slot sits in the starter (to take it out when the guard goes first).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticket(Instant, u64);

/// Starts a client's scheduled watchdogs when they fall due.
pub(crate) struct Starter {
    due: Mutex<Due>,
    wake: Arc<Notify>,
    task: OnceLock<()>,
    ended: Ended,
}

#[derive(Default)]
struct Due {
    slots: BTreeMap<Ticket, Weak<dyn Watched>>,
    next_id: u64,
    /// What the task sleeps until (`None`: until woken).
    armed: Option<Instant>,
}

impl Drop for Starter {
    fn drop(&mut self) {
        // The task sees the starter gone and ends.
        self.wake.notify_one();
    }
}

impl Starter {
    pub(crate) fn new(ended: Ended) -> Arc<Starter> {
        Arc::new(Starter {
            due: Mutex::new(Due::default()),
            wake: Arc::new(Notify::new()),
            task: OnceLock::new(),
            ended,
        })
    }

    /// Starts `lease`'s watchdog at `at` (unless the guard takes it out first).
    pub(crate) fn schedule(self: &Arc<Self>, at: Instant, lease: Weak<dyn Watched>) -> Ticket {
        self.task.get_or_init(|| {
            tokio::spawn(run(
                Arc::downgrade(self),
                self.wake.clone(),
                self.ended.subscribe(),
            ));
        });
        let wake = {
            let mut due = self.due.lock();
            let ticket = Ticket(at, due.next_id);
            due.next_id += 1;
            due.slots.insert(ticket, lease);
            let earlier = due.armed.is_none_or(|a| at < a);
            if earlier {
                due.armed = Some(at);
            }
            (ticket, earlier)
        };
        if wake.1 {
            self.wake.notify_one();
        }
        wake.0
    }

    /// Takes a slot out (its guard went, or started it itself).
    pub(crate) fn cancel(&self, ticket: Ticket) {
        self.due.lock().slots.remove(&ticket);
    }

    /// Starts, and takes out, every slot due by `now`.
    fn start_due(&self, now: Instant) {
        let started: Vec<Weak<dyn Watched>> = {
            let mut due = self.due.lock();
            let later = due.slots.split_off(&Ticket(now, u64::MAX));
            std::mem::replace(&mut due.slots, later)
                .into_values()
                .collect()
        };
        for slot in started.iter().filter_map(Weak::upgrade) {
            slot.start();
        }
    }

    /// Starts the slots of lease `fence` (the broker pushed its end), or every slot (`None`:
    /// pushes were missed).
    fn start_pushed(&self, fence: Option<u64>) {
        let started: Vec<Arc<dyn Watched>> = {
            let mut due = self.due.lock();
            let mut hit = Vec::new();
            due.slots.retain(|_, weak| match weak.upgrade() {
                Some(slot) if fence.is_none_or(|f| f == slot.fence()) => {
                    hit.push(slot);
                    false
                }
                Some(_) => true,
                None => false,
            });
            hit
        };
        for slot in started {
            slot.start();
        }
    }
}

/// The starter's task: sleeps until the earliest scheduled start (woken when an earlier one
/// is scheduled), and starts at once the watchdog of a lease the broker says ended.
async fn run(starter: Weak<Starter>, wake: Arc<Notify>, mut ended: broadcast::Receiver<LeaseEnd>) {
    let mut pushes_open = true;
    loop {
        let next = {
            let Some(s) = starter.upgrade() else { return };
            let mut due = s.due.lock();
            let next = due.slots.keys().next().map(|t| t.0);
            due.armed = next;
            next
        };
        tokio::select! {
            () = sleep_until(next) => {
                let Some(s) = starter.upgrade() else { return };
                s.start_due(Instant::now());
            }
            () = wake.notified() => {}
            pushed = ended.recv(), if pushes_open => {
                let Some(s) = starter.upgrade() else { return };
                match pushed {
                    Ok(end) => s.start_pushed(Some(end.fence)),
                    Err(broadcast::error::RecvError::Lagged(_)) => s.start_pushed(None),
                    Err(broadcast::error::RecvError::Closed) => pushes_open = false,
                }
            }
        }
    }
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
