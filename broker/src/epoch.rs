//! The broker epoch: a counter persisted in the data dir and bumped at every start, so
//! fencing tokens (`epoch << 40 | counter`) keep growing across restarts.

use std::io;
use std::path::Path;

/// Bits of a fencing token below the epoch.
pub const COUNTER_BITS: u32 = 40;

/// Reads the last epoch from `data_dir/epoch`, writes the next one durably (write to a
/// temporary file, fsync, rename) and returns it. The first start gets epoch 1.
pub fn bump(data_dir: &Path) -> io::Result<u64> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join("epoch");
    let last = match std::fs::read_to_string(&path) {
        Ok(s) => s.trim().parse::<u64>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is corrupt: {e}", path.display()),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
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
        assert_eq!(bump(&dir).unwrap(), 1);
        assert_eq!(bump(&dir).unwrap(), 2);
        assert_eq!(bump(&dir).unwrap(), 3);
        std::fs::write(dir.join("epoch"), "garbage").unwrap();
        assert!(bump(&dir).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
