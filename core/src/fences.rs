//! Fencing-token allocation: one monotonic counter per table, `(epoch << 40) | counter`.
//!
//! Tokens never repeat and never go down: `raise_floor` only moves the counter forward. When the
//! 40-bit counter of an epoch is used up the count carries into the epoch bits, which keeps tokens
//! increasing (a restart must then restore the max token, see `raise_floor`). At `u64::MAX` the
//! allocator is exhausted and reports `LimitExceeded("fencing tokens")`. Cluster mode also sets
//! a ceiling (the newest etcd revision known, `<< 32`, plus the counter space): past it the
//! allocator refuses until the cluster driver learns a newer revision.
//!
//! The epoch/counter split (`COUNTER_BITS`) is defined once, with the epoch file.

use super::types::{Fence, TableError};
use crate::COUNTER_BITS;

const EPOCH_MASK: u64 = (1 << (64 - COUNTER_BITS)) - 1;

#[derive(Debug)]
pub struct FenceGen {
    next: Fence,
    /// The highest token that may be handed out (cluster mode: the epoch bits may not pass the
    /// newest etcd revision this broker knows, so a later claim of any shard is above every
    /// token issued here). `u64::MAX - 1` when unbounded.
    ceiling: Fence,
}

impl FenceGen {
    pub fn new(epoch: u64) -> Self {
        Self {
            next: ((epoch & EPOCH_MASK) << COUNTER_BITS) | 1,
            ceiling: u64::MAX - 1,
        }
    }

    /// Hands out the next token.
    #[inline]
    pub fn alloc(&mut self) -> Result<Fence, TableError> {
        if self.next > self.ceiling {
            return Err(TableError::LimitExceeded("fencing tokens"));
        }
        let f = self.next;
        self.next += 1;
        Ok(f)
    }

    /// Cluster mode starts with no token allowed, until the first ceiling is learnt.
    pub fn bound(&mut self) {
        self.ceiling = 0;
    }

    /// Raises the highest token that may be handed out (never lowers it).
    pub fn raise_ceiling(&mut self, ceiling: Fence) {
        self.ceiling = self.ceiling.max(ceiling.min(u64::MAX - 1));
    }

    /// Tokens left below the ceiling.
    pub fn headroom(&self) -> u64 {
        (self.ceiling + 1).saturating_sub(self.next)
    }

    /// Makes every future token `> fence`.
    pub fn raise_floor(&mut self, fence: Fence) {
        self.next = self.next.max(fence.saturating_add(1));
    }
}
