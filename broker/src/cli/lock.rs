//! `lockbroker lock KEY... -- CMD`: hold a lock (several keys: all at once, or none) while CMD runs (like flock, `etcdctl lock`,
//! `consul lock`), supervising CMD. The child gets LOCKBROKER_FENCE and LOCKBROKER_KEY in its
//! environment. Exits with CMD's status (128 + n if signal n ended it); exits 1 with a message
//! if the lock could not be had in time.
//!
//! Signals: SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to `lock` are forwarded to CMD's process
//! group (CMD runs in one of its own); `lock` then waits for CMD, releases the lease with an
//! acknowledgement and exits with CMD's status, so the key is free at once. One received
//! before CMD started (while connecting or waiting for the lock) gives up without running CMD
//! and exits 128 + n. If `lock` is SIGKILLed, CMD is killed too (Linux). If the lease is lost
//! while CMD runs, CMD's group gets SIGTERM, then SIGKILL after `--kill-grace`, and `lock`
//! exits 1. See [`super::supervise`]. While it waits on a terminal, a status line shows who
//! holds the key and the request's place in the queue ([`super::waiting`]).

use std::process::ExitCode;
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use clap::Args;
use lockbroker_sdk::Guard;

use super::supervise::{self, Signals, Supervised};
use super::{Connection, parse_duration, waiting};

