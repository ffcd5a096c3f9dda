//! The lease horizon: a file in the data dir (`lease-horizon`) that bounds, in wall-clock
//! time, when every lease this broker run has handed out ends — so that a restart that cannot
//! restore those leases knows how long to grant nothing new (the restart grace).
//!
//! * While serving, [`HorizonWriter::cover`] is called under the table lock with every new
//!   lease deadline (grant, extend) *before* the answer leaves: if the deadline lies past what
//!   the file promises, the file is rewritten durably with the deadline plus [`SLACK`], so
//!   steady traffic rewrites it about once per `SLACK`. The file is opened once and rewritten
//!   in place (one fixed-width record, `sync_data`): no temp file, no rename, no new file
//!   descriptor per write — running out of descriptors later cannot stop it.
//! * A write that fails leaves the deadline uncovered, and [`Coverage`] (read outside the
//!   lock by the answer path) says so: the grant or renewal is then answered `Unavailable`
//!   and the lease given back, and `/readyz` is unready until a write succeeds again. A grant
//!   is never answered unless its restart horizon is durable.
//! * Once the table is empty the broker writes `clean` (checked every `SLACK`).
//! * A clean shutdown writes `clean` when no lease is left, or the latest remaining deadline
//!   otherwise (a shutdown does not release its sessions' leases).
//! * At start [`read_previous`] tells what the last run left: `clean`, a horizon, or nothing
//!   usable (a crash before the first write, a corrupt file, a data dir that ran before this
//!   file existed) — then the safe answer is the longest lease the broker grants, and the
//!   reason is kept for the banner and `/readyz`. `lockbroker serve --forget-previous-leases`
//!   is the operator's override (README, "Restarts").

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Name of the file in the data dir.
pub const HORIZON_FILE: &str = "lease-horizon";

/// How far past a new deadline the horizon is pushed, so that it is rewritten rarely.
pub const SLACK: Duration = Duration::from_secs(2);

/// Every record is this many bytes (padded with spaces, ending in a newline), so a rewrite
/// in place never leaves the tail of a longer earlier record behind.
const RECORD_LEN: usize = 32;

/// What the previous run of this data dir left behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Previous {
    /// No previous run (fresh data dir), or a clean shutdown that released everything.
    Clean,
    /// Leases of the previous run may live until this wall-clock time.
    Until(SystemTime),
    /// The previous run left no usable horizon (why): assume its longest possible lease.
    Unknown(String),
}

