//! The etcd driver: one etcd lease per "session" of this broker in the cluster, its keep-alive,
//! the membership key (`register.rs`), a watch on the cluster's keys (checked by
//! `entries.rs`), shard claims, and self-fencing. What to do is decided by [`ClusterState`]
//! (sans-I/O); this file only talks to etcd and the table.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use lockbroker_proto::{EndReason, shard_of};
use parking_lot::Mutex;
use tracing::Instrument;

use super::entries::{self, Key};
use super::epoch::{Epoch, EpochError};
use super::handover::{self, HandedLease, Handover};
use super::link::{self, InSyncOp};
use super::register::{self, Registration};
use super::replication::Replication;
use super::state::{ClusterState, Ownership};
use super::validity::Validity;
use crate::broker::wire::{millis, unix_ms};
use crate::broker::{Broker, KeyRouter, Route};
use crate::config::ClusterConfig;
use crate::table::Evicted;

/// Per key, the tickets of the acquires that waited there, in queue order (`handover.rs`).
type Queues = Vec<(bytes::Bytes, Vec<u64>)>;

/// Why the cluster driver could not start or lost its session.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(String),
    /// `cluster.key_file` cannot be read, created or parsed (the message names the file).
    #[error("{0}")]
    KeyFile(String),
    /// The key file's key is not the one the cluster's other brokers use (the message names
    /// the file).
    #[error("{0}")]
    KeyMismatch(String),
    /// Another live broker is registered under this broker's name (`register.rs`).
    #[error(
        "the member name {name:?} is already registered by a live broker ({url}): its etcd \
         lease was kept alive while this one waited {:.1} s; give this broker another \
         cluster.broker name, or stop the other one",
        waited.as_secs_f64()
    )]
    NameTaken {
        name: String,
        url: String,
        waited: Duration,
    },
}

impl From<etcd_client::Error> for ClusterError {
    fn from(e: etcd_client::Error) -> Self {
        ClusterError::Etcd(e.to_string())
    }
}

/// The etcd key prefix of the cluster: `/lockbroker/<name>/`.
pub(super) fn prefix(cfg: &ClusterConfig) -> String {
    format!("/lockbroker/{}/", cfg.name)
}

/// A connection to the configured etcd endpoints.
pub(super) async fn connect(cfg: &ClusterConfig) -> Result<Client, ClusterError> {
    // No per-request timeout on the channel: it would cut the watch and keep-alive streams.
    // Unary calls are bounded one by one (`bounded`).
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1));
    if let (Some(u), Some(p)) = (&cfg.username, &cfg.password) {
        opts = opts.with_user(u.clone(), p.clone());
    }
    if let Some(tls) = tls_options(cfg)? {
        opts = opts.with_tls(tls);
    }
    // One endpoint at a time, starting at a different one each call: a channel over all of
    // them fails to connect while any member is down.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let first = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let n = cfg.etcd.len().max(1);
    let mut last = ClusterError::Etcd("no etcd endpoint configured".into());
    for i in 0..cfg.etcd.len() {
        let endpoint = &cfg.etcd[(first + i) % n];
        match Client::connect([endpoint], Some(opts.clone())).await {
            Ok(c) => return Ok(c),
            Err(e) => last = ClusterError::Etcd(format!("{endpoint}: {e}")),
        }
    }
    Err(last)
}

/// TLS to etcd when the endpoints are `https://`: the configured CA (else the system's
/// roots are not consulted: etcd clusters use their own CA) and an optional client identity.
fn tls_options(cfg: &ClusterConfig) -> Result<Option<TlsOptions>, ClusterError> {
    if !cfg.etcd.iter().any(|e| e.starts_with("https://")) {
        return Ok(None);
    }
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ClusterError::Etcd(format!("cannot read {what} {}: {e}", path.display())))
    };
    let mut tls = TlsOptions::new();
    match &cfg.etcd_ca {
        Some(ca) => tls = tls.ca_certificate(Certificate::from_pem(read("cluster.etcd_ca", ca)?)),
        None => {
            return Err(ClusterError::Etcd(
                "https:// etcd endpoints need cluster.etcd_ca".into(),
            ));
        }
    }
    if let (Some(cert), Some(key)) = (&cfg.etcd_cert, &cfg.etcd_key) {
        let cert = read("cluster.etcd_cert", cert)?;
        let key = read("cluster.etcd_key", key)?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Some(tls))
}

/// Runs one unary etcd call with the retry timeout of Patroni's rule (`Validity`).
pub(super) async fn bounded<T>(
    cfg: &ClusterConfig,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    let limit = Validity::new(cfg.ownership_ttl(), Duration::ZERO).request_timeout();
    match tokio::time::timeout(limit, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Etcd("etcd did not answer in time".into())),
    }
}

