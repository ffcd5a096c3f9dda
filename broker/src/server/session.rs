//! One session = one QUIC connection: the handshake (`Hello` → `Welcome`, within
//! `limits.hello_timeout_ms` and `limits.max_hello_bytes`, then authentication), the read loop
//! that decodes frames from the control stream and hands each to its command (with
//! backpressure from the outbox; keys routed through the key router in cluster mode), and the
//! end of the session (the client's clean close releases its leases; a lost connection, a
//! stream cut inside a frame, a slow reader or a broker shutdown leaves them to their TTL).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use lockbroker_proto::{DecodeError, ErrorCode, Frame, LeaseSecret, Mode, Welcome, decode};
use tokio::io::AsyncReadExt;

use super::cmd;
use super::policy::{Decided, Op, Policy};
use crate::broker::{Broker, Route, SessionHandle};
use crate::table::{self, SessionId};

/// Application close code of a client that ends its session on purpose.
pub const CLOSE_CLEAN: u32 = 0;
/// Close code the broker uses after a protocol error.
pub const CLOSE_PROTOCOL_ERROR: u32 = 1;
/// Close code the broker uses when it shuts down.
pub const CLOSE_SHUTDOWN: u32 = 2;
/// QUIC application close code: the client did not read its answers (outbox cap, deadline).
pub const CLOSE_SLOW_READER: u32 = 3;
/// QUIC application close code: an operator ended the session through the admin API.
pub const CLOSE_ENDED: u32 = 4;

/// Requests an anonymous session handles per turn on a broker with authenticated principals.
const GUEST_BATCH: usize = 64;

/// A running session, as its commands see it.
pub struct Session {
    pub broker: Arc<Broker>,
    pub policy: Arc<Policy>,
    pub id: SessionId,
    /// Also who the session authenticated as (`handle.principal`).
    pub handle: Arc<SessionHandle>,
}

impl Session {
    /// Answers with a frame that is neither a grant nor an error (`Ok`, `Extended`, ...).
    pub fn reply(&self, frame: Frame) {
        self.handle.answer(&frame);
    }

    /// Whether `secret` is the secret of lease (`key`, `fence`) granted in `mode` to this
    /// session's principal. When not, request `id` is answered `NotOwner` (if `answer`) and
    /// false returned.
    pub fn owns(
        &self,
        id: u64,
        key: &[u8],
        fence: u64,
        mode: table::Mode,
        secret: &LeaseSecret,
        answer: bool,
    ) -> bool {
        self.proves(key, fence, mode, secret) || self.not_owner(id, answer)
    }

    /// Whether `secret` is the secret of lease (`key`, `fence`) in `mode` for this session's
    /// principal (nothing answered).
    pub fn proves(&self, key: &[u8], fence: u64, mode: table::Mode, secret: &LeaseSecret) -> bool {
        self.broker
            .identity
            .verify(key, fence, &self.handle.principal, mode, secret)
    }

    /// A lease secret did not match: counted, and request `id` answered `NotOwner` (if
    /// `answer`). Returns false.
    pub fn not_owner(&self, id: u64, answer: bool) -> bool {
        if let Some(m) = &self.broker.metrics {
            m.deny(crate::broker::Denial::NotOwner);
        }
        if answer {
            self.fail(
                id,
                ErrorCode::NotOwner,
                "the lease secret does not match: not a lease of this principal",
            );
        }
        false
    }

    /// The mode of lease (`key`, `fence`) — what its secret is checked against before a
    /// release or extend — or the table's error for a lease it does not hold (`NotLocked`,
    /// `NotOwner`), answered to request `id` (if `answer`) here.
    pub fn lease_mode(&self, id: u64, key: &[u8], fence: u64, answer: bool) -> Option<table::Mode> {
        match self.broker.read_table(|t, _| t.lease_mode(key, fence)) {
            Ok(mode) => Some(mode),
            Err(e) => {
                if answer {
                    self.answer_lease_error(id, key, &e);
                }
                None
            }
        }
    }

    /// Answers request `id` about a lease of `key` with the table's error `e` — or, if the
    /// key's shard stopped being served here meanwhile (a hand-over ended the lease between
    /// the route check and the table), with `Moved`/`Unavailable`, so the holder takes the
    /// lease over where the key is served now rather than count it lost.
    pub fn answer_lease_error(&self, id: u64, key: &[u8], e: &table::TableError) {
        match self.broker.route(key).refusal() {
            Some((code, message)) => self.fail(id, code, message),
            None => self.handle.answer_table_error(id, e),
        }
    }

