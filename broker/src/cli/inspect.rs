//! `lockbroker inspect KEY`: prints holders (session, fence, mode, remaining TTL), waiters and
//! lock-delay of a key. A key with more holders than one answer carries lists the oldest ones,
//! then `(showing N of M holders)`.

use std::process::ExitCode;

use clap::Args;

use super::Connection;
use super::escape::shown;

#[derive(Args, Debug)]
pub struct InspectArgs {
    #[command(flatten)]
    conn: Connection,
    /// The key to inspect.
    key: String,
}

pub async fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let client = args.conn.connect().await?;
    let info = client.inspect(args.key.clone()).await?;
    println!("key: {}", shown(&String::from_utf8_lossy(&info.key)));
    if !info.is_locked() {
        println!("state: unlocked");
    } else {
        println!("state: locked");
        for h in &info.holders {
            println!(
                "holder: session={} fence={} mode={:?} remaining={}ms{}{}",
                h.session,
                h.fence,
                h.mode,
                h.remaining.as_millis(),
                h.owner
                    .as_deref()
                    .map(|o| format!(" owner={}", shown(o)))
                    .unwrap_or_default(),
                if h.cached { " cached" } else { "" }
            );
        }
        if info.is_truncated() {
            println!(
                "(showing {} of {} holders)",
                info.holders.len(),
                info.holders_total
            );
        }
    }
    println!("waiters: {}", info.waiters);
    if !info.blocked_for.is_zero() {
        println!("blocked-by-lock-delay: {}ms", info.blocked_for.as_millis());
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}
