//! A checked model (stateright, exhaustive breadth-first) of a cluster shard's ownership:
//! claims on etcd, grants and renewals, the takeover grace after a crash, self-fencing, and
//! the planned hand-over (`broker/src/cluster/handover.rs`): the owner stops serving the shard
//! and ends its leases, then — in one etcd transaction its lease guards — deletes its
//! ownership key and leaves the leases' record; the next claim consumes a record written
//! since the last claim and serves at once, else waits the grace if the shard had an owner.
//!
//! Two brokers, two clients, one exclusive key, discrete time (a lease lasts `TTL` ticks, the
//! grace `TTL + 1`: the longest TTL plus lock delay). Brokers crash and restart, stop
//! vouching for their etcd lease (self-fencing, which the real broker does before etcd can let
//! the lease run out), hand over — and may crash between the two steps of it. etcd lets an
//! ownership lease run out only once its broker stopped serving. Clients renew at whichever
//! broker serves the key, adopt their lease at a new owner during its grace, release, or
//! vanish (their lease runs out).
//!
//! Checked: no two clients believe they hold the key at once; every grant's fence is above
//! every earlier one; a planned hand-over of a held key is served at once (no grace). Each
//! deliberately broken variant — an owner that keeps granting after taking its record, a
//! claim that skips the grace without a record, a record used again by a later claim, a
//! record that leaves out the old owner's own grace — is shown to break exclusion.

use stateright::{Model, Property};

/// Brokers, clients, ticks of a lease, the last tick explored.
const BROKERS: usize = 2;
const CLIENTS: usize = 2;
const TTL: u8 = 2;
const GRACE: u8 = TTL + 1;
const HORIZON: u8 = 6;
/// etcd revisions (claims and hand-overs) and grants per term explored.
const MAX_REV: u8 = 5;
const MAX_SEQ: u8 = 3;

/// The protocol as built, or a deliberately broken version of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    AsBuilt,
    /// The owner writes its record but keeps serving until the transaction.
    GrantsAfterRecord,
    /// A claim without a record skips the grace.
    NoGraceWithoutRecord,
    /// A claim neither consumes the record nor checks it was written since the last claim.
    StaleRecord,
    /// The record leaves out the grace still running at the old owner.
    DropsGraceLeft,
}

/// A lease in a broker's table: its holder, fence and deadline (tick).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Lease {
    client: u8,
    fence: u16,
    deadline: u8,
}

/// A lease as a record carries it: holder, fence, ticks left.
type Handed = (u8, u16, u8);

/// A hand-over record: the leases with their time left (or, broken, their deadlines), and
/// the grace left; the etcd revision that wrote it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Record {
    rev: u8,
    leases: Vec<Handed>,
    grace_left: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Broker {
    alive: bool,
    serving: bool,
    epoch: u8,
    next_seq: u8,
    grace_until: u8,
    table: Vec<Lease>,
    /// Taken out for a hand-over, not yet committed: (leases, grace left).
    pending: Option<(Vec<Handed>, u8)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    now: u8,
    brokers: Vec<Broker>,
    /// What each client believes it holds: (fence, deadline).
    clients: Vec<Option<(u16, u8)>>,
    /// etcd: the owner, the revision counter, the revision of the last claim, the record.
    owner: Option<u8>,
    rev: u8,
    claimed_rev: u8,
    record: Option<Record>,
    ever_owned: bool,
    /// The highest fence granted so far, and whether a grant ever went below it.
    max_fence: u16,
    fence_regressed: bool,
    /// A claim took over a record with a live lease and served at once.
    served_handover_at_once: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Tick,
    Claim(u8),
    Grant(u8, u8),
    Renew(u8),
    Adopt(u8),
    Release(u8),
    Vanish(u8),
    TakeRecord(u8),
    Commit(u8),
    Crash(u8),
    Restart(u8),
    SelfFence(u8),
    EtcdExpires,
}

struct Shard {
    variant: Variant,
}

fn fence(epoch: u8, seq: u8) -> u16 {
    (u16::from(epoch) << 8) | u16::from(seq)
}

impl Broker {
    fn live(&self, now: u8) -> Option<&Lease> {
        self.table.iter().find(|l| l.deadline > now)
    }

    fn stop(&mut self) {
        self.serving = false;
        self.table.clear();
    }
}

impl Shard {
    /// The broker that serves the key now, if any.
    fn server(s: &State) -> Option<usize> {
        let b = usize::from(s.owner?);
        s.brokers[b].serving.then_some(b)
    }
}

