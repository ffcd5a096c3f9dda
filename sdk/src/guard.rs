//! `Guard`: a held lease. It renews the lease in the background (every third of its TTL),
//! reclaims it on a new connection after a reconnect, and reports `Lost` if it could not be
//! renewed before its deadline. `unlock().await` releases with an acknowledgement; dropping
//! the guard releases fire-and-forget.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lockbroker_proto::{Extend, Frame, Mode, Reclaim, Release};
use tokio::sync::watch;

use crate::client::{millis, round_trip_on};
use crate::conn::Conn;
use crate::{Client, Error, Result};

/// A held lock. Keep it alive while you work; check [`Guard::lost`] if the work must stop
/// when the lease can no longer be guaranteed. Pass [`Guard::fence`] to the resources you
/// write so they can reject a stale holder.
#[must_use = "dropping a guard releases the lock at once"]
pub struct Guard {
    lease: Arc<Lease>,
    renewer: Option<tokio::task::JoinHandle<()>>,
    lost: watch::Receiver<Option<Error>>,
    released: bool,
}

/// What the guard and its renewal task share.
struct Lease {
    client: Client,
    key: Bytes,
    fence: u64,
    mode: Mode,
    ttl: Mutex<Duration>,
    /// The connection whose session holds the lease.
    owner: Mutex<Arc<Conn>>,
    lost: watch::Sender<Option<Error>>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("key", &self.lease.key)
            .field("fence", &self.lease.fence)
            .field("mode", &self.lease.mode)
            .finish()
    }
}

impl Guard {
    pub(crate) fn new(
        client: Client,
        owner: Arc<Conn>,
        key: Bytes,
        fence: u64,
        mode: Mode,
        ttl: Duration,
        renew: bool,
    ) -> Guard {
        let (lost_tx, lost) = watch::channel(None);
        let lease = Arc::new(Lease {
            client,
            key,
            fence,
            mode,
            ttl: Mutex::new(ttl),
            owner: Mutex::new(owner),
            lost: lost_tx,
        });
        let renewer = renew.then(|| tokio::spawn(renew_loop(lease.clone())));
        Guard {
            lease,
            renewer,
            lost,
            released: false,
        }
    }

    /// The fencing token: strictly increasing per key across the broker's life.
    pub fn fence(&self) -> u64 {
        self.lease.fence
    }

    /// The key held (after any policy rewrite).
    pub fn key(&self) -> &[u8] {
        &self.lease.key
    }

    /// The key as text (lossy for non-UTF-8 keys).
    pub fn key_str(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.lease.key)
    }

    /// The lock mode held.
    pub fn mode(&self) -> Mode {
        self.lease.mode
    }

    /// The lease TTL granted by the broker (after TTL policy); renewals use it.
    pub fn ttl(&self) -> Duration {
        *self.lease.ttl.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once the lease is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.borrow().is_some()
    }

    /// Resolves with [`Error::Lost`] when the lease could not be renewed before its deadline
    /// (or the broker no longer has it). Never resolves while the lease is safe.
    pub async fn lost(&self) -> Error {
        let mut rx = self.lost.clone();
        loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                return e;
            }
            if rx.changed().await.is_err() {
                // The guard's lease state is gone: only happens after release.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Renews the lease now with a new TTL.
    pub async fn extend(&self, ttl: Duration) -> Result<()> {
        extend_once(&self.lease, ttl).await.map(|granted| {
            *self.lease.ttl.lock().unwrap_or_else(|e| e.into_inner()) = granted;
        })
    }

    /// Releases the lock and waits for the broker to confirm.
    pub async fn unlock(mut self) -> Result<()> {
        self.released = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if let Some(e) = self.lost.borrow().clone() {
            return Err(e);
        }
        let conn = owned_conn(&self.lease).await?;
        let lease = &self.lease;
        let reply = round_trip_on(&conn, lease.client.request_timeout(), |id| {
            Frame::Release(Release {
                id,
                key: lease.key.clone(),
                fence: lease.fence,
                ack: true,
            })
        })
        .await?;
        match reply {
            Frame::Ok { .. } => Ok(()),
            other => Err(crate::client::unexpected(other)),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.released {
            return;
        }
        let conn = self
            .lease
            .owner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        conn.post(|id| {
            Frame::Release(Release {
                id,
                key: self.lease.key.clone(),
                fence: self.lease.fence,
                ack: false,
            })
        });
    }
}

/// The connection whose session owns the lease; after a reconnect, reclaims the lease onto
/// the new connection first.
async fn owned_conn(lease: &Lease) -> Result<Arc<Conn>> {
    let owner = lease
        .owner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if !owner.is_closed() {
        return Ok(owner);
    }
    let conn = lease.client.conn().await?;
    let ttl = *lease.ttl.lock().unwrap_or_else(|e| e.into_inner());
    let reply = round_trip_on(&conn, lease.client.request_timeout(), |id| {
        Frame::Reclaim(Reclaim {
            id,
            key: lease.key.clone(),
            fence: lease.fence,
            ttl_ms: millis(ttl),
        })
    })
    .await?;
    match reply {
        Frame::Granted(_) => {
            tracing::debug!(fence = lease.fence, "lease reclaimed after reconnect");
            *lease.owner.lock().unwrap_or_else(|e| e.into_inner()) = conn.clone();
            Ok(conn)
        }
        other => Err(crate::client::unexpected(other)),
    }
}

/// One renewal: returns the TTL in force.
async fn extend_once(lease: &Lease, ttl: Duration) -> Result<Duration> {
    let conn = owned_conn(lease).await?;
    let reply = round_trip_on(&conn, lease.client.request_timeout(), |id| {
        Frame::Extend(Extend {
            id,
            key: lease.key.clone(),
            fence: lease.fence,
            ttl_ms: millis(ttl),
        })
    })
    .await?;
    match reply {
        Frame::Extended { ttl_ms, .. } => Ok(Duration::from_millis(ttl_ms)),
        other => Err(crate::client::unexpected(other)),
    }
}

/// Renews every third of the TTL; retries failed renewals until the lease deadline, then
/// declares the lease lost.
async fn renew_loop(lease: Arc<Lease>) {
    let mut deadline = Instant::now() + *lease.ttl.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let ttl = *lease.ttl.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::sleep(ttl / 3).await;
        loop {
            let sent = Instant::now();
            if sent >= deadline {
                let _ = lease.lost.send(Some(Error::Lost(
                    "the lease could not be renewed before its deadline".into(),
                )));
                return;
            }
            let attempt = tokio::time::timeout(deadline - sent, extend_once(&lease, ttl)).await;
            match attempt {
                Ok(Ok(granted)) => {
                    *lease.ttl.lock().unwrap_or_else(|e| e.into_inner()) = granted;
                    deadline = sent + granted;
                    break;
                }
                Ok(Err(e @ (Error::NotOwner | Error::NotLocked | Error::Denied(_)))) => {
                    let _ = lease.lost.send(Some(Error::Lost(format!(
                        "the broker no longer holds the lease: {e}"
                    ))));
                    return;
                }
                Ok(Err(e)) => {
                    tracing::debug!(fence = lease.fence, "renewal failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100).min(ttl / 10)).await;
                }
                Err(_) => {}
            }
        }
    }
}
