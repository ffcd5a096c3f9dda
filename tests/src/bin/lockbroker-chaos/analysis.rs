//! Turns what a run recorded (client histories, the fencing store's logs, the fault log, the
//! cluster's crash records) into its [`Summary`]: runs the checks, names the faults around each
//! violation, and lists anomalies that are not violations but deserve a look.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::checks::{self, Violation};
use crate::cluster::Cluster;
use crate::failover;
use crate::faults::FaultLog;
use crate::history::History;
use crate::report::{PhaseSummary, Summary, ViolationReport};
use crate::{Phases, RunArgs};

/// Everything a finished run hands over.
pub struct Record<'a> {
    pub args: &'a RunArgs,
    pub seed: u64,
    pub start_ns: u64,
    /// (name, seconds under the nemesis, first ns its grants may carry) of each phase.
    pub phases: &'a [(&'static str, f64, u64)],
    pub history: &'a History,
    pub fence_logs: &'a BTreeMap<String, Vec<Result<u64, String>>>,
    pub faults: &'a FaultLog,
    pub cluster: &'a Cluster,
    pub work_dir: PathBuf,
}

/// Runs the checks and builds the summary.
pub fn summarize(r: Record<'_>) -> Summary {
    let (args, history) = (r.args, r.history);
    let grants = history.leases.len() as u64;
    let mut violations = checks::exclusion(&history.leases);
    violations.extend(checks::fence_logs(r.fence_logs));
    violations.extend(checks::unique_fences(&history.leases));
    violations.extend(checks::min_grants(grants, args.min_grants));
    Summary {
        seed: r.seed,
        settings: format!(
            "clients={} (caching: {}) keys={} ttl={} ttl_cap={} duration={} phases={:?} start_ns={}",
            args.clients,
            if args.no_caching {
                "none"
            } else {
                "every second"
            },
            args.keys,
            humantime::format_duration(args.ttl),
            ttl_cap(args),
            humantime::format_duration(args.duration),
            args.phases,
            r.start_ns
        ),
        phases: r
            .phases
            .iter()
            .enumerate()
            .map(|(i, &(name, seconds, from))| {
                let to = r.phases.get(i + 1).map_or(u64::MAX, |next| next.2);
                PhaseSummary {
                    name,
                    seconds,
                    grants: history
                        .leases
                        .iter()
                        .filter(|l| (from..to).contains(&l.grant_ns))
                        .count() as u64,
                }
            })
            .collect(),
        grants,
        min_grants: args.min_grants,
        faults: r
            .faults
            .counts()
            .into_iter()
            .map(|(k, n)| (k.name(), n))
            .collect(),
        stale_writes: history.stale_writes,
        lost_reports: history.lost_reports,
        lost_by_live_holders: lost_by_live_holders(history, r.faults, args.ttl),
        client_processes: r.cluster.clients.incarnations(),
        client_errors: history.errors.clone(),
        failovers: failover::times(&history.leases, r.faults),
        anomalies: anomalies(r.cluster, history, r.faults, args.ttl),
        violations: violations
            .into_iter()
            .map(|v| annotate(v, r.faults, args.ttl))
            .collect(),
        work_dir_kept: false,
        work_dir: r.work_dir,
    }
}

/// Findings that are not violations: crashes, errors faults do not obviously explain (with
/// the faults around them), torn log lines.
fn anomalies(
    cluster: &Cluster,
    history: &History,
    faults: &FaultLog,
    ttl: Duration,
) -> Vec<String> {
    let mut out = Vec::new();
    for status in &cluster.unexpected_broker_exits {
        out.push(format!("a broker exited by itself: {status}"));
    }
    for (slot, status) in &cluster.clients.unexpected_exits {
        out.push(format!("client {slot} exited by itself: {status}"));
    }
    // An unusual error right after a fault of that client or of the broker is explained
    // (e.g. a grant that arrived while the client was stopped, refreshed too late: NotOwner).
    let slack = 2 * ttl.as_nanos() as u64;
    let client_target = |c: usize| format!("client {c}");
    let mut explained = 0;
    let mut unexplained = Vec::new();
    for e in &history.unusual_errors {
        let around = faults.around(e.t.saturating_sub(slack), e.t, 0);
        let target = client_target(e.client);
        if around
            .iter()
            .any(|f| f.target == target || !f.target.starts_with("client"))
        {
            explained += 1;
        } else {
            unexplained.push(e);
        }
    }
    if explained > 0 {
        out.push(format!(
            "{explained} client error(s) of unusual kinds, each within 2x TTL after a fault \
             of that client or of the broker"
        ));
    }
    for e in unexplained.iter().take(10) {
        out.push(format!(
            "client {} got {} at {} with no fault of its own or of the broker before: {}",
            e.client, e.kind, e.t, e.message
        ));
    }
    if unexplained.len() > 10 {
        out.push(format!(
            "... and {} more unexplained errors",
            unexplained.len() - 10
        ));
    }
    for m in history.malformed.iter().take(5) {
        out.push(format!("malformed log line: {m}"));
    }
    out
}

/// The brokers' TTL cap as `broker.rs` configures them: the shipped one with replicated
/// shards, the clients' TTL otherwise.
fn ttl_cap(args: &RunArgs) -> String {
    let replicas = matches!(args.phases, Phases::Cluster).then_some(args.replicas);
    if crate::broker::shipped_caps(replicas) {
        "shipped(30s)".into()
    } else {
        humantime::format_duration(args.ttl).to_string()
    }
}

/// Leases reported lost by clients with no fault of their own (pause, kill) in the 2×TTL
/// before: holders that were alive and connected, whose lease a broker fault (or the load)
/// took. With replicated shards and one fault at a time, issue 24 expects none.
fn lost_by_live_holders(history: &History, faults: &FaultLog, ttl: Duration) -> u64 {
    let slack = 2 * ttl.as_nanos() as u64;
    history
        .lost
        .iter()
        .filter(|(client, t)| {
            let target = format!("client {client}");
            !faults
                .around(t.saturating_sub(slack), *t, 0)
                .iter()
                .any(|f| f.target == target)
        })
        .count() as u64
}

/// Names the faults active around a violation (up to 2×TTL before it).
fn annotate(v: Violation, faults: &FaultLog, ttl: Duration) -> ViolationReport {
    let faults_around = match v.window {
        Some((from, to)) => faults
            .around(from, to, 2 * ttl.as_nanos() as u64)
            .into_iter()
            .map(|f| f.to_string())
            .collect(),
        None => Vec::new(),
    };
    ViolationReport {
        check: v.check,
        detail: v.detail,
        faults_around,
    }
}
