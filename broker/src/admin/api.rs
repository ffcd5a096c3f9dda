//! Health, readiness and the JSON API.
//!
//! * `GET /healthz` — 200 while the process runs.
//! * `GET /readyz` — 200 when serving: start-up (restore) done, not shutting down, in cluster
//!   mode every shard this broker should own owned, its etcd lease valid and no shard of the
//!   cluster unowned for long (`cluster/mod.rs`), with the sync
//!   mirror no resync pending, no restart grace running and the lease horizon writable (else
//!   grants are refused); else 503. Both answer `{"ok": bool, "reason": "..."}`.
//! * `GET /api/locks?prefix=&limit=&cursor=` — live keys in key order with their holders
//!   (fence as a decimal string, mode, remaining TTL in ms, principal, owner label) and queue
//!   lengths; `next` is
//!   the cursor of the following page (null on the last).
//! * `GET /api/sessions?limit=&cursor=` — live sessions by id.
//! * `POST /api/release` `{"key": "..."}` — ends every lease on the key (holders told at
//!   once), logged as an audit line naming who asked (always a token holder: `auth.rs`).

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{Admin, Who};
use crate::broker::{HolderView, LockView, Revoked, SessionView};
use crate::table::Mode;

/// Largest page size (and the default).
const MAX_LIMIT: usize = 1000;
const DEFAULT_LIMIT: usize = 100;

#[derive(Serialize)]
struct Health {
    ok: bool,
    reason: String,
}

fn health(ok: bool, reason: impl Into<String>) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            ok,
            reason: reason.into(),
        }),
    )
        .into_response()
}

pub(super) async fn healthz() -> Response {
    health(true, "alive")
}

pub(super) async fn readyz(State(admin): State<Arc<Admin>>) -> Response {
    match not_ready(&admin) {
        Some(why) => health(false, why),
        None => health(true, "serving"),
    }
}

/// Why the broker is not ready, if it is not.
fn not_ready(admin: &Admin) -> Option<String> {
    if !admin.is_serving() {
        return Some("starting: restore not done".into());
    }
    if *admin.broker.shutdown_signal().borrow() {
        return Some("shutting down".into());
    }
    if let Some(grace) = admin.broker.restart_grace() {
        return Some(grace);
    }
    if let Some(why) = admin.broker.horizon.failing() {
        return Some(why);
    }
    if let Some(why) = admin.cluster.as_ref().and_then(|c| c.unready()) {
        return Some(why);
    }
    if let Some(mirror) = admin.mirror.as_ref().filter(|m| m.is_sync())
        && !mirror.healthy()
    {
        return Some("sync mirror: a resync is pending (Redis or the plugin failing)".into());
    }
    None
}

#[derive(Deserialize)]
pub(super) struct Page {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn limit(l: Option<usize>) -> usize {
    l.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT)
}

#[derive(Serialize)]
struct Holder {
    session: u64,
    /// A decimal string: fences pass 2^53, beyond what a JSON number keeps exactly in
    /// JavaScript.
    fence: String,
    mode: String,
    ttl_remaining_ms: u64,
    principal: Option<String>,
    /// Owner labels are not carried by acquires yet: always null.
    owner: Option<String>,
}

#[derive(Serialize)]
struct Lock {
    key: String,
    /// True when the key is not UTF-8 (`key` then shows it lossily).
    binary: bool,
    holders: Vec<Holder>,
    waiters: usize,
    watchers: usize,
}

#[derive(Serialize)]
struct Locks {
    locks: Vec<Lock>,
    next: Option<String>,
}

fn mode_name(m: Mode) -> String {
    match m {
        Mode::Exclusive => "exclusive".into(),
        Mode::Shared => "shared".into(),
        Mode::Semaphore(n) => format!("semaphore({n})"),
    }
}

fn text(key: &[u8]) -> (String, bool) {
    match std::str::from_utf8(key) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (String::from_utf8_lossy(key).into_owned(), true),
    }
}

