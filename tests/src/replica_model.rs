//! A checked model (stateright, exhaustive breadth-first) of replicated shards (issue 24,
//! unplanned failures): the shard's owner streams every grant and renewal to its backup and
//! answers it only once the backup acknowledged it — or once the backup is out of the in-sync
//! set, which lives in etcd beside the ownership key and which only the owner may change (a
//! transaction its ownership guards), as Kafka keeps its ISR in ZooKeeper. When the owner
//! crashes or stops vouching for its etcd lease, a backup that etcd names as in sync *for the
//! last claim's term*, and whose replica follows that term, takes the shard over with the
//! leases it holds and serves at once; any other claimer waits the grace, as today. (A
//! replica lives in the backup's memory: a restarted backup has none, whatever etcd says.)
//!
//! Two brokers (each the other's backup), two clients, one exclusive key, discrete time (a
//! lease lasts `TTL` ticks, the grace `TTL + 1`). The owner's table changes at once; each
//! grant or renewal waits in its queue of unanswered changes until it is replicated (the
//! backup applies changes in order) or the owner took the backup out of the in-sync set.
//! A snapshot (the owner's table, its grace, every change so far) brings a backup into the
//! set. Releases are not replicated: a backup keeping a released lease longer only delays
//! the next holder. Brokers crash (losing their replica), self-fence, restart; clients renew,
//! adopt a lease during a grace, release, vanish.
//!
//! Checked: one holder at a time; fences only grow; a crashed owner's held key is served by
//! its in-sync backup at once. Each broken variant — an answer before the backup's ack, a
//! renewal answered unreplicated, a takeover that drops the old owner's own grace, an in-sync
//! set kept from an earlier term — breaks exclusion.

use stateright::{Model, Property};

const BROKERS: usize = 2;
const CLIENTS: usize = 2;
const TTL: u8 = 2;
const GRACE: u8 = TTL + 1;
const HORIZON: u8 = 6;
/// etcd revisions (claims), grants per term and failures (crashes, self-fencing) explored.
const MAX_REV: u8 = 4;
const MAX_SEQ: u8 = 2;
const MAX_FAILURES: u8 = 2;

/// The protocol as designed, or a deliberately broken version of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    AsDesigned,
    /// Changes are answered without waiting for the in-sync backup.
    AnswerBeforeAck,
    /// Renewals are answered without being replicated (grants are).
    RenewNotReplicated,
    /// The backup takes over without the grace still running at the old owner.
    DropsGraceLeft,
    /// A claim neither clears the in-sync set nor checks the term it was written in.
    IsrOfEarlierTerm,
}

/// A lease: holder, fence, deadline (tick).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Lease {
    client: u8,
    fence: u16,
    deadline: u8,
}

/// A grant or renewal the owner made and has not answered yet: the lease as changed, and
/// whether the backup has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Change {
    lease: Lease,
    renewal: bool,
    acked: bool,
}

/// What a backup holds of its owner's shard: the owner's term, its leases and grace.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Replica {
    epoch: u8,
    leases: Vec<Lease>,
    grace_until: u8,
}

/// etcd's in-sync set: the backup, and the owner's term it was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct InSync {
    backup: u8,
    epoch: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Broker {
    alive: bool,
    serving: bool,
    epoch: u8,
    next_seq: u8,
    grace_until: u8,
    table: Vec<Lease>,
    unanswered: Vec<Change>,
    replica: Option<Replica>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: u8,
    brokers: Vec<Broker>,
    clients: Vec<Option<(u16, u8)>>,
    owner: Option<u8>,
    rev: u8,
    claimed_rev: u8,
    ever_owned: bool,
    in_sync: Option<InSync>,
    failures: u8,
    max_fence: u16,
    fence_regressed: bool,
    /// A backup took a held key over and served at once.
    backup_served_at_once: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Tick,
    Claim(u8),
    Grant(u8, u8),
    Renew(u8),
    Replicate(u8),
    Snapshot(u8),
    DropBackup(u8),
    Answer(u8),
    Adopt(u8),
    Release(u8),
    Vanish(u8),
    Crash(u8),
    Restart(u8),
    SelfFence(u8),
    EtcdExpires,
}

