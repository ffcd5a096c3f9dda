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

    /// Hands out `n` (≥ 1) consecutive tokens, `[f, f + n)`, and returns `f`: a cacheable
    /// lease's block (`cache.rs`). Every later token is above the block.
    #[inline]
    pub fn alloc_block(&mut self, n: u32) -> Result<Fence, TableError> {
        let last = self.next.saturating_add(u64::from(n.max(1)) - 1);
        if last > self.ceiling {
            return Err(TableError::LimitExceeded("fencing tokens"));
        }
        let f = self.next;
        self.next = last + 1;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A block is all or nothing below the ceiling, and the next token is above it.
    #[test]
    fn a_block_fits_under_the_ceiling_whole_or_not_at_all() {
        let mut g = FenceGen::new(0);
        g.bound();
        g.raise_ceiling(10);
        assert_eq!(g.alloc_block(5), Ok(1));
        assert_eq!(
            g.alloc_block(6),
            Err(TableError::LimitExceeded("fencing tokens"))
        );
        assert_eq!(g.alloc_block(5), Ok(6));
        assert_eq!(g.alloc(), Err(TableError::LimitExceeded("fencing tokens")));
        assert_eq!(g.headroom(), 0);
        g.raise_ceiling(20);
        assert_eq!(g.alloc_block(0), Ok(11), "a block of 0 is one token");
        assert_eq!(g.alloc(), Ok(12));
    }
}
