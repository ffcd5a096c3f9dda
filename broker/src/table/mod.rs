//! TEMPORARY compile stand-in for the lock table API; replaced by the real module on merge.
#![allow(unused_variables, dead_code)]
use std::time::{Duration, Instant};
pub type SessionId = u64;
pub type ReqId = u64;
pub type Key = bytes::Bytes;
pub type Fence = u64;
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exclusive,
    Shared,
    Semaphore(u32),
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    No,
    Until(Instant),
    Forever,
}
#[derive(Clone, Debug)]
pub struct AcquireRequest {
    pub session: SessionId,
    pub req: ReqId,
    pub key: Key,
    pub mode: Mode,
    pub ttl: Duration,
    pub wait: Wait,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub key: Key,
    pub fence: Fence,
    pub mode: Mode,
    pub ttl: Duration,
    pub deadline: Instant,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlockOutcome {
    Released,
    Expired,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockEvent {
    Acquired {
        key: Key,
        session: SessionId,
        fence: Fence,
        mode: Mode,
        deadline: Instant,
    },
    Released {
        key: Key,
        session: SessionId,
        fence: Fence,
    },
    Expired {
        key: Key,
        session: SessionId,
        fence: Fence,
    },
    Extended {
        key: Key,
        session: SessionId,
        fence: Fence,
        deadline: Instant,
    },
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Granted {
        session: SessionId,
        req: ReqId,
        grant: Grant,
    },
    AcquireFailed {
        session: SessionId,
        req: ReqId,
        error: TableError,
    },
    Unlocked {
        session: SessionId,
        req: ReqId,
        outcome: UnlockOutcome,
    },
    WaitFailed {
        session: SessionId,
        req: ReqId,
        error: TableError,
    },
    Event(LockEvent),
}
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum TableError {
    #[error("busy")]
    Busy,
    #[error("timeout")]
    Timeout,
    #[error("cancelled")]
    Cancelled,
    #[error("already held")]
    AlreadyHeld,
    #[error("not owner")]
    NotOwner,
    #[error("not locked")]
    NotLocked,
    #[error("limit {0}")]
    LimitExceeded(&'static str),
    #[error("mode {0}")]
    InvalidMode(&'static str),
    #[error("dup")]
    DuplicateRequest,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub session: SessionId,
    pub fence: Fence,
    pub mode: Mode,
    pub deadline: Instant,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub key: Key,
    pub holders: Vec<Holder>,
    pub waiters: usize,
    pub blocked_until: Option<Instant>,
}
#[derive(Clone, Debug)]
pub struct TableConfig {
    pub epoch: u64,
    pub lock_delay: Duration,
    pub max_leases_per_session: usize,
    pub max_waiters_per_session: usize,
}
impl Default for TableConfig {
    fn default() -> Self {
        TableConfig {
            epoch: 0,
            lock_delay: Duration::ZERO,
            max_leases_per_session: 10_000,
            max_waiters_per_session: 10_000,
        }
    }
}
pub struct Table;
impl Table {
    pub fn new(cfg: TableConfig) -> Self {
        Table
    }
    pub fn acquire(
        &mut self,
        now: Instant,
        req: AcquireRequest,
        out: &mut Vec<Effect>,
    ) -> Result<Option<Grant>, TableError> {
        todo!()
    }
    pub fn release(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        out: &mut Vec<Effect>,
    ) -> Result<(), TableError> {
        todo!()
    }
    pub fn extend(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        ttl: Duration,
        out: &mut Vec<Effect>,
    ) -> Result<Instant, TableError> {
        todo!()
    }
    pub fn cancel(
        &mut self,
        now: Instant,
        session: SessionId,
        req: ReqId,
        out: &mut Vec<Effect>,
    ) -> bool {
        todo!()
    }
    pub fn inspect(&self, now: Instant, key: &[u8]) -> Option<LockInfo> {
        todo!()
    }
    pub fn is_locked(&self, key: &[u8]) -> bool {
        todo!()
    }
    pub fn wait_until_unlocked(
        &mut self,
        now: Instant,
        session: SessionId,
        req: ReqId,
        key: Key,
        wait: Wait,
        out: &mut Vec<Effect>,
    ) -> Result<Option<UnlockOutcome>, TableError> {
        todo!()
    }
    pub fn close_session(
        &mut self,
        now: Instant,
        session: SessionId,
        clean: bool,
        out: &mut Vec<Effect>,
    ) {
        todo!()
    }
    pub fn reclaim(
        &mut self,
        now: Instant,
        session: SessionId,
        key: &[u8],
        fence: Fence,
        out: &mut Vec<Effect>,
    ) -> Result<Grant, TableError> {
        todo!()
    }
    pub fn restore(
        &mut self,
        now: Instant,
        key: Key,
        fence: Fence,
        mode: Mode,
        deadline: Instant,
    ) -> Result<(), TableError> {
        todo!()
    }
    pub fn raise_fence_floor(&mut self, fence: Fence) {
        todo!()
    }
    pub fn next_deadline(&self) -> Option<Instant> {
        todo!()
    }
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Effect>) {
        todo!()
    }
    pub fn key_count(&self) -> usize {
        todo!()
    }
    pub fn session_counts(&self, session: SessionId) -> (usize, usize) {
        todo!()
    }
}
