//! Cluster mode: how long each broker fault kept the shards it moved from granting. For a
//! fault (kill, pause, leave) starting at `t`, a key *moved* when its first grant after `t`,
//! before the fault was undone, carries another ownership epoch (the fence's upper 32 bits,
//! the etcd revision of the shard's claim) than its last grant before `t`. The fault's
//! failover time is from `t` to the first such grant of its slowest moved key: until then
//! some moved shard granted nothing new.

use std::collections::BTreeMap;

use crate::faults::{FaultKind, FaultLog};
use crate::history::Lease;

/// The ownership epoch a fence was issued under.
fn epoch(fence: u64) -> u64 {
    fence >> 32
}

/// Failover times (seconds) by fault kind, for the faults that moved some key.
pub fn times(leases: &[Lease], faults: &FaultLog) -> BTreeMap<&'static str, Vec<f64>> {
    let mut by_key: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    for l in leases {
        by_key.entry(&l.key).or_default().push(l);
    }
    for ls in by_key.values_mut() {
        ls.sort_by_key(|l| l.grant_ns);
    }
    let mut out: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let broker_faults = faults.events().iter().filter(|f| {
        matches!(
            f.kind,
            FaultKind::KillBroker | FaultKind::PauseBroker | FaultKind::LeaveBroker
        )
    });
    for f in broker_faults {
        let end = f.end_ns.unwrap_or(u64::MAX);
        let mut slowest: Option<u64> = None;
        for ls in by_key.values() {
            let split = ls.partition_point(|l| l.grant_ns < f.start_ns);
            let Some(before) = split.checked_sub(1).map(|i| ls[i]) else {
                continue;
            };
            let moved = ls[split..]
                .iter()
                .take_while(|l| l.grant_ns < end)
                .find(|l| epoch(l.fence) != epoch(before.fence));
            if let Some(first) = moved {
                let took = first.grant_ns - f.start_ns;
                slowest = Some(slowest.map_or(took, |s| s.max(took)));
            }
        }
        if let Some(ns) = slowest {
            out.entry(f.kind.name()).or_default().push(ns as f64 / 1e9);
        }
    }
    for v in out.values_mut() {
        v.sort_by(f64::total_cmp);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(key: &str, epoch: u64, counter: u64, grant_ns: u64) -> Lease {
        Lease {
            client: 0,
            key: key.into(),
            fence: (epoch << 32) | counter,
            grant_ns,
            last_ok_ns: Some(grant_ns),
        }
    }

    #[test]
    fn a_fault_counts_until_its_slowest_moved_key_grants_again() {
        let mut faults = FaultLog::default();
        let kill = faults.start(FaultKind::KillBroker, "broker 1".into(), 10_000_000_000);
        faults.end(kill, 16_000_000_000);
        let leases = vec![
            lease("a", 7, 1, 9_000_000_000),
            lease("a", 9, 1, 13_000_000_000),
            lease("b", 8, 1, 9_500_000_000),
            lease("b", 8, 2, 10_500_000_000), // not moved: same epoch
            lease("c", 5, 1, 9_000_000_000),
            lease("c", 12, 1, 14_500_000_000),
            lease("d", 6, 1, 9_000_000_000),
            lease("d", 20, 1, 17_000_000_000), // after the fault was undone
        ];
        let t = times(&leases, &faults);
        assert_eq!(t.get("kill-broker"), Some(&vec![4.5]));
    }
}
