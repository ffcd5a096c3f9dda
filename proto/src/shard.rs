//! Cluster sharding, shared by brokers and clients: which shard a key belongs to.
//!
//! A stable hash (64-bit FNV-1a of the key bytes — of its `{tag}` when it has one, as in Redis
//! Cluster — reduced modulo the shard count): the same on every broker and client, every
//! platform and every version since hash tags (protocol 4; keys with a `{tag}` moved shards
//! then, others did not). Keys are hashed *after* any key
//! policy rewrite on the broker; a client routes by the key it sends, and a broker that finds
//! the rewritten key in another shard answers `Moved`.

/// The part of `key` that picks its shard: a hash tag as in Redis Cluster — the bytes between
/// the first `{` and the first `}` after it, when there are some (`acct/{42}/a` and
/// `acct/{42}/b` share the shard of `42`) — or else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|b| *b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|b| *b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// The shard of `key` among `shards` (0 when `shards` is 0 or 1), by FNV-1a of its
/// [`hash_tag`].
pub fn shard_of(key: &[u8], shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in hash_tag(key) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // `shards` fits in u32, so the remainder does too.
    u32::try_from(h % u64::from(shards)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        // Pinned values: changing the hash would move every key of a running cluster.
        assert_eq!(shard_of(b"", 64), (0xcbf2_9ce4_8422_2325u64 % 64) as u32);
        assert_eq!(shard_of(b"jobs/nightly", 1), 0);
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(format!("key/{i}").as_bytes(), 16) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_hash_tag_picks_the_shard() {
        assert_eq!(hash_tag(b"acct/{42}/balance"), b"42");
        assert_eq!(hash_tag(b"plain/key"), b"plain/key");
        assert_eq!(hash_tag(b"empty/{}/tag"), b"empty/{}/tag");
        assert_eq!(hash_tag(b"open/{only"), b"open/{only");
        assert_eq!(hash_tag(b"{a}{b}"), b"a");
        for shards in [2, 8, 64] {
            assert_eq!(
                shard_of(b"acct/{42}/balance", shards),
                shard_of(b"acct/{42}/history", shards)
            );
            assert_eq!(shard_of(b"{42}", shards), shard_of(b"42", shards));
        }
    }
}
