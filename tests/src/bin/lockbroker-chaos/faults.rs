//! The fault log: every fault the nemesis injected (and every broker restart between phases),
//! with its CLOCK_MONOTONIC start and end, so violations can name the faults around them.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::Path;

/// The kinds of faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a client; respawned shortly after.
    KillClient,
    /// SIGSTOP a client for 0.5–3× TTL, then SIGCONT.
    PauseClient,
    /// SIGSTOP a broker for 1.5–2× TTL (in a cluster: 1.25–2× its ownership lease, so its
    /// shards move meanwhile), then SIGCONT.
    PauseBroker,
    /// SIGKILL a broker, restart it (same port, data dir and config): at once alone, after
    /// 1.5–3× the ownership lease in a cluster (its shards fail over meanwhile).
    KillBroker,
    /// Cluster only: SIGTERM a broker (it leaves, handing its shards over), start it again
    /// (it joins) 1–2.5× the ownership lease later.
    LeaveBroker,
    /// Stall the broker↔Redis proxy for 1–3× TTL (sync phase only).
    StallRedis,
    /// Not a fault: the graceful restart of the broker with the next phase's config.
    PhaseSwitch,
}

impl FaultKind {
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillClient => "kill-client",
            FaultKind::PauseClient => "pause-client",
            FaultKind::PauseBroker => "pause-broker",
            FaultKind::KillBroker => "kill-broker",
            FaultKind::LeaveBroker => "leave-broker",
            FaultKind::StallRedis => "stall-redis",
            FaultKind::PhaseSwitch => "phase-switch",
        }
    }
}

/// One injected fault.
#[derive(Clone, Debug)]
pub struct FaultEvent {
    pub kind: FaultKind,
    /// e.g. "client 3", "broker" or "broker 1".
    pub target: String,
    pub start_ns: u64,
    /// When it was undone (resumed, respawned, restarted); `None` while active.
    pub end_ns: Option<u64>,
}

impl fmt::Display for FaultEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} at {}",
            self.kind.name(),
            self.target,
            self.start_ns
        )?;
        if let Some(end) = self.end_ns {
            write!(
                f,
                " until {end} ({} ms)",
                end.saturating_sub(self.start_ns) / 1_000_000
            )?;
        }
        Ok(())
    }
}

/// Every fault of the run, in order.
#[derive(Default)]
pub struct FaultLog {
    events: Vec<FaultEvent>,
}

impl FaultLog {
    /// Records a fault starting now; returns its index for [`FaultLog::end`].
    pub fn start(&mut self, kind: FaultKind, target: String, now_ns: u64) -> usize {
        self.events.push(FaultEvent {
            kind,
            target,
            start_ns: now_ns,
            end_ns: None,
        });
        self.events.len() - 1
    }

    /// Marks fault `index` undone.
    pub fn end(&mut self, index: usize, now_ns: u64) {
        if let Some(e) = self.events.get_mut(index) {
            e.end_ns = Some(now_ns);
        }
    }

    /// Every fault, in the order injected.
    pub fn events(&self) -> &[FaultEvent] {
        &self.events
    }

    /// Faults injected, by kind (phase switches are not counted).
    pub fn counts(&self) -> BTreeMap<FaultKind, u64> {
        let mut counts = BTreeMap::new();
        for e in &self.events {
            if e.kind != FaultKind::PhaseSwitch {
                *counts.entry(e.kind).or_default() += 1;
            }
        }
        counts
    }

    /// Faults active at some time within `[from_ns, to_ns]` (or ending up to `slack_ns` before).
    pub fn around(&self, from_ns: u64, to_ns: u64, slack_ns: u64) -> Vec<&FaultEvent> {
        self.events
            .iter()
            .filter(|e| {
                let end = e.end_ns.unwrap_or(u64::MAX);
                e.start_ns <= to_ns && end.saturating_add(slack_ns) >= from_ns
            })
            .collect()
    }

    /// Writes the log, one fault per line.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for e in &self.events {
            writeln!(out, "{e}")?;
        }
        out.flush()
    }
}
