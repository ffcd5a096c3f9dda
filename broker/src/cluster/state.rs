//! The cluster as this broker sees it, sans-I/O (events in, decisions out): members, the owner
//! of every shard, and the shards this broker serves with their ownership term. The etcd
//! driver (`driver.rs`) feeds it what etcd says and carries out what it decides.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use lockbroker_proto::{ShardMap, ShardOwner, shard_of};

use super::rendezvous::preferred_owner;
use crate::broker::Route;

/// One ownership term of a shard served here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// The etcd revision that created the ownership key: fences of this term are above
    /// `epoch << 32`, so above everything earlier owners issued.
    pub epoch: u64,
    /// New grants wait until then (`None`: the shard never had an owner before).
    pub grace_until: Option<Instant>,
}

/// The view.
#[derive(Debug)]
pub struct ClusterState {
    me: String,
    shards: u32,
    /// Live members: name → client URL.
    members: BTreeMap<String, String>,
    /// Members being drained (`lockbroker cluster drain`): no shard prefers them.
    drained: BTreeSet<String>,
    /// Owner (member name) of every shard, as etcd says.
    owners: Vec<Option<String>>,
    /// Shards served here.
    mine: Vec<Option<Term>>,
    /// The newest etcd revision applied.
    pub revision: u64,
    /// This broker is leaving the cluster (graceful shutdown): it claims nothing more.
    leaving: bool,
    /// Shards this broker started or stopped serving, since start (a metric).
    pub ownership_changes: u64,
}

/// This broker's share of the shards, for metrics and readiness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Shards served here.
    pub owned: u32,
    /// Of them, shards in their takeover grace (granting nothing new yet).
    pub in_grace: u32,
    /// Shards this broker is the preferred owner of but does not serve.
    pub missing: u32,
    /// Shards it started or stopped serving since start.
    pub changes: u64,
}

impl ClusterState {
    pub fn new(me: String, shards: u32) -> ClusterState {
        ClusterState {
            me,
            shards,
            members: BTreeMap::new(),
            drained: BTreeSet::new(),
            owners: vec![None; shards as usize],
            mine: vec![None; shards as usize],
            revision: 0,
            leaving: false,
            ownership_changes: 0,
        }
    }

    /// A new etcd session starts: forget what etcd said before (members, owners, drains). It
    /// is read again in full, and whatever changed while no session watched — a member gone,
    /// a shard freed — must not linger as a stale view that nobody claims. Serves nothing
    /// until its own claims succeed again.
    pub fn reset_view(&mut self) {
        self.members.clear();
        self.drained.clear();
        self.owners.iter_mut().for_each(|o| *o = None);
        self.mine.iter_mut().for_each(|t| *t = None);
        self.revision = 0;
    }

