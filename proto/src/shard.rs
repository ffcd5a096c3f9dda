//! Cluster sharding, shared by brokers and clients: which shard a key belongs to.
//!
//! A stable hash (64-bit FNV-1a of the key bytes, reduced modulo the shard count): the same on
//! every broker and client, every platform and every version. Keys are hashed *after* any key
//! policy rewrite on the broker; a client routes by the key it sends, and a broker that finds
//! the rewritten key in another shard answers `Moved`.

/// The shard of `key` among `shards` (0 when `shards` is 0 or 1).
pub fn shard_of(key: &[u8], shards: u32) -> u32 {
    if shards <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
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
}