/// This broker's part in the cluster; the broker's [`KeyRouter`].
pub struct Cluster {
    cfg: ClusterConfig,
    prefix: String,
    /// This broker's client URL, as registered.
    url: String,
    state: Mutex<ClusterState>,
    validity: Mutex<Validity>,
    /// The owners in the last shard map pushed to clients.
    published: Mutex<Vec<lockbroker_proto::ShardOwner>>,
    /// How long a taken-over shard grants nothing new.
    grace: Duration,
    /// The current etcd session's client and lease (to revoke it when leaving).
    session_lease: Mutex<Option<(Client, i64)>>,
    /// Held by a hand-over from taking the shard out of the view until its transaction is
    /// answered. `leave` takes it before it revokes the lease: a hand-over the session loop
    /// began (a leaving broker prefers nobody, so its loop hands shards over too) must land
    /// its record first, or the revocation deletes the shard's key without one and the next
    /// owner waits the grace.
    handing_over: tokio::sync::Mutex<()>,
    /// Set when etcd's revision no longer gives fence epochs: no more claims (`epoch.rs`).
    fence_trouble: Mutex<Option<EpochError>>,
    /// Ignored keys already logged (each once, whatever the session), with their reason.
    logged: Mutex<HashSet<String>>,
    broker: Arc<Broker>,
    /// Replicated shards (`cluster.replicas = 2`), else `None`.
    replication: Option<Replication>,
    /// Every log line of the driver carries the member's name (brokers of one cluster often
    /// log to one place). Enabled at `warn`, so that the name is on every line logged.
    span: tracing::Span,
}

/// How many ignored keys are logged one by one; past that, only counted.
const LOG_AT_MOST: usize = 1000;

/// A session's etcd client and this broker's registration in it.
struct Opened {
    client: Client,
    reg: Registration,
}

