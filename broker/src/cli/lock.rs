//! `lockbroker lock KEY -- CMD`: hold a lock while CMD runs (like flock, `etcdctl lock`,
//! `consul lock`). The child gets LOCKBROKER_FENCE and LOCKBROKER_KEY in its environment.
//! Exits with CMD's status; exits 1 with a message if the lock could not be had in time;
//! if the lease is lost while CMD runs, CMD is terminated and the exit status is 1.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::{Connection, parse_duration};

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
    /// The key to lock.
    key: String,
    /// The command to run while holding the lock.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let (program, rest) = args
        .command
        .split_first()
        .context("no command given after --")?;
    let client = args.conn.connect().await?;
    let request = if args.shared {
        client.read_lock(args.key.clone())
    } else {
        client.lock(args.key.clone())
    }
    .ttl(args.ttl);
    let request = match args.wait {
        None => request.wait_forever(),
        Some(d) if d.is_zero() => request.no_wait(),
        Some(d) => request.wait(d),
    };
    let guard = match request.await {
        Ok(g) => g,
        Err(e) => {
            eprintln!("lockbroker: could not lock {:?}: {e}", args.key);
            client.close().await;
            return Ok(ExitCode::from(1));
        }
    };
    let spawned = tokio::process::Command::new(program)
        .args(rest)
        .env("LOCKBROKER_FENCE", guard.fence().to_string())
        .env("LOCKBROKER_KEY", &args.key)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            // Release with an acknowledgement and close cleanly before exiting: a
            // fire-and-forget release from Drop could be lost with the process, leaving
            // the key blocked until its TTL.
            release(guard, &args.key).await;
            client.close().await;
            return Err(e).with_context(|| format!("cannot run {program:?}"));
        }
    };
    let code = tokio::select! {
        status = child.wait() => {
            let status = status.context("waiting for the command")?;
            exit_code(status)
        }
        lost = guard.lost() => {
            eprintln!("lockbroker: {lost}; terminating {program:?}");
            terminate(&mut child).await;
            ExitCode::from(1)
        }
    };
    release(guard, &args.key).await;
    client.close().await;
    Ok(code)
}

async fn release(guard: lockbroker_sdk::Guard, key: &str) {
    if let Err(e) = guard.unlock().await {
        eprintln!("lockbroker: releasing {key:?}: {e}");
    }
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        (None, Some(sig)) => ExitCode::from(u8::try_from(128 + sig).unwrap_or(1)),
        (None, None) => ExitCode::from(1),
    }
}

async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // std only sends SIGKILL; ask politely first through kill(1), then force.
        let _ = tokio::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await;
        if tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
}
