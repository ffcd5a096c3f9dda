//! Health, readiness and the JSON API.
//!
//! * `GET /healthz` — 200 while the process runs.
//! * `GET /readyz` — 200 when serving: start-up (restore) done, not shutting down, in cluster
//!   mode every shard this broker should own owned, its etcd lease valid and no shard of the
//!   cluster unowned for long (`cluster/mod.rs`), with the sync
//!   mirror no resync pending, no restart grace running and the lease horizon writable (else
//!   grants are refused); else 503. Both answer `{"ok": bool, "reason": "..."}`.
//! * `GET /api/locks?prefix=|prefix_b64=&limit=&cursor=` — live keys in key order with their
//!   holders (fence as a decimal string, mode, remaining TTL in ms, principal, owner label),
//!   queue lengths and the request at the head of the queue (`next_in_line`: what a key
//!   without holders waits for — a multi-key request waiting for its other keys); every key
//!   also as `key_b64` (standard base64 of its bytes: keys need not be UTF-8). `next` is the
//!   opaque cursor of the following page (null on the last).
//! * `GET /api/sessions?limit=&cursor=` — live sessions by id.
//! * `POST /api/release` `{"key": "..."}` or `{"key_b64": "..."}` — ends every lease on the key
//!   (holders told at once).
//! * `POST /api/cancel` `{"session": n, "request": n}` — cancels a queued request (the client
//!   is answered `Cancelled`); `POST /api/end-session` `{"session": n}` — revokes the
//!   session's leases (holders told) and closes its connection.
//!
//! The three POSTs always need a token (`auth.rs`) and are logged as audit lines naming who
//! asked.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
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
    /// The prefix as base64, for prefixes that are not UTF-8 (wins over `prefix`).
    prefix_b64: Option<String>,
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
    /// The owner label given with the acquire, or null.
    owner: Option<String>,
    /// A cached lease (lock caching): its holder's process grants the key again without
    /// asking until the broker recalls it.
    cached: bool,
}

#[derive(Serialize)]
struct Lock {
    key: String,
    /// True when the key is not UTF-8 (`key` then shows it lossily; `key_b64` is exact).
    binary: bool,
    /// The key's bytes, standard base64.
    key_b64: String,
    holders: Vec<Holder>,
    waiters: usize,
    watchers: usize,
    next_in_line: Option<NextInLine>,
}

/// The request at the head of a key's queue: `POST /api/cancel` with these two ids removes it.
#[derive(Serialize)]
struct NextInLine {
    session: u64,
    request: u64,
    /// Keys the request names (more than 1: a multi-key request, granted only when all its
    /// keys are free — until then it holds this key's queue).
    keys: usize,
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
            cached: h.cached,
        }
    }
}

impl From<LockView> for Lock {
    fn from(l: LockView) -> Self {
        let (key, binary) = text(&l.key);
        Lock {
            key,
            binary,
            key_b64: STANDARD.encode(&l.key),
            holders: l.holders.into_iter().map(Holder::from).collect(),
            waiters: l.waiters,
            watchers: l.watchers,
            next_in_line: l.next_in_line.map(|q| NextInLine {
                session: q.session,
                request: q.req,
                keys: q.keys,
            }),
        }
    }
}

