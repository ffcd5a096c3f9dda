//! A live session as the rest of the broker sees it: where its frames go, and which of its
//! pending acquires a key policy rewrote (so the grant can tell the client the key it got).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;

use super::outbox::Outbox;
use crate::table::ReqId;

/// A live session's outbound side. Answers are built by the methods in `answer.rs`.
pub struct SessionHandle {
    pub outbox: Outbox,
    /// Who the session authenticated as: lease secrets are bound to it.
    pub principal: String,
    /// What the broker notes about the session's pending requests, under one lock.
    notes: Mutex<Notes>,
    /// Where the session connects from (None: not a network session, e.g. a test's).
    pub peer: Option<SocketAddr>,
    /// When the session opened.
    pub since: SystemTime,
    /// Set when an operator ends the session (`Broker::end_session`): why, for the log.
    ended: Mutex<Option<String>>,
    /// Wakes the session's read loop when `ended` is set.
    end_signal: tokio::sync::Notify,
}

/// Notes on a session's pending requests, by request id.
#[derive(Default)]
struct Notes {
    /// Pending acquires whose key a policy rewrote: the grant must tell the client the new key.
    rewritten: HashMap<ReqId, Bytes>,
    /// Acquires a grant gate refused as busy elsewhere that retry outside the table (the sync
    /// mirror's polling), with whether the client cancelled them.
    polls: HashMap<ReqId, bool>,
    /// Queued acquires (metrics on): when each arrived, and when the table handed it the key.
    queued: HashMap<ReqId, Queued>,
}

/// A queued acquire's timestamps, for the wait-time and handoff histograms.
#[derive(Clone, Copy, Debug)]
pub(super) struct Queued {
    pub(super) arrived: Instant,
    pub(super) handed: Option<Instant>,
}

impl Default for SessionHandle {
    fn default() -> Self {
        SessionHandle {
            outbox: Outbox::default(),
            principal: String::new(),
            notes: Mutex::default(),
            peer: None,
            since: SystemTime::now(),
            ended: Mutex::new(None),
            end_signal: tokio::sync::Notify::new(),
        }
    }
}

impl SessionHandle {
    /// A handle for a session of `principal`.
    pub fn new(principal: &str) -> SessionHandle {
        SessionHandle {
            principal: principal.to_owned(),
            ..SessionHandle::default()
        }
    }

    /// A handle for a session of `principal` connected from `peer`.
    pub fn from_peer(principal: &str, peer: SocketAddr) -> SessionHandle {
        SessionHandle {
            principal: principal.to_owned(),
            peer: Some(peer),
            ..SessionHandle::default()
        }
    }

    /// Acquire `req`, which arrived at `arrived`, was queued (metrics only).
    pub fn note_queued(&self, req: ReqId, arrived: Instant) {
        let queued = Queued {
            arrived,
            handed: None,
        };
        self.notes.lock().queued.insert(req, queued);
    }

    /// The table granted queued acquire `req` at `at` (metrics only).
    pub(super) fn note_handed(&self, req: ReqId, at: Instant) {
        if let Some(q) = self.notes.lock().queued.get_mut(&req) {
            q.handed = Some(at);
        }
    }

    /// Forgets queued acquire `req` (answered), returning its timestamps.
    pub(super) fn take_queued(&self, req: ReqId) -> Option<Queued> {
        let mut notes = self.notes.lock();
        if notes.queued.is_empty() {
            None
        } else {
            notes.queued.remove(&req)
        }
    }

    /// Remembers that acquire `req` was rewritten to `key`, for its grant.
    pub fn note_rewrite(&self, req: ReqId, key: Bytes) {
        self.notes.lock().rewritten.insert(req, key);
    }

    /// Acquires of this session retrying outside the table (polling the sync mirror): they
    /// count toward its limit of pending requests, and their ids stay taken.
    pub fn polls(&self) -> usize {
        self.notes.lock().polls.len()
    }

    /// Whether acquire `req` is retrying outside the table.
    pub fn is_polling(&self, req: ReqId) -> bool {
        self.notes.lock().polls.contains_key(&req)
    }

    /// Marks acquire `req` as retrying outside the table.
    pub(super) fn begin_poll(&self, req: ReqId) {
        self.notes.lock().polls.entry(req).or_insert(false);
    }

    /// Ends the retrying of `req`; true if the client cancelled it meanwhile.
    pub(super) fn end_poll(&self, req: ReqId) -> bool {
        self.notes.lock().polls.remove(&req).unwrap_or(false)
    }

    /// Whether the client cancelled retrying acquire `req`.
    pub(super) fn poll_cancelled(&self, req: ReqId) -> bool {
        self.notes.lock().polls.get(&req).copied().unwrap_or(false)
    }

    /// A `Cancel` for `req`: if it is retrying outside the table, it stops at its next turn
    /// (answered `Cancelled` then). True if it was.
    pub fn cancel_poll(&self, req: ReqId) -> bool {
        match self.notes.lock().polls.get_mut(&req) {
            Some(cancelled) => {
                *cancelled = true;
                true
            }
            None => false,
        }
    }

    /// Asks the session's connection to close (an operator ended it): its read loop stops at
    /// once, whatever it is doing.
    pub(super) fn request_end(&self, why: String) {
        *self.ended.lock() = Some(why);
        self.end_signal.notify_one();
    }

    /// Resolves once an operator ended the session, with why.
    pub async fn end_requested(&self) -> String {
        loop {
            if let Some(why) = self.ended.lock().clone() {
                return why;
            }
            self.end_signal.notified().await;
        }
    }

    /// The rewritten key of `req`, forgetting it (a request is answered once).
    pub(super) fn take_rewrite(&self, req: ReqId) -> Option<Bytes> {
        let mut notes = self.notes.lock();
        if notes.rewritten.is_empty() {
            None
        } else {
            notes.rewritten.remove(&req)
        }
    }
}
