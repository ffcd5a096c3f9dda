//! Per-source-IP rate of new connections, checked in the accept loop before any TLS work: a
//! token bucket per address (`limits.handshake_rate_per_ip` tokens a second, up to
//! `limits.handshake_burst_per_ip`). A connection attempt without a token is refused at the QUIC
//! level (`CONNECTION_REFUSED`), so a flood from one address costs the broker an Initial packet
//! per attempt instead of a TLS handshake, and the other clients keep their share of the CPU.
//!
//! Buckets of addresses that have been quiet long enough to be full again are dropped once the
//! map grows past twice its size after the last sweep, so memory follows the addresses seen in
//! the last few seconds, not all addresses ever seen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

/// Buckets kept before the first sweep.
const SWEEP_FLOOR: usize = 1024;

pub struct HandshakeRate {
    state: Mutex<State>,
    per_sec: f64,
    burst: f64,
}

struct State {
    buckets: HashMap<IpAddr, Bucket>,
    sweep_at: usize,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl HandshakeRate {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        HandshakeRate {
            state: Mutex::new(State {
                buckets: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
            }),
            per_sec: f64::from(per_sec.max(1)),
            burst: f64::from(burst.max(1)),
        }
    }

    /// Takes a token for a connection attempt from `ip` at `now`; `false`: refuse it.
    pub fn allow(&self, ip: IpAddr, now: Instant) -> bool {
        let mut st = self.state.lock();
        if st.buckets.len() >= st.sweep_at {
            self.sweep(&mut st, now);
        }
        let burst = self.burst;
        let b = st.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        b.tokens = self.refilled(b, now);
        b.at = now;
        if b.tokens < 1.0 {
            return false;
        }
        b.tokens -= 1.0;
        true
    }

    fn refilled(&self, b: &Bucket, now: Instant) -> f64 {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        (b.tokens + dt * self.per_sec).min(self.burst)
    }

    /// Drops the buckets that are full again (their address has been quiet).
    fn sweep(&self, st: &mut State, now: Instant) {
        st.buckets.retain(|_, b| self.refilled(b, now) < self.burst);
        st.sweep_at = (2 * st.buckets.len()).max(SWEEP_FLOOR);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.state.lock().buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::time::Duration;

    use super::*;

    #[test]
    fn an_address_gets_its_burst_then_its_rate_and_others_are_unaffected() {
        let r = HandshakeRate::new(10, 3);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        assert!((0..3).all(|_| r.allow(a, t0)));
        assert!(!r.allow(a, t0), "past the burst");
        assert!(r.allow(b, t0), "another address has its own bucket");
        assert!(!r.allow(a, t0 + Duration::from_millis(50)), "half a token");
        assert!(
            r.allow(a, t0 + Duration::from_millis(100)),
            "one token a tenth of a second"
        );
        assert!(!r.allow(a, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn quiet_addresses_are_forgotten() {
        let r = HandshakeRate::new(100, 5);
        let t0 = Instant::now();
        for i in 0..5000u32 {
            r.allow(IpAddr::from(Ipv4Addr::from(i)), t0);
        }
        // A second later every one of those buckets is full again: the next sweep (the map
        // doubled since the last one, at 4096) drops them and keeps only the new addresses.
        let t1 = t0 + Duration::from_secs(1);
        for i in 0..4096u32 {
            r.allow(IpAddr::from(Ipv4Addr::from(1_000_000 + i)), t1);
        }
        assert!(r.tracked() <= 4096, "{}", r.tracked());
    }
}
