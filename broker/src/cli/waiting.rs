//! What `lockbroker lock` shows on a terminal while it waits: who holds the key (owner label,
//! or session and principal-less fence), how long their lease has left, and this request's
//! place in the queue — one status line, redrawn every second from `Inspect` on the same
//! session (so the broker can tell the queue position), cleared when the wait ends. Also the
//! default owner label of `lock`: `HOSTNAME:PID`.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use lockbroker_sdk::{Client, LockInfo};

use super::escape::shown;

/// How often the status line is refreshed.
const REFRESH: Duration = Duration::from_secs(1);

/// The status line for `info`, or `None` when the key is not held (the grant is on its way).
pub(crate) fn status_line(key: &str, info: &LockInfo) -> Option<String> {
    let h = info.holders.first()?;
    let who = match &h.owner {
        Some(label) => shown(label).into_owned(),
        None => format!("session {}", h.session),
    };
    let others = match info.holders_total {
        0 | 1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    let place = match info.queue_position {
        Some(p) => format!("you are #{p} of {} waiting", info.waiters),
        None => format!("{} waiting", info.waiters),
    };
    Some(format!(
        "waiting for \"{}\": held by {who}{others} (fence {}, {:.1}s left); {place}",
        shown(key),
        h.fence,
        h.remaining.as_secs_f64()
    ))
}

/// Redraws the status line on stderr until dropped (aborted by the caller once the wait
/// ends). Does nothing unless stderr is a terminal.
pub(crate) async fn show(client: Client, key: String) {
    if !std::io::stderr().is_terminal() {
        return std::future::pending().await;
    }
    // Give an immediate grant the chance to arrive first: no line for a free key.
    tokio::time::sleep(Duration::from_millis(200)).await;
    loop {
        if let Ok(info) = client.inspect(key.clone()).await
            && let Some(line) = status_line(&key, &info)
        {
            let mut err = std::io::stderr().lock();
            // \r and "erase to end of line": one line, redrawn in place.
            let _ = write!(err, "\r{line}\x1b[K");
            let _ = err.flush();
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// Erases the status line (when one may have been drawn).
pub(crate) fn clear() {
    if std::io::stderr().is_terminal() {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }
}

/// The default owner label of the CLI: `hostname:pid`.
pub(crate) fn default_owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use lockbroker_sdk::{Holder, Mode};
    use std::time::Instant;

    fn info(owner: Option<&str>, position: Option<u32>) -> LockInfo {
        LockInfo {
            key: Bytes::from_static(b"k"),
            holders: vec![Holder {
                session: 4,
                fence: 77,
                mode: Mode::Exclusive,
                remaining: Duration::from_millis(2500),
                owner: owner.map(str::to_owned),
                cached: false,
            }],
            holders_total: 1,
            waiters: 3,
            blocked_for: Duration::ZERO,
            observed_at: Instant::now(),
            queue_position: position,
        }
    }

    #[test]
    fn the_line_names_the_holder_and_the_place_in_the_queue() {
        assert_eq!(
            status_line("k", &info(Some("web-1:4711"), Some(2))).as_deref(),
            Some(
                "waiting for \"k\": held by web-1:4711 (fence 77, 2.5s left); you are #2 of 3 waiting"
            )
        );
        assert_eq!(
            status_line("k", &info(None, None)).as_deref(),
            Some("waiting for \"k\": held by session 4 (fence 77, 2.5s left); 3 waiting")
        );
        let mut free = info(None, None);
        free.holders.clear();
        free.holders_total = 0;
        assert_eq!(status_line("k", &free), None);
    }

    #[test]
    fn the_default_owner_is_host_and_pid() {
        let owner = default_owner();
        assert!(
            owner.ends_with(&format!(":{}", std::process::id())),
            "{owner}"
        );
        assert!(owner.len() > 2 + std::process::id().to_string().len());
    }
}
