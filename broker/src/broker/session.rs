//! A live session as the rest of the broker sees it: where its frames go, and which of its
//! pending acquires a key policy rewrote (so the grant can tell the client the key it got).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::outbox::Outbox;
use crate::table::ReqId;

/// A live session's outbound side. Answers are built by the methods in `answer.rs`.
#[derive(Default)]
pub struct SessionHandle {
    pub outbox: Outbox,
    /// Who the session authenticated as: lease secrets are bound to it.
    pub principal: String,
    /// Pending acquires whose key a policy rewrote: the grant must tell the client the new key.
    rewritten: Mutex<HashMap<ReqId, Bytes>>,
}

impl SessionHandle {
    /// A handle for a session of `principal`.
    pub fn new(principal: &str) -> SessionHandle {
        SessionHandle {
            principal: principal.to_owned(),
            ..SessionHandle::default()
        }
    }

    /// Remembers that acquire `req` was rewritten to `key`, for its grant.
    pub fn note_rewrite(&self, req: ReqId, key: Bytes) {
        self.rewritten
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req, key);
    }

    /// The rewritten key of `req`, forgetting it (a request is answered once).
    pub(super) fn take_rewrite(&self, req: ReqId) -> Option<Bytes> {
        let mut map = self.rewritten.lock().unwrap_or_else(|e| e.into_inner());
        if map.is_empty() {
            None
        } else {
            map.remove(&req)
        }
    }
}
