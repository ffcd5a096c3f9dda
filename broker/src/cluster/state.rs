//! The cluster as this broker sees it, sans-I/O (events in, decisions out): members, the owner
//! of every shard, and the shards this broker serves with their ownership term. The etcd
//! driver (`driver.rs`) feeds it what etcd says — after `entries.rs` checked it — and carries
//! out what it decides. A shard's owner is *live* only while the member it names is registered
//! under the very etcd lease that holds the ownership key; shards without a live owner are
//! counted, and overdue once unowned longer than a bound (`/readyz`, `/metrics`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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

/// A registered member: its client URL and the etcd lease its registration is held under.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    url: String,
    lease: i64,
}

/// A shard's owner as its ownership key says: a member name and the key's etcd lease.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owner {
    name: String,
    lease: i64,
}

/// The view.
#[derive(Debug)]
pub struct ClusterState {
    me: String,
    shards: u32,
    /// This broker's etcd lease in the current session (0: none).
    my_lease: i64,
    /// Live members: name → client URL and lease.
    members: BTreeMap<String, Member>,
    /// Members being drained (`lockbroker cluster drain`): no shard prefers them.
    drained: BTreeSet<String>,
    /// Owner of every shard, as etcd says (valid entries only).
    owners: Vec<Option<Owner>>,
    /// Shards whose ownership key is there but invalid (no lease): its mod revision, so the
    /// preferred owner may replace exactly that key.
    replaceable: Vec<Option<i64>>,
    /// Since when each shard has had no live owner.
    unowned_since: Vec<Option<Instant>>,
    /// How long a shard may go without a live owner before it counts as overdue.
    unowned_bound: Duration,
    /// Keys (relative to the prefix) ignored as invalid, and why.
    ignored: BTreeMap<String, String>,
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
    /// Shards of the whole cluster without a live owner now.
    pub unowned: u32,
    /// Of them, shards without one for longer than the bound.
    pub unowned_overdue: u32,
    /// The bound, for messages.
    pub unowned_bound: Duration,
    /// etcd keys ignored as invalid (`entries.rs`).
    pub ignored_keys: u32,
}

