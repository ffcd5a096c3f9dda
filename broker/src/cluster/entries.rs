//! What a broker accepts from etcd. Every key it reads under `/lockbroker/<cluster>/` is
//! checked before the view (`state.rs`) sees it; an entry that fails is ignored (the driver
//! logs it once and counts it: `cluster_ignored_keys`):
//!
//! * `members/<name>`: a name of printable characters without `/` (at most 255 bytes), held
//!   under an etcd lease (a broker's registration always is: it ends with the broker), and a
//!   value of `quic://<ip>:<port>` — what a broker registers. A registration that fails these
//!   is no member: it is preferred for no shard.
//! * `shards/<n>`: `n` below the cluster's shard count, held under an etcd lease, the value
//!   naming a member as above (`OwnerValue`). One without a lease would never expire, so
//!   nobody could claim the shard again: it is treated as no owner, and the shard's preferred
//!   owner replaces it. Whether the lease is the named member's own is checked by the view
//!   (an owner is live only while its member is registered under the same lease).
//! * `drained/<name>`: the name as above; the value is not read.
//!
//! Pure functions, no I/O.

use std::net::SocketAddr;

use super::driver::OwnerValue;

/// Longest member name accepted.
const MAX_NAME: usize = 255;

/// Why an entry is ignored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("no etcd lease (it would never expire)")]
    NoLease,
    #[error("the value is not a client URL (quic://<ip>:<port>)")]
    BadUrl,
    #[error("not a member name (printable, no '/', at most 255 bytes)")]
    BadName,
    #[error("not a shard number below {0}")]
    BadShard(u32),
    #[error("the value does not name a member")]
    BadOwner,
}

/// A key under the cluster's prefix, by what it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Member(&'a str),
    Drained(&'a str),
    Shard(u32),
    /// A key the view does not read (the key fingerprint, `owned/`, `fence-epochs/`, others).
    Unread,
}

/// What `key` (relative to the cluster's prefix) is, for a cluster of `shards` shards.
pub fn key_of(key: &str, shards: u32) -> Result<Key<'_>, Invalid> {
    if let Some(name) = key.strip_prefix("members/") {
        return valid_name(name)
            .then_some(Key::Member(name))
            .ok_or(Invalid::BadName);
    }
    if let Some(name) = key.strip_prefix("drained/") {
        return valid_name(name)
            .then_some(Key::Drained(name))
            .ok_or(Invalid::BadName);
    }
    if let Some(n) = key.strip_prefix("shards/") {
        return n
            .parse::<u32>()
            .ok()
            .filter(|&s| s < shards && s.to_string() == n)
            .map(Key::Shard)
            .ok_or(Invalid::BadShard(shards));
    }
    Ok(Key::Unread)
}

/// A member name: non-empty, printable, no `/` or whitespace, at most 255 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/')
}

/// The client URL of a member registration with `value` under `lease` (0: none).
pub fn member_url(value: &[u8], lease: i64) -> Result<String, Invalid> {
    if lease == 0 {
        return Err(Invalid::NoLease);
    }
    let url = std::str::from_utf8(value).map_err(|_| Invalid::BadUrl)?;
    url.strip_prefix("quic://")
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .filter(|a| a.port() != 0)
        .map(|_| url.to_string())
        .ok_or(Invalid::BadUrl)
}

/// The member named by a shard ownership key with `value` under `lease` (0: none).
pub fn owner_name(value: &[u8], lease: i64) -> Result<String, Invalid> {
    if lease == 0 {
        return Err(Invalid::NoLease);
    }
    let text = std::str::from_utf8(value).map_err(|_| Invalid::BadOwner)?;
    let name = OwnerValue::parse(text).name;
    valid_name(name)
        .then(|| name.to_string())
        .ok_or(Invalid::BadOwner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_classified_and_bad_names_refused() {
        assert_eq!(key_of("members/b1", 8), Ok(Key::Member("b1")));
        assert_eq!(
            key_of("members/127.0.0.1:7420", 8),
            Ok(Key::Member("127.0.0.1:7420"))
        );
        assert_eq!(key_of("drained/b1", 8), Ok(Key::Drained("b1")));
        assert_eq!(key_of("shards/7", 8), Ok(Key::Shard(7)));
        assert_eq!(key_of("shards/8", 8), Err(Invalid::BadShard(8)));
        assert_eq!(key_of("shards/07", 8), Err(Invalid::BadShard(8)));
        assert_eq!(key_of("shards/+1", 8), Err(Invalid::BadShard(8)));
        assert_eq!(key_of("shards/x", 8), Err(Invalid::BadShard(8)));
        assert_eq!(key_of("members/", 8), Err(Invalid::BadName));
        assert_eq!(key_of("members/a/b", 8), Err(Invalid::BadName));
        assert_eq!(key_of("members/a b", 8), Err(Invalid::BadName));
        assert_eq!(key_of("members/a\u{1b}[2J", 8), Err(Invalid::BadName));
        assert_eq!(key_of("key-fingerprint", 8), Ok(Key::Unread));
        assert_eq!(key_of("owned/3", 8), Ok(Key::Unread));
    }

    /// Finding 8: `members/zz = "not a url"` without a lease took shards out of service.
    #[test]
    fn member_entries_need_a_lease_and_a_client_url() {
        assert_eq!(
            member_url(b"quic://127.0.0.1:7420", 5),
            Ok("quic://127.0.0.1:7420".into())
        );
        assert_eq!(
            member_url(b"quic://[::1]:7420", 5),
            Ok("quic://[::1]:7420".into())
        );
        assert_eq!(
            member_url(b"quic://127.0.0.1:7420", 0),
            Err(Invalid::NoLease)
        );
        assert_eq!(member_url(b"not a url", 0), Err(Invalid::NoLease));
        for bad in [
            &b"not a url"[..],
            b"quic://nowhere",
            b"quic://127.0.0.1",
            b"quic://127.0.0.1:0",
            b"http://127.0.0.1:7420",
            b"quic://127.0.0.1:7420/x",
            b"\xff\xfe",
        ] {
            assert_eq!(member_url(bad, 5), Err(Invalid::BadUrl), "{bad:?}");
        }
    }

    #[test]
    fn owner_entries_need_a_lease_and_a_member_name() {
        assert_eq!(owner_name(b"b1 1700000000000", 9), Ok("b1".into()));
        assert_eq!(owner_name(b"b1 1 2", 9), Ok("b1".into()));
        assert_eq!(owner_name(b"b1 1", 0), Err(Invalid::NoLease));
        assert_eq!(owner_name(b"", 9), Err(Invalid::BadOwner));
        assert_eq!(owner_name(b"\xff", 9), Err(Invalid::BadOwner));
    }
}
