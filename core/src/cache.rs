//! Lock caching (issue 25), the table's part: a cacheable lease and its recall.
//!
//! An acquire may ask for a *fence block* (`AcquireRequest::fence_block` > 1): its lease then
//! reserves the fencing tokens `[fence, fence + n)` (`FenceGen::alloc_block`), so that its
//! holder — a client that keeps the lease after its own unlock — can grant the key again
//! locally, each local grant with the next token of the block, and every later grant of the
//! key here is above them: fences at a resource still strictly grow. The lease is otherwise
//! an ordinary one (renewed, released, expired, revoked, handed over as any).
//!
//! When a request conflicts with a cacheable lease — an acquire that queues or is refused
//! `Busy`, a multi-key acquire waiting on the key, a `wait_until_unlocked` — the table recalls
//! it, once: `Effect::Recall` tells its holder to grant nothing more locally and release the
//! lease when its current local holder is done. Nothing else changes: the lease stays valid
//! until released or expired, so a holder that never answers keeps the key no longer than an
//! ordinary holder that crashed (its TTL).

use std::time::Instant;

use super::entry::{Cx, Entry};
use super::keys::EntryId;
use super::types::Effect;
use super::{Table, cx};

impl Entry {
    /// Recalls every cacheable lease of the key not recalled yet (another request conflicts
    /// with it).
    pub(crate) fn recall_cached(&mut self, cx: &mut Cx<'_>) {
        if !self
            .holders
            .as_slice()
            .iter()
            .any(|h| h.cached && !h.recalled)
        {
            return;
        }
        let key = self.key.to_key();
        for h in self.holders.as_mut_slice() {
            if h.cached && !h.recalled {
                h.recalled = true;
                cx.out.push(Effect::Recall {
                    session: h.session,
                    key: key.clone(),
                    fence: h.fence,
                });
            }
        }
    }
}

impl Table {
    /// Recalls the cacheable leases on every key of `ids` that is live (a multi-key acquire
    /// that cannot be granted now).
    pub(crate) fn recall_cached_on(
        &mut self,
        now: Instant,
        ids: &[Option<EntryId>],
        out: &mut Vec<Effect>,
    ) {
        for &id in ids.iter().flatten() {
            if let Some(e) = self.keys.get_mut(id) {
                e.recall_cached(&mut cx!(self, now, out));
            }
        }
    }
}