impl ClusterState {
    /// The view of member `me` in a cluster of `shards`, where a shard without a live owner
    /// for longer than `unowned_bound` is overdue.
    pub fn new(me: String, shards: u32, unowned_bound: Duration) -> ClusterState {
        let now = Instant::now();
        ClusterState {
            me,
            shards,
            my_lease: 0,
            members: BTreeMap::new(),
            drained: BTreeSet::new(),
            owners: vec![None; shards as usize],
            replaceable: vec![None; shards as usize],
            unowned_since: vec![Some(now); shards as usize],
            unowned_bound,
            ignored: BTreeMap::new(),
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
    /// `my_lease` is the new session's etcd lease, under which `url` is registered.
    pub fn reset_view(&mut self, my_lease: i64, url: String) {
        self.members.clear();
        self.drained.clear();
        self.ignored.clear();
        self.owners.iter_mut().for_each(|o| *o = None);
        self.replaceable.iter_mut().for_each(|o| *o = None);
        self.mine.iter_mut().for_each(|t| *t = None);
        self.revision = 0;
        self.my_lease = my_lease;
        let me = self.me.clone();
        self.member_up(me, url, my_lease);
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

    /// A member registered (or changed its URL) under `lease`.
    pub fn member_up(&mut self, name: String, url: String, lease: i64) {
        self.members.insert(name, Member { url, lease });
    }

    /// The key `key` is ignored because of `why`. True if it was not ignored so before (to
    /// log it once).
    pub fn ignore(&mut self, key: &str, why: String) -> bool {
        self.ignored.insert(key.to_string(), why.clone()).as_ref() != Some(&why)
    }

    /// The key `key` is valid (or gone): no longer ignored.
    pub fn unignore(&mut self, key: &str) {
        self.ignored.remove(key);
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

    /// etcd says `shard` is owned by the member named `owner` under the etcd lease of the
    /// ownership key (or by nobody). Returns true when this broker served the shard and no
    /// longer does (the caller ends its leases there): another name, or its own name under
    /// another lease than its own.
    pub fn set_owner(&mut self, shard: u32, owner: Option<(String, i64)>) -> bool {
        let Some(slot) = self.owners.get_mut(shard as usize) else {
            return false;
        };
        *slot = owner.map(|(name, lease)| Owner { name, lease });
        self.replaceable[shard as usize] = None;
        let still_mine = slot
            .as_ref()
            .is_some_and(|o| o.name == self.me && o.lease == self.my_lease);
        let lost = !still_mine && self.mine[shard as usize].is_some();
        if lost {
            self.mine[shard as usize] = None;
            self.ownership_changes += 1;
        }
        lost
    }

    /// etcd's watch shows `shard`'s ownership key changed at `mod_revision` (`owner`: its
    /// valid owner now, `None`: deleted). An event older than this broker's own claim of the
    /// shard is ignored: the claim's transaction answers before the watch delivers what
    /// happened before it (the earlier owner's key, its deletion by the hand-over), and that
    /// history must not end the term — the broker would keep the key in etcd and serve nothing,
    /// answering `Moved` to nobody. Returns whether the shard was lost, as
    /// [`ClusterState::set_owner`].
    pub fn owner_event(
        &mut self,
        shard: u32,
        owner: Option<(String, i64)>,
        mod_revision: i64,
    ) -> bool {
        if self.predates_term(shard, mod_revision) {
            return false;
        }
        self.set_owner(shard, owner)
    }

    /// Whether a change of `shard`'s ownership key at `mod_revision` happened before this
    /// broker's current term of it began.
    fn predates_term(&self, shard: u32, mod_revision: i64) -> bool {
        self.term(shard)
            .is_some_and(|t| u64::try_from(mod_revision).is_ok_and(|r| r < t.epoch))
    }

    /// `shard`'s ownership key is invalid (`entries.rs`), last modified at `mod_revision`:
    /// the shard has no owner, and that key may be replaced by a claim. Returns what
    /// [`ClusterState::set_owner`] does.
    pub fn stray_owner(&mut self, shard: u32, mod_revision: i64) -> bool {
        if self.predates_term(shard, mod_revision) {
            return false;
        }
        let lost = self.set_owner(shard, None);
        if let Some(r) = self.replaceable.get_mut(shard as usize) {
            *r = Some(mod_revision);
        }
        lost
    }

    /// The mod revision of `shard`'s invalid ownership key, if it has one.
    pub fn replaceable(&self, shard: u32) -> Option<i64> {
        self.replaceable.get(shard as usize).copied().flatten()
    }

    /// Whether `shard` has a live owner: a member registered under the lease of the shard's
    /// ownership key.
    fn has_live_owner(&self, shard: u32) -> bool {
        self.owners[shard as usize].as_ref().is_some_and(|o| {
            self.members
                .get(&o.name)
                .is_some_and(|m| m.lease == o.lease)
        })
    }

    /// Notes, at `now`, which shards have no live owner (since when).
    pub fn refresh_unowned(&mut self, now: Instant) {
        for s in 0..self.shards {
            let live = self.has_live_owner(s);
            let since = &mut self.unowned_since[s as usize];
            match (live, *since) {
                (true, _) => *since = None,
                (false, None) => *since = Some(now),
                (false, Some(_)) => {}
            }
        }
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

    /// The backup of each shard served here (replicated shards): the next member in the
    /// shard's rendezvous order after this broker, with its client URL. Shards without
    /// another candidate member have none.
    pub fn backups(&self) -> Vec<(u32, String, String)> {
        let mut names = self.candidates();
        names.retain(|m| *m != self.me);
        self.served()
            .into_iter()
            .filter_map(|s| {
                let b = super::rendezvous::backup_of(s, &self.me, &names)?;
                let url = self.members.get(b)?.url.clone();
                Some((s, b.to_string(), url))
            })
            .collect()
    }

    /// The shards served here.
    pub fn served(&self) -> Vec<u32> {
        (0..self.shards)
            .filter(|&s| self.mine[s as usize].is_some())
            .collect()
    }

    /// Stops serving `shard` (before its ownership key is deleted for a planned move); the
    /// term it was served in, `None` if it was not served here.
    pub fn release(&mut self, shard: u32) -> Option<Term> {
        let term = self.mine.get_mut(shard as usize)?.take()?;
        self.ownership_changes += 1;
        Some(term)
    }

    /// This broker's claim of `shard` (under its session's lease) succeeded at etcd revision
    /// `epoch`.
    pub fn claimed(&mut self, shard: u32, epoch: u64, grace_until: Option<Instant>) {
        if let Some(slot) = self.owners.get_mut(shard as usize) {
            *slot = Some(Owner {
                name: self.me.clone(),
                lease: self.my_lease,
            });
            self.replaceable[shard as usize] = None;
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
                if self.owners[s].as_ref().is_some_and(|o| o.name == self.me) {
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
            unowned_bound: self.unowned_bound,
            ignored_keys: u32::try_from(self.ignored.len()).unwrap_or(u32::MAX),
            ..Ownership::default()
        };
        for since in self.unowned_since.iter().flatten() {
            o.unowned += 1;
            if now.saturating_duration_since(*since) > self.unowned_bound {
                o.unowned_overdue += 1;
            }
        }
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
            .filter(|o| o.name != self.me)
            .and_then(|o| self.members.get(&o.name))
            .map(|m| m.url.clone())
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
                let member = self.members.get(&o.as_ref()?.name)?;
                Some(ShardOwner {
                    shard: s as u32,
                    url: member.url.clone(),
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

    const BOUND: Duration = Duration::from_secs(4);

    fn key_in(shard: u32, shards: u32) -> Vec<u8> {
        (0..)
            .map(|i: u32| format!("k{i}").into_bytes())
            .find(|k| shard_of(k, shards) == shard)
            .unwrap_or_default()
    }

    #[test]
    fn claims_route_and_self_fencing() {
        let now = Instant::now();
        let mut a = ClusterState::new("a".into(), 8, BOUND);
        a.member_up("a".into(), "quic://a".into(), 0);
        a.member_up("b".into(), "quic://b".into(), 2);
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
        assert!(!a.set_owner(other, Some(("b".into(), 2))));
        assert_eq!(a.route(&ko, true, now), Route::Moved("quic://b".into()));
        assert_eq!(a.shard_map().owners.len(), 2);
        // etcd says someone else owns our shard now: lost.
        assert!(a.set_owner(s, Some(("b".into(), 2))));
        assert_eq!(a.route(&k, true, now), Route::Moved("quic://b".into()));
        a.claimed(s, 30, None);
        assert_eq!(a.drop_all_mine(), vec![s]);
        assert_eq!(a.route(&k, true, now), Route::Moved(String::new()));
    }

    /// The claim's transaction answers before the watch delivers the events before it: the
    /// earlier owner's key (rev 56) and its deletion by the hand-over (rev 62) arrive after
    /// this broker claimed at rev 63. Before the fix they ended the new term while etcd kept
    /// naming this broker: it served nothing and answered `Moved` to nobody, for good (the
    /// bench's "bench-cluster/1 never granted").
    #[test]
    fn watch_events_older_than_the_claim_do_not_end_the_term() {
        let now = Instant::now();
        let mut a = ClusterState::new("a".into(), 8, BOUND);
        a.reset_view(7, "quic://a".into());
        a.member_up("b".into(), "quic://b".into(), 2);
        let s = 3;
        a.claimed(s, 63, None);
        assert!(!a.owner_event(s, Some(("b".into(), 2)), 56));
        assert!(!a.owner_event(s, None, 62));
        assert!(!a.stray_owner(s, 60));
        assert!(!a.owner_event(s, Some(("a".into(), 7)), 63));
        let k = key_in(s, 8);
        assert_eq!(a.route(&k, true, now), Route::Local { grace_until: None });
        // A change after the claim still ends it.
        assert!(a.owner_event(s, None, 70));
        assert_eq!(a.route(&k, true, now), Route::Moved(String::new()));
    }

    /// A new etcd session starts from a clean view: what changed while no session watched
    /// (here: member b left and freed its shards) must not keep a stale owner that blocks the
    /// claims. Before the reset, `a` would route b's shards to the departed b and never claim
    /// them.
    #[test]
    fn a_new_session_forgets_the_stale_view() {
        let mut a = ClusterState::new("a".into(), 8, BOUND);
        a.member_up("a".into(), "quic://a".into(), 0);
        a.member_up("b".into(), "quic://b".into(), 2);
        for s in 0..8 {
            let owner = if a.to_claim().contains(&s) {
                ("a", 0)
            } else {
                ("b", 2)
            };
            a.set_owner(s, Some((owner.0.into(), owner.1)));
        }
        assert!(a.to_claim().is_empty());
        // The session ends; b leaves meanwhile. The new session reads only a's registration.
        a.drop_all_mine();
        a.reset_view(0, "quic://a".into());
        assert_eq!(a.to_claim(), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_leaving_broker_claims_nothing_and_releases_everything() {
        let mut a = ClusterState::new("a".into(), 4, BOUND);
        a.member_up("a".into(), "quic://a".into(), 0);
        a.member_up("b".into(), "quic://b".into(), 2);
        let mine = a.to_claim();
        for &s in &mine {
            a.claimed(s, 5, None);
        }
        a.leave();
        assert!(a.to_claim().is_empty());
        assert_eq!(a.to_release(), mine);
    }

    /// An ownership key is live only under its member's own lease; one without a lease is
    /// replaceable; shards without a live owner are counted, and overdue past the bound.
    #[test]
    fn owners_are_live_only_under_their_members_lease() {
        let t0 = Instant::now();
        let mut a = ClusterState::new("a".into(), 4, BOUND);
        a.reset_view(7, "quic://a".into());
        a.member_up("b".into(), "quic://b".into(), 9);
        for s in a.to_claim() {
            a.claimed(s, 3, None);
        }
        let theirs: Vec<u32> = (0..4).filter(|s| a.term(*s).is_none()).collect();
        assert!(!theirs.is_empty());
        for &s in &theirs {
            // Named b, but under a lease that is not b's: no live owner.
            a.set_owner(s, Some(("b".into(), 1234)));
        }
        a.refresh_unowned(t0);
        let o = a.ownership(t0);
        assert_eq!(o.unowned as usize, theirs.len());
        assert_eq!(o.unowned_overdue, 0);
        let later = t0 + BOUND + Duration::from_millis(1);
        assert_eq!(a.ownership(later).unowned_overdue as usize, theirs.len());
        for &s in &theirs {
            a.set_owner(s, Some(("b".into(), 9)));
        }
        a.refresh_unowned(later);
        assert_eq!(a.ownership(later).unowned, 0);

        // Our own shard's key overwritten without a lease: lost here, replaceable, to claim.
        let mine = (0..4).find(|s| a.term(*s).is_some()).unwrap_or(0);
        assert!(a.stray_owner(mine, 42));
        assert_eq!(a.replaceable(mine), Some(42));
        assert!(a.to_claim().contains(&mine));
        a.claimed(mine, 50, None);
        assert_eq!(a.replaceable(mine), None);
        // Our name under another lease is not ours either.
        assert!(a.set_owner(mine, Some(("a".into(), 8))));
        assert!(!a.to_claim().contains(&mine));
    }

    #[test]
    fn ignored_keys_are_counted_once_each() {
        let mut a = ClusterState::new("a".into(), 4, BOUND);
        assert!(a.ignore("members/zz", "no lease".into()));
        assert!(!a.ignore("members/zz", "no lease".into()));
        assert!(a.ignore("members/zz", "bad url".into()));
        assert!(a.ignore("shards/9", "bad shard".into()));
        assert_eq!(a.ownership(Instant::now()).ignored_keys, 2);
        a.unignore("members/zz");
        assert_eq!(a.ownership(Instant::now()).ignored_keys, 1);
    }
}
