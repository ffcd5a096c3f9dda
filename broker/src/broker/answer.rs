//! Answers to clients: where `Granted` and error frames (built by `core::serve`) get their
//! lease secret and rewritten key (each final answer also drops the request's rewrite note),
//! and `dispatch`, which sends the answers table effects carry to the sessions they address.

use std::sync::Arc;
use std::time::Instant;

use lockbroker_proto::{ErrorCode, Frame};

use super::metrics::Metrics;
use super::session::SessionHandle;
use super::{Broker, Route, confirm};
use crate::table::serve::{self, Answer};
use crate::table::{AcquireRequest, Effect, Grant, ReqId, SessionId, TableError};

impl Broker {
    /// Answers request `req` of session `to` with granted lease `g`: its secret, bound to the
    /// session's principal and the mode, its fence block, and the key it got when a policy
    /// rewrote it. The only place a `Granted` frame is built.
    pub fn answer_granted(&self, to: &SessionHandle, req: ReqId, g: &Grant) {
        if let Some(m) = &self.metrics
            && let Some(q) = to.take_queued(req)
        {
            Metrics::observe(&m.acquire_wait, q.arrived.elapsed());
            if let Some(handed) = q.handed {
                Metrics::observe(&m.handoff, handed.elapsed());
            }
        }
        let secret = self
            .identity
            .lease_secret(&g.key, g.fence, &to.principal, g.mode);
        to.outbox.push(&serve::granted(
            req,
            g.fence,
            g.ttl,
            to.take_rewrite(req),
            secret,
            g.fence_block,
        ));
    }
}

impl SessionHandle {
    /// Answers request `req` (0: the session as a whole) with an error.
    pub fn answer_error(&self, req: ReqId, code: ErrorCode, message: impl Into<String>) {
        self.take_rewrite(req);
        self.outbox.push(&Frame::error(req, code, message));
    }

    /// Answers request `req` with a table error.
    pub fn answer_table_error(&self, req: ReqId, e: &TableError) {
        self.take_rewrite(req);
        self.outbox.push(&serve::error_frame(req, e));
    }

    /// Answers request `req` with any other frame (`Ok`, `Extended`, `LockInfo`, ...).
    pub fn answer(&self, frame: &Frame) {
        self.outbox.push(frame);
    }
}

impl Broker {
    /// Delivers grant `grant` of request `req` of `session`: answered now, or — when the
    /// grant gate holds it — once the gate confirms it. `retry` is the request itself when it
    /// may still wait, so a grant the gate refuses as busy elsewhere can be tried again.
    pub fn deliver_grant(
        self: &Arc<Self>,
        session: SessionId,
        req: ReqId,
        grant: Grant,
        retry: Option<AcquireRequest>,
    ) {
        if let Some((code, message)) = self.grant_refusal(&grant) {
            self.release_lease(session, &grant);
            if let Some(h) = self.session_handle(session) {
                h.answer_error(req, code, message);
            }
            return;
        }
        if let Some(pending) = self.gate.get().and_then(|g| g.hold(&grant)) {
            confirm::spawn(self.clone(), session, req, grant, pending, retry);
            return;
        }
        match self.session_handle(session) {
            Some(h) => self.answer_granted(&h, req, &grant),
            // The session closed between the grant and now: give the lease back.
            None => self.release_lease(session, &grant),
        }
    }

    /// Delivers the grants of a multi-key request (all its keys, in order) as one `GrantedAll`,
    /// or gives every lease back if one key's shard cannot be vouched for now (cluster mode)
    /// or the session is gone. A grant gate that holds multi-key grants (replication) holds
    /// the answer until it confirmed every key; one it does not confirm gives every lease back.
    pub fn deliver_grants(self: &Arc<Self>, session: SessionId, req: ReqId, grants: Vec<Grant>) {
        let refusal = grants.iter().find_map(|g| self.grant_refusal(g));
        let held: Vec<_> = match (&refusal, self.gate.get()) {
            (None, Some(gate)) => grants.iter().filter_map(|g| gate.hold(g)).collect(),
            _ => Vec::new(),
        };
        if !held.is_empty() {
            let broker = self.clone();
            tokio::spawn(async move {
                let mut refusal = None;
                for pending in held {
                    match pending.await {
                        super::Confirmation::Ok => {}
                        super::Confirmation::Moved(_) => {
                            refusal.get_or_insert((ErrorCode::Moved, String::new()));
                        }
                        super::Confirmation::Conflict(why) | super::Confirmation::Failed(why) => {
                            refusal.get_or_insert((ErrorCode::Unavailable, why));
                        }
                    }
                }
                broker.answer_grants(session, req, grants, refusal);
            });
            return;
        }
        self.answer_grants(session, req, grants, refusal);
    }

