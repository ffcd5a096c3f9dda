//! Anonymous sessions on a broker with authenticated principals ("guests") share one turn and
//! one request rate: one guest session handles its requests at a time (at most a batch per
//! turn), so however many there are they take at most one worker; and together they handle at
//! most `limits.anonymous_requests_per_sec` requests a second, so that worker is not taken
//! whole either. A guest past the rate waits, holding the turn, before its next batch; its
//! requests wait in QUIC flow control, unread. Authenticated sessions never wait for either.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Semaphore, SemaphorePermit};

/// The guests' turn and their shared request rate.
pub struct Guests {
    turn: Semaphore,
    /// `None`: no rate bound (`anonymous_requests_per_sec = 0`).
    rate: Option<Mutex<Bucket>>,
    per_sec: f64,
}

/// Requests the guests may still handle now; negative: what the last batch overdrew.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Guests {
    /// Guests limited to `per_sec` requests a second (0: unlimited), with a burst of a tenth
    /// of a second's worth.
    pub fn new(per_sec: u32) -> Guests {
        let per_sec = f64::from(per_sec);
        Guests {
            turn: Semaphore::new(1),
            rate: (per_sec > 0.0).then(|| {
                Mutex::new(Bucket {
                    tokens: per_sec / 10.0,
                    at: Instant::now(),
                })
            }),
            per_sec,
        }
    }

    /// Waits for the guests' turn, then until the rate allows a batch again.
    pub async fn turn(&self) -> Option<SemaphorePermit<'_>> {
        let permit = self.turn.acquire().await.ok()?;
        if let Some(wait) = self.overdrawn_for(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        Some(permit)
    }

    /// Counts `handled` requests against the rate (the bucket may go negative by a batch).
    pub fn charge(&self, handled: usize) {
        if let Some(rate) = &self.rate {
            let mut b = rate.lock();
            b.tokens -= handled as f64;
        }
    }

    /// How long until the bucket is out of debt again (refilled to `now` first), if it is in.
    fn overdrawn_for(&self, now: Instant) -> Option<Duration> {
        let mut b = self.rate.as_ref()?.lock();
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * self.per_sec).min(self.per_sec / 10.0);
        b.at = now;
        (b.tokens < 0.0).then(|| Duration::from_secs_f64(-b.tokens / self.per_sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guests_overdraw_by_a_batch_then_wait_it_out_at_the_rate() {
        let g = Guests::new(1_000);
        let t0 = Instant::now();
        // A tenth of a second's worth (100) is there at once.
        assert_eq!(g.overdrawn_for(t0), None);
        g.charge(164);
        let wait = g.overdrawn_for(t0).expect("64 requests overdrawn");
        assert!((wait.as_secs_f64() - 0.064).abs() < 0.002, "{wait:?}");
        assert_eq!(g.overdrawn_for(t0 + Duration::from_millis(70)), None);
    }

    #[test]
    fn no_rate_means_no_wait() {
        let g = Guests::new(0);
        g.charge(1_000_000);
        assert_eq!(g.overdrawn_for(Instant::now()), None);
    }
}
