//! Connection admission: how many QUIC connections are open (handshaking ones included), in
//! all and per source IP, against `limits.max_connections` and `limits.max_connections_per_ip`.
//! An admitted connection holds a [`Slot`] until its task ends. A connection past a limit is
//! told `LimitExceeded` naming it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Open connections, in all and by source IP.
#[derive(Default)]
pub struct Admission {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_ip: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

/// One admitted connection; frees its place when dropped.
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Admission> {
        Arc::new(Admission {
            counts: Mutex::default(),
            max_total,
            max_per_ip,
        })
    }

    /// Admits a connection from `ip`, or says which limit it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, String> {
        let mut c = self.counts.lock();
        if c.total >= self.max_total {
            return Err(format!(
                "connections: the broker has {} open (limits.max_connections)",
                c.total
            ));
        }
        let from_ip = c.by_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(format!(
                "connections: {from_ip} open from {ip} (limits.max_connections_per_ip)"
            ));
        }
        c.total += 1;
        *c.by_ip.entry(ip).or_default() += 1;
        Ok(Slot {
            admission: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.by_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_all_and_per_ip_and_slots_free_their_place() {
        let a = Admission::new(3, 2);
        let ip1: IpAddr = "10.0.0.1".parse().expect("ip");
        let ip2: IpAddr = "10.0.0.2".parse().expect("ip");
        let s1 = a.admit(ip1).expect("1");
        let _s2 = a.admit(ip1).expect("2");
        assert!(
            a.admit(ip1)
                .is_err_and(|e| e.contains("max_connections_per_ip"))
        );
        let _s3 = a.admit(ip2).expect("3");
        assert!(a.admit(ip2).is_err_and(|e| e.contains("max_connections)")));
        drop(s1);
        assert_eq!(a.open(), 2);
        let _s4 = a.admit(ip1).expect("a place was freed");
    }
}
