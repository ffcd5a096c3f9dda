//! Preferred shard owners by rendezvous (highest-random-weight) hashing over the live members:
//! every broker computes the same preference from the same member list, shards spread evenly,
//! and when a member joins or leaves only the shards it wins or held move.

/// The member that prefers to own `shard`: the one with the highest weight. `None` without
/// members. Ties (equal names only) go to the first in `members`.
pub fn preferred_owner(shard: u32, members: &[String]) -> Option<&str> {
    members
        .iter()
        .max_by_key(|m| weight(shard, m))
        .map(String::as_str)
}

/// The first member after `owner` in `shard`'s preference (its backup): the best-weighted
/// member that is not `owner`. `None` without another member.
pub fn backup_of<'a>(shard: u32, owner: &str, members: &'a [String]) -> Option<&'a str> {
    members
        .iter()
        .filter(|m| *m != owner)
        .max_by_key(|m| weight(shard, m))
        .map(String::as_str)
}

/// The weight of `member` for `shard`: a 64-bit mix of both (FNV-1a, then a SplitMix64
/// finaliser so that similar names spread).
fn weight(shard: u32, member: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in member.as_bytes().iter().chain(shard.to_le_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(members: &[String], shards: u32) -> Vec<String> {
        (0..shards)
            .map(|s| preferred_owner(s, members).unwrap_or_default().to_string())
            .collect()
    }

    #[test]
    fn shards_spread_evenly_and_move_minimally() {
        let three: Vec<String> = ["b1", "b2", "b3"].map(String::from).to_vec();
        let before = owners(&three, 64);
        for m in &three {
            let n = before.iter().filter(|o| *o == m).count();
            assert!((12..=32).contains(&n), "{m} owns {n} of 64");
        }
        // b4 joins: only shards b4 now wins move, all to b4.
        let four: Vec<String> = ["b1", "b2", "b3", "b4"].map(String::from).to_vec();
        let after = owners(&four, 64);
        for (b, a) in before.iter().zip(&after) {
            assert!(a == b || a == "b4", "{b} → {a}");
        }
        assert!(after.iter().filter(|o| *o == "b4").count() >= 8);
        // b2 leaves: only b2's shards move.
        let two: Vec<String> = ["b1", "b3"].map(String::from).to_vec();
        let left = owners(&two, 64);
        for (b, a) in before.iter().zip(&left) {
            assert!(a == b || b == "b2", "{b} → {a}");
        }
        assert_eq!(preferred_owner(3, &[]), None);
    }
}