impl From<HolderView> for Holder {
    fn from(h: HolderView) -> Self {
        Holder {
            session: h.session,
            fence: h.fence.to_string(),
            mode: mode_name(h.mode),
            ttl_remaining_ms: u64::try_from(h.remaining.as_millis()).unwrap_or(u64::MAX),
            principal: h.principal,
            owner: h.owner,
        }
    }
}

impl From<LockView> for Lock {
    fn from(l: LockView) -> Self {
        let (key, binary) = text(&l.key);
        Lock {
            key,
            binary,
            holders: l.holders.into_iter().map(Holder::from).collect(),
            waiters: l.waiters,
            watchers: l.watchers,
        }
    }
}

pub(super) async fn locks(State(admin): State<Arc<Admin>>, Query(q): Query<Page>) -> Response {
    let page = admin.broker.list_locks(
        q.prefix.as_bytes(),
        q.cursor.as_deref().map(str::as_bytes),
        limit(q.limit),
    );
    Json(Locks {
        locks: page.locks.into_iter().map(Lock::from).collect(),
        next: page.next.map(|k| text(&k).0),
    })
    .into_response()
}

#[derive(Serialize)]
struct Session {
    id: u64,
    principal: String,
    peer: Option<String>,
    /// Unix milliseconds.
    connected_since_ms: u64,
    leases: usize,
    waiting: usize,
}

#[derive(Serialize)]
struct Sessions {
    sessions: Vec<Session>,
    next: Option<String>,
}

impl From<SessionView> for Session {
    fn from(s: SessionView) -> Self {
        Session {
            id: s.id,
            principal: s.principal,
            peer: s.peer.map(|p| p.to_string()),
            connected_since_ms: s
                .since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            leases: s.leases,
            waiting: s.waiting,
        }
    }
}

pub(super) async fn sessions(State(admin): State<Arc<Admin>>, Query(q): Query<Page>) -> Response {
    let after = match q.cursor.as_deref().map(str::parse::<u64>) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "cursor: a session id (from `next`)",
            );
        }
    };
    let page = admin.broker.list_sessions(after, limit(q.limit));
    Json(Sessions {
        sessions: page.sessions.into_iter().map(Session::from).collect(),
        next: page.next.map(|id| id.to_string()),
    })
    .into_response()
}

fn error(code: StatusCode, message: &str) -> Response {
    (code, Json(serde_json::json!({ "error": message }))).into_response()
}

#[derive(Deserialize)]
pub(super) struct ReleaseRequest {
    key: String,
}

#[derive(Serialize)]
struct RevokedLease {
    /// A decimal string, as in `/api/locks`.
    fence: String,
    session: u64,
    principal: Option<String>,
}

#[derive(Serialize)]
struct Released {
    key: String,
    revoked: Vec<RevokedLease>,
}

impl From<Revoked> for RevokedLease {
    fn from(r: Revoked) -> Self {
        RevokedLease {
            fence: r.fence.to_string(),
            session: r.session,
            principal: r.principal,
        }
    }
}

pub(super) async fn release(
    State(admin): State<Arc<Admin>>,
    Extension(who): Extension<Who>,
    body: Result<Json<ReleaseRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
    };
    if req.key.is_empty() || req.key.len() > admin.broker.cfg.limits.max_key_bytes {
        return error(
            StatusCode::BAD_REQUEST,
            "key: empty or over the key size limit",
        );
    }
    let revoked = admin
        .broker
        .revoke_key(req.key.as_bytes(), &who.to_string());
    let fences: Vec<u64> = revoked.iter().map(|r| r.fence).collect();
    tracing::info!(
        target: "lockbroker::audit",
        action = "release",
        by = %who,
        key = %req.key,
        ?fences,
        "forced release: {} lease(s) revoked",
        revoked.len()
    );
    Json(Released {
        key: req.key,
        revoked: revoked.into_iter().map(RevokedLease::from).collect(),
    })
    .into_response()
}
