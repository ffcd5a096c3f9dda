//! Broken internal invariants met at run time.
//!
//! A few lookups cannot fail while the table's invariants hold (a pending request's key is live,
//! a held lease is in its key's holder list, a queued acquire's session has a record). Should one
//! fail anyway, the table must neither panic nor hand a client an error it did not cause: the
//! step is skipped, the fault is logged and counted here. The tests' invariant check asserts the
//! count stays zero, so a bug that reaches one of these paths still fails the property tests.

/// Count of internal faults met (should stay 0).
#[derive(Debug, Default)]
pub struct Faults {
    count: u64,
}

impl Faults {
    /// Records that `what` was found inconsistent; the caller skips the step.
    pub fn record(&mut self, what: &'static str) {
        self.count = self.count.saturating_add(1);
        tracing::error!(
            target: "lockbroker::table",
            "internal inconsistency, step skipped: {what}"
        );
    }

    #[cfg(any(test, fuzzing))]
    pub fn count(&self) -> u64 {
        self.count
    }
}
