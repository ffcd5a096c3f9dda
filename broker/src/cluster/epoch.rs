//! Fence epochs from etcd revisions, the one place their arithmetic lives.
//!
//! A fence is `epoch << 32 | counter`: the epoch of a shard's ownership term is the etcd
//! revision that created its ownership key, so every fence a new owner issues is above every
//! fence any earlier owner issued. That needs the revision to fit in 32 bits: past
//! `u32::MAX` the shift would drop its high bits and fences would go *down*. Such a revision
//! is refused ([`EpochError::PastLimit`]); the cluster driver then claims no shard and the
//! broker is unready, naming the cause (`mod.rs`).

/// Why an etcd revision gives no fence epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    /// etcd revisions start at 1; 0 or less means the answer had no header.
    #[error("etcd revision {0} is not a revision")]
    NotPositive(i64),
    /// The revision does not fit the 32 high bits of a fence.
    #[error(
        "etcd revision {0} is past 2^32-1: fences (revision << 32 | counter) would wrap and go \
         down, so this broker claims no shard; run the cluster on a fresh etcd (its revisions \
         start at 1)"
    )]
    PastLimit(i64),
}

/// The fence epoch of an etcd revision: the 32 high bits of every fence of a term that began
/// at that revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch(u32);

impl Epoch {
    /// The epoch of `revision` (1 ..= 2^32-1).
    pub fn of(revision: i64) -> Result<Epoch, EpochError> {
        if revision <= 0 {
            return Err(EpochError::NotPositive(revision));
        }
        u32::try_from(revision)
            .map(Epoch)
            .map_err(|_| EpochError::PastLimit(revision))
    }

    /// The revision, as a number.
    pub fn get(self) -> u64 {
        u64::from(self.0)
    }

    /// Every fence of this epoch's term is above this (`epoch << 32`).
    pub fn floor(self) -> u64 {
        u64::from(self.0) << 32
    }

    /// The highest fence of this epoch (`(epoch + 1) << 32 - 1`, without overflow).
    pub fn ceiling(self) -> u64 {
        self.floor() | u64::from(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_the_high_bits_and_grow_with_the_revision() {
        let e = Epoch::of(17).unwrap();
        assert_eq!(e.get(), 17);
        assert_eq!(e.floor(), 17 << 32);
        assert_eq!(e.ceiling(), (18 << 32) - 1);
        let next = Epoch::of(18).unwrap();
        assert!(next.floor() > e.ceiling());
    }

    #[test]
    fn the_last_revisions_below_the_limit_still_fit() {
        let last = Epoch::of(i64::from(u32::MAX)).unwrap();
        assert_eq!(last.floor(), u64::MAX - u64::from(u32::MAX));
        assert_eq!(last.ceiling(), u64::MAX);
        let before = Epoch::of(i64::from(u32::MAX) - 1).unwrap();
        assert!(before.ceiling() < last.floor());
    }

    /// The bug of finding 12: `revision << 32` past 2^32 dropped the high bits (2^32 + 5
    /// became epoch 5, far below every earlier fence). Refused instead, naming the cause.
    #[test]
    fn revisions_past_two_to_the_32_are_refused() {
        for r in [1i64 << 32, (1 << 32) + 5, i64::MAX] {
            let err = Epoch::of(r).unwrap_err();
            assert_eq!(err, EpochError::PastLimit(r));
            assert!(err.to_string().contains("past 2^32"), "{err}");
        }
        assert_eq!(Epoch::of(0), Err(EpochError::NotPositive(0)));
        assert_eq!(Epoch::of(-3), Err(EpochError::NotPositive(-3)));
    }
}
