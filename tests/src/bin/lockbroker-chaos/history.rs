//! The clients' history logs: one line per event, written by a client with one `write(2)` on
//! a file opened `O_APPEND` (so a SIGKILL loses nothing already done), and read back into
//! leases by the orchestrator.
//!
//! ```text
//! start <mono_ns> <pid>              a client process (incarnation) started
//! grant <key> <fence> <mono_ns>      lock() returned a guard
//! ok <key> <fence> <mono_ns>         clock read, then is_lost() said false: still held then
//! lost <key> <fence> <mono_ns>       clock read, then is_lost() said true
//! stale <key> <fence>                the fencing store rejected the write
//! err <kind> <mono_ns> <message>     a failed call (normal under faults)
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// One line of a history log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Start {
        t: u64,
        pid: u32,
    },
    Grant {
        key: String,
        fence: u64,
        t: u64,
    },
    Ok {
        key: String,
        fence: u64,
        t: u64,
    },
    Lost {
        key: String,
        fence: u64,
        t: u64,
    },
    Stale {
        key: String,
        fence: u64,
    },
    Err {
        kind: String,
        t: u64,
        message: String,
    },
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Start { t, pid } => write!(f, "start {t} {pid}"),
            Entry::Grant { key, fence, t } => write!(f, "grant {key} {fence} {t}"),
            Entry::Ok { key, fence, t } => write!(f, "ok {key} {fence} {t}"),
            Entry::Lost { key, fence, t } => write!(f, "lost {key} {fence} {t}"),
            Entry::Stale { key, fence } => write!(f, "stale {key} {fence}"),
            Entry::Err { kind, t, message } => {
                let one_line = message.replace(['\n', '\r'], " ");
                write!(f, "err {kind} {t} {one_line}")
            }
        }
    }
}

impl Entry {
    /// Parses one line; `None` for a malformed (e.g. torn) line.
    pub fn parse(line: &str) -> Option<Entry> {
        let mut words = line.split(' ');
        let tag = words.next()?;
        let entry = match tag {
            "start" => {
                let t = next_u64(words.next())?;
                let pid = words.next()?.parse().ok()?;
                Entry::Start { t, pid }
            }
            "grant" | "ok" | "lost" => {
                let key = words.next()?.to_owned();
                let fence = next_u64(words.next())?;
                let t = next_u64(words.next())?;
                match tag {
                    "grant" => Entry::Grant { key, fence, t },
                    "ok" => Entry::Ok { key, fence, t },
                    _ => Entry::Lost { key, fence, t },
                }
            }
            "stale" => {
                let key = words.next()?.to_owned();
                let fence = next_u64(words.next())?;
                Entry::Stale { key, fence }
            }
            "err" => {
                let kind = words.next()?.to_owned();
                let t = next_u64(words.next())?;
                let message = words.collect::<Vec<_>>().join(" ");
                return Some(Entry::Err { kind, t, message });
            }
            _ => return None,
        };
        words.next().is_none().then_some(entry)
    }
}

fn next_u64(word: Option<&str>) -> Option<u64> {
    word?.parse().ok()
}

/// Appends entries to a history log, one `write(2)` per line.
pub struct HistoryWriter {
    file: File,
}

impl HistoryWriter {
    pub fn open(path: &Path) -> io::Result<HistoryWriter> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(HistoryWriter { file })
    }

    /// Writes the entry as one line (unbuffered: it is in the file when this returns).
    pub fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let line = format!("{entry}\n");
        self.file.write_all(line.as_bytes())
    }
}

/// One lease as a client saw it: from `grant` to its last `ok`.
#[derive(Debug, Clone)]
pub struct Lease {
    pub client: usize,
    pub key: String,
    pub fence: u64,
    pub grant_ns: u64,
    /// The last `ok`: the client believed it held the key at that time.
    pub last_ok_ns: Option<u64>,
}

