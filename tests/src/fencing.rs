//! A fencing checker for mutual-exclusion tests: a per-key "current holder" marker that is
//! swapped in on every grant and cleared before every release, and a per-key "last fence" that
//! must strictly increase with every grant. Violations are recorded (not panicked on inside
//! tasks) and reported by [`FenceChecker::assert_clean`].

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Checks exclusive grants on a fixed set of keys (indexed `0..n`).
pub struct FenceChecker {
    keys: Vec<KeyState>,
    grants: AtomicU64,
    violations: Mutex<Vec<String>>,
}

struct KeyState {
    /// Fence of the current holder, 0 when nobody holds the key.
    holder: AtomicU64,
    /// Largest fence ever granted on the key.
    last_fence: AtomicU64,
}

impl FenceChecker {
    pub fn new(keys: usize) -> FenceChecker {
        FenceChecker {
            keys: (0..keys)
                .map(|_| KeyState {
                    holder: AtomicU64::new(0),
                    last_fence: AtomicU64::new(0),
                })
                .collect(),
            grants: AtomicU64::new(0),
            violations: Mutex::new(Vec::new()),
        }
    }

    fn violation(&self, msg: String) {
        let mut v = self.violations.lock();
        if v.len() < 50 {
            v.push(msg);
        }
    }

    /// Call right after a grant of `key` with `fence` arrived.
    pub fn granted(&self, key: usize, fence: u64) {
        self.grants.fetch_add(1, Ordering::Relaxed);
        let k = &self.keys[key];
        if fence == 0 {
            self.violation(format!("key {key}: fence 0 granted"));
        }
        let prev = k.holder.swap(fence, Ordering::SeqCst);
        if prev != 0 {
            self.violation(format!(
                "key {key}: fence {fence} granted while fence {prev} still held it"
            ));
        }
        let last = k.last_fence.fetch_max(fence, Ordering::SeqCst);
        if last >= fence {
            self.violation(format!(
                "key {key}: fence {fence} granted after fence {last} (tokens must strictly grow)"
            ));
        }
    }

    /// Call right before releasing `key` held with `fence` (by unlock or drop).
    pub fn releasing(&self, key: usize, fence: u64) {
        let k = &self.keys[key];
        if let Err(actual) = k
            .holder
            .compare_exchange(fence, 0, Ordering::SeqCst, Ordering::SeqCst)
        {
            self.violation(format!(
                "key {key}: holder of fence {fence} releasing, but the marker says {actual}"
            ));
        }
    }

    /// Grants observed so far.
    pub fn grants(&self) -> u64 {
        self.grants.load(Ordering::Relaxed)
    }

    /// Panics with every recorded violation, if any.
    pub fn assert_clean(&self) {
        let v = self.violations.lock();
        assert!(
            v.is_empty(),
            "{} fencing violation(s):\n{}",
            v.len(),
            v.join("\n")
        );
    }
}
