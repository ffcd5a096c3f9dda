//! Operator commands over the admin API: `locks` (held keys, holders, waiters, and for a key
//! without holders the queued request it waits for), `sessions`, `release --force KEY`
//! (revokes every lease on the key; the holders are told at once), `cancel SESSION REQUEST`
//! (a queued request leaves its queue) and `end-session --force SESSION` (its leases revoked,
//! its connection closed). The broker writes an audit line naming who did each write.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use serde_json::Value;

use super::admin_http::{AdminConnection, query_escape};
use super::escape::shown;

#[derive(Args, Debug)]
pub struct LocksArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// At most this many keys.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

#[derive(Args, Debug)]
pub struct SessionsArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// At most this many sessions.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// Required: this ends someone else's leases (they are told at once, their `lost()` fires).
    #[arg(long)]
    force: bool,
    key: String,
}

#[derive(Args, Debug)]
pub struct CancelArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// The session that queued the request (`lockbroker locks` shows it as next in line).
    session: u64,
    /// The request's id within that session.
    request: u64,
}

#[derive(Args, Debug)]
pub struct EndSessionArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// Required: this ends another client's session (its leases revoked, its guards told).
    #[arg(long)]
    force: bool,
    session: u64,
}

/// The array `field` of `v` (empty when absent).
fn array(v: &Value, field: &str) -> Vec<Value> {
    v.get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn text(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(s)) => shown(s).into_owned(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Pages through `path` (a list endpoint) until `limit` items or the end.
async fn collect(
    admin: &AdminConnection,
    path: &str,
    list: &str,
    limit: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    // Bounded: each page brings at least one item or ends the loop.
    while items.len() < limit {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{path}{sep}limit={}", (limit - items.len()).min(1000));
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", query_escape(c)));
        }
        let page = admin.get(&url).await?;
        let got = array(&page, list);
        if got.is_empty() {
            break;
        }
        items.extend(got);
        match page.get("next").and_then(Value::as_str) {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    items.truncate(limit);
    Ok(items)
}

pub async fn locks(args: LocksArgs) -> anyhow::Result<ExitCode> {
    let path = format!("/api/locks?prefix={}", query_escape(&args.prefix));
    let locks = collect(&args.admin, &path, "locks", args.limit).await?;
    println!(
        "{:<32} {:<14} {:>20} {:>9} {:<16} {:<16} {:>7}",
        "KEY", "MODE", "FENCE", "TTL LEFT", "PRINCIPAL", "OWNER", "WAITERS"
    );
    for l in &locks {
        let key = text(l, "key");
        let waiters = l.get("waiters").and_then(Value::as_u64).unwrap_or(0);
        let holders = array(l, "holders");
        if holders.is_empty() {
            println!(
                "{key:<32} {:<14} {:>20} {:>9} {:<16} {:<16} {waiters:>7}",
                "(none)", "-", "-", "-", "-"
            );
            if let Some(next) = l.get("next_in_line").filter(|n| !n.is_null()) {
                println!(
                    "  next in line: session {} request {} naming {} key(s) \
                     (lockbroker cancel {} {})",
                    text(next, "session"),
                    text(next, "request"),
                    text(next, "keys"),
                    text(next, "session"),
                    text(next, "request"),
                );
            }
        }
        for h in &holders {
            let left = h
                .get("ttl_remaining_ms")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            println!(
                "{key:<32} {:<14} {:>20} {:>8.1}s {:<16} {:<16} {waiters:>7}",
                text(h, "mode"),
                text(h, "fence"),
                left as f64 / 1000.0,
                text(h, "principal"),
                text(h, "owner"),
            );
        }
    }
    if locks.is_empty() {
        println!(
            "(no keys held{})",
            if args.prefix.is_empty() {
                String::new()
            } else {
                format!(" under {:?}", args.prefix)
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn sessions(args: SessionsArgs) -> anyhow::Result<ExitCode> {
    let sessions = collect(&args.admin, "/api/sessions", "sessions", args.limit).await?;
    println!(
        "{:>8} {:<16} {:<24} {:>14} {:>7} {:>8}",
        "SESSION", "PRINCIPAL", "PEER", "CONNECTED", "LEASES", "WAITING"
    );
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for s in &sessions {
        let since = s
            .get("connected_since_ms")
            .and_then(Value::as_u64)
            .unwrap_or(now_ms);
        println!(
            "{:>8} {:<16} {:<24} {:>13.0}s {:>7} {:>8}",
            text(s, "id"),
            text(s, "principal"),
            text(s, "peer"),
            now_ms.saturating_sub(since) as f64 / 1000.0,
            text(s, "leases"),
            text(s, "waiting"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn release(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    if !args.force {
        bail!(
            "`release` ends the leases other clients hold on {:?}: pass --force to do it (their \
             guards are told at once)",
            args.key
        );
    }
    let answer = args
        .admin
        .post("/api/release", &serde_json::json!({ "key": args.key }))
        .await?;
    let revoked = array(&answer, "revoked");
    if revoked.is_empty() {
        println!("{:?} was not held: nothing released", args.key);
        return Ok(ExitCode::from(1));
    }
    for r in &revoked {
        println!(
            "released {:?}: fence {} of session {} ({})",
            args.key,
            text(r, "fence"),
            text(r, "session"),
            text(r, "principal")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    args.admin
        .post(
            "/api/cancel",
            &serde_json::json!({ "session": args.session, "request": args.request }),
        )
        .await?;
    println!(
        "cancelled request {} of session {}",
        args.request, args.session
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn end_session(args: EndSessionArgs) -> anyhow::Result<ExitCode> {
    if !args.force {
        bail!(
            "`end-session` revokes the leases of session {} and closes its connection: pass \
             --force to do it (its guards are told at once)",
            args.session
        );
    }
    let answer = args
        .admin
        .post(
            "/api/end-session",
            &serde_json::json!({ "session": args.session }),
        )
        .await?;
    let revoked = array(&answer, "revoked");
    for r in &revoked {
        println!("revoked {}: fence {}", text(r, "key"), text(r, "fence"));
    }
    println!(
        "ended session {} ({} lease(s) revoked)",
        args.session,
        revoked.len()
    );
    Ok(ExitCode::SUCCESS)
}
