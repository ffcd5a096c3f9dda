//! The checks of a run. Each breach is a [`Violation`] with a readable description:
//!
//! - **exclusion**: per key, every lease's interval is [grant, last `ok`] (a lease with no
//!   `ok` has none); sorted by grant time, no interval starts before an earlier lease's last
//!   `ok` — nobody believed it still held a key after someone else had been granted it;
//! - **fencing store**: per key, the fences the store accepted are strictly increasing;
//! - **unique fences**: no fence appears in two `grant` lines (fences are global across keys);
//! - **grants**: at least `--min-grants` grants.

use std::collections::{BTreeMap, HashMap};

use crate::history::Lease;

/// One breach of a check.
#[derive(Debug, Clone)]
pub struct Violation {
    pub check: &'static str,
    pub detail: String,
    /// The CLOCK_MONOTONIC window it concerns, to name the faults around it.
    pub window: Option<(u64, u64)>,
}

fn describe(l: &Lease) -> String {
    format!(
        "client {} fence {} granted at {}",
        l.client, l.fence, l.grant_ns
    )
}

/// Exclusion: no lease granted while an earlier lease of the key was still believed held.
/// One violation per such earlier lease, naming the first lease granted over it and how many
/// were.
pub fn exclusion(leases: &[Lease]) -> Vec<Violation> {
    let mut by_key: BTreeMap<&str, Vec<&Lease>> = BTreeMap::new();
    for l in leases.iter().filter(|l| l.last_ok_ns.is_some()) {
        by_key.entry(&l.key).or_default().push(l);
    }
    let mut violations = Vec::new();
    for (key, mut ls) in by_key {
        ls.sort_by_key(|l| (l.grant_ns, l.fence));
        // The earlier lease believed held the longest so far, until when, and the leases
        // granted over it: (first, count).
        let mut longest: Option<(&Lease, u64)> = None;
        let mut overlapped: Vec<(&Lease, u64, &Lease, usize)> = Vec::new();
        for l in ls {
            let last_ok = l.last_ok_ns.unwrap_or(l.grant_ns);
            if let Some((earlier, until)) = longest
                && until > l.grant_ns
            {
                match overlapped.last_mut() {
                    Some((e, _, _, n)) if std::ptr::eq(*e, earlier) => *n += 1,
                    _ => overlapped.push((earlier, until, l, 1)),
                }
            }
            if longest.is_none_or(|(_, until)| last_ok > until) {
                longest = Some((l, last_ok));
            }
        }
        for (earlier, until, first, n) in overlapped {
            let others = if n > 1 {
                format!(" (and {} more after it)", n - 1)
            } else {
                String::new()
            };
            violations.push(Violation {
                check: "exclusion",
                detail: format!(
                    "{key}: {}{others} while {} still logged ok at {until} ({:.1} ms later)",
                    describe(first),
                    describe(earlier),
                    (until - first.grant_ns) as f64 / 1e6
                ),
                window: Some((earlier.grant_ns, until)),
            });
        }
    }
    violations
}

/// Fencing store: the accepted fences of each key strictly increase.
pub fn fence_logs(logs: &BTreeMap<String, Vec<Result<u64, String>>>) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (key, fences) in logs {
        let mut previous: Option<u64> = None;
        for (i, f) in fences.iter().enumerate() {
            match f {
                Err(text) => violations.push(Violation {
                    check: "fencing-store",
                    detail: format!("fencelog:{key}[{i}] is not a fence: {text:?}"),
                    window: None,
                }),
                Ok(fence) => {
                    if let Some(p) = previous
                        && *fence <= p
                    {
                        violations.push(Violation {
                            check: "fencing-store",
                            detail: format!("fencelog:{key}[{i}] accepted fence {fence} after {p}"),
                            window: None,
                        });
                    }
                    previous = Some(*fence);
                }
            }
        }
    }
    violations
}

/// Unique fences: no fence granted twice, across keys, clients, phases and restarts.
pub fn unique_fences(leases: &[Lease]) -> Vec<Violation> {
    let mut first: HashMap<u64, &Lease> = HashMap::with_capacity(leases.len());
    let mut violations = Vec::new();
    for l in leases {
        if let Some(earlier) = first.get(&l.fence) {
            violations.push(Violation {
                check: "unique-fence",
                detail: format!(
                    "fence {} granted twice: {} on {} and {} on {}",
                    l.fence,
                    describe(earlier),
                    earlier.key,
                    describe(l),
                    l.key
                ),
                window: Some((
                    earlier.grant_ns.min(l.grant_ns),
                    earlier.grant_ns.max(l.grant_ns),
                )),
            });
        } else {
            first.insert(l.fence, l);
        }
    }
    violations
}

/// Enough grants for the run to mean something.
pub fn min_grants(grants: u64, min: u64) -> Vec<Violation> {
    if grants >= min {
        return Vec::new();
    }
    vec![Violation {
        check: "grants",
        detail: format!("only {grants} grants, fewer than --min-grants {min}"),
        window: None,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(client: usize, key: &str, fence: u64, grant: u64, last_ok: Option<u64>) -> Lease {
        Lease {
            client,
            key: key.into(),
            fence,
            grant_ns: grant,
            last_ok_ns: last_ok,
        }
    }

    #[test]
    fn overlapping_leases_are_a_violation() {
        let ok = [
            lease(0, "k", 1, 10, Some(20)),
            lease(1, "k", 2, 21, Some(30)),
            lease(2, "j", 3, 15, Some(16)),
            lease(3, "k", 4, 25, None), // no ok: no interval
        ];
        assert!(exclusion(&ok).is_empty());
        let bad = [
            lease(0, "k", 1, 10, Some(40)),
            lease(1, "k", 2, 21, Some(30)),
            lease(2, "k", 5, 35, Some(36)),
        ];
        let v = exclusion(&bad);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].detail.contains("fence 2"), "{v:?}");
        assert!(v[0].detail.contains("1 more"), "{v:?}");
        assert!(v[0].detail.contains("fence 1 granted at 10"), "{v:?}");
        let two = [
            lease(0, "k", 1, 10, Some(25)),
            lease(1, "k", 2, 20, Some(40)),
            lease(2, "k", 3, 30, Some(50)),
        ];
        assert_eq!(exclusion(&two).len(), 2);
    }

    #[test]
    fn fence_logs_must_increase() {
        let mut logs = BTreeMap::new();
        logs.insert("a".to_owned(), vec![Ok(1), Ok(3), Ok(3)]);
        logs.insert("b".to_owned(), vec![Ok(5), Err("x".to_owned())]);
        assert_eq!(fence_logs(&logs).len(), 2);
    }

    #[test]
    fn a_fence_granted_twice_is_a_violation() {
        let ls = [
            lease(0, "a", 7, 1, None),
            lease(1, "b", 7, 2, None),
            lease(1, "b", 8, 3, None),
        ];
        assert_eq!(unique_fences(&ls).len(), 1);
    }
}