pub(super) async fn locks(State(admin): State<Arc<Admin>>, Query(q): Query<Page>) -> Response {
    let prefix = match &q.prefix_b64 {
        Some(b64) => match STANDARD.decode(b64) {
            Ok(p) => p,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("prefix_b64: {e}")),
        },
        None => q.prefix.into_bytes(),
    };
    // The cursor is the last key of the previous page, URL-safe base64: exact for any bytes.
    let after = match q.cursor.as_deref().map(|c| URL_SAFE_NO_PAD.decode(c)) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "cursor: the `next` of the previous page, as given",
            );
        }
    };
    let page = admin
        .broker
        .list_locks(&prefix, after.as_deref(), limit(q.limit));
    Json(Locks {
        locks: page.locks.into_iter().map(Lock::from).collect(),
        next: page.next.map(|k| URL_SAFE_NO_PAD.encode(&k)),
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
#[serde(deny_unknown_fields)]
pub(super) struct ReleaseRequest {
    key: Option<String>,
    key_b64: Option<String>,
}

impl ReleaseRequest {
    /// The key's bytes: `key_b64` decoded, or `key` as UTF-8 (the empty key included: any
    /// key the broker grants can be released).
    fn key(self) -> Result<Vec<u8>, String> {
        match (self.key, self.key_b64) {
            (Some(k), None) => Ok(k.into_bytes()),
            (None, Some(b)) => STANDARD.decode(b).map_err(|e| format!("key_b64: {e}")),
            _ => Err("body: give exactly one of `key` and `key_b64`".into()),
        }
    }
}

#[derive(Serialize)]
struct RevokedLease {
    key: String,
    key_b64: String,
    /// A decimal string, as in `/api/locks`.
    fence: String,
    session: u64,
    principal: Option<String>,
}

#[derive(Serialize)]
struct Released {
    key: String,
    key_b64: String,
    revoked: Vec<RevokedLease>,
}

impl From<Revoked> for RevokedLease {
    fn from(r: Revoked) -> Self {
        RevokedLease {
            key: text(&r.key).0,
            key_b64: STANDARD.encode(&r.key),
            fence: r.fence.to_string(),
            session: r.session,
            principal: r.principal,
        }
    }
}

/// The JSON body, or what is wrong with it (answered 400).
fn body<T>(body: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, String> {
    body.map(|Json(b)| b).map_err(|e| format!("body: {e}"))
}

pub(super) async fn release(
    State(admin): State<Arc<Admin>>,
    Extension(who): Extension<Who>,
    body_json: Result<Json<ReleaseRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let key = match body(body_json).and_then(ReleaseRequest::key) {
        Ok(k) => k,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if key.len() > admin.broker.cfg.limits.max_key_bytes {
        return error(StatusCode::BAD_REQUEST, "key: over the key size limit");
    }
    let revoked = admin.broker.revoke_key(&key, &who.to_string());
    let fences: Vec<u64> = revoked.iter().map(|r| r.fence).collect();
    let (shown, _) = text(&key);
    tracing::info!(
        target: "lockbroker::audit",
        action = "release",
        by = %who,
        key = %shown.escape_debug(),
        ?fences,
        "forced release: {} lease(s) revoked",
        revoked.len()
    );
    Json(Released {
        key: shown,
        key_b64: STANDARD.encode(&key),
        revoked: revoked.into_iter().map(RevokedLease::from).collect(),
    })
    .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelRequest {
    session: u64,
    request: u64,
}

pub(super) async fn cancel(
    State(admin): State<Arc<Admin>>,
    Extension(who): Extension<Who>,
    body_json: Result<Json<CancelRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let req = match body(body_json) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    if admin
        .broker
        .cancel_request(req.session, req.request, &who.to_string())
    {
        Json(serde_json::json!({ "cancelled": true })).into_response()
    } else {
        error(
            StatusCode::NOT_FOUND,
            "nothing queued under that session and request id",
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EndSessionRequest {
    session: u64,
}

#[derive(Serialize)]
struct Ended {
    session: u64,
    revoked: Vec<RevokedLease>,
}

pub(super) async fn end_session(
    State(admin): State<Arc<Admin>>,
    Extension(who): Extension<Who>,
    body_json: Result<Json<EndSessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let req = match body(body_json) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, &why),
    };
    match admin.broker.end_session(req.session, &who.to_string()) {
        Some(revoked) => Json(Ended {
            session: req.session,
            revoked: revoked.into_iter().map(RevokedLease::from).collect(),
        })
        .into_response(),
        None => error(StatusCode::NOT_FOUND, "no such session is connected"),
    }
}
