//! The summary of a run: printed for the CI log, and optionally written as `key=value` lines.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// How many violations are described in full.
pub const MAX_VIOLATIONS_SHOWN: usize = 20;

/// One phase of the run.
pub struct PhaseSummary {
    pub name: &'static str,
    pub seconds: f64,
    pub grants: u64,
}

/// A violation with the faults around it.
pub struct ViolationReport {
    pub check: &'static str,
    pub detail: String,
    pub faults_around: Vec<String>,
}

pub struct Summary {
    pub seed: u64,
    pub settings: String,
    pub phases: Vec<PhaseSummary>,
    pub grants: u64,
    pub min_grants: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub stale_writes: u64,
    pub lost_reports: u64,
    /// Of them, by clients with no fault of their own just before (see `analysis.rs`).
    pub lost_by_live_holders: u64,
    pub client_processes: u64,
    pub client_errors: BTreeMap<String, u64>,
    /// Cluster mode: per broker fault kind, the failover times (seconds, sorted) of the faults
    /// that moved shards (see `failover.rs`).
    pub failovers: BTreeMap<&'static str, Vec<f64>>,
    /// Findings that are not violations but deserve a look (crashes, unexpected errors).
    pub anomalies: Vec<String>,
    pub violations: Vec<ViolationReport>,
    pub work_dir: PathBuf,
    pub work_dir_kept: bool,
}

/// The `q` quantile (nearest rank) of sorted `v`; 0 when empty.
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let rank = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    fn faults_line(&self) -> String {
        let total: u64 = self.faults.values().sum();
        let mut s = format!("{total}");
        for (kind, n) in &self.faults {
            let _ = write!(s, " {kind}={n}");
        }
        s
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "lockbroker-chaos summary (seed {})", self.seed);
        let _ = writeln!(s, "  settings: {}", self.settings);
        for p in &self.phases {
            let _ = writeln!(
                s,
                "  phase {}: {:.1} s, {} grants",
                p.name, p.seconds, p.grants
            );
        }
        let _ = writeln!(s, "  grants: {} (min {})", self.grants, self.min_grants);
        let _ = writeln!(s, "  faults injected: {}", self.faults_line());
        let _ = writeln!(
            s,
            "  stale writes rejected by the fencing store: {}",
            self.stale_writes
        );
        let _ = writeln!(
            s,
            "  leases reported lost: {} ({} by holders with no fault of their own)",
            self.lost_reports, self.lost_by_live_holders
        );
        let _ = writeln!(s, "  client processes started: {}", self.client_processes);
        let errors: Vec<String> = self
            .client_errors
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let _ = writeln!(s, "  client call failures: {}", errors.join(" "));
        for (kind, times) in &self.failovers {
            let _ = writeln!(
                s,
                "  failover after {kind}: {} faults moved shards; fault -> first grant on every \
                 moved key p50 {:.2} s, max {:.2} s",
                times.len(),
                percentile(times, 0.5),
                percentile(times, 1.0)
            );
        }
        for a in &self.anomalies {
            let _ = writeln!(s, "  anomaly: {a}");
        }
        let _ = writeln!(s, "  violations: {}", self.violations.len());
        for (i, v) in self
            .violations
            .iter()
            .take(MAX_VIOLATIONS_SHOWN)
            .enumerate()
        {
            let _ = writeln!(s, "    {}. [{}] {}", i + 1, v.check, v.detail);
            for f in &v.faults_around {
                let _ = writeln!(s, "         around: {f}");
            }
        }
        if self.violations.len() > MAX_VIOLATIONS_SHOWN {
            let _ = writeln!(
                s,
                "    ... and {} more",
                self.violations.len() - MAX_VIOLATIONS_SHOWN
            );
        }
        let kept = if self.work_dir_kept { "" } else { " (removed)" };
        let _ = writeln!(s, "  logs: {}{kept}", self.work_dir.display());
        let _ = writeln!(
            s,
            "  result: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }

    /// The summary as `key=value` lines.
    pub fn key_values(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "result={}", if self.passed() { "pass" } else { "fail" });
        let _ = writeln!(s, "seed={}", self.seed);
        let _ = writeln!(s, "settings={}", self.settings);
        let _ = writeln!(s, "grants={}", self.grants);
        let _ = writeln!(s, "min_grants={}", self.min_grants);
        for p in &self.phases {
            let _ = writeln!(s, "phase.{}.seconds={:.1}", p.name, p.seconds);
            let _ = writeln!(s, "phase.{}.grants={}", p.name, p.grants);
        }
        let _ = writeln!(s, "faults={}", self.faults.values().sum::<u64>());
        for (kind, n) in &self.faults {
            let _ = writeln!(s, "faults.{kind}={n}");
        }
        let _ = writeln!(s, "stale_writes_rejected={}", self.stale_writes);
        let _ = writeln!(s, "leases_reported_lost={}", self.lost_reports);
        let _ = writeln!(
            s,
            "leases_lost_by_live_holders={}",
            self.lost_by_live_holders
        );
        let _ = writeln!(s, "client_processes={}", self.client_processes);
        for (kind, n) in &self.client_errors {
            let _ = writeln!(s, "client_errors.{kind}={n}");
        }
        for (kind, times) in &self.failovers {
            let _ = writeln!(s, "failover.{kind}.count={}", times.len());
            let _ = writeln!(s, "failover.{kind}.p50_s={:.3}", percentile(times, 0.5));
            let _ = writeln!(s, "failover.{kind}.max_s={:.3}", percentile(times, 1.0));
        }
        let _ = writeln!(s, "anomalies={}", self.anomalies.len());
        let _ = writeln!(s, "violations={}", self.violations.len());
        for (i, v) in self
            .violations
            .iter()
            .take(MAX_VIOLATIONS_SHOWN)
            .enumerate()
        {
            let _ = writeln!(s, "violation.{}={}: {}", i + 1, v.check, v.detail);
        }
        let _ = writeln!(s, "work_dir={}", self.work_dir.display());
        s
    }

    pub fn write_key_values(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.key_values())
    }
}
