//! `LockAllRequest`: an atomic multi-key lock (`Client::lock_all`). Every key is granted in one
//! step or none is; the answer is one [`Guard`] per key (each its own lease and fence), which
//! can be released together (drop the `Vec`) or one by one.
//!
//! Fairness (the table's rule): FIFO per key across single- and multi-key requests. A
//! multi-key request waits in the queue of every key it names and is granted when it is first
//! in all of them, so a stream of single-key requests cannot starve it, and two requests naming
//! the same keys in opposite orders cannot deadlock (the earlier one is ahead on every key).
//! While it waits it holds nothing, but later requests on its keys queue behind it.
//!
//! In cluster mode all keys must live in one shard: give them a common `{tag}` (as Redis Cluster
//! does: `acct/{42}/balance` and `acct/{42}/history` share the shard of `42`); a broker refuses
//! keys of different shards.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{AcquireAll, Frame, MAX_KEYS_PER_ACQUIRE, Mode, WaitSpec};

use std::sync::Arc;

use lockbroker_core::wire::millis;

use crate::conn::{Abandon, Conn};
use crate::error::{Error, Result};
use crate::guard::{Granted, Guard};
use crate::lock::{await_grant, check_owner_label};
use crate::route::retry::{Kind, Step, for_wait, remaining, retry, step};
use crate::route::{PendingReply, Route, unexpected};

/// A multi-key acquire being configured. `.await` it to get one [`Guard`] per key, in the
/// order the keys were given.
#[must_use = "a lock request does nothing until awaited"]
pub struct LockAllRequest {
    route: Arc<Route>,
    keys: Vec<Bytes>,
    ttl: Option<Duration>,
    wait: WaitSpec,
    renew: bool,
    owner: Bytes,
}

impl LockAllRequest {
    /// A lock of every one of `keys` (`Client::lock_all`).
    pub(crate) fn new(route: Arc<Route>, keys: Vec<Bytes>) -> Self {
        LockAllRequest {
            owner: route.default_owner(),
            route,
            keys,
            ttl: None,
            wait: WaitSpec::Forever,
            renew: true,
        }
    }
}

impl LockAllRequest {
    /// TTL of every lease (default: the broker's).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Wait up to `d` for all the keys, then fail with [`Error::Timeout`].
    pub fn wait(mut self, d: Duration) -> Self {
        self.wait = WaitSpec::Millis(millis(d));
        self
    }

    /// Wait until granted (the default).
    pub fn wait_forever(mut self) -> Self {
        self.wait = WaitSpec::Forever;
        self
    }

    /// Do not wait: fail with [`Error::Busy`] unless every key is free now.
    pub fn no_wait(mut self) -> Self {
        self.wait = WaitSpec::NoWait;
        self
    }

    /// Do not renew the leases in the background.
    pub fn no_renew(mut self) -> Self {
        self.renew = false;
        self
    }

    /// The owner label every lease is shown with.
    pub fn owner(mut self, label: impl Into<String>) -> Self {
        self.owner = Bytes::from(label.into());
        self
    }

    async fn run(self) -> Result<Vec<Guard>> {
        if self.keys.is_empty() || self.keys.len() > MAX_KEYS_PER_ACQUIRE {
            return Err(Error::Invalid(format!(
                "lock_all takes 1 to {MAX_KEYS_PER_ACQUIRE} keys ({} given)",
                self.keys.len()
            )));
        }
        check_owner_label(&self.owner)?;
        // Through the retry policy, as a single-key acquire (all keys share one shard).
        let (deadline, wait_end) = for_wait(self.wait, self.route.request_timeout());
        let this = &self;
        let (conn, g, sent) = retry(
            &self.route,
            &self.keys[0],
            Kind::Request,
            deadline,
            |conn| this.attempt(conn, remaining(this.wait, wait_end)),
        )
        .await?;
        let granted_at = Instant::now();
        let unwatched: Vec<Guard> = g
            .leases
            .into_iter()
            .map(|l| {
                let ttl = Duration::from_millis(l.ttl_ms);
                Guard::unwatched(
                    self.route.clone(),
                    conn.clone(),
                    Granted {
                        key: l.key,
                        fence: l.fence,
                        secret: Some(l.secret),
                        mode: Mode::Exclusive,
                        ttl,
                        sent,
                        granted_at,
                        label: self.owner.clone(),
                        fence_block: 1,
                    },
                    self.renew,
                )
            })
            .collect();
        // Queued for a while: start the work on full leases (as `lock` does).
        let mut guards = Vec::with_capacity(unwatched.len());
        for guard in unwatched {
            guards.push(crate::guard::hand_out(guard, sent).await?);
        }
        Ok(guards)
    }
}

impl LockAllRequest {
    /// One multi-key acquire on `conn`, waiting `wait`: the grant, and when it was sent.
    async fn attempt(
        &self,
        conn: Arc<Conn>,
        wait: WaitSpec,
    ) -> Result<Step<(Arc<Conn>, lockbroker_proto::GrantedAll, Instant)>> {
        for k in &self.keys {
            conn.check_key(k)?;
        }
        let sent = Instant::now();
        let (id, rx) = conn.request(|id| {
            Frame::AcquireAll(AcquireAll {
                id,
                keys: self.keys.clone(),
                ttl_ms: self.ttl.map_or(0, millis),
                wait,
                owner: self.owner.clone(),
            })
        })?;
        let mut pending = PendingReply::new(
            &conn,
            id,
            Some(Abandon {
                key: self.keys[0].clone(),
                late: None,
            }),
            rx,
        );
        let reply = await_grant(&mut pending, wait, self.route.request_timeout()).await?;
        match step(reply)? {
            Step::Moved(url) => Ok(Step::Moved(url)),
            Step::Done(Frame::GrantedAll(g)) => Ok(Step::Done((conn, g, sent))),
            Step::Done(other) => Err(unexpected(other)),
        }
    }
}

impl IntoFuture for LockAllRequest {
    type Output = Result<Vec<Guard>>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<Vec<Guard>>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            // Counted and timed from the first poll, as a single-key acquire.
            let timer = crate::metrics::AcquireTimer::start(Mode::Exclusive);
            crate::metrics::timed(timer, self.run()).await
        })
    }
}
