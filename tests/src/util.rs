//! Small helpers shared by the end-to-end tests: bounded polling, queue-length checks through
//! `inspect`, running the CLI with a time limit, and finding a process's children.

use std::future::Future;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use lockbroker_sdk::{Client, LockInfo};

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Inspects `key`, panicking on error.
pub async fn inspect(client: &Client, key: &str) -> LockInfo {
    client
        .inspect(key.to_owned())
        .await
        .unwrap_or_else(|e| panic!("inspect {key}: {e}"))
}

/// Waits (bounded) until `key` has exactly `n` queued waiters.
pub async fn wait_for_waiters(client: &Client, key: &str, n: u32) {
    eventually(
        &format!("{n} waiter(s) on {key}"),
        Duration::from_secs(20),
        || async move {
            let info = inspect(client, key).await;
            (info.waiters == n).then_some(())
        },
    )
    .await;
}

/// Waits (bounded) until `key` has at least one holder; returns the inspection.
pub async fn wait_for_holder(client: &Client, key: &str, limit: Duration) -> LockInfo {
    eventually(&format!("a holder on {key}"), limit, || async move {
        let info = inspect(client, key).await;
        info.is_locked().then_some(info)
    })
    .await
}

/// Runs a command to completion with a time limit (killing it on timeout) and returns its
/// output. Panics if it does not finish in time.
pub async fn run_bounded(cmd: Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {desc}: {e}"),
        Err(_) => panic!("{desc} did not finish within {limit:?}"),
    }
}

/// Direct children of process `pid` (Linux: scans /proc).
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// Sends SIGKILL to `pid` with kill(1) (ignoring a process that is already gone).
pub fn sigkill(pid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status();
}
