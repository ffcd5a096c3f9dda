//! The client processes: this executable's `client` subcommand, one per slot, each appending
//! to its slot's history log across respawns. The pool spawns, kills, pauses and resumes them
//! by their handles.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use crate::process::{die_with_parent, kill_and_reap, signal};

/// What every client is started with.
pub struct ClientSpec {
    pub exe: PathBuf,
    /// Every broker's URL (one, or the members of a cluster).
    pub broker_urls: Vec<String>,
    pub ca: PathBuf,
    /// The fencing store (redis-server itself, not the proxy).
    pub store_url: String,
    pub keys: usize,
    pub ttl: Duration,
    pub seed: u64,
    pub log_dir: PathBuf,
    /// Every second client (odd slots) caches its locks (`--caching`).
    pub caching: bool,
}

/// One client slot.
struct Slot {
    child: Option<Child>,
    /// Processes started in this slot so far.
    incarnations: u64,
    paused: bool,
}

/// State of a slot as the nemesis sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    Running,
    Paused,
    Down,
}

/// All client processes.
pub struct ClientPool {
    spec: ClientSpec,
    slots: Vec<Slot>,
    /// Clients that ended on their own (not killed by us): (slot, status).
    pub unexpected_exits: Vec<(usize, String)>,
}

impl ClientPool {
    /// Starts `n` clients.
    pub fn start(spec: ClientSpec, n: usize) -> anyhow::Result<ClientPool> {
        let mut pool = ClientPool {
            spec,
            slots: (0..n)
                .map(|_| Slot {
                    child: None,
                    incarnations: 0,
                    paused: false,
                })
                .collect(),
            unexpected_exits: Vec::new(),
        };
        for i in 0..n {
            pool.spawn(i)?;
        }
        Ok(pool)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The history log of slot `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.spec.log_dir.join(format!("client-{i}.log"))
    }

    pub fn state(&self, i: usize) -> SlotState {
        match &self.slots[i] {
            Slot { child: None, .. } => SlotState::Down,
            Slot { paused: true, .. } => SlotState::Paused,
            _ => SlotState::Running,
        }
    }

    /// Starts a client process in slot `i` (which must be down).
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = self.log_path(i);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.spec.log_dir.join(format!("client-{i}.stderr")))
            .context("open a client's stderr file")?;
        let slot = &mut self.slots[i];
        let seed = self
            .spec
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add((i as u64) << 20)
            .wrapping_add(slot.incarnations);
        let mut cmd = Command::new(&self.spec.exe);
        cmd.arg("client");
        for url in &self.spec.broker_urls {
            cmd.arg("--broker").arg(url);
        }
        cmd.arg("--ca")
            .arg(&self.spec.ca)
            .arg("--redis")
            .arg(&self.spec.store_url)
            .arg("--keys")
            .arg(self.spec.keys.to_string())
            .arg("--ttl")
            .arg(humantime::format_duration(self.spec.ttl).to_string())
            .arg("--log")
            .arg(&log)
            .arg("--seed")
            .arg(seed.to_string());
        if self.spec.caching && i % 2 == 1 {
            cmd.arg("--cache-locks");
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("cannot start a client process")?;
        slot.child = Some(child);
        slot.paused = false;
        slot.incarnations += 1;
        Ok(())
    }

    /// SIGKILL slot `i` and reap it.
    pub async fn kill(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let Some(mut child) = slot.child.take() {
            kill_and_reap(&mut child).await;
        }
        slot.paused = false;
    }

    /// SIGSTOP slot `i`.
    pub fn pause(&mut self, i: usize) -> bool {
        let slot = &mut self.slots[i];
        let ok = slot
            .child
            .as_ref()
            .is_some_and(|c| signal(c, libc::SIGSTOP));
        slot.paused |= ok;
        ok
    }

    /// SIGCONT slot `i`.
    pub fn resume(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        if let Some(c) = &slot.child {
            signal(c, libc::SIGCONT);
        }
        slot.paused = false;
    }

    /// Respawns clients that ended on their own (a crash: recorded) .
    pub fn respawn_exited(&mut self) -> anyhow::Result<()> {
        for i in 0..self.slots.len() {
            let status = match self.slots[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => status,
                _ => continue,
            };
            self.unexpected_exits.push((i, status.to_string()));
            self.slots[i].child = None;
            self.spawn(i)?;
        }
        Ok(())
    }

    /// Processes started in all slots.
    pub fn incarnations(&self) -> u64 {
        self.slots.iter().map(|s| s.incarnations).sum()
    }

    /// SIGKILLs every client.
    pub async fn kill_all(&mut self) {
        for i in 0..self.slots.len() {
            self.kill(i).await;
        }
    }
}
