//! `Fault`: how a plugin call failed (trap, timeout, memory, garbage, no instance), classified
//! from wasmtime's error and the instance's state, and turned into a deny reason.

use std::fmt;
use std::time::Duration;

use super::state::HostState;

/// A failed plugin call. Every fault denies the request (unless `on_error = "allow"`) and
/// discards the instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The guest trapped (panic, `unreachable`, out-of-bounds access, ...).
    Trap(String),
    /// The call ran past its time budget and was interrupted.
    Timeout(Duration),
    /// The guest tried to grow its memory past the limit (in bytes).
    Memory(usize),
    /// The guest returned a result the host refuses.
    Invalid(String),
    /// No instance could be created.
    Instantiate(String),
}

impl Fault {
    /// Classifies the error of a failed call on an instance whose state is `state`.
    pub fn classify(err: &wasmtime::Error, state: &HostState, budget: Duration) -> Fault {
        if let Some(trap) = err.downcast_ref::<wasmtime::Trap>() {
            if *trap == wasmtime::Trap::Interrupt {
                return Fault::Timeout(budget);
            }
            if state.limiter.hit {
                return Fault::Memory(state.limiter.limit());
            }
            return Fault::Trap(with_stderr(trap.to_string(), state));
        }
        if state.limiter.hit {
            return Fault::Memory(state.limiter.limit());
        }
        Fault::Trap(with_stderr(format!("{}", err.root_cause()), state))
    }

    /// The deny reason for plugin `name`.
    pub fn reason(&self, name: &str) -> String {
        format!("plugin `{name}` failed: {self}")
    }
}

/// Appends the last line the guest wrote to stderr (e.g. a panic message).
fn with_stderr(mut msg: String, state: &HostState) -> String {
    let text = state.stderr.text();
    if let Some(last) = text.lines().rev().find(|l| !l.trim().is_empty()) {
        let mut last = last.trim().to_string();
        if last.len() > 300 {
            let mut cut = 300;
            while !last.is_char_boundary(cut) {
                cut -= 1;
            }
            last.truncate(cut);
            last.push('…');
        }
        msg.push_str(" (stderr: ");
        msg.push_str(&last);
        msg.push(')');
    }
    msg
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Trap(detail) => write!(f, "trapped: {detail}"),
            Fault::Timeout(budget) => write!(f, "exceeded its time budget of {budget:?}"),
            Fault::Memory(limit) => {
                write!(f, "exceeded its memory limit of {} KiB", limit / 1024)
            }
            Fault::Invalid(detail) => write!(f, "returned an invalid result: {detail}"),
            Fault::Instantiate(detail) => write!(f, "could not be instantiated: {detail}"),
        }
    }
}
