//! Owner checks and leader election, built on leases, owner labels and pushed grants (no
//! polling): `Client::is_locked`, `Guard::is_held`, `Client::elect` (a lock that waits its
//! turn and carries the candidate's label) and `Client::leader` (the label of whoever holds
//! the election key).

use bytes::Bytes;

use crate::{Client, Guard, Result};

impl Client {
    /// Whether anyone holds `key` now (asks the broker, or the embedded table).
    pub async fn is_locked(&self, key: impl Into<Bytes>) -> Result<bool> {
        Ok(self.inspect(key).await?.is_locked())
    }

    /// Stands for election on `key` under `label` (e.g. `"scheduler@host-3"`): resolves when
    /// this client leads, with a guard that keeps the leadership (renewed in the background)
    /// until it is dropped or unlocked — or lost: watch [`Guard::lost`] and stop leading
    /// when it fires. Candidates are granted in the order they stood (FIFO); the grant is
    /// pushed, nobody polls. Pass [`Guard::fence`] to what the leader writes so a deposed
    /// leader's late writes are refused.
    pub async fn elect(&self, key: impl Into<Bytes>, label: impl Into<String>) -> Result<Guard> {
        self.lock(key).owner(label).wait_forever().await
    }

    /// The label of the current leader of `key` (the owner label of its exclusive holder),
    /// or `None` when nobody leads (or the holder gave no label).
    pub async fn leader(&self, key: impl Into<Bytes>) -> Result<Option<String>> {
        Ok(self.inspect(key).await?.owner_label().map(str::to_owned))
    }
}

impl Guard {
    /// Whether the broker (or the embedded table) still has this lease — asked now, unlike
    /// [`Guard::is_lost`], which reads the guard's own clock and pushes. With a key of
    /// thousands of shared holders the broker may list only the oldest; a lease past that list
    /// is reported not held.
    pub async fn is_held(&self) -> Result<bool> {
        let info = self
            .client()
            .inspect(Bytes::copy_from_slice(self.key()))
            .await?;
        Ok(info.holders.iter().any(|h| h.fence == self.fence()))
    }
}
