//! Fencing-token allocation: one monotonic counter per table, `(epoch << 40) | counter`.
//!
//! Tokens never repeat and never go down: `raise_floor` only moves the counter forward. When the
//! 40-bit counter of an epoch is used up the count carries into the epoch bits, which keeps tokens
//! increasing (a restart must then restore the max token, see `raise_floor`). At `u64::MAX` the
//! allocator is exhausted and reports `LimitExceeded("fencing tokens")`.
//!
//! The epoch/counter split (`COUNTER_BITS`) is defined once, with the epoch file.

use super::types::{Fence, TableError};
use crate::epoch::COUNTER_BITS;

const EPOCH_MASK: u64 = (1 << (64 - COUNTER_BITS)) - 1;

#[derive(Debug)]
pub(crate) struct FenceGen {
    next: Fence,
}

impl FenceGen {
    pub(crate) fn new(epoch: u64) -> Self {
        Self {
            next: ((epoch & EPOCH_MASK) << COUNTER_BITS) | 1,
        }
    }

    /// Hands out the next token.
    #[inline]
    pub(crate) fn alloc(&mut self) -> Result<Fence, TableError> {
        if self.next == u64::MAX {
            return Err(TableError::LimitExceeded("fencing tokens"));
        }
        let f = self.next;
        self.next += 1;
        Ok(f)
    }

    /// Makes every future token `> fence`.
    pub(crate) fn raise_floor(&mut self, fence: Fence) {
        self.next = self.next.max(fence.saturating_add(1));
    }
}
