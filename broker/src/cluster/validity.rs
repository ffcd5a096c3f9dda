//! Self-fencing: how long this broker may still act on its etcd lease (Patroni's rule).
//!
//! etcd expires a lease `ttl` after the last keep-alive it *received*; we only know when we
//! *sent* it. So the lease is certainly alive on etcd's side until `sent + ttl`, counted on our
//! clock — which may run slow against etcd's by the drift bound. The broker serves its shards
//! only until `sent + ttl × (1 − drift) − margin`, and renews every `ttl / 3`, so two renewals
//! may fail (each bounded by a request timeout of `ttl / 6`) before it stops: renewal interval
//! + 2 × retry timeout < ttl.

use std::time::{Duration, Instant};

/// The clock-rate drift allowed between this broker and etcd (1 %).
pub const DRIFT: f64 = 0.01;

/// Until when the broker may act on its lease.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    ttl: Duration,
    margin: Duration,
    /// End of the window granted by the last confirmed keep-alive (or grant).
    until: Option<Instant>,
}

impl Validity {
    /// A validity for a lease of `ttl` with a fixed extra `margin`, not yet valid.
    pub fn new(ttl: Duration, margin: Duration) -> Validity {
        Validity {
            ttl,
            margin,
            until: None,
        }
    }

    /// A keep-alive (or the grant) sent at `sent` was confirmed with the lease's `ttl`.
    pub fn confirmed(&mut self, sent: Instant, ttl: Duration) {
        let window = ttl.mul_f64(1.0 - DRIFT).saturating_sub(self.margin);
        let until = sent + window;
        if self.until.is_none_or(|u| u < until) {
            self.until = Some(until);
        }
    }

    /// The lease is gone (revoked, expired, or etcd said so): invalid from now on.
    pub fn lost(&mut self) {
        self.until = None;
    }

    /// Whether the broker may act on its lease at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        self.until.is_some_and(|u| now < u)
    }

    /// The end of the current window, if any.
    #[cfg(test)]
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// How often to send keep-alives.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// The timeout of one keep-alive round trip.
    pub fn request_timeout(&self) -> Duration {
        self.ttl / 6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_counts_from_the_send_and_never_shrinks_by_a_late_answer() {
        let ttl = Duration::from_secs(6);
        let mut v = Validity::new(ttl, Duration::from_millis(200));
        let t0 = Instant::now();
        assert!(!v.valid_at(t0));
        v.confirmed(t0, ttl);
        let end = t0 + ttl.mul_f64(0.99) - Duration::from_millis(200);
        assert_eq!(v.until(), Some(end));
        assert!(v.valid_at(end - Duration::from_millis(1)));
        assert!(!v.valid_at(end));
        // An older keep-alive answered late does not move the window back.
        v.confirmed(t0 - Duration::from_secs(1), ttl);
        assert_eq!(v.until(), Some(end));
        // Patroni's rule holds for the renewal schedule.
        assert!(v.renew_every() + 2 * v.request_timeout() < ttl);
        v.lost();
        assert!(!v.valid_at(t0));
    }
}
