//! The lease horizon: a file in the data dir (`lease-horizon`) that bounds, in wall-clock
//! time, when every lease this broker run has handed out ends — so that a restart that cannot
//! restore those leases knows how long to grant nothing new (the restart grace).
//!
//! * While serving, [`HorizonWriter::cover`] is called under the table lock with every new
//!   lease deadline (grant, extend) *before* the answer leaves: if the deadline lies past what
//!   the file promises, the file is rewritten durably (temp file, fsync, rename) with the
//!   deadline plus [`SLACK`], so steady traffic rewrites it about once per `SLACK`.
//! * Once the table is empty the broker writes `clean` (checked every `SLACK`).
//! * A clean shutdown writes `clean` when no lease is left, or the latest remaining deadline
//!   otherwise (a shutdown does not release its sessions' leases).
//! * At start [`read_previous`] tells what the last run left: `clean`, a horizon, or nothing
//!   usable (a crash before the first write, a corrupt file, a data dir that ran before this
//!   file existed) — then the safe answer is the longest lease the broker grants.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Name of the file in the data dir.
pub const HORIZON_FILE: &str = "lease-horizon";

/// How far past a new deadline the horizon is pushed, so that it is rewritten rarely.
pub const SLACK: Duration = Duration::from_secs(2);

/// What the previous run of this data dir left behind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous {
    /// No previous run (fresh data dir), or a clean shutdown that released everything.
    Clean,
    /// Leases of the previous run may live until this wall-clock time.
    Until(SystemTime),
    /// The previous run left no usable horizon: assume its longest possible lease.
    Unknown,
}

impl Previous {
    /// How long a restart that restored nothing must hold new grants, at wall-clock `now`:
    /// until the horizon, plus `lock_delay` (a lost holder's margin), never more than
    /// `longest` (the longest lease plus lock delay; guards against a clock that jumped).
    pub fn grace(self, now: SystemTime, lock_delay: Duration, longest: Duration) -> Duration {
        match self {
            Previous::Clean => Duration::ZERO,
            Previous::Unknown => longest,
            Previous::Until(t) => match t.duration_since(now) {
                Ok(left) => (left + lock_delay).min(longest),
                Err(_) => Duration::ZERO,
            },
        }
    }
}