/// Everything the clients' logs say.
#[derive(Debug, Default)]
pub struct History {
    pub leases: Vec<Lease>,
    pub stale_writes: u64,
    pub lost_reports: u64,
    /// When each lost lease was reported, by which client (the first 100 000).
    pub lost: Vec<(usize, u64)>,
    /// Failed calls by kind.
    pub errors: BTreeMap<String, u64>,
    /// Errors of kinds not in [`EXPECTED_ERROR_KINDS`] (the first 10 000).
    pub unusual_errors: Vec<UnusualError>,
    /// Lines that did not parse or did not fit (e.g. `ok` for a lease never granted).
    pub malformed: Vec<String>,
}

/// A failed call of a kind not in [`EXPECTED_ERROR_KINDS`].
#[derive(Debug, Clone)]
pub struct UnusualError {
    pub client: usize,
    pub kind: String,
    pub t: u64,
    pub message: String,
}

/// Error kinds any fault explains (timeouts, a broker or mirror that is down or gone).
pub const EXPECTED_ERROR_KINDS: &[&str] = &[
    "timeout",
    "unavailable",
    "disconnected",
    "connect",
    "busy",
    "lost",
];

impl History {
    /// Reads one client's log (all its incarnations) into this history.
    pub fn read_client_log(&mut self, client: usize, path: &Path) -> io::Result<()> {
        let text = std::fs::read_to_string(path)?;
        // The lease being held by the current incarnation, if any.
        let mut current: Option<Lease> = None;
        for (n, line) in text.lines().enumerate() {
            let Some(entry) = Entry::parse(line) else {
                self.malformed
                    .push(format!("client {client} line {}: {line:?}", n + 1));
                continue;
            };
            match entry {
                Entry::Start { .. } => self.leases.extend(current.take()),
                Entry::Grant { key, fence, t } => {
                    self.leases.extend(current.take());
                    current = Some(Lease {
                        client,
                        key,
                        fence,
                        grant_ns: t,
                        last_ok_ns: None,
                    });
                }
                Entry::Ok { key, fence, t } => match current.as_mut() {
                    Some(l) if l.key == key && l.fence == fence => {
                        l.last_ok_ns = Some(t);
                    }
                    _ => self.malformed.push(format!(
                        "client {client} line {}: ok without its grant: {line:?}",
                        n + 1
                    )),
                },
                Entry::Lost { t, .. } => {
                    self.lost_reports += 1;
                    if self.lost.len() < 100_000 {
                        self.lost.push((client, t));
                    }
                }
                Entry::Stale { .. } => self.stale_writes += 1,
                Entry::Err { kind, t, message } => {
                    if !EXPECTED_ERROR_KINDS.contains(&kind.as_str())
                        && self.unusual_errors.len() < 10_000
                    {
                        self.unusual_errors.push(UnusualError {
                            client,
                            kind: kind.clone(),
                            t,
                            message,
                        });
                    }
                    *self.errors.entry(kind).or_default() += 1;
                }
            }
        }
        self.leases.extend(current.take());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let entries = [
            Entry::Start { t: 5, pid: 42 },
            Entry::Grant {
                key: "chaos/1".into(),
                fence: (1 << 40) | 7,
                t: 10,
            },
            Entry::Ok {
                key: "chaos/1".into(),
                fence: 3,
                t: 11,
            },
            Entry::Lost {
                key: "chaos/1".into(),
                fence: 3,
                t: 12,
            },
            Entry::Stale {
                key: "chaos/0".into(),
                fence: 9,
            },
            Entry::Err {
                kind: "timeout".into(),
                t: 13,
                message: "timed out waiting".into(),
            },
        ];
        for e in entries {
            assert_eq!(Entry::parse(&e.to_string()), Some(e));
        }
        assert_eq!(Entry::parse("grant chaos/1 12"), None);
        assert_eq!(Entry::parse("ok chaos/1 12 13 14"), None);
    }
}