    /// Runs the policy chain for request `id` on `key`; a denial is answered (`Denied`) here
    /// and gives `None`.
    pub async fn decide(
        &self,
        id: u64,
        key: &Bytes,
        mode: Mode,
        requested_ttl_ms: u64,
        op: Op,
    ) -> Option<Decided> {
        let started = self.broker.metrics.as_ref().map(|_| Instant::now());
        let decided = self
            .policy
            .decide(
                &self.broker.cfg,
                &self.handle.principal,
                key,
                mode,
                requested_ttl_ms,
                op,
            )
            .await;
        if let (Some(m), Some(started)) = (&self.broker.metrics, started)
            && self.policy.plugins().is_some()
        {
            crate::broker::Metrics::observe(&m.policy_duration, started.elapsed());
        }
        match decided {
            Ok(d) => Some(d),
            Err(reason) => {
                if let Some(m) = &self.broker.metrics {
                    m.deny(crate::broker::Denial::Policy);
                }
                self.fail(id, ErrorCode::Denied, reason);
                None
            }
        }
    }

    /// Whether this broker serves `key` (always, outside cluster mode). When not, request `id`
    /// is answered `Moved` (with the owner's URL) or `Unavailable` here and `None` returned;
    /// else the end of the key's takeover grace, if one runs.
    pub fn local(&self, id: u64, key: &[u8]) -> Option<Option<Instant>> {
        let route = self.broker.route(key);
        if let Some((code, message)) = route.refusal() {
            self.fail(id, code, message);
            return None;
        }
        match route {
            Route::Local { grace_until } => Some(grace_until),
            Route::Moved(_) | Route::Unavailable => None,
        }
    }

    /// Answers request `id` (0: the session as a whole) with an error.
    pub fn fail(&self, id: u64, code: ErrorCode, message: impl Into<String>) {
        self.handle.answer_error(id, code, message);
    }
}

/// How the read loop ended.
enum End {
    /// The client closed the connection or finished its stream: release its leases now.
    Clean,
    /// The connection was lost (timeout, reset): leases run to their TTL.
    Lost,
    /// The client broke the protocol: it was told why; treated as lost.
    ProtocolError,
    /// The broker is shutting down: the client is told; its leases run to their TTL.
    Shutdown,
    /// The client did not read its answers within the outbox deadline; treated as lost.
    SlowReader,
    /// An operator ended the session (its leases were revoked first): anything granted since
    /// is released now, as at a clean close.
    Ended,
}

