//! Table events → the WIT `lock-event` the plugin sees. The table's `Released`, `Expired` and
//! `Extended` events carry no mode, so the mirror task keeps the mode of every live lease by
//! fence (`Modes`), fed by `Acquired` events, the restore and each resync snapshot.

use std::collections::HashMap;
use std::time::Instant;

use crate::broker::wire::millis_until;
use crate::plugins::wit;
use crate::table::{Fence, LockEvent, Mode};

/// Modes of live leases by fence.
#[derive(Default)]
pub struct Modes(HashMap<Fence, Mode>);

impl Modes {
    /// Forgets everything and learns these leases.
    pub fn reset(&mut self, leases: impl IntoIterator<Item = (Fence, Mode)>) {
        self.0.clear();
        self.0.extend(leases);
    }

    pub fn insert(&mut self, fence: Fence, mode: Mode) {
        self.0.insert(fence, mode);
    }
}

impl From<Mode> for wit::LockMode {
    fn from(m: Mode) -> wit::LockMode {
        match m {
            Mode::Exclusive => wit::LockMode::Exclusive,
            Mode::Shared => wit::LockMode::Shared,
            Mode::Semaphore(n) => wit::LockMode::Semaphore(n),
        }
    }
}

impl From<wit::LockMode> for Mode {
    fn from(m: wit::LockMode) -> Mode {
        match m {
            wit::LockMode::Exclusive => Mode::Exclusive,
            wit::LockMode::Shared => Mode::Shared,
            wit::LockMode::Semaphore(n) => Mode::Semaphore(n),
        }
    }
}

/// Converts one event, updating `modes`.
pub fn event(e: &LockEvent, modes: &mut Modes, now: Instant, at: u64) -> wit::LockEvent {
    use wit::LockEventKind as K;
    let (kind, key, session, fence, mode, ttl_ms) = match e {
        LockEvent::Acquired {
            key,
            session,
            fence,
            mode,
            deadline,
        } => {
            modes.insert(*fence, *mode);
            (
                K::Acquired,
                key,
                *session,
                *fence,
                *mode,
                millis_until(*deadline, now),
            )
        }
        LockEvent::Extended {
            key,
            session,
            fence,
            deadline,
        } => {
            let mode = modes.0.get(fence).copied().unwrap_or(Mode::Exclusive);
            (
                K::Extended,
                key,
                *session,
                *fence,
                mode,
                millis_until(*deadline, now),
            )
        }
        LockEvent::Released {
            key,
            session,
            fence,
        } => {
            let mode = modes.0.remove(fence).unwrap_or(Mode::Exclusive);
            (K::Released, key, *session, *fence, mode, 0)
        }
        LockEvent::Expired {
            key,
            session,
            fence,
        } => {
            let mode = modes.0.remove(fence).unwrap_or(Mode::Exclusive);
            (K::Expired, key, *session, *fence, mode, 0)
        }
    };
    wit::LockEvent {
        kind,
        key: key.to_vec(),
        mode: mode.into(),
        owner_session: session,
        fence,
        ttl_ms,
        at_unix_ms: at,
    }
}
