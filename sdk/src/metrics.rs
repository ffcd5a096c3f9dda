//! Client metrics, recorded through the [`metrics`](https://docs.rs/metrics) facade: the SDK
//! records, the application chooses the exporter (e.g. `metrics-exporter-prometheus`). With no
//! recorder installed every call is a no-op.
//!
//! | name | kind | labels |
//! | --- | --- | --- |
//! | [`ACQUIRE_WAIT_SECONDS`] | histogram | `mode`, `outcome` |
//! | [`HOLD_SECONDS`] | histogram | `mode` |
//! | [`LOST_LEASES`] | counter | `mode` |
//! | [`ACQUIRES`] | counter | `mode` |
//! | [`CACHE_HITS`], [`CACHE_MISSES`], [`CACHE_RECALLS`] | counter | — |
//!
//! Labels take fixed values only — never a lock key or a principal: `mode` is `exclusive`,
//! `shared` or `semaphore`; `outcome` is `granted`, `timeout` (the wait ran out, or a try-lock
//! found the key held), `denied` (a broker policy or authentication refused it), `error`
//! (anything else: connection, limit, invalid request) or `cancelled` (the acquire future was
//! dropped before it resolved).
//!
//! The acquire wait runs from the start of an awaited [`LockRequest`](crate::LockRequest) —
//! a reconnect it needs and any `Moved` hops included — to its answer. A
//! [`LockAllRequest`](crate::LockAllRequest) counts as one exclusive acquire, with one wait. The hold time runs from
//! the grant to whichever comes first: [`Guard::unlock`](crate::Guard::unlock), the guard's
//! drop, or the loss of the lease ([`Guard::lost`](crate::Guard::lost) resolving, which also
//! counts in [`LOST_LEASES`]).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use lockbroker_proto::Mode;

use crate::error::{Error, Result};

/// Histogram, seconds: from the start of an acquire to its answer (labels `mode`, `outcome`).
pub const ACQUIRE_WAIT_SECONDS: &str = "lockbroker_client_acquire_wait_seconds";
/// Histogram, seconds: from a grant to the unlock, drop or loss of its guard (label `mode`).
pub const HOLD_SECONDS: &str = "lockbroker_client_hold_seconds";
/// Counter: leases a guard reported lost (label `mode`).
pub const LOST_LEASES: &str = "lockbroker_client_lost_leases_total";
/// Counter: acquires started (label `mode`).
pub const ACQUIRES: &str = "lockbroker_client_acquires_total";
/// Counter: locks granted from a cached lease, in the process (lock caching).
pub const CACHE_HITS: &str = "lockbroker_client_cache_hits_total";
/// Counter: cacheable leases granted by the broker (the locks that had to ask it).
pub const CACHE_MISSES: &str = "lockbroker_client_cache_misses_total";
/// Counter: cached leases the broker recalled (another client asked for the key).
pub const CACHE_RECALLS: &str = "lockbroker_client_cache_recalls_total";

/// Registers the units and descriptions of the SDK's metrics with the installed recorder.
/// Optional: call it once after installing an exporter so it can print help texts.
pub fn describe() {
    ::metrics::describe_histogram!(
        ACQUIRE_WAIT_SECONDS,
        ::metrics::Unit::Seconds,
        "From the start of an acquire to its answer"
    );
    ::metrics::describe_histogram!(
        HOLD_SECONDS,
        ::metrics::Unit::Seconds,
        "From a grant to the unlock, drop or loss of its guard"
    );
    ::metrics::describe_counter!(LOST_LEASES, "Leases a guard reported lost");
    ::metrics::describe_counter!(ACQUIRES, "Acquires started");
    ::metrics::describe_counter!(CACHE_HITS, "Locks granted from a cached lease");
    ::metrics::describe_counter!(CACHE_MISSES, "Cacheable leases granted by the broker");
    ::metrics::describe_counter!(CACHE_RECALLS, "Cached leases the broker recalled");
}

/// A lock granted from a cached lease.
pub(crate) fn cache_hit() {
    ::metrics::counter!(CACHE_HITS).increment(1);
}

/// A cacheable lease granted by the broker.
pub(crate) fn cache_miss() {
    ::metrics::counter!(CACHE_MISSES).increment(1);
}

/// A cached lease recalled.
pub(crate) fn cache_recall() {
    ::metrics::counter!(CACHE_RECALLS).increment(1);
}

