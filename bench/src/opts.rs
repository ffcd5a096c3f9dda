//! The options of one run (what `main.rs` parses from the command line).

use std::time::Duration;

/// Run options.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Short run (smoke test): fewer rounds, shorter windows, 200k locks for memory.
    pub quick: bool,
    /// Locks held for the memory figure.
    pub mem_locks: usize,
    /// Length of one sequential measurement window (several rounds alternate the systems).
    pub seq_window: Duration,
    pub seq_rounds: usize,
    /// Length of one throughput window.
    pub tp_window: Duration,
    /// Length of one contention window.
    pub contention_window: Duration,
    /// Expiry rounds.
    pub expiry_rounds: usize,
    /// Table cycles for the in-process figure.
    pub table_cycles: usize,
    /// Run only the scenarios whose name contains this.
    pub only: Option<String>,
}

impl Opts {
    /// The figures of a `--quick` run or of a full one.
    pub fn new(quick: bool, mem_locks: Option<usize>, only: Option<String>) -> Opts {
        if quick {
            Opts {
                quick,
                mem_locks: mem_locks.unwrap_or(200_000),
                seq_window: Duration::from_millis(400),
                seq_rounds: 2,
                tp_window: Duration::from_millis(700),
                contention_window: Duration::from_secs(2),
                expiry_rounds: 10,
                table_cycles: 500_000,
                only,
            }
        } else {
            Opts {
                quick,
                mem_locks: mem_locks.unwrap_or(1_000_000),
                seq_window: Duration::from_secs(1),
                seq_rounds: 5,
                tp_window: Duration::from_secs(2),
                contention_window: Duration::from_secs(5),
                expiry_rounds: 40,
                table_cycles: 3_000_000,
                only,
            }
        }
    }

    pub fn runs(&self, name: &str) -> bool {
        self.only.as_deref().is_none_or(|o| name.contains(o))
    }
}