struct ReplicatedShard {
    variant: Variant,
}

fn fence(epoch: u8, seq: u8) -> u16 {
    (u16::from(epoch) << 8) | u16::from(seq)
}

fn other(b: u8) -> u8 {
    1 - b
}

impl Broker {
    fn live(&self, now: u8) -> Option<&Lease> {
        self.table.iter().find(|l| l.deadline > now)
    }

    fn stop(&mut self) {
        self.serving = false;
        self.table.clear();
        self.unanswered.clear();
    }
}

impl ReplicatedShard {
    fn server(s: &State) -> Option<usize> {
        let b = usize::from(s.owner?);
        s.brokers[b].serving.then_some(b)
    }

    /// Whether owner `b`'s changes must wait for its backup: etcd names one in sync for the
    /// owner's term.
    fn backup_in_sync(&self, s: &State, b: u8) -> bool {
        let epoch = s.brokers[usize::from(b)].epoch;
        s.in_sync.is_some_and(|i| i.epoch == epoch)
    }

    /// Whether claimer `b` may take the shard over from its replica: etcd names it in sync
    /// for the last claim's term, and its replica follows that term.
    fn may_take_over(&self, s: &State, b: u8) -> Option<Replica> {
        let i = s.in_sync?;
        let replica = s.brokers[usize::from(b)].replica.clone()?;
        let term_ok = self.variant == Variant::IsrOfEarlierTerm
            || (i.epoch == s.claimed_rev && replica.epoch == s.claimed_rev);
        (i.backup == b && term_ok).then_some(replica)
    }
}