    /// This broker leaves the cluster: it is preferred for no shard from now on.
    pub fn leave(&mut self) {
        self.leaving = true;
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// A member registered (or changed its URL).
    pub fn member_up(&mut self, name: String, url: String) {
        self.members.insert(name, url);
    }

    /// Marks a member drained (or not): drained members are preferred for no shard, so their
    /// shards are handed over and they claim nothing.
    pub fn set_drained(&mut self, name: &str, drained: bool) {
        if drained {
            self.drained.insert(name.to_string());
        } else {
            self.drained.remove(name);
        }
    }

    /// The members shards may prefer: live and not drained.
    fn candidates(&self) -> Vec<String> {
        self.members
            .keys()
            .filter(|m| !self.drained.contains(*m))
            .filter(|m| !(self.leaving && **m == self.me))
            .cloned()
            .collect()
    }

    /// A member's registration is gone.
    pub fn member_down(&mut self, name: &str) {
        self.members.remove(name);
    }

    /// etcd says `shard` is owned by `owner` (or by nobody). Returns true when this broker
    /// served the shard and no longer does (the caller ends its leases there).
    pub fn set_owner(&mut self, shard: u32, owner: Option<String>) -> bool {
        let Some(slot) = self.owners.get_mut(shard as usize) else {
            return false;
        };
        *slot = owner;
        let still_mine = slot.as_deref() == Some(self.me.as_str());
        let lost = !still_mine && self.mine[shard as usize].is_some();
        if lost {
            self.mine[shard as usize] = None;
            self.ownership_changes += 1;
        }
        lost
    }

    /// Shards without an owner that this broker is the preferred owner of: to claim.
    pub fn to_claim(&self) -> Vec<u32> {
        let names = self.candidates();
        (0..self.shards)
            .filter(|&s| self.owners[s as usize].is_none())
            .filter(|&s| preferred_owner(s, &names) == Some(self.me.as_str()))
            .collect()
    }

    /// Shards served here whose preferred owner is another live member (it joined): to hand
    /// over (planned move).
    pub fn to_release(&self) -> Vec<u32> {
        let names = self.candidates();
        (0..self.shards)
            .filter(|&s| self.mine[s as usize].is_some())
            .filter(|&s| preferred_owner(s, &names).is_some_and(|p| p != self.me))
            .collect()
    }

    /// Stops serving `shard` (before its ownership key is deleted for a planned move).
    pub fn release(&mut self, shard: u32) {
        if let Some(t) = self.mine.get_mut(shard as usize)
            && t.take().is_some()
        {
            self.ownership_changes += 1;
        }
    }

    /// This broker's claim of `shard` succeeded at etcd revision `epoch`.
    pub fn claimed(&mut self, shard: u32, epoch: u64, grace_until: Option<Instant>) {
        if let Some(slot) = self.owners.get_mut(shard as usize) {
            *slot = Some(self.me.clone());
            self.mine[shard as usize] = Some(Term { epoch, grace_until });
            self.ownership_changes += 1;
        }
    }

    /// This broker lost its etcd lease (or cannot vouch for it): it serves nothing any more.
    /// Returns the shards it served.
    pub fn drop_all_mine(&mut self) -> Vec<u32> {
        let mut lost = Vec::new();
        for (s, term) in self.mine.iter_mut().enumerate() {
            if term.take().is_some() {
                self.ownership_changes += 1;
                lost.push(s as u32);
                if self.owners[s].as_deref() == Some(self.me.as_str()) {
                    self.owners[s] = None;
                }
            }
        }
        lost
    }

    /// This broker's share of the shards at `now`.
    pub fn ownership(&self, now: Instant) -> Ownership {
        let names = self.candidates();
        let mut o = Ownership {
            changes: self.ownership_changes,
            ..Ownership::default()
        };
        for s in 0..self.shards {
            match self.mine[s as usize] {
                Some(term) => {
                    o.owned += 1;
                    if term.grace_until.is_some_and(|g| now < g) {
                        o.in_grace += 1;
                    }
                }
                None if preferred_owner(s, &names) == Some(self.me.as_str()) => o.missing += 1,
                None => {}
            }
        }
        o
    }

    /// The term of a shard served here.
    pub fn term(&self, shard: u32) -> Option<Term> {
        self.mine.get(shard as usize).copied().flatten()
    }

    /// Where a request for `key` goes at `now`; `valid`: this broker can vouch for its etcd
    /// lease now.
    pub fn route(&self, key: &[u8], valid: bool, now: Instant) -> Route {
        let shard = shard_of(key, self.shards);
        if let Some(term) = self.term(shard) {
            if !valid {
                return Route::Unavailable;
            }
            return Route::Local {
                grace_until: term.grace_until.filter(|g| now < *g),
            };
        }
        let url = self.owners[shard as usize]
            .as_ref()
            .filter(|o| **o != self.me)
            .and_then(|o| self.members.get(o))
            .cloned()
            .unwrap_or_default();
        Route::Moved(url)
    }

    /// The map clients route by.
    pub fn shard_map(&self) -> ShardMap {
        let owners = self
            .owners
            .iter()
            .enumerate()
            .filter_map(|(s, o)| {
                let url = self.members.get(o.as_ref()?)?;
                Some(ShardOwner {
                    shard: s as u32,
                    url: url.clone(),
                })
            })
            .collect();
        ShardMap {
            version: self.revision,
            shards: self.shards,
            owners,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key_in(shard: u32, shards: u32) -> Vec<u8> {
        (0..)
            .map(|i: u32| format!("k{i}").into_bytes())
            .find(|k| shard_of(k, shards) == shard)
            .unwrap_or_default()
    }

    #[test]
    fn claims_route_and_self_fencing() {
        let now = Instant::now();
        let mut a = ClusterState::new("a".into(), 8);
        a.member_up("a".into(), "quic://a".into());
        a.member_up("b".into(), "quic://b".into());
        let mine = a.to_claim();
        assert!(!mine.is_empty() && mine.len() < 8, "{mine:?}");
        let s = mine[0];
        a.claimed(s, 17, Some(now + Duration::from_secs(5)));
        let k = key_in(s, 8);
        assert_eq!(
            a.route(&k, true, now),
            Route::Local {
                grace_until: Some(now + Duration::from_secs(5))
            }
        );
        assert_eq!(
            a.route(&k, true, now + Duration::from_secs(6)),
            Route::Local { grace_until: None }
        );
        // Self-fenced: refuse rather than serve.
        assert_eq!(a.route(&k, false, now), Route::Unavailable);
        // A shard of b's: moved to b; one with no owner: moved nowhere yet.
        let other = (0..8).find(|x| !mine.contains(x)).unwrap_or(0);
        let ko = key_in(other, 8);
        assert_eq!(a.route(&ko, true, now), Route::Moved(String::new()));
        assert!(!a.set_owner(other, Some("b".into())));
        assert_eq!(a.route(&ko, true, now), Route::Moved("quic://b".into()));
        assert_eq!(a.shard_map().owners.len(), 2);
        // etcd says someone else owns our shard now: lost.
        assert!(a.set_owner(s, Some("b".into())));
        assert_eq!(a.route(&k, true, now), Route::Moved("quic://b".into()));
        a.claimed(s, 30, None);
        assert_eq!(a.drop_all_mine(), vec![s]);
        assert_eq!(a.route(&k, true, now), Route::Moved(String::new()));
    }

    /// A new etcd session starts from a clean view: what changed while no session watched
    /// (here: member b left and freed its shards) must not keep a stale owner that blocks the
    /// claims. Before the reset, `a` would route b's shards to the departed b and never claim
    /// them.
    #[test]
    fn a_new_session_forgets_the_stale_view() {
        let mut a = ClusterState::new("a".into(), 8);
        a.member_up("a".into(), "quic://a".into());
        a.member_up("b".into(), "quic://b".into());
        for s in 0..8 {
            let owner = if a.to_claim().contains(&s) { "a" } else { "b" };
            a.set_owner(s, Some(owner.into()));
        }
        assert!(a.to_claim().is_empty());
        // The session ends; b leaves meanwhile. The new session reads only a's registration.
        a.drop_all_mine();
        a.reset_view();
        a.member_up("a".into(), "quic://a".into());
        assert_eq!(a.to_claim(), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_leaving_broker_claims_nothing_and_releases_everything() {
        let mut a = ClusterState::new("a".into(), 4);
        a.member_up("a".into(), "quic://a".into());
        a.member_up("b".into(), "quic://b".into());
        let mine = a.to_claim();
        for &s in &mine {
            a.claimed(s, 5, None);
        }
        a.leave();
        assert!(a.to_claim().is_empty());
        assert_eq!(a.to_release(), mine);
    }
}