/// The acquire-wait histogram of (`mode`, `outcome`), its key built at compile time: a key
/// with labels computed at run time is allocated and hashed on every call, which showed in an
/// in-process lock cycle.
macro_rules! wait_histogram {
    ($mode:literal, $outcome:expr) => {
        match $outcome {
            "granted" => ::metrics::histogram!(ACQUIRE_WAIT_SECONDS, "mode" => $mode, "outcome" => "granted"),
            "timeout" => ::metrics::histogram!(ACQUIRE_WAIT_SECONDS, "mode" => $mode, "outcome" => "timeout"),
            "denied" => ::metrics::histogram!(ACQUIRE_WAIT_SECONDS, "mode" => $mode, "outcome" => "denied"),
            "cancelled" => ::metrics::histogram!(ACQUIRE_WAIT_SECONDS, "mode" => $mode, "outcome" => "cancelled"),
            _ => ::metrics::histogram!(ACQUIRE_WAIT_SECONDS, "mode" => $mode, "outcome" => "error"),
        }
    };
}

/// A metric labelled with `mode` only, its key built at compile time (see `wait_histogram`).
macro_rules! by_mode {
    ($mode:expr, $kind:ident, $name:expr) => {
        match $mode {
            Mode::Exclusive => ::metrics::$kind!($name, "mode" => "exclusive"),
            Mode::Shared => ::metrics::$kind!($name, "mode" => "shared"),
            Mode::Semaphore(_) => ::metrics::$kind!($name, "mode" => "semaphore"),
        }
    };
}

fn outcome_label<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "granted",
        Err(Error::Timeout | Error::Busy) => "timeout",
        Err(Error::Denied(_)) => "denied",
        Err(_) => "error",
    }
}

/// One acquire's metrics: counted when it starts; its wait observed when the timer is
/// dropped, with the outcome set by then (`cancelled` if none was: the acquire future was
/// dropped before it resolved).
pub(crate) struct AcquireTimer {
    mode: Mode,
    started: Instant,
    outcome: &'static str,
}

impl AcquireTimer {
    /// Counts an acquire of `mode` started now.
    pub(crate) fn start(mode: Mode) -> AcquireTimer {
        by_mode!(mode, counter, ACQUIRES).increment(1);
        AcquireTimer {
            mode,
            started: Instant::now(),
            outcome: "cancelled",
        }
    }

    /// When the acquire started.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Notes how the acquire ended (observed when the timer is dropped).
    pub(crate) fn finish<T>(&mut self, result: &Result<T>) {
        self.outcome = outcome_label(result);
    }
}

impl Drop for AcquireTimer {
    fn drop(&mut self) {
        let histogram = match self.mode {
            Mode::Exclusive => wait_histogram!("exclusive", self.outcome),
            Mode::Shared => wait_histogram!("shared", self.outcome),
            Mode::Semaphore(_) => wait_histogram!("semaphore", self.outcome),
        };
        histogram.record(self.started.elapsed());
    }
}

/// Runs the acquire `run` under `timer`.
pub(crate) async fn timed<T>(
    mut timer: AcquireTimer,
    run: impl Future<Output = Result<T>>,
) -> Result<T> {
    let result = run.await;
    timer.finish(&result);
    result
}

/// A lease's hold time: started at the grant, observed once, at the first [`Hold::end`].
#[derive(Debug)]
pub(crate) struct Hold {
    mode: Mode,
    granted: Instant,
    ended: AtomicBool,
}

impl Hold {
    /// Starts the clock at the grant, `granted`.
    pub(crate) fn start(mode: Mode, granted: Instant) -> Hold {
        Hold {
            mode,
            granted,
            ended: AtomicBool::new(false),
        }
    }

    /// Ends the hold (unlock, drop or loss); later calls do nothing.
    pub(crate) fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            by_mode!(self.mode, histogram, HOLD_SECONDS).record(self.granted.elapsed());
        }
    }

    /// The guard reported the lease lost: counts it and ends the hold.
    pub(crate) fn lost(&self) {
        by_mode!(self.mode, counter, LOST_LEASES).increment(1);
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_fixed_labels() {
        assert_eq!(outcome_label(&Ok(())), "granted");
        assert_eq!(outcome_label::<()>(&Err(Error::Busy)), "timeout");
        assert_eq!(outcome_label::<()>(&Err(Error::Timeout)), "timeout");
        assert_eq!(
            outcome_label::<()>(&Err(Error::Denied("no".into()))),
            "denied"
        );
        assert_eq!(
            outcome_label::<()>(&Err(Error::LimitExceeded("max".into()))),
            "error"
        );
    }
}