impl Model for ReplicatedShard {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let broker = Broker {
            alive: true,
            serving: false,
            epoch: 0,
            next_seq: 0,
            grace_until: 0,
            table: Vec::new(),
            unanswered: Vec::new(),
            replica: None,
        };
        vec![State {
            now: 0,
            brokers: vec![broker; BROKERS],
            clients: vec![None; CLIENTS],
            owner: None,
            rev: 0,
            claimed_rev: 0,
            ever_owned: false,
            in_sync: None,
            failures: 0,
            max_fence: 0,
            fence_regressed: false,
            backup_served_at_once: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.now < HORIZON {
            actions.push(Action::Tick);
        }
        if s.owner.is_some_and(|b| !s.brokers[usize::from(b)].serving) {
            actions.push(Action::EtcdExpires);
        }
        for b in 0..BROKERS as u8 {
            let br = &s.brokers[usize::from(b)];
            if !br.alive {
                actions.push(Action::Restart(b));
                continue;
            }
            if s.failures < MAX_FAILURES {
                actions.push(Action::Crash(b));
            }
            if s.owner.is_none() && !br.serving {
                actions.push(Action::Claim(b));
            }
            if br.serving {
                if s.failures < MAX_FAILURES {
                    actions.push(Action::SelfFence(b));
                }
                // One change in flight at a time (the stream is in order; more would only
                // multiply the states).
                if br.unanswered.is_empty() {
                    for c in 0..CLIENTS as u8 {
                        actions.push(Action::Grant(b, c));
                    }
                }
                if !br.unanswered.is_empty() {
                    actions.push(Action::Answer(b));
                    actions.push(Action::Replicate(b));
                }
                if s.owner == Some(b) {
                    actions.push(Action::Snapshot(b));
                    if s.in_sync.is_some() {
                        actions.push(Action::DropBackup(b));
                    }
                }
            }
        }
        for c in 0..CLIENTS as u8 {
            if s.clients[usize::from(c)].is_some() {
                actions.push(Action::Renew(c));
                actions.push(Action::Adopt(c));
                actions.push(Action::Release(c));
                actions.push(Action::Vanish(c));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        let now = s.now;
        match action {
            Action::Tick => {
                s.now += 1;
                let now = s.now;
                for c in s.clients.iter_mut() {
                    if c.is_some_and(|(_, d)| d <= now) {
                        *c = None;
                    }
                }
                for b in s.brokers.iter_mut() {
                    b.table.retain(|l| l.deadline > now);
                    if let Some(r) = &mut b.replica {
                        r.leases.retain(|l| l.deadline > now);
                    }
                }
            }
            Action::Claim(b) => {
                let taken = self.may_take_over(&s, b);
                s.rev += 1;
                let rev = s.rev;
                let variant = self.variant;
                let ever_owned = s.ever_owned;
                if variant != Variant::IsrOfEarlierTerm {
                    s.in_sync = None;
                }
                let br = &mut s.brokers[usize::from(b)];
                br.serving = true;
                br.epoch = rev;
                br.next_seq = 1;
                br.table.clear();
                br.unanswered.clear();
                br.replica = None;
                br.grace_until = now;
                match taken {
                    Some(r) => {
                        br.table = r.leases.clone();
                        if variant != Variant::DropsGraceLeft {
                            br.grace_until = r.grace_until.max(now);
                        }
                        if br.grace_until == now && br.live(now).is_some() {
                            s.backup_served_at_once = true;
                        }
                    }
                    None if ever_owned => br.grace_until = now + GRACE,
                    None => {}
                }
                s.owner = Some(b);
                s.claimed_rev = rev;
                s.ever_owned = true;
            }
            Action::Grant(b, c) => {
                let br = &mut s.brokers[usize::from(b)];
                if now < br.grace_until
                    || br.live(now).is_some()
                    || s.clients[usize::from(c)].is_some()
                    || br.unanswered.iter().any(|ch| ch.lease.client == c)
                {
                    return None;
                }
                let f = fence(br.epoch, br.next_seq);
                br.next_seq += 1;
                let lease = Lease {
                    client: c,
                    fence: f,
                    deadline: now + TTL,
                };
                br.table.push(lease);
                br.unanswered.push(Change {
                    lease,
                    renewal: false,
                    acked: false,
                });
                if f <= s.max_fence {
                    s.fence_regressed = true;
                }
                s.max_fence = s.max_fence.max(f);
            }
            Action::Renew(c) => {
                let (f, _) = s.clients[usize::from(c)]?;
                let b = Self::server(&s)?;
                let br = &mut s.brokers[b];
                if !br.unanswered.is_empty() {
                    return None;
                }
                let l = br
                    .table
                    .iter_mut()
                    .find(|l| l.client == c && l.fence == f && l.deadline > now)?;
                l.deadline = now + TTL;
                let lease = *l;
                br.unanswered.push(Change {
                    lease,
                    renewal: true,
                    acked: false,
                });
            }
            Action::Replicate(b) => {
                // The backup applies the owner's oldest unacknowledged change, in order.
                let epoch = s.brokers[usize::from(b)].epoch;
                let change = *s.brokers[usize::from(b)]
                    .unanswered
                    .iter()
                    .find(|ch| !ch.acked)?;
                let backup = &mut s.brokers[usize::from(other(b))];
                let replica = backup.replica.as_mut().filter(|r| r.epoch == epoch)?;
                if !backup.alive {
                    return None;
                }
                replica.leases.retain(|l| l.fence != change.lease.fence);
                replica.leases.push(change.lease);
                replica.leases.sort();
                let owner = &mut s.brokers[usize::from(b)];
                if let Some(ch) = owner.unanswered.iter_mut().find(|ch| !ch.acked) {
                    ch.acked = true;
                }
            }
            Action::Snapshot(b) => {
                // The backup gets the owner's table and grace (every change so far), then the
                // owner names it in sync for its term (guarded by its ownership).
                let backup_alive = s.brokers[usize::from(other(b))].alive;
                if !backup_alive || s.owner != Some(b) {
                    return None;
                }
                let owner = &mut s.brokers[usize::from(b)];
                let mut leases: Vec<Lease> = owner
                    .table
                    .iter()
                    .filter(|l| l.deadline > now)
                    .copied()
                    .collect();
                leases.sort();
                let replica = Replica {
                    epoch: owner.epoch,
                    leases,
                    grace_until: owner.grace_until,
                };
                owner.unanswered.iter_mut().for_each(|ch| ch.acked = true);
                let epoch = owner.epoch;
                let backup = &mut s.brokers[usize::from(other(b))];
                if backup.replica.as_ref() == Some(&replica)
                    && s.in_sync.is_some_and(|i| i.epoch == epoch)
                {
                    return None;
                }
                backup.replica = Some(replica);
                s.in_sync = Some(InSync {
                    backup: other(b),
                    epoch,
                });
            }
            Action::DropBackup(b) => {
                if s.owner != Some(b) {
                    return None;
                }
                s.in_sync = None;
            }
            Action::Answer(b) => {
                let must_wait = self.backup_in_sync(&s, b);
                let variant = self.variant;
                let br = &mut s.brokers[usize::from(b)];
                let change = *br.unanswered.first()?;
                let waived = variant == Variant::AnswerBeforeAck
                    || (variant == Variant::RenewNotReplicated && change.renewal);
                if must_wait && !change.acked && !waived {
                    return None;
                }
                br.unanswered.remove(0);
                let c = usize::from(change.lease.client);
                let l = change.lease;
                if change.renewal {
                    // The holder may have released meanwhile.
                    if s.clients[c].is_some_and(|(f, _)| f == l.fence) {
                        s.clients[c] = Some((l.fence, l.deadline));
                    }
                } else if s.clients[c].is_none() && l.deadline > now {
                    s.clients[c] = Some((l.fence, l.deadline));
                }
            }
            Action::Adopt(c) => {
                let (f, _) = s.clients[usize::from(c)]?;
                let b = Self::server(&s)?;
                let br = &mut s.brokers[b];
                if !br.unanswered.is_empty()
                    || now >= br.grace_until
                    || f >= fence(br.epoch, 0)
                    || br.table.iter().any(|l| l.fence == f)
                    || br.live(now).is_some()
                {
                    return None;
                }
                let lease = Lease {
                    client: c,
                    fence: f,
                    deadline: now + TTL,
                };
                br.table.push(lease);
                // An adoption is a renewal: answered like one.
                br.unanswered.push(Change {
                    lease,
                    renewal: true,
                    acked: false,
                });
            }
            Action::Release(c) => {
                let (f, _) = s.clients[usize::from(c)].take()?;
                if let Some(b) = Self::server(&s) {
                    s.brokers[b].table.retain(|l| l.fence != f);
                }
            }
            Action::Vanish(c) => {
                s.clients[usize::from(c)] = None;
            }
            Action::Crash(b) => {
                s.failures += 1;
                let br = &mut s.brokers[usize::from(b)];
                br.alive = false;
                br.replica = None;
                br.stop();
            }
            Action::Restart(b) => s.brokers[usize::from(b)].alive = true,
            Action::SelfFence(b) => {
                s.failures += 1;
                s.brokers[usize::from(b)].stop();
            }
            Action::EtcdExpires => s.owner = None,
        }
        Some(s)
    }

    fn within_boundary(&self, s: &State) -> bool {
        s.rev <= MAX_REV && s.brokers.iter().all(|b| b.next_seq <= MAX_SEQ)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(crate::model_check::EXCLUSION, |_, s: &State| {
                s.clients
                    .iter()
                    .filter(|c| c.is_some_and(|(_, d)| d > s.now))
                    .count()
                    <= 1
            }),
            Property::always("fences only grow", |_, s: &State| !s.fence_regressed),
            Property::sometimes(
                "a crashed owner's held key is served by its backup at once",
                |_, s: &State| s.backup_served_at_once,
            ),
        ]
    }
}

fn check(variant: Variant) -> (Vec<&'static str>, usize) {
    crate::model_check::check(ReplicatedShard { variant }, variant != Variant::AsDesigned)
}

#[test]
fn replicated_takeover_keeps_one_holder_and_growing_fences() {
    let (failed, states) = check(Variant::AsDesigned);
    eprintln!("replica model: {states} states");
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[test]
fn each_broken_variant_of_replication_is_caught() {
    for variant in [
        Variant::AnswerBeforeAck,
        Variant::RenewNotReplicated,
        Variant::DropsGraceLeft,
        Variant::IsrOfEarlierTerm,
    ] {
        let (failed, states) = check(variant);
        eprintln!("{variant:?}: exclusion broken after {states} states");
        assert!(
            failed.contains(&crate::model_check::EXCLUSION),
            "{variant:?} was not caught: {failed:?}"
        );
    }
}