impl Cluster {
    /// Registers this broker as a member (refusing a name a live broker has: `register.rs`),
    /// starts the driver for `broker` (attached as its key router) and returns; shards are
    /// claimed in the background (until then requests are answered `Moved`). etcd errors are
    /// retried for up to 15 s.
    pub async fn start(
        cfg: &ClusterConfig,
        broker: &Arc<Broker>,
        key: Option<&[u8]>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let advertise = cfg.advertise.unwrap_or(broker.cfg.listen);
        let url = format!("quic://{advertise}");
        let me = cfg.broker.clone().unwrap_or_else(|| advertise.to_string());
        let ttl = cfg.ownership_ttl();
        let grace = Duration::from_millis(
            cfg.max_ttl_ms
                .saturating_add(broker.cfg.locks.lock_delay_ms),
        );
        let span = tracing::warn_span!(target: "lockbroker::cluster", "member", name = %me);
        let replication = match key {
            Some(key) if cfg.replicas >= 2 => Some(Replication::new(
                &me,
                key,
                cfg.shards,
                broker,
                advertise.ip(),
            )?),
            _ => None,
        };
        let cluster = Arc::new(Cluster {
            prefix: prefix(cfg),
            cfg: cfg.clone(),
            url,
            // A shard may go without an owner for two ownership TTLs (an owner's lease running
            // out, then the claim) before it counts as overdue.
            state: Mutex::new(ClusterState::new(me, cfg.shards, ttl * 2)),
            validity: Mutex::new(Validity::new(ttl, Duration::from_millis(200))),
            published: Mutex::new(Vec::new()),
            grace,
            session_lease: Mutex::new(None),
            handing_over: tokio::sync::Mutex::new(()),
            fence_trouble: Mutex::new(None),
            logged: Mutex::new(HashSet::new()),
            broker: broker.clone(),
            replication,
            span,
        });
        let until = Instant::now() + Duration::from_secs(15);
        let opened = loop {
            match cluster.open().instrument(cluster.span.clone()).await {
                Ok(o) => break o,
                Err(ClusterError::Etcd(e)) if Instant::now() < until => {
                    tracing::warn!(target: "lockbroker::cluster", "registering: etcd: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => return Err(e),
            }
        };
        // No fence before the first claim tells us an etcd revision (fences.rs).
        broker.with_table(|t, _, _| t.bound_fences());
        if broker.attach_router(cluster.clone()).is_err() {
            return Err(ClusterError::Etcd(
                "the broker already has a key router".into(),
            ));
        }
        if let Some(r) = &cluster.replication
            && broker.attach_gate(r.replicator.clone()).is_err()
        {
            return Err(ClusterError::Etcd(
                "the broker already has a grant gate".into(),
            ));
        }
        tokio::spawn(cluster.clone().run(opened).instrument(cluster.span.clone()));
        Ok(cluster)
    }

    /// This broker's share of the shards (and the cluster's unowned ones), and whether it can
    /// vouch for its etcd lease now.
    pub fn ownership(&self) -> (Ownership, bool) {
        let now = Instant::now();
        let valid = self.validity.lock().valid_at(now);
        (self.state.lock().ownership(now), valid)
    }

    /// The replication of the shards this broker serves (`None` with `replicas = 1`).
    pub fn replication(&self) -> Option<super::ReplicationStats> {
        Some(self.replication.as_ref()?.replicator.stats())
    }

    /// Why this broker is not ready as a cluster member, if it is not (`/readyz`): its etcd
    /// lease unconfirmed, fences past etcd's revision limit, shards of its own to claim, or
    /// shards of the cluster without a live owner for longer than two ownership TTLs.
    pub fn unready(&self) -> Option<String> {
        let (o, valid) = self.ownership();
        if !valid {
            return Some("cluster: the etcd lease is not confirmed".into());
        }
        if let Some(e) = *self.fence_trouble.lock() {
            return Some(format!("cluster: {e}"));
        }
        if o.missing > 0 {
            return Some(format!("cluster: {} shards to claim", o.missing));
        }
        if o.unowned_overdue > 0 {
            return Some(format!(
                "cluster: {} of {} shards unowned for more than {:.0} s (their keys are \
                 refused; `lockbroker cluster status` shows owners and members)",
                o.unowned_overdue,
                self.cfg.shards,
                o.unowned_bound.as_secs_f64()
            ));
        }
        None
    }

    /// Sessions with etcd, one after another, until the broker shuts down; the first one
    /// `opened` at start.
    async fn run(self: Arc<Self>, opened: Opened) {
        let mut shutdown = self.broker.shutdown_signal();
        let mut opened = Some(opened);
        let mut in_sync = self
            .replication
            .as_ref()
            .and_then(|r| r.take_in_sync_requests());
        loop {
            let session = self.session(opened.take(), &mut in_sync);
            let why = tokio::select! {
                r = session => match r {
                    Ok(()) => "the etcd session ended".to_string(),
                    Err(e) => e.to_string(),
                },
                _ = shutdown.changed() => {
                    self.fence_off("the broker is shutting down");
                    return;
                }
            };
            tracing::warn!(target: "lockbroker::cluster", "{why}; serving no shard until a new etcd session");
            self.fence_off(&why);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// etcd's store has reached `revision`: fences may use epochs up to it. Every later claim
    /// of any shard gets a higher revision, so its fences start above every fence this broker
    /// can issue under the ceiling (`table/fences.rs`).
    fn learn_revision(&self, revision: i64) {
        match Epoch::of(revision) {
            Ok(e) => self
                .broker
                .with_table(|t, _, _| t.raise_fence_ceiling(e.ceiling())),
            Err(e @ EpochError::PastLimit(_)) => self.fence_trouble(e),
            Err(EpochError::NotPositive(_)) => {}
        }
    }

    /// etcd's revision no longer gives fence epochs: claim nothing from now on (the shards
    /// served keep their fences, below the ceiling already learnt). Logged once.
    fn fence_trouble(&self, e: EpochError) {
        let mut trouble = self.fence_trouble.lock();
        if trouble.is_none() {
            tracing::error!(target: "lockbroker::cluster", "{e}");
            *trouble = Some(e);
        }
    }

    /// When fewer than 2^31 fences are left under the ceiling (2^31 grants since the last
    /// claim), writes a key to get a newer etcd revision and moves the fence floor up to it: the
    /// counter never runs into epochs no etcd revision vouches for.
    async fn renew_fence_epoch(
        &self,
        client: &mut Client,
        lease_id: i64,
    ) -> Result<(), ClusterError> {
        if self.broker.read_table(|t, _| t.fence_headroom()) >= 1 << 31 {
            return Ok(());
        }
        let key = format!("{}fence-epochs/{}", self.prefix, self.state.lock().me());
        let opts = PutOptions::new().with_lease(lease_id);
        let resp = bounded(&self.cfg, client.put(key, Vec::new(), Some(opts))).await?;
        if let Some(h) = resp.header() {
            match Epoch::of(h.revision()) {
                Ok(e) => {
                    self.broker
                        .with_table(|t, _, _| t.raise_fence_floor(e.floor()));
                    self.learn_revision(h.revision());
                    tracing::info!(target: "lockbroker::cluster", revision = e.get(), "fence epoch renewed");
                }
                Err(e @ EpochError::PastLimit(_)) => self.fence_trouble(e),
                Err(EpochError::NotPositive(_)) => {}
            }
        }
        Ok(())
    }

    /// Leaves the cluster (graceful shutdown), before the broker's sessions close: claims
    /// nothing more and hands every shard over (`handover.rs`): its leases go to etcd for the
    /// next owner, its holders are told `Moved` and its queued requests answered `Moved`, so
    /// clients follow the shards rather than see a closed connection. Then it revokes the etcd
    /// lease, which takes its member key away at once: the new owners claim without waiting
    /// for the lease to run out, and without a grace.
    pub async fn leave(&self) {
        self.leave_cluster().instrument(self.span.clone()).await;
    }

    /// `leave`, in the member's span.
    async fn leave_cluster(&self) {
        self.state.lock().leave();
        let mut session = self.session_lease.lock().take();
        let why = "the broker is leaving the cluster";
        if let Some((client, lease_id)) = &mut session {
            let mine = self.state.lock().served();
            for shard in mine {
                if let Err(e) = self.hand_over(client, *lease_id, shard, why).await {
                    tracing::warn!(
                        target: "lockbroker::cluster",
                        shard,
                        "could not hand the shard over ({e}); its next owner waits the grace"
                    );
                    break;
                }
            }
        }
        // A hand-over of the session loop's still in flight finishes first (see the field).
        let _no_hand_over = self.handing_over.lock().await;
        // Whatever was not handed over ends here (its next owner waits the grace).
        self.fence_off(why);
        if let Some((mut client, lease_id)) = session {
            match bounded(&self.cfg, client.lease_revoke(lease_id)).await {
                Ok(_) => tracing::info!(target: "lockbroker::cluster", "left the cluster"),
                Err(e) => tracing::warn!(
                    target: "lockbroker::cluster",
                    "could not revoke the etcd lease ({e}); its shards move when it expires"
                ),
            }
        }
    }

    /// Hands `shard` over (`handover.rs`): stops serving it, ends its leases here (holders
    /// told `Moved`, queued requests answered `Moved`), then — in one etcd transaction that
    /// only this broker's lease passes — deletes the ownership key and leaves the leases'
    /// record for the next owner.
    async fn hand_over(
        &self,
        client: &mut Client,
        lease_id: i64,
        shard: u32,
        why: &str,
    ) -> Result<(), ClusterError> {
        // Taking the shard out of the view is the hand-over's one entry: `leave` and the
        // session's `release` may both try, and only the first may end the leases and write
        // the record (a second would write an empty one over nothing and lose them).
        let _one_at_a_time = self.handing_over.lock().await;
        let Some(term) = self.state.lock().release(shard) else {
            return Ok(());
        };
        let grace_until = term.grace_until;
        // Grants and renewals already made wait for the backup: let them go out, so that
        // their leases move with the record instead of failing (bounded: a backup that stopped
        // answering is taken out of sync by the session loop, which this call holds up).
        if let Some(r) = &self.replication {
            r.drain(shard, link::ACK_TIMEOUT * 2).await;
        }
        let (ended, queues) = self.evict_shards_with(&[shard], why, true);
        self.publish();
        // Time left is taken after the leases ended: the record never gives one more.
        let now = Instant::now();
        let record = Handover {
            grace_left: grace_until.map_or(Duration::ZERO, |g| g.saturating_duration_since(now)),
            leases: ended
                .into_iter()
                .map(|(key, l)| HandedLease {
                    key,
                    fence: l.fence,
                    mode: l.mode,
                    left: l.deadline.saturating_duration_since(now),
                    owner: l.owner,
                })
                .filter(|l| !l.left.is_zero())
                .collect(),
            queues,
        };
        let owner_key = format!("{}shards/{shard}", self.prefix);
        let mut then = vec![
            TxnOp::delete(owner_key.clone(), None),
            TxnOp::delete(self.in_sync_key(shard), None),
        ];
        match handover::encode(&record) {
            Some(bytes) => then.push(TxnOp::put(self.handover_key(shard), bytes, None)),
            None => tracing::warn!(
                target: "lockbroker::cluster",
                shard,
                leases = record.leases.len(),
                "the shard's leases do not fit a hand-over record; its next owner waits the grace"
            ),
        }
        let txn = Txn::new()
            .when([Compare::lease(owner_key, CompareOp::Equal, lease_id)])
            .and_then(then);
        let handed = bounded(&self.cfg, client.txn(txn)).await?.succeeded();
        tracing::info!(
            target: "lockbroker::cluster",
            shard,
            leases = record.leases.len(),
            handed,
            "handed over shard"
        );
        Ok(())
    }

    /// Where etcd's in-sync set of `shard` is kept: `<backup> <owner's term>`, written and
    /// deleted only by the shard's owner (guarded by its lease), kept past that lease so a
    /// claim after a crash can read it (`replication.rs`).
    fn in_sync_key(&self, shard: u32) -> String {
        format!("{}insync/{shard}", self.prefix)
    }

    /// Carries out a link's request to change `shard`'s in-sync set, in a transaction only
    /// the shard's owner passes; then moves the feed in or out of sync. A removal this broker
    /// cannot make (it lost the shard) ends the feed: answers waiting on it fail.
    async fn change_in_sync(
        &self,
        client: &mut Client,
        lease_id: i64,
        op: InSyncOp,
    ) -> Result<(), ClusterError> {
        let Some(r) = &self.replication else {
            return Ok(());
        };
        let shard = match &op {
            InSyncOp::Add { shard, .. } | InSyncOp::Remove { shard, .. } => *shard,
        };
        // Answers wait for the backup from before etcd may name it (`feed.rs`).
        if let InSyncOp::Add {
            epoch, generation, ..
        } = &op
        {
            let naming = r
                .replicator
                .with_feed(shard, |f| f.epoch() == *epoch && f.naming(*generation));
            if naming != Some(true) {
                return Ok(());
            }
        }
        let owner_key = format!("{}shards/{shard}", self.prefix);
        let then = match &op {
            InSyncOp::Add { backup, epoch, .. } => {
                TxnOp::put(self.in_sync_key(shard), format!("{backup} {epoch}"), None)
            }
            InSyncOp::Remove { .. } => TxnOp::delete(self.in_sync_key(shard), None),
        };
        let txn = Txn::new()
            .when([Compare::lease(owner_key, CompareOp::Equal, lease_id)])
            .and_then([then]);
        let done = bounded(&self.cfg, client.txn(txn)).await?.succeeded();
        match op {
            InSyncOp::Remove { epoch, .. } if done => {
                r.replicator.with_feed(shard, |f| {
                    if f.epoch() == epoch {
                        f.out_of_sync();
                    }
                });
            }
            InSyncOp::Add { .. } if done => {}
            // Not the owner any more (the lease guard failed): the feed ends and what waits
            // on it fails.
            _ => r.lost(shard),
        }
        tracing::debug!(target: "lockbroker::cluster", shard, done, "in-sync set changed");
        Ok(())
    }

    /// Starts, moves and ends replication links to match each served shard's backup.
    fn assign_backups(&self) {
        if let Some(r) = &self.replication {
            let backups = self.state.lock().backups();
            r.assign(&backups);
        }
    }

    /// Where the hand-over record of `shard` is kept.
    fn handover_key(&self, shard: u32) -> String {
        format!("{}handover/{shard}", self.prefix)
    }

    /// Stops serving every shard: ends their leases (holders are told) and fails their
    /// queued requests with `Moved`.
    fn fence_off(&self, why: &str) {
        self.validity.lock().lost();
        let lost = self.state.lock().drop_all_mine();
        self.evict_shards(&lost, why);
        self.publish();
    }

    /// Clears every key of `shards` from the table; returns the leases that ended, by key.
    fn evict_shards(&self, shards: &[u32], why: &str) -> Vec<(bytes::Bytes, Evicted)> {
        self.evict_shards_with(shards, why, false).0
    }

    /// [`Self::evict_shards`]; with `keep_places` (a planned hand-over) waiting acquires are
    /// answered `Requeued` with tickets, returned by key in queue order for the next owner.
    fn evict_shards_with(
        &self,
        shards: &[u32],
        why: &str,
        keep_places: bool,
    ) -> (Vec<(bytes::Bytes, Evicted)>, Queues) {
        let (mut all, mut queues) = (Vec::new(), Vec::new());
        if shards.is_empty() {
            return (all, queues);
        }
        if let Some(r) = &self.replication {
            for shard in shards {
                r.lost(*shard);
            }
        }
        let count = self.cfg.shards;
        let keys = self
            .broker
            .read_table(|t, _| t.keys_where(|k| shards.contains(&shard_of(k, count))));
        for key in keys {
            let (ended, tickets) = self.broker.with_table(|t, now, out| {
                if keep_places {
                    t.evict_keeping_places(now, &key, out, &mut handover::mint_ticket)
                } else {
                    (t.evict(now, &key, out), Vec::new())
                }
            });
            if !tickets.is_empty() {
                queues.push((key.clone(), tickets));
            }
            for l in ended {
                self.broker.tell_lease_ended(
                    l.session,
                    &key,
                    l.fence,
                    EndReason::Moved,
                    &format!("this broker no longer serves the key's shard: {why}"),
                );
                all.push((key.clone(), l));
            }
        }
        (all, queues)
    }

    /// Connects to etcd and registers this broker (`register.rs`) under a new lease; the
    /// previous session's lease, if any, is revoked first (this broker serves nothing of it
    /// any more), so its shards are free to claim again at once.
    async fn open(&self) -> Result<Opened, ClusterError> {
        let mut client = connect(&self.cfg).await?;
        let previous = self.session_lease.lock().as_ref().map(|(_, id)| *id);
        if let Some(id) = previous {
            let _ = bounded(&self.cfg, client.lease_revoke(id)).await;
        }
        let ttl_s = i64::try_from(self.cfg.ownership_ttl().as_secs()).unwrap_or(i64::MAX);
        let me = self.state.lock().me().to_string();
        let reg = register::register(
            &self.cfg,
            &mut client,
            &me,
            &self.member_key(),
            &self.url,
            ttl_s,
            previous,
        )
        .await?;
        *self.session_lease.lock() = Some((client.clone(), reg.lease));
        self.validity.lock().confirmed(reg.sent, reg.ttl);
        Ok(Opened { client, reg })
    }

    /// This broker's member key.
    fn member_key(&self) -> String {
        format!("{}members/{}", self.prefix, self.state.lock().me())
    }

    /// One etcd session (`opened` already, or opened now): initial load, then keep-alives,
    /// watch events and claims until something fails or the validity lapses.
    async fn session(
        &self,
        opened: Option<Opened>,
        in_sync: &mut Option<tokio::sync::mpsc::UnboundedReceiver<InSyncOp>>,
    ) -> Result<(), ClusterError> {
        let Opened { mut client, reg } = match opened {
            Some(o) => o,
            None => self.open().await?,
        };
        let lease_id = reg.lease;
        let member = self.member_key();
        let everything = Some(GetOptions::new().with_prefix());
        let all = bounded(&self.cfg, client.get(self.prefix.clone(), everything)).await?;
        let revision = all.header().map_or(0, |h| h.revision());
        let mut restore = false;
        {
            let mut state = self.state.lock();
            state.reset_view(lease_id, self.url.clone());
            for kv in all.kvs() {
                if kv.key() == member.as_bytes() {
                    restore |=
                        !register::is_ours(Some(kv.value()), kv.lease(), lease_id, &self.url);
                    continue;
                }
                self.apply(&mut state, kv, Some(kv.value()));
            }
            state.revision = revision.max(0) as u64;
            state.refresh_unowned(Instant::now());
        }
        if restore {
            register::restore(&self.cfg, &mut client, &member, &self.url, lease_id).await?;
        }
        let mut watch = client
            .watch(
                self.prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        let (mut keeper, mut keep_alives) = client.lease_keep_alive(lease_id).await?;
        self.claim(&mut client, lease_id).await?;
        self.publish();
        self.assign_backups();
        let renew_every = self.validity.lock().renew_every();
        let mut renew = tokio::time::interval(renew_every);
        let mut check = tokio::time::interval(Duration::from_millis(50));
        let mut in_flight: VecDeque<Instant> = VecDeque::new();
        loop {
            tokio::select! {
                _ = renew.tick() => {
                    in_flight.push_back(Instant::now());
                    if in_flight.len() > 8 {
                        in_flight.pop_front();
                    }
                    keeper.keep_alive().await?;
                    if let Some(r) = &self.replication {
                        r.replicas.expire(Instant::now());
                    }
                }
                msg = keep_alives.message() => match msg? {
                    Some(r) if r.ttl() > 0 => {
                        if let Some(sent) = in_flight.pop_front() {
                            self.validity
                                .lock()
                                .confirmed(sent, Duration::from_secs(r.ttl() as u64));
                        }
                        if let Some(h) = r.header() {
                            self.learn_revision(h.revision());
                        }
                        self.renew_fence_epoch(&mut client, lease_id).await?;
                    }
                    _ => return Err(ClusterError::Etcd("the etcd lease expired".into())),
                },
                msg = watch.message() => {
                    let Some(resp) = msg? else {
                        return Err(ClusterError::Etcd("the watch ended".into()));
                    };
                    if let Some(h) = resp.header() {
                        self.learn_revision(h.revision());
                    }
                    let mut lost = Vec::new();
                    let mut restore = false;
                    {
                        let mut state = self.state.lock();
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let value = (ev.event_type() == EventType::Put).then(|| kv.value());
                            if kv.key() == member.as_bytes() {
                                // Our own registration is not the view's to change: put back.
                                restore |= !register::is_ours(value, kv.lease(), lease_id, &self.url);
                            } else if let Some(shard) = self.apply(&mut state, kv, value) {
                                lost.push(shard);
                            }
                            state.revision = state.revision.max(kv.mod_revision().max(0) as u64);
                        }
                        state.refresh_unowned(Instant::now());
                    }
                    if restore {
                        register::restore(&self.cfg, &mut client, &member, &self.url, lease_id)
                            .await?;
                    }
                    self.evict_shards(&lost, "etcd shows another owner");
                    self.claim(&mut client, lease_id).await?;
                    self.publish();
                    self.assign_backups();
                }
                Some(op) = next_in_sync(in_sync) => {
                    self.change_in_sync(&mut client, lease_id, op).await?;
                }
                _ = check.tick() => {
                    if !self.validity.lock().valid_at(Instant::now()) {
                        return Err(ClusterError::Etcd(
                            "keep-alives went unconfirmed too long: self-fenced".into(),
                        ));
                    }
                }
            }
        }
    }

    /// Applies one cluster key (`value` None: deleted) to the view, after checking it
    /// (`entries.rs`: invalid entries are ignored, logged once and counted). Returns a shard
    /// this broker served and no longer does.
    fn apply(
        &self,
        state: &mut ClusterState,
        kv: &etcd_client::KeyValue,
        value: Option<&[u8]>,
    ) -> Option<u32> {
        let key = std::str::from_utf8(kv.key())
            .ok()?
            .strip_prefix(&self.prefix)?;
        let parsed = match entries::key_of(key, state.shards()) {
            Ok(k) => k,
            Err(why) => {
                self.invalid(state, key, value, &why);
                return None;
            }
        };
        match (parsed, value) {
            (Key::Unread, _) => None,
            (Key::Member(name), None) => {
                state.unignore(key);
                state.member_down(name);
                None
            }
            (Key::Member(name), Some(v)) => {
                match entries::member_url(v, kv.lease()) {
                    Ok(url) => {
                        state.unignore(key);
                        state.member_up(name.to_string(), url, kv.lease());
                    }
                    Err(why) => {
                        self.invalid(state, key, value, &why);
                        state.member_down(name);
                    }
                }
                None
            }
            (Key::Drained(name), v) => {
                state.set_drained(name, v.is_some());
                None
            }
            (Key::Shard(shard), None) => {
                state.unignore(key);
                state
                    .owner_event(shard, None, kv.mod_revision())
                    .then_some(shard)
            }
            (Key::Shard(shard), Some(v)) => match entries::owner_name(v, kv.lease()) {
                Ok(name) => {
                    state.unignore(key);
                    state
                        .owner_event(shard, Some((name, kv.lease())), kv.mod_revision())
                        .then_some(shard)
                }
                Err(why) => {
                    self.invalid(state, key, value, &why);
                    state.stray_owner(shard, kv.mod_revision()).then_some(shard)
                }
            },
        }
    }

    /// `key` (`value`; None: deleted) fails the checks of `entries.rs`: ignored while it is
    /// there, counted, and logged once.
    fn invalid(
        &self,
        state: &mut ClusterState,
        key: &str,
        value: Option<&[u8]>,
        why: &entries::Invalid,
    ) {
        if value.is_none() {
            state.unignore(key);
            return;
        }
        state.ignore(key, why.to_string());
        let mut logged = self.logged.lock();
        if logged.len() < LOG_AT_MOST && logged.insert(format!("{key}\n{why}")) {
            let shown = String::from_utf8_lossy(value.unwrap_or_default());
            let shown: String = shown.chars().take(80).collect();
            tracing::warn!(
                target: "lockbroker::cluster",
                key = %format!("{}{key}", self.prefix),
                value = ?shown,
                "ignoring an etcd entry: {why}"
            );
        }
    }

    /// Hands over (`hand_over`) every shard whose preferred owner is another live member (it
    /// joined, or came back).
    async fn release(&self, client: &mut Client, lease_id: i64) -> Result<(), ClusterError> {
        let to_release = self.state.lock().to_release();
        for shard in to_release {
            let why = "the shard moves to a member that joined";
            self.hand_over(client, lease_id, shard, why).await?;
        }
        Ok(())
    }

    /// Claims every unowned shard this broker is the preferred owner of, after handing over
    /// the shards another member is preferred for.
    async fn claim(&self, client: &mut Client, lease_id: i64) -> Result<(), ClusterError> {
        self.release(client, lease_id).await?;
        if self.fence_trouble.lock().is_some() {
            return Ok(());
        }
        let to_claim = self.state.lock().to_claim();
        let me = self.state.lock().me().to_string();
        for shard in to_claim {
            let owner_key = format!("{}shards/{shard}", self.prefix);
            let owned_before = format!("{}owned/{shard}", self.prefix);
            let mut value = OwnerValue {
                name: &me,
                claimed_ms: unix_ms(),
                grace_end_ms: 0,
            };
            // Create the key, or replace exactly the invalid one seen (no lease: `entries.rs`).
            let compare = match self.state.lock().replaceable(shard) {
                Some(r) => Compare::mod_revision(owner_key.clone(), CompareOp::Equal, r),
                None => Compare::create_revision(owner_key.clone(), CompareOp::Equal, 0),
            };
            let txn = Txn::new().when([compare]).and_then([
                TxnOp::get(owned_before.clone(), None),
                TxnOp::put(
                    owner_key.clone(),
                    value.render(),
                    Some(PutOptions::new().with_lease(lease_id)),
                ),
                TxnOp::put(owned_before, me.clone(), None),
                TxnOp::get(self.handover_key(shard), None),
                TxnOp::delete(self.handover_key(shard), None),
                TxnOp::get(self.in_sync_key(shard), None),
                TxnOp::delete(self.in_sync_key(shard), None),
            ]);
            let resp = bounded(&self.cfg, client.txn(txn)).await?;
            if !resp.succeeded() {
                continue;
            }
            let revision = resp.header().map_or(0, |h| h.revision());
            // (mod revision, value) of the ops' reads: `owned/<shard>`, the hand-over record.
            let read = |i: usize| match resp.op_responses().get(i) {
                Some(TxnOpResponse::Get(g)) => g
                    .kvs()
                    .first()
                    .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
                _ => None,
            };
            let (owned, record, in_sync) = (read(0), read(3), read(5));
            let had_owner = owned.is_some();
            let epoch = match Epoch::of(revision) {
                Ok(e) => e,
                Err(e) => {
                    // No fence of this term could be above the earlier owners' ones: give
                    // the shard back rather than serve it.
                    let txn = Txn::new()
                        .when([Compare::lease(
                            owner_key.clone(),
                            CompareOp::Equal,
                            lease_id,
                        )])
                        .and_then([TxnOp::delete(owner_key, None)]);
                    bounded(&self.cfg, client.txn(txn)).await?;
                    if let EpochError::PastLimit(_) = e {
                        self.fence_trouble(e);
                        return Ok(());
                    }
                    tracing::warn!(target: "lockbroker::cluster", shard, "claim: {e}");
                    continue;
                }
            };
            // Fences of this term are above everything earlier owners of the shard issued.
            self.broker
                .with_table(|t, _, _| t.raise_fence_floor(epoch.floor()));
            self.learn_revision(revision);
            // A planned hand-over's record, written since the last claim, names every lease
            // the earlier owner could answer for: no grace then (`handover.rs`).
            let handed = record
                .filter(|(at, _)| owned.as_ref().is_some_and(|(claimed, _)| at > claimed))
                .and_then(|(_, bytes)| handover::decode(&bytes));
            // Else a replica this broker keeps, if etcd names it in sync for the last term.
            let replicated = || {
                let (claimed, _) = owned.as_ref()?;
                let (_, value) = in_sync.as_ref()?;
                let (name, term) = parse_in_sync(value)?;
                let last_term = u64::try_from(*claimed).ok()?;
                if name != me || term != last_term {
                    return None;
                }
                self.replication
                    .as_ref()?
                    .take_over(shard, last_term, Instant::now())
            };
            let grace_until = match (had_owner, handed) {
                (false, _) => None,
                (true, Some(h)) => self.take_over(shard, h),
                (true, None) => match replicated() {
                    Some(h) => self.take_over(shard, h),
                    None => Some(Instant::now() + self.grace),
                },
            };
            if let Some(r) = &self.replication {
                r.claimed(shard, epoch.get(), grace_until);
            }
            {
                let mut state = self.state.lock();
                state.claimed(shard, epoch.get(), grace_until);
                state.refresh_unowned(Instant::now());
            }
            if let Some(until) = grace_until {
                // Record the grace for `cluster status` (the epoch, the key's create
                // revision, does not change): the full one, or what a hand-over carried.
                let left = until.saturating_duration_since(Instant::now());
                value.grace_end_ms = value.claimed_ms + millis(left);
                let opts = PutOptions::new().with_lease(lease_id);
                bounded(&self.cfg, client.put(owner_key, value.render(), Some(opts))).await?;
            }
            tracing::info!(
                target: "lockbroker::cluster",
                shard,
                epoch = epoch.get(),
                grace = grace_until.is_some(),
                "claimed shard"
            );
        }
        Ok(())
    }

    /// Loads a hand-over record's leases as orphans their holders take over (each ends no
    /// earlier than at the old owner: time left counts from now). Returns the grace the
    /// shard still needs: the old owner's own grace left, or the full grace if a lease
    /// could not be loaded.
    fn take_over(&self, shard: u32, h: Handover) -> Option<Instant> {
        let count = h.leases.len();
        let waited = h.queues.iter().map(|(_, t)| t.len()).sum::<usize>();
        let failed = self.broker.with_table(|t, now, _| {
            let mut failed = 0;
            for l in h.leases {
                match t.restore(now, l.key, l.fence, l.mode, now + l.left) {
                    Ok(()) => t.label_restored(l.fence, l.owner),
                    Err(_) => failed += 1,
                }
            }
            // The acquires that waited at the old owner get their places back, in order.
            for (key, tickets) in &h.queues {
                if let Err(e) = t.reserve_places(now, key, tickets) {
                    tracing::debug!(target: "lockbroker::cluster", "queue places not kept: {e}");
                }
            }
            failed
        });
        let now = Instant::now();
        tracing::info!(
            target: "lockbroker::cluster",
            shard,
            leases = count,
            failed,
            waited,
            "took over the shard's leases from its previous owner"
        );
        if failed > 0 {
            return Some(now + self.grace);
        }
        (!h.grace_left.is_zero()).then(|| now + h.grace_left)
    }

    /// Pushes the shard map to every connected client if who owns what changed since the
    /// last push.
    fn publish(&self) {
        let map = self.state.lock().shard_map();
        {
            let mut last = self.published.lock();
            if *last == map.owners {
                return;
            }
            last.clone_from(&map.owners);
        }
        self.broker
            .broadcast(&lockbroker_proto::Frame::ShardMap(map));
    }
}

/// A shard ownership key's value: `"<name> <claimed-at-unix-ms>[ <grace-end-unix-ms>]"`.
pub(super) struct OwnerValue<'a> {
    pub(super) name: &'a str,
    pub(super) claimed_ms: u64,
    /// 0 when the claim had no grace.
    pub(super) grace_end_ms: u64,
}

impl<'a> OwnerValue<'a> {
    pub(super) fn parse(value: &'a str) -> OwnerValue<'a> {
        let mut parts = value.split(' ');
        let name = parts.next().unwrap_or_default();
        let mut ms = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        OwnerValue {
            name,
            claimed_ms: ms(),
            grace_end_ms: ms(),
        }
    }

    fn render(&self) -> String {
        match self.grace_end_ms {
            0 => format!("{} {}", self.name, self.claimed_ms),
            end => format!("{} {} {end}", self.name, self.claimed_ms),
        }
    }
}

impl KeyRouter for Cluster {
    fn shard_map(&self) -> Option<lockbroker_proto::ShardMap> {
        Some(self.state.lock().shard_map())
    }

    fn serve_peer(
        &self,
        conn: quinn::Connection,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>> {
        let link = self.replication.as_ref()?.serve(conn);
        Some(Box::pin(link.instrument(self.span.clone())))
    }

    fn route(&self, key: &[u8]) -> Route {
        let now = Instant::now();
        let valid = self.validity.lock().valid_at(now);
        self.state.lock().route(key, valid, now)
    }

    fn may_adopt(&self, key: &[u8], fence: u64) -> bool {
        let now = Instant::now();
        if !self.validity.lock().valid_at(now) {
            return false;
        }
        let state = self.state.lock();
        let shard = shard_of(key, state.shards());
        state.term(shard).is_some_and(|t| {
            t.grace_until.is_some_and(|g| now < g)
                && Epoch::of(i64::try_from(t.epoch).unwrap_or(i64::MAX))
                    .is_ok_and(|e| fence < e.floor())
        })
    }
}

/// `<backup> <term>` of an in-sync key.
pub(super) fn parse_in_sync(value: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (name, term) = text.rsplit_once(' ')?;
    Some((name, term.parse().ok()?))
}

/// The next in-sync request, or never without replication.
async fn next_in_sync(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<InSyncOp>>,
) -> Option<InSyncOp> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