impl Previous {
    /// How long a restart that restored nothing must hold new grants, at wall-clock `now`:
    /// until the horizon, plus `lock_delay` (a lost holder's margin), never more than
    /// `longest` (the longest lease plus lock delay; guards against a clock that jumped).
    pub fn grace(&self, now: SystemTime, lock_delay: Duration, longest: Duration) -> Duration {
        match self {
            Previous::Clean => Duration::ZERO,
            Previous::Unknown(_) => longest,
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
    match read_head(&path) {
        Ok(s) => parse(&s).unwrap_or_else(|| {
            Previous::Unknown(format!(
                "{} is corrupt ({:?})",
                path.display(),
                s.chars().take(40).collect::<String>()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound && fresh => Previous::Clean,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Previous::Unknown(format!(
            "{} is missing (the previous run crashed before its first lease, or ran a version \
             without it)",
            path.display()
        )),
        Err(e) => Previous::Unknown(format!("cannot read {}: {e}", path.display())),
    }
}

/// The file's first bytes (a record is short; whatever is behind it is not read — the path
/// may even name a device).
fn read_head(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut head = Vec::with_capacity(RECORD_LEN);
    File::open(path)?
        .take(2 * RECORD_LEN as u64)
        .read_to_end(&mut head)?;
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn parse(s: &str) -> Option<Previous> {
    let s = s.trim();
    if s == "clean" {
        return Some(Previous::Clean);
    }
    let ms: u64 = s.strip_prefix("until ")?.trim().parse().ok()?;
    Some(Previous::Until(UNIX_EPOCH + Duration::from_millis(ms)))
}

/// What the horizon file durably covers, readable without the table lock: the answer path
/// asks it whether a lease's deadline is covered before the lease is answered.
#[derive(Debug)]
pub struct Coverage {
    /// The reference instant `covered_ns` counts from.
    base: Instant,
    /// Nanoseconds after `base` up to which the file covers deadlines (0: nothing).
    covered_ns: AtomicU64,
    /// The last write failed (and none succeeded since).
    failing: AtomicBool,
    /// Write failures so far.
    failures: AtomicU64,
    /// The last write error, for `/readyz`.
    last_error: parking_lot::Mutex<Option<String>>,
}

impl Coverage {
    fn new() -> Coverage {
        Coverage {
            base: Instant::now(),
            covered_ns: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            last_error: parking_lot::Mutex::new(None),
        }
    }

    /// Whether a lease ending at `deadline` is covered by the file.
    pub fn covers(&self, deadline: Instant) -> bool {
        let covered = self.covered_ns.load(Ordering::Acquire);
        covered > 0 && self.base + Duration::from_nanos(covered) >= deadline
    }

    /// Why grants are refused now (the last write failed), if they are.
    pub fn failing(&self) -> Option<String> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.last_error.lock().clone()
    }

    /// Write failures since start (`/metrics`).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn set(&self, until: Option<Instant>) {
        let ns = until.map_or(0, |u| {
            u64::try_from(u.saturating_duration_since(self.base).as_nanos())
                .unwrap_or(u64::MAX)
                .max(1)
        });
        self.covered_ns.store(ns, Ordering::Release);
    }

    fn wrote(&self, result: &io::Result<()>, path: &Path) {
        match result {
            Ok(()) => self.failing.store(false, Ordering::Release),
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock() = Some(format!(
                    "cannot write the lease horizon {}: {e}; new grants and renewals are \
                     refused until it can be written",
                    path.display()
                ));
                self.failing.store(true, Ordering::Release);
            }
        }
    }
}

/// Keeps the horizon file ahead of every lease deadline of this run.
#[derive(Debug)]
pub struct HorizonWriter {
    path: PathBuf,
    /// The file, opened once (opened again on the next write if that failed).
    file: Option<File>,
    /// The instant the file currently covers (None: it says `clean`, or was never written).
    covered: Option<Instant>,
    coverage: Arc<Coverage>,
}

impl HorizonWriter {
    /// A writer for `data_dir`; nothing is written until the first lease. The caller has read
    /// the previous run's horizon already and covers its own restored leases with `cover`.
    /// The file is opened now, while descriptors are plentiful.
    pub fn new(data_dir: &Path) -> HorizonWriter {
        let path = data_dir.join(HORIZON_FILE);
        let file = open(&path)
            .inspect_err(|e| tracing::warn!("cannot open {}: {e}", path.display()))
            .ok();
        HorizonWriter {
            path,
            file,
            covered: None,
            coverage: Arc::new(Coverage::new()),
        }
    }

    /// What the file covers, for the answer path.
    pub fn coverage(&self) -> Arc<Coverage> {
        self.coverage.clone()
    }

    /// Makes the file cover `deadline` (pushing it `SLACK` further) if it does not yet.
    /// Called before the lease with that deadline is answered. Returns whether the deadline
    /// is covered; when a write fails it is not, the error is logged, and the answer path
    /// refuses the lease ([`Coverage::covers`]). The next deadline tries again.
    pub fn cover(&mut self, now: Instant, deadline: Instant) -> bool {
        if self.covered.is_some_and(|c| c >= deadline) {
            return true;
        }
        let until = deadline + SLACK;
        let wall = SystemTime::now() + until.saturating_duration_since(now);
        let ms = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let result = self.write(&format!("until {ms}"));
        let ok = result.is_ok();
        if ok {
            self.covered = Some(until);
            self.coverage.set(self.covered);
        } else if let Err(e) = &result {
            tracing::error!(
                "cannot write {}: {e}; grants and renewals are refused (Unavailable) until it \
                 can be written",
                self.path.display()
            );
        }
        self.coverage.wrote(&result, &self.path);
        ok
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
        self.covered = None;
        self.coverage.set(None);
        match latest_left {
            None => {
                let result = self.write("clean");
                if let Err(e) = &result {
                    tracing::error!("cannot write {}: {e}", self.path.display());
                }
                self.coverage.wrote(&result, &self.path);
            }
            Some(deadline) => {
                self.cover(now, deadline);
            }
        }
    }

    /// Rewrites the one record in place and makes it durable.
    fn write(&mut self, record: &str) -> io::Result<()> {
        let mut line = format!("{record:<width$}", width = RECORD_LEN - 1);
        line.truncate(RECORD_LEN - 1);
        line.push('\n');
        if self.file.is_none() {
            self.file = Some(open(&self.path)?);
        }
        let Some(file) = &self.file else {
            return Err(io::Error::other("the horizon file is not open"));
        };
        let result = file
            .write_all_at(line.as_bytes(), 0)
            .and_then(|()| file.sync_data());
        if result.is_err() {
            // Open it afresh next time (the file may have been replaced or removed).
            self.file = None;
        }
        result
    }
}

/// Opens (creating) the horizon file for rewriting in place, cut to one record.
fn open(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // A longer file is not one of ours (or corrupt either way): cut it so that in-place
    // records are all it holds. A shorter one (an older version's record) is kept as it is
    // until the first write replaces it.
    if file.metadata()?.len() > RECORD_LEN as u64 {
        file.set_len(RECORD_LEN as u64)?;
    }
    Ok(file)
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
        assert_eq!(Previous::Unknown(String::new()).grace(now, d, HOUR), HOUR);
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
        assert!(
            matches!(read_previous(&dir, false), Previous::Unknown(why) if why.contains("missing"))
        );
        let mut w = HorizonWriter::new(&dir);
        let now = Instant::now();
        assert!(w.cover(now, now + Duration::from_secs(5)));
        assert!(w.coverage().covers(now + Duration::from_secs(5)));
        assert!(!w.coverage().covers(now + Duration::from_secs(8)));
        assert_eq!(
            std::fs::metadata(dir.join(HORIZON_FILE)).unwrap().len(),
            RECORD_LEN as u64
        );
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
        assert!(
            matches!(read_previous(&dir, false), Previous::Unknown(why) if why.contains("corrupt"))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_write_that_fails_leaves_the_deadline_uncovered_and_says_why() {
        let dir = std::env::temp_dir().join(format!("lb-horizon-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // Every write to /dev/full fails (ENOSPC), as on a full disk.
        std::os::unix::fs::symlink("/dev/full", dir.join(HORIZON_FILE)).unwrap();
        assert!(
            matches!(read_previous(&dir, false), Previous::Unknown(why) if why.contains("corrupt"))
        );
        let mut w = HorizonWriter::new(&dir);
        let now = Instant::now();
        assert!(!w.cover(now, now + Duration::from_secs(5)));
        let coverage = w.coverage();
        assert!(!coverage.covers(now + Duration::from_secs(1)));
        assert!(
            coverage
                .failing()
                .is_some_and(|why| why.contains("refused"))
        );
        assert_eq!(coverage.failures(), 1);
        // Once the file can be written again, the next deadline is covered and all is well.
        std::fs::remove_file(dir.join(HORIZON_FILE)).unwrap();
        assert!(w.cover(now, now + Duration::from_secs(5)));
        assert!(coverage.covers(now + Duration::from_secs(5)));
        assert_eq!(coverage.failing(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
