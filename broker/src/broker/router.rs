//! The key router: an optional component (cluster mode) that says which broker serves a key.
//! Commands ask it before they touch the table; `deliver_grant` asks it again before a grant
//! leaves, so nothing is granted on a shard this broker cannot vouch for (self-fencing).

use std::time::Instant;

use lockbroker_proto::ErrorCode;

/// Where a request for a key goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Served here; new grants wait until `grace_until` if set (a takeover grace: the previous
    /// owner's leases may still run, and their holders may reclaim them meanwhile).
    Local { grace_until: Option<Instant> },
    /// Another broker serves it (its URL), or nobody does right now (empty: retry shortly).
    Moved(String),
    /// Served here, but this broker cannot vouch for its ownership now (self-fenced).
    Unavailable,
}

impl Route {
    /// What a request for a key that is not served here is answered with; `None` when it is
    /// served here (a takeover grace aside: the caller decides what it means for it).
    pub fn refusal(&self) -> Option<(ErrorCode, String)> {
        match self {
            Route::Local { .. } => None,
            Route::Moved(url) => Some((ErrorCode::Moved, url.clone())),
            Route::Unavailable => Some((
                ErrorCode::Unavailable,
                "this broker cannot vouch for its shard ownership now (etcd unreachable)".into(),
            )),
        }
    }
}

/// Decides, per key, whether this broker serves it.
pub trait KeyRouter: Send + Sync {
    /// Where `key` goes now.
    fn route(&self, key: &[u8]) -> Route;

    /// Whether a lease of `fence` on `key` may be adopted by its holder here now (a takeover
    /// grace runs and the fence comes from an earlier owner of the key's shard).
    fn may_adopt(&self, key: &[u8], fence: u64) -> bool;

    /// The shard map clients route by (pushed after `Welcome` and on change).
    fn shard_map(&self) -> Option<lockbroker_proto::ShardMap> {
        None
    }

    /// Serves a connection that negotiated the replication link's ALPN (another member
    /// streaming its shards here); `None` when this broker keeps no replicas (the server
    /// closes it).
    fn serve_peer(
        &self,
        conn: quinn::Connection,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>> {
        let _ = conn;
        None
    }
}
