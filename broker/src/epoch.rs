//! The broker epoch: a counter persisted in the data dir and bumped at every start, so
//! fencing tokens (`epoch << 40 | counter`) keep growing across restarts.
//!
//! A fresh data dir does not start at epoch 1 but at an epoch drawn from its broker identity
//! (`1..=FIRST_EPOCH_RANGE`), so two *independent* brokers hand out disjoint fences: theirs
//! can only meet if their first epochs lie within their restart counts of each other (for two
//! brokers restarted 100 times each, a chance of about 1 in 10^4 that some epoch is shared at
//! all). One lock service whose fences are comparable across brokers is cluster mode.

use std::io;
use std::path::Path;

/// Bits of a fencing token below the epoch (defined by the lock table, which makes fences).
pub use lockbroker_core::COUNTER_BITS;

/// A fresh data dir's first epoch is in `1..=FIRST_EPOCH_RANGE` (2^21).
pub const FIRST_EPOCH_RANGE: u64 = 1 << 21;

/// The first epoch of a fresh data dir whose broker id is `broker_id`.
pub fn first_epoch(broker_id: u64) -> u64 {
    1 + broker_id % FIRST_EPOCH_RANGE
}

/// Reads the last epoch from `data_dir/epoch`, writes the next one durably (write to a
/// temporary file, fsync, rename) and returns it. The first start gets epoch `first`.
pub fn bump(data_dir: &Path, first: u64) -> io::Result<u64> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("epoch");
    let last = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => first.max(1) - 1,
        Err(e) => return Err(e),
    };
    let next = last + 1;
    if next >= 1 << (64 - COUNTER_BITS) {
        return Err(io::Error::other("epoch space exhausted"));
    }
    let tmp = data_dir.join("epoch.tmp");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{next}")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(dir) = std::fs::File::open(data_dir) {
        let _ = dir.sync_all();
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_grows_across_restarts_and_rejects_corruption() {
        let dir = std::env::temp_dir().join(format!("lb-epoch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(bump(&dir, 77).unwrap(), 77);
        assert_eq!(bump(&dir, 5).unwrap(), 78);
        assert_eq!(bump(&dir, 77).unwrap(), 79);
        std::fs::write(dir.join("epoch"), "garbage").unwrap();
        assert!(bump(&dir, 1).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn first_epochs_stay_in_their_range() {
        assert_eq!(first_epoch(0), 1);
        assert_eq!(first_epoch(FIRST_EPOCH_RANGE - 1), FIRST_EPOCH_RANGE);
        assert_eq!(first_epoch(u64::MAX), 1 + u64::MAX % FIRST_EPOCH_RANGE);
    }
}