impl Model for Shard {
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
            pending: None,
        };
        vec![State {
            now: 0,
            brokers: vec![broker; BROKERS],
            clients: vec![None; CLIENTS],
            owner: None,
            rev: 0,
            claimed_rev: 0,
            record: None,
            ever_owned: false,
            max_fence: 0,
            fence_regressed: false,
            served_handover_at_once: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        if s.now < HORIZON {
            actions.push(Action::Tick);
        }
        if s.owner.is_some() && s.owner.is_some_and(|b| !s.brokers[usize::from(b)].serving) {
            actions.push(Action::EtcdExpires);
        }
        for b in 0..BROKERS as u8 {
            let br = &s.brokers[usize::from(b)];
            if !br.alive {
                actions.push(Action::Restart(b));
                continue;
            }
            actions.push(Action::Crash(b));
            if s.owner.is_none() && !br.serving && br.pending.is_none() {
                actions.push(Action::Claim(b));
            }
            if br.serving {
                actions.push(Action::SelfFence(b));
                if s.owner == Some(b) && br.pending.is_none() {
                    actions.push(Action::TakeRecord(b));
                }
                for c in 0..CLIENTS as u8 {
                    actions.push(Action::Grant(b, c));
                }
            }
            if br.pending.is_some() {
                actions.push(Action::Commit(b));
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
                // A client's belief ends at its deadline; expired leases leave the tables.
                for c in s.clients.iter_mut() {
                    if c.is_some_and(|(_, d)| d <= now) {
                        *c = None;
                    }
                }
                for b in s.brokers.iter_mut() {
                    b.table.retain(|l| l.deadline > now);
                }
            }
            Action::Claim(b) => {
                s.rev += 1;
                let rev = s.rev;
                let variant = self.variant;
                let valid = match variant {
                    Variant::StaleRecord => s.record.clone(),
                    _ => s.record.take().filter(|r| r.rev > s.claimed_rev),
                };
                let br = &mut s.brokers[usize::from(b)];
                br.serving = true;
                br.epoch = rev;
                br.next_seq = 1;
                br.table.clear();
                br.grace_until = now;
                match valid {
                    Some(r) => {
                        for (client, f, left) in &r.leases {
                            br.table.push(Lease {
                                client: *client,
                                fence: *f,
                                deadline: now + left,
                            });
                        }
                        br.grace_until = now + r.grace_left;
                        if r.grace_left == 0 && !r.leases.is_empty() {
                            s.served_handover_at_once = true;
                        }
                    }
                    None if s.ever_owned && variant != Variant::NoGraceWithoutRecord => {
                        br.grace_until = now + GRACE;
                    }
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
                {
                    return None;
                }
                let f = fence(br.epoch, br.next_seq);
                br.next_seq += 1;
                let deadline = now + TTL;
                br.table.push(Lease {
                    client: c,
                    fence: f,
                    deadline,
                });
                if f <= s.max_fence {
                    s.fence_regressed = true;
                }
                s.max_fence = s.max_fence.max(f);
                s.clients[usize::from(c)] = Some((f, deadline));
            }
            Action::Renew(c) => {
                let (f, _) = s.clients[usize::from(c)]?;
                let b = Self::server(&s)?;
                let br = &mut s.brokers[b];
                let l = br
                    .table
                    .iter_mut()
                    .find(|l| l.client == c && l.fence == f && l.deadline > now)?;
                l.deadline = now + TTL;
                s.clients[usize::from(c)] = Some((f, now + TTL));
            }
            Action::Adopt(c) => {
                // During a takeover grace, a lease of an earlier owner the table does not know.
                let (f, _) = s.clients[usize::from(c)]?;
                let b = Self::server(&s)?;
                let br = &mut s.brokers[b];
                if now >= br.grace_until
                    || f >= fence(br.epoch, 0)
                    || br.table.iter().any(|l| l.fence == f)
                    || br.live(now).is_some()
                {
                    return None;
                }
                br.table.push(Lease {
                    client: c,
                    fence: f,
                    deadline: now + TTL,
                });
                s.clients[usize::from(c)] = Some((f, now + TTL));
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
            Action::TakeRecord(b) => {
                let variant = self.variant;
                let br = &mut s.brokers[usize::from(b)];
                let leases = br
                    .table
                    .iter()
                    .filter(|l| l.deadline > now)
                    .map(|l| (l.client, l.fence, l.deadline - now))
                    .collect();
                let grace_left = match variant {
                    Variant::DropsGraceLeft => 0,
                    _ => br.grace_until.saturating_sub(now),
                };
                br.pending = Some((leases, grace_left));
                if variant != Variant::GrantsAfterRecord {
                    br.stop();
                }
            }
            Action::Commit(b) => {
                let (leases, grace_left) = s.brokers[usize::from(b)].pending.take()?;
                s.brokers[usize::from(b)].stop();
                if s.owner == Some(b) {
                    s.rev += 1;
                    s.owner = None;
                    s.record = Some(Record {
                        rev: s.rev,
                        leases,
                        grace_left,
                    });
                }
            }
            Action::Crash(b) => {
                let br = &mut s.brokers[usize::from(b)];
                br.alive = false;
                br.pending = None;
                br.stop();
            }
            Action::Restart(b) => s.brokers[usize::from(b)].alive = true,
            Action::SelfFence(b) => {
                let br = &mut s.brokers[usize::from(b)];
                br.pending = None;
                br.stop();
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
            Property::sometimes("a handed-over shard is served at once", |_, s: &State| {
                s.served_handover_at_once
            }),
        ]
    }
}

fn check(variant: Variant) -> (Vec<&'static str>, usize) {
    crate::model_check::check(Shard { variant }, variant != Variant::AsBuilt)
}

#[test]
fn the_hand_over_protocol_keeps_one_holder_and_growing_fences() {
    let (failed, states) = check(Variant::AsBuilt);
    eprintln!("hand-over model: {states} states");
    assert!(failed.is_empty(), "failed: {failed:?}");
}

#[test]
fn each_broken_variant_of_the_protocol_is_caught() {
    for variant in [
        Variant::GrantsAfterRecord,
        Variant::NoGraceWithoutRecord,
        Variant::StaleRecord,
        Variant::DropsGraceLeft,
    ] {
        let (failed, states) = check(variant);
        eprintln!("{variant:?}: exclusion broken after {states} states");
        assert!(
            failed.contains(&crate::model_check::EXCLUSION),
            "{variant:?} was not caught: {failed:?}"
        );
    }
}