    /// Answers a multi-key request with its grants, or — refused, or the session gone — gives
    /// every lease back.
    fn answer_grants(
        self: &Arc<Self>,
        session: SessionId,
        req: ReqId,
        grants: Vec<Grant>,
        refusal: Option<(ErrorCode, String)>,
    ) {
        let handle = self.session_handle(session);
        match (handle, refusal) {
            (Some(h), None) => {
                h.outbox.push(&serve::granted_all(req, &grants, |g| {
                    self.identity
                        .lease_secret(&g.key, g.fence, &h.principal, g.mode)
                }));
            }
            (handle, refusal) => {
                for g in &grants {
                    self.release_lease(session, g);
                }
                if let (Some(h), Some((code, message))) = (handle, refusal) {
                    h.answer_error(req, code, message);
                }
            }
        }
    }

    /// Why `grant` may not leave now: the lease horizon file does not cover its deadline (a
    /// write failed: a crash now would restart without waiting for it), or — cluster mode —
    /// this broker cannot vouch for the key's shard right now (moved, unowned, or in its
    /// takeover grace). `None` otherwise.
    fn grant_refusal(&self, grant: &Grant) -> Option<(ErrorCode, String)> {
        if let Some(why) = self.horizon_refusal(grant.deadline) {
            return Some((ErrorCode::Unavailable, why));
        }
        match self.router.get()?.route(&grant.key) {
            Route::Local {
                grace_until: Some(_),
            } => Some((
                ErrorCode::Unavailable,
                "the key's shard is in its takeover grace; retry".to_string(),
            )),
            route => route.refusal(),
        }
    }

    /// Why a lease ending at `deadline` may not be answered: the horizon file does not cover
    /// it. `None` when it does.
    pub(super) fn horizon_refusal(&self, deadline: Instant) -> Option<String> {
        if self.horizon.covers(deadline) {
            return None;
        }
        Some(
            self.horizon.failing().unwrap_or_else(|| {
                "the lease horizon does not cover this lease; retry".to_string()
            }),
        )
    }

    /// Gives a lease back (its holder is gone or its grant was refused).
    pub(super) fn release_lease(self: &Arc<Self>, session: SessionId, grant: &Grant) {
        self.with_table(|t, now, out| {
            let _ = t.release(now, session, &grant.key, grant.fence, out);
        });
    }

    /// Routes effects to the sessions they address (`core::serve` says what each answers).
    /// `now` is when the table produced them (the start of a handoff).
    pub(super) fn dispatch(self: &Arc<Self>, effects: &mut Vec<Effect>, now: Instant) {
        let metrics = self.metrics.as_deref();
        for effect in effects.drain(..) {
            if let Some(m) = metrics {
                m.effect(&effect);
            }
            match Answer::from(effect) {
                Answer::Grant {
                    session,
                    req,
                    grant,
                    wait,
                    owner,
                } => {
                    if metrics.is_some()
                        && let Some(h) = self.sessions.get(&session)
                    {
                        h.note_handed(req, now);
                    }
                    // With a grant gate, a waiter whose grant the gate refuses (held in Redis
                    // by someone else) keeps waiting, as an immediate acquire does.
                    let retry = self.has_gate().then(|| AcquireRequest {
                        session,
                        req,
                        key: grant.key.clone(),
                        mode: grant.mode,
                        ttl: grant.ttl,
                        wait,
                        owner,
                        ticket: 0,
                        fence_block: grant.fence_block,
                    });
                    self.deliver_grant(session, req, grant, retry)
                }
                Answer::Grants {
                    session,
                    req,
                    grants,
                } => self.deliver_grants(session, req, grants),
                Answer::AcquireFailed {
                    session,
                    req,
                    error,
                } => {
                    if let Some(h) = self.sessions.get(&session) {
                        if let Some(m) = metrics {
                            h.take_queued(req);
                            m.table_error(&error);
                        }
                        h.answer_table_error(req, &error);
                    }
                }
                Answer::Frame { session, frame } => {
                    if let Some(h) = self.sessions.get(&session) {
                        h.answer(&frame);
                    }
                }
                // A lease ran out while its holder is still connected: tell it now rather
                // than at its next renewal.
                Answer::Expired {
                    session,
                    key,
                    fence,
                } => {
                    if let Some(h) = self.sessions.get(&session) {
                        h.answer(&serve::lease_expired_frame(key, fence));
                    }
                }
                // Other lock events were shown to the gate (if any) under the table lock.
                Answer::Event(_) => {}
            }
        }
    }
}