#[derive(Args, Debug)]
pub struct LockArgs {
    #[command(flatten)]
    conn: Connection,
    /// Lease TTL; renewed while CMD runs, so it only bounds how long a crash blocks others.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    ttl: Duration,
    /// How long to wait for the lock (0 = fail at once if held) [default: forever].
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    /// Take a shared (read) lock instead of an exclusive one.
    #[arg(long)]
    shared: bool,
    /// The owner label the lease is shown with (inspect, `lockbroker locks`, the status
    /// page). [default: HOSTNAME:PID]
    #[arg(long)]
    owner: Option<String>,
    /// If the lease is lost, how long CMD's process group has between SIGTERM and SIGKILL.
    /// The guard reports the loss this long (plus 250 ms and 1 % of the TTL) before the lease's
    /// deadline, so CMD is gone before the broker can grant the key to another; at most
    /// half the TTL. [default: 2s, or less when half the TTL leaves less]
    #[arg(long, value_parser = parse_duration)]
    kill_grace: Option<Duration>,
    /// The key to lock; several keys are locked all at once or not at all (exclusive only;
    /// in cluster mode they must share a `{tag}`).
    #[arg(required = true, num_args = 1..)]
    keys: Vec<String>,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Time allowed, beyond `--kill-grace`, between the guard saying `lost` and CMD's group being
/// gone (signal delivery, reaping).
const STOP_SLACK: Duration = Duration::from_millis(250);

/// `--kill-grace` when not given (shortened for short TTLs).
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(2);

/// How CMD's run ended.
enum Outcome {
    Exited(std::process::ExitStatus),
    Lost,
}

pub async fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after --")?;
    // Before anything else: from here on a termination signal never just kills `lock`
    // (which would leave CMD running and the lease held until its TTL).
    let mut signals = Signals::install().context("installing signal handlers")?;
    // The guard reports the lease lost this long before its local deadline, so CMD's group is
    // stopped (SIGTERM, then SIGKILL after --kill-grace) before the broker can grant the key
    // to anyone else.
    let kill_grace = match args.kill_grace {
        Some(g) if g + STOP_SLACK > args.ttl / 2 => anyhow::bail!(
            "--kill-grace {} is too long for --ttl {}: CMD must be stopped within half the TTL \
             (grace + {} ms <= TTL / 2)",
            humantime::format_duration(g),
            humantime::format_duration(args.ttl),
            STOP_SLACK.as_millis()
        ),
        Some(g) => g,
        None => DEFAULT_KILL_GRACE.min((args.ttl / 2).saturating_sub(STOP_SLACK)),
    };
    let margin = kill_grace + STOP_SLACK;
    let builder = args.conn.builder()?.lease_margin(margin);
    let client = tokio::select! {
        client = builder.connect() => client?,
        sig = signals.recv() => return Ok(gave_up(sig, "connecting")),
    };
    let key = args.keys.join(",");
    let owner = args.owner.clone().unwrap_or_else(waiting::default_owner);
    if args.shared && args.keys.len() > 1 {
        anyhow::bail!("--shared takes one key: several keys are locked exclusively");
    }
    let request = async {
        if let [one] = args.keys.as_slice() {
            let request = if args.shared {
                client.read_lock(one.clone())
            } else {
                client.lock(one.clone())
            }
            .ttl(args.ttl)
            .owner(owner);
            let request = match args.wait {
                None => request.wait_forever(),
                Some(d) if d.is_zero() => request.no_wait(),
                Some(d) => request.wait(d),
            };
            return request.await.map(|g| vec![g]);
        }
        let request = client
            .lock_all(args.keys.clone())
            .ttl(args.ttl)
            .owner(owner);
        let request = match args.wait {
            None => request.wait_forever(),
            Some(d) if d.is_zero() => request.no_wait(),
            Some(d) => request.wait(d),
        };
        request.await
    };
    // On a terminal, while it waits: who holds the (first) key and where this request stands.
    let status = tokio::spawn(waiting::show(client.clone(), args.keys[0].clone()));
    let acquired = tokio::select! {
        acquired = request => acquired,
        sig = signals.recv() => {
            status.abort();
            waiting::clear();
            // Dropping the request gives up the wait; closing releases anything the broker
            // granted in the meantime.
            client.close().await;
            return Ok(gave_up(sig, &format!("waiting for {key:?}")));
        }
    };
    status.abort();
    waiting::clear();
    let guards = match acquired {
        Ok(g) => g,
        Err(e) => {
            eprintln!("lockbroker: could not lock {key:?}: {e}");
            client.close().await;
            return Ok(ExitCode::from(1));
        }
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .env("LOCKBROKER_FENCE", fences(&guards))
        .env("LOCKBROKER_KEY", &key);
    let mut child = match Supervised::spawn(cmd) {
        Ok(child) => child,
        Err(e) => {
            // Release with an acknowledgement and close cleanly before exiting: a
            // fire-and-forget release from Drop could be lost with the process, leaving
            // the key blocked until its TTL.
            release(guards, &key).await;
            client.close().await;
            return Err(e).with_context(|| format!("cannot run {program:?}"));
        }
    };
    let outcome = loop {
        tokio::select! {
            status = child.wait() => match status {
                Ok(status) => break Outcome::Exited(status),
                Err(e) => {
                    // Cannot tell whether CMD still runs: stop its group before releasing.
                    eprintln!("lockbroker: waiting for {program:?}: {e}; stopping it");
                    child.stop(kill_grace).await;
                    drop(child);
                    release(guards, &key).await;
                    client.close().await;
                    return Ok(ExitCode::from(1));
                }
            },
            sig = signals.recv() => child.signal_group(sig),
            lost = first_lost(&guards) => {
                eprintln!(
                    "lockbroker: {lost}; stopping {program:?} (SIGTERM, then SIGKILL after {})",
                    humantime::format_duration(kill_grace)
                );
                child.stop(kill_grace).await;
                break Outcome::Lost;
            }
        }
    };
    drop(child);
    let code = match outcome {
        Outcome::Exited(status) => {
            release(guards, &key).await;
            exit_code(status)
        }
        Outcome::Lost => {
            // Nothing to release with an acknowledgement: dropping the guard sends a
            // best-effort release, and closing the client ends its session at the broker.
            drop(guards);
            ExitCode::from(1)
        }
    };
    client.close().await;
    Ok(code)
}

/// A signal arrived before CMD started: exit as if it had ended `lock`, without running CMD.
fn gave_up(sig: libc::c_int, while_: &str) -> ExitCode {
    eprintln!(
        "lockbroker: {} while {while_}; not running the command",
        supervise::name(sig)
    );
    ExitCode::from(supervise::signal_exit_code(sig))
}

/// Releases every lease, each with an acknowledgement.
async fn release(guards: Vec<Guard>, key: &str) {
    for guard in guards {
        if let Err(e) = guard.unlock().await {
            eprintln!("lockbroker: releasing {key:?}: {e}");
        }
    }
}

/// The fencing tokens for CMD's environment: one per key, comma-separated in key order.
fn fences(guards: &[Guard]) -> String {
    guards
        .iter()
        .map(|g| g.fence().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves when the first of `guards` is lost.
async fn first_lost(guards: &[Guard]) -> lockbroker_sdk::Error {
    let mut lost: Vec<_> = guards.iter().map(|g| Box::pin(g.lost())).collect();
    std::future::poll_fn(|cx| {
        for l in &mut lost {
            if let std::task::Poll::Ready(e) = l.as_mut().poll(cx) {
                return std::task::Poll::Ready(e);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(supervise::signal_exit_code(sig)),
        (None, None) => ExitCode::from(1),
    }
}
