//! Lock metrics recorded by the broker core (and by `server` through it): counters of what
//! happened to leases and requests, histograms of how long things took. Cheap on the lock
//! path: atomics, and a short-held mutex per histogram observation. The admin listener
//! (`crate::admin::metrics`) encodes them with everything read at scrape time.
//!
//! No label ever carries a key or a principal: labels are fixed, small sets (`reason`,
//! `limit`).
//!
//! Recorded where the core sees effects: `dispatch` counts lock events, `answer_granted`
//! observes a queued acquire's wait and handoff; `server` counts denials, limit refusals and
//! connections. `None` when `admin.metrics = false`. The hold time needs one `fence → Instant`
//! map entry per held lease.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::table::{Effect, Fence, LockEvent, TableError};

/// A label set of one `&'static str` value, e.g. `reason="policy"`.
pub type Labels = Vec<(&'static str, &'static str)>;

/// Why a request was denied (the `reason` label of `lockbroker_denials_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denial {
    /// A key or TTL policy plugin denied it.
    Policy,
    /// A release, extend or reclaim whose lease secret did not match.
    NotOwner,
    /// A session refused at `Hello` (unknown token, authentication required).
    Unauthenticated,
}

impl Denial {
    fn label(self) -> &'static str {
        match self {
            Denial::Policy => "policy",
            Denial::NotOwner => "not_owner",
            Denial::Unauthenticated => "unauthenticated",
        }
    }
}

/// Every metric the lock path records.
#[derive(Debug)]
pub struct Metrics {
    pub grants: Counter,
    pub releases: Counter,
    pub expiries: Counter,
    pub revocations: Counter,
    pub lost_sessions: Counter,
    pub denials: Family<Labels, Counter>,
    pub limit_refusals: Family<Labels, Counter>,
    /// QUIC connections open now (handshaking included).
    pub connections: Gauge,
    /// New connections answered with a QUIC Retry (address validation under load).
    pub quic_retries: Counter,
    /// From an acquire's arrival to its grant (immediate grants included), seconds.
    pub acquire_wait: Histogram,
    /// From a grant to the lease's release or expiry, seconds.
    pub hold_time: Histogram,
    /// From the release or expiry that freed a key to the `Granted` frame of its next holder
    /// (through the grant gate, if any), seconds.
    pub handoff: Histogram,
    /// One request's whole policy plugin chain, seconds.
    pub policy_duration: Histogram,
    /// Cached leases recalled (lock caching: another request wanted the key).
    pub recalls: Counter,
    /// From a recall to the end of the recalled lease — its holder's release, which grants
    /// the request that caused the recall in the same step — seconds.
    pub recall: Histogram,
    /// Grant instant of the sampled live leases (for `hold_time`).
    granted_at: DashMap<Fence, Instant>,
    /// Recall instant of the recalled leases still live (for `recall`; at most
    /// [`MAX_RECALLS_TIMED`]: a lease that ends without an event, handed over with its
    /// shard, leaves its entry behind).
    recalled_at: DashMap<Fence, Instant>,
}

/// Recalled leases timed at once (past it, a recall is counted but not timed).
const MAX_RECALLS_TIMED: usize = 65_536;

/// Hold times are measured on one lease in `HOLD_SAMPLE` (by fence): a map entry per held lease
/// would cost ≈ 40 bytes a lock — a quarter of the table's whole footprint — for a histogram
/// that a uniform sample estimates just as well.
const HOLD_SAMPLE: u64 = 16;

fn sampled(fence: Fence) -> bool {
    fence.is_multiple_of(HOLD_SAMPLE)
}

fn seconds_buckets() -> Histogram {
    // 10 µs … ~84 s.
    Histogram::new(exponential_buckets(1e-5, 4.0, 12))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            grants: Counter::default(),
            releases: Counter::default(),
            expiries: Counter::default(),
            revocations: Counter::default(),
            lost_sessions: Counter::default(),
            denials: Family::default(),
            limit_refusals: Family::default(),
            connections: Gauge::default(),
            quic_retries: Counter::default(),
            acquire_wait: seconds_buckets(),
            hold_time: seconds_buckets(),
            handoff: seconds_buckets(),
            policy_duration: Histogram::new(exponential_buckets(1e-6, 4.0, 12)),
            recalls: Counter::default(),
            recall: seconds_buckets(),
            granted_at: DashMap::new(),
            recalled_at: DashMap::new(),
        }
    }
}

impl Metrics {
    /// Counts what one effect records: a lock event or a recall (under no lock: called from
    /// `dispatch`).
    pub(super) fn effect(&self, e: &Effect) {
        match e {
            Effect::Event(e) => self.event(e),
            Effect::Recall { fence, .. } => {
                self.recalls.inc();
                if self.recalled_at.len() < MAX_RECALLS_TIMED {
                    self.recalled_at.insert(*fence, Instant::now());
                }
            }
            _ => {}
        }
    }

    fn event(&self, e: &LockEvent) {
        match e {
            LockEvent::Acquired { fence, .. } => {
                self.grants.inc();
                if sampled(*fence) {
                    self.granted_at.insert(*fence, Instant::now());
                }
            }
            LockEvent::Released { fence, .. } => {
                self.releases.inc();
                self.observe_hold(*fence);
            }
            LockEvent::Expired { fence, .. } => {
                self.expiries.inc();
                self.observe_hold(*fence);
            }
            LockEvent::Extended { .. } => {}
        }
    }

    fn observe_hold(&self, fence: Fence) {
        if let Some((_, since)) = self.recalled_at.remove(&fence) {
            self.recall.observe(since.elapsed().as_secs_f64());
        }
        if !sampled(fence) {
            return;
        }
        if let Some((_, since)) = self.granted_at.remove(&fence) {
            self.hold_time.observe(since.elapsed().as_secs_f64());
        }
    }

    /// Counts a denied request.
    pub fn deny(&self, why: Denial) {
        self.denials
            .get_or_create(&vec![("reason", why.label())])
            .inc();
    }

    /// Counts a request refused by a limit (`limit` names it, a fixed string).
    pub fn refuse(&self, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&vec![("limit", limit)])
            .inc();
    }

    /// Counts a table error if it is a limit refusal.
    pub fn table_error(&self, e: &TableError) {
        if let TableError::LimitExceeded(limit) = e {
            self.refuse(limit);
        }
    }

    /// Observes a duration in seconds on `h`.
    pub fn observe(h: &Histogram, d: Duration) {
        h.observe(d.as_secs_f64());
    }
}
