//! Owner labels of leases: the caller's own name for who holds a lease (`worker-7@host-3`),
//! shown by inspect, the admin API and the status page. Kept beside the entries, by fence,
//! only for leases that were given one — an unlabelled lease costs nothing here, and a lease
//! end looks the map up only while it is not empty. A lease end forgets its label; the
//! invariant checks (`invariants.rs`) verify that no label outlives its lease.

use std::collections::HashMap;

use bytes::Bytes;

use super::types::Fence;

/// Labels of live leases, by fence.
#[derive(Debug, Default)]
pub struct Owners(HashMap<Fence, Bytes>);

impl Owners {
    /// Labels lease `fence` (`None` or empty: no label).
    pub fn set(&mut self, fence: Fence, owner: Option<Bytes>) {
        if let Some(label) = owner.filter(|l| !l.is_empty()) {
            self.0.insert(fence, label);
        }
    }

    /// The label of lease `fence`, if it has one.
    pub fn get(&self, fence: Fence) -> Option<&Bytes> {
        if self.0.is_empty() {
            return None;
        }
        self.0.get(&fence)
    }

    /// Forgets the label of lease `fence` (the lease ended).
    #[inline]
    pub fn forget(&mut self, fence: Fence) {
        if !self.0.is_empty() {
            self.0.remove(&fence);
        }
    }

    /// Labels kept (the invariant checks compare it with the live leases).
    #[cfg(any(test, fuzzing))]
    pub fn fences(&self) -> impl Iterator<Item = Fence> + '_ {
        self.0.keys().copied()
    }
}