/// Serves one accepted connection until it ends.
pub async fn serve(
    broker: Arc<Broker>,
    policy: Arc<Policy>,
    conn: quinn::Connection,
    cert_principal: Option<String>,
    per_principal: Arc<super::principal_sessions::PrincipalSessions>,
) {
    let remote = conn.remote_address();
    let hello_timeout = Duration::from_millis(broker.cfg.limits.hello_timeout_ms);
    let hello_deadline = tokio::time::Instant::now() + hello_timeout;
    let mut shutdown = broker.shutdown_signal();
    let stream = tokio::select! {
        s = tokio::time::timeout_at(hello_deadline, conn.accept_bi()) => s,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let (send, mut recv) = match stream {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%remote, "connection ended before its control stream: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "no control stream within {hello_timeout:?}");
            conn.close(CLOSE_PROTOCOL_ERROR.into(), b"no Hello in time");
            return;
        }
    };
    let limits = broker.cfg.proto_limits();
    let grace = Duration::from_millis(broker.cfg.quic.shutdown_grace_ms);
    let mut buf = BytesMut::with_capacity(8 * 1024);

    // Handshake: the first frame must be Hello, small, and soon — all before authentication.
    let hello_limits = lockbroker_proto::Limits {
        max_frame: limits.max_frame.min(broker.cfg.limits.max_hello_bytes),
        ..limits
    };
    let first = tokio::select! {
        r = tokio::time::timeout_at(hello_deadline, read_frame(&mut recv, &mut buf, &hello_limits)) => r,
        _ = shutdown.wait_for(|s| *s) => return,
    };
    let Ok(first) = first else {
        let msg = format!("no Hello within {} ms", hello_timeout.as_millis());
        return refuse(conn, send, ErrorCode::ProtocolOrder, &msg, grace).await;
    };
    let hello = match first {
        Ok(Some(Frame::Hello(h))) => h,
        Ok(Some(other)) => {
            return refuse(
                conn,
                send,
                ErrorCode::ProtocolOrder,
                &format!("expected Hello, got frame for request {}", other.id()),
                grace,
            )
            .await;
        }
        Ok(None) => return,
        Err(ReadError::Decode(e)) => {
            return refuse(conn, send, e.code(), &e.to_string(), grace).await;
        }
        Err(ReadError::Io) => return,
    };
    let principal = match super::auth::authenticate(&broker, hello.token.as_deref(), cert_principal)
    {
        Ok(p) => p,
        Err(msg) => {
            if let Some(m) = &broker.metrics {
                m.deny(crate::broker::Denial::Unauthenticated);
            }
            return refuse(conn, send, ErrorCode::Unauthenticated, &msg, grace).await;
        }
    };
    let _principal_slot = match per_principal.admit(&principal) {
        Ok(slot) => slot,
        Err(why) => {
            if let Some(m) = &broker.metrics {
                m.refuse("sessions of this principal");
            }
            return refuse(conn, send, ErrorCode::LimitExceeded, &why, grace).await;
        }
    };
    let (id, handle) = broker.open_session_from(&principal, remote);
    // Leases record who holds them: a reclaim never moves one to another principal.
    broker.with_table(|t, _, _| t.set_principal(id, principal.as_bytes()));
    tracing::debug!(%remote, session = id, %principal, client = %hello.client, "session opened");
    handle.answer(&Frame::Welcome(Welcome {
        session: id,
        broker_id: broker.identity.id(),
        epoch: broker.epoch,
        max_frame: u32::try_from(limits.max_frame).unwrap_or(u32::MAX),
        max_key: u32::try_from(limits.max_key).unwrap_or(u32::MAX),
        default_ttl_ms: broker.cfg.locks.default_ttl_ms,
        principal,
    }));
    // Cluster mode: where every shard is served, so the client routes keys itself.
    if let Some(map) = broker.shard_map() {
        handle.answer(&Frame::ShardMap(map));
    }
    let writer = {
        let handle = handle.clone();
        tokio::spawn(async move { handle.outbox.run_writer(send, grace).await })
    };
    let session = Session {
        broker: broker.clone(),
        policy,
        id,
        handle: handle.clone(),
    };

    let end = read_loop(&session, &conn, &mut recv, &mut buf, &limits).await;
    // Only the client's own clean close releases its leases. At a broker shutdown the holder
    // may be paused or cut off and cannot be told in time: its leases run to their TTL, the
    // lease horizon keeps them, and the next start waits them out (or their holders reclaim).
    let clean = matches!(end, End::Clean | End::Ended);
    broker.close_session(id, clean);
    handle.outbox.close();
    let _ = tokio::time::timeout(grace, writer).await;
    match end {
        End::ProtocolError => conn.close(CLOSE_PROTOCOL_ERROR.into(), b"protocol error"),
        End::SlowReader => conn.close(CLOSE_SLOW_READER.into(), b"not reading its answers"),
        End::Shutdown => conn.close(CLOSE_SHUTDOWN.into(), b"broker shutting down"),
        End::Ended => conn.close(CLOSE_ENDED.into(), b"session ended by an operator"),
        End::Clean | End::Lost => conn.close(CLOSE_CLEAN.into(), b"bye"),
    }
    tracing::debug!(session = id, clean, "session closed");
}