/// Reads what the previous run left. `fresh`: the data dir had never run a broker.
pub fn read_previous(data_dir: &Path, fresh: bool) -> Previous {
    let path = data_dir.join(HORIZON_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => parse(&s).unwrap_or_else(|| {
            tracing::warn!("{} is corrupt; assuming the longest lease", path.display());
            Previous::Unknown
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound && fresh => Previous::Clean,
        Err(e) => {
            tracing::warn!(
                "cannot read {}: {e}; assuming the longest lease",
                path.display()
            );
            Previous::Unknown
        }
    }
}

fn parse(s: &str) -> Option<Previous> {
    let s = s.trim();
    if s == "clean" {
        return Some(Previous::Clean);
    }
    let ms: u64 = s.strip_prefix("until ")?.trim().parse().ok()?;
    Some(Previous::Until(UNIX_EPOCH + Duration::from_millis(ms)))
}

/// Keeps the horizon file ahead of every lease deadline of this run.
#[derive(Debug)]
pub struct HorizonWriter {
    path: PathBuf,
    tmp: PathBuf,
    /// The instant the file currently covers (None: it says `clean`, or was never written).
    covered: Option<Instant>,
    /// Write failures so far (each logged).
    pub failures: u64,
}

impl HorizonWriter {
    /// A writer for `data_dir`; nothing is written until the first lease. The caller has read
    /// the previous run's horizon already and covers its own restored leases with `cover`.
    pub fn new(data_dir: &Path) -> HorizonWriter {
        HorizonWriter {
            path: data_dir.join(HORIZON_FILE),
            tmp: data_dir.join(format!("{HORIZON_FILE}.tmp")),
            covered: None,
            failures: 0,
        }
    }

    /// Makes the file cover `deadline` (pushing it `SLACK` further) if it does not yet.
    /// Called before the lease with that deadline is answered. A failed write is logged and
    /// counted; the next deadline tries again.
    pub fn cover(&mut self, now: Instant, deadline: Instant) {
        if self.covered.is_some_and(|c| c >= deadline) {
            return;
        }
        let until = deadline + SLACK;
        let wall = SystemTime::now() + until.saturating_duration_since(now);
        let ms = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        match self.write(&format!("until {ms}\n")) {
            Ok(()) => self.covered = Some(until),
            Err(e) => {
                self.failures += 1;
                tracing::error!(
                    "cannot write {}: {e}; a crash now would restart without knowing how long \
                     its leases last (it then waits the longest lease)",
                    self.path.display()
                );
            }
        }
    }

    /// The table is empty: no lease of this run is left. Writes `clean` unless it already says
    /// so.
    pub fn mark_clean(&mut self) {
        if self.covered.is_some() {
            self.close(Instant::now(), None);
        }
    }

    /// At a clean shutdown: `clean` when no lease is left, else the latest remaining deadline.
    pub fn close(&mut self, now: Instant, latest_left: Option<Instant>) {
        let result = match latest_left {
            None => {
                self.covered = None;
                self.write("clean\n")
            }
            Some(deadline) => {
                self.covered = None;
                self.cover(now, deadline);
                return;
            }
        };
        if let Err(e) = result {
            tracing::error!("cannot write {}: {e}", self.path.display());
        }
    }

    fn write(&self, content: &str) -> io::Result<()> {
        {
            let mut f = std::fs::File::create(&self.tmp)?;
            f.write_all(content.as_bytes())?;
            f.sync_data()?;
        }
        std::fs::rename(&self.tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn grace_follows_what_the_previous_run_left() {
        let now = SystemTime::now();
        let d = Duration::from_millis(500);
        assert_eq!(Previous::Clean.grace(now, d, HOUR), Duration::ZERO);
        assert_eq!(Previous::Unknown.grace(now, d, HOUR), HOUR);
        let later = Previous::Until(now + Duration::from_secs(10));
        assert_eq!(later.grace(now, d, HOUR), Duration::from_millis(10_500));
        let past = Previous::Until(now - Duration::from_secs(10));
        assert_eq!(past.grace(now, d, HOUR), Duration::ZERO);
        // A horizon absurdly far ahead (clock jumped back) is capped by the longest lease.
        let far = Previous::Until(now + 100 * HOUR);
        assert_eq!(far.grace(now, d, HOUR), HOUR);
    }

    #[test]
    fn the_file_round_trips_and_corruption_is_unknown() {
        let dir = std::env::temp_dir().join(format!("lb-horizon-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_previous(&dir, true), Previous::Clean);
        assert_eq!(read_previous(&dir, false), Previous::Unknown);
        let mut w = HorizonWriter::new(&dir);
        let now = Instant::now();
        w.cover(now, now + Duration::from_secs(5));
        let Previous::Until(t) = read_previous(&dir, false) else {
            panic!("a horizon was written");
        };
        let left = t.duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(6) && left <= Duration::from_secs(7),
            "{left:?}"
        );
        // Covered: an earlier deadline does not rewrite it.
        std::fs::write(dir.join(HORIZON_FILE), "until 1\n").unwrap();
        w.cover(now, now + Duration::from_secs(6));
        assert_eq!(
            read_previous(&dir, false),
            Previous::Until(UNIX_EPOCH + Duration::from_millis(1))
        );
        w.close(now, None);
        assert_eq!(read_previous(&dir, false), Previous::Clean);
        std::fs::write(dir.join(HORIZON_FILE), "garbage").unwrap();
        assert_eq!(read_previous(&dir, false), Previous::Unknown);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