async fn read_loop(
    session: &Session,
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    limits: &lockbroker_proto::Limits,
) -> End {
    let mut shutdown = session.broker.shutdown_signal();
    let outbox = &session.handle.outbox;
    let stall = Duration::from_millis(session.broker.cfg.limits.outbox_stall_ms);
    // Anonymous sessions on a broker with authenticated principals take turns (one handles
    // its requests at a time, at most GUEST_BATCH of them per turn) at a bounded rate: an
    // anonymous flood gets part of one worker, never all of them (`broker/guests.rs`).
    let guest = session.handle.principal == crate::config::ANONYMOUS
        && session.broker.cfg.has_authenticated_principals();
    loop {
        let turn = if guest {
            session.broker.guests.turn().await
        } else {
            None
        };
        let mut handled = 0usize;
        // Handle every whole frame already buffered; their answers leave in one write.
        outbox.begin_batch();
        let failed = loop {
            // The session's cap, or its fair share of the global budget while over it.
            if outbox.queued() > session.broker.outbox_cap() {
                break false;
            }
            if guest && handled >= GUEST_BATCH {
                break false;
            }
            match decode(buf, limits) {
                Ok(Some((frame, n))) => {
                    handled += 1;
                    buf.advance(n);
                    if let Err(e) = cmd::apply(session, frame).await {
                        session.fail(0, e.0, e.1);
                        break true;
                    }
                }
                Ok(None) => break false,
                Err(e) => {
                    tracing::info!(session = session.id, "closing session after bad frame: {e}");
                    session.fail(0, e.code(), e.to_string());
                    break true;
                }
            }
        };
        outbox.end_batch();
        if failed {
            return End::ProtocolError;
        }
        if let Some(turn) = turn {
            session.broker.guests.charge(handled);
            drop(turn);
            // Let the next anonymous session (and everyone else) run before this one again.
            if handled >= GUEST_BATCH {
                tokio::task::yield_now().await;
                continue;
            }
        }
        // Backpressure: answers pile up because the client does not read them. Read nothing
        // more until they drain (QUIC flow control then holds the client's requests back).
        let cap = session.broker.outbox_cap();
        if outbox.queued() > cap {
            tokio::select! {
                drained = tokio::time::timeout(stall, outbox.wait_below(cap / 2)) => {
                    // Only a stream that took nothing for the whole `stall` is a slow reader:
                    // a client that reads, however slowly, keeps its session.
                    if drained.is_err() && outbox.stalled_for().is_some_and(|d| d >= stall) {
                        tracing::warn!(
                            session = session.id,
                            queued = outbox.queued(),
                            "closing a session that did not read its answers for {stall:?}"
                        );
                        return End::SlowReader;
                    }
                    continue;
                }
                _ = shutdown.changed() => {
                    session.fail(0, ErrorCode::ShuttingDown, "broker shutting down");
                    return End::Shutdown;
                }
            }
        }
        tokio::select! {
            read = recv.read_buf(buf) => match read {
                Ok(0) if buf.is_empty() => return End::Clean,
                // The stream ended inside a frame: not a clean goodbye but a broken client
                // (or a cut connection) — told so, and its leases run to their TTL.
                Ok(0) => {
                    session.fail(
                        0,
                        ErrorCode::Malformed,
                        format!("the stream ended inside a frame ({} bytes of it)", buf.len()),
                    );
                    return End::ProtocolError;
                }
                Ok(_) => {}
                Err(_) => return classify_close(conn),
            },
            // Answers queued below the cap that the stream has not taken for the whole
            // `stall`: the client stopped reading (or the writer is stuck) — end it, so its
            // leases are not held to their TTL behind answers that never arrive.
            () = tokio::time::sleep(stall), if outbox.queued() > 0 => {
                if outbox.stalled_for().is_some_and(|d| d >= stall) {
                    tracing::warn!(
                        session = session.id,
                        queued = outbox.queued(),
                        "closing a session whose answers did not move for {stall:?}"
                    );
                    return End::SlowReader;
                }
            }
            _ = shutdown.changed() => {
                session.fail(0, ErrorCode::ShuttingDown, "broker shutting down");
                return End::Shutdown;
            }
            why = session.handle.end_requested() => {
                tracing::info!(session = session.id, "{why}");
                return End::Ended;
            }
        }
    }
}

/// Decides from the connection's close reason whether the client left on purpose.
fn classify_close(conn: &quinn::Connection) -> End {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(CLOSE_CLEAN) =>
        {
            End::Clean
        }
        _ => End::Lost,
    }
}

enum ReadError {
    Decode(DecodeError),
    Io,
}

async fn read_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    limits: &lockbroker_proto::Limits,
) -> Result<Option<Frame>, ReadError> {
    loop {
        if let Some((frame, n)) = decode(buf, limits).map_err(ReadError::Decode)? {
            buf.advance(n);
            return Ok(Some(frame));
        }
        match recv.read_buf(buf).await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(_) => return Err(ReadError::Io),
        }
    }
}

/// A connection that may not have a session (over a connection limit: `LimitExceeded`; no
/// client certificate where one is required: `Denied`): told `code` with `why` on its control
/// stream (if it opens one before the Hello deadline), then closed.
pub(super) async fn turn_away(
    broker: &Broker,
    conn: quinn::Connection,
    code: ErrorCode,
    why: &str,
) {
    let wait = Duration::from_millis(broker.cfg.limits.hello_timeout_ms);
    let grace = Duration::from_millis(broker.cfg.quic.shutdown_grace_ms);
    match tokio::time::timeout(wait, conn.accept_bi()).await {
        Ok(Ok((send, _recv))) => refuse(conn, send, code, why, grace).await,
        _ => conn.close(CLOSE_PROTOCOL_ERROR.into(), why.as_bytes()),
    }
}

/// Sends one fatal error on the control stream and closes the connection.
async fn refuse(
    conn: quinn::Connection,
    send: quinn::SendStream,
    code: ErrorCode,
    msg: &str,
    grace: Duration,
) {
    tracing::info!(remote = %conn.remote_address(), "refusing connection: {msg}");
    let handle = SessionHandle::default();
    handle.answer_error(0, code, msg);
    handle.outbox.close();
    handle.outbox.run_writer(send, grace).await;
    conn.close(CLOSE_PROTOCOL_ERROR.into(), b"refused");
}
