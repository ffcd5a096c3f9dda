//! One live connection to a broker: the control stream, a writer path that writes a frame
//! straight into the stream from the requesting task when nothing is queued (quinn packs every
//! frame written before its driver runs into one packet) and otherwise queues it for a writer
//! task that waits out flow control, a reader that routes answers and pushed grants to the
//! requests waiting for them, and the table of pending requests.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use lockbroker_proto::{Frame, Hello, Limits, Release, Welcome, decode, encode};
use tokio::io::AsyncReadExt;
use tokio::sync::{Notify, oneshot};

use crate::Error;

/// Application close code for a deliberate, clean close (the broker releases our leases).
pub(crate) const CLOSE_CLEAN: u32 = 0;

enum Pending {
    /// Someone awaits the answer.
    Waiting(oneshot::Sender<Frame>),
    /// The caller gave up (dropped the future) on an acquire of this key: a grant that still
    /// arrives is released at once, the `Cancelled` answer is swallowed.
    Abandoned(Bytes),
}

/// Frames not yet accepted by the stream, and the stream.
struct Out {
    buf: Vec<u8>,
    send: quinn::SendStream,
    failed: bool,
}

impl Out {
    /// Writes as much of `buf` as the stream takes now: `Ready` once `buf` is empty (or the
    /// stream failed), `Pending` while flow control blocks it (`cx` is woken later).
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while !self.buf.is_empty() {
            match Pin::new(&mut self.send).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(n)) if n == self.buf.len() => self.buf.clear(),
                Poll::Ready(Ok(n)) => {
                    self.buf.drain(..n);
                }
                Poll::Ready(Err(_)) => {
                    self.failed = true;
                    self.buf.clear();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        Poll::Ready(())
    }
}

/// A connection and its control stream.
pub(crate) struct Conn {
    quic: quinn::Connection,
    welcome: Welcome,
    limits: Limits,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    out: Mutex<Out>,
    out_ready: Notify,
    closed: AtomicBool,
    closed_notify: Notify,
    /// Abandoned acquires not yet resolved by the broker, and a signal when one resolves.
    abandoned: AtomicUsize,
    abandoned_settled: Notify,
}

impl Conn {
    /// Opens the control stream, says Hello and waits for Welcome.
    pub(crate) async fn open(
        quic: quinn::Connection,
        token: Option<String>,
        client_name: String,
    ) -> Result<Arc<Conn>, Error> {
        let (mut send, mut recv) = quic
            .open_bi()
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let mut hello = Vec::new();
        encode(
            &Frame::Hello(Hello {
                token,
                client: client_name,
            }),
            &mut hello,
        );
        send.write_all(&hello)
            .await
            .map_err(|e| Error::Connect(e.to_string()))?;
        let limits = Limits::default();
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let welcome = loop {
            match decode(&buf, &limits) {
                Ok(Some((Frame::Welcome(w), n))) => {
                    buf.advance(n);
                    break w;
                }
                Ok(Some((Frame::Error { code, message, .. }, _))) => {
                    return Err(match Error::from_wire(code, message) {
                        Error::Denied(m) => Error::Denied(m),
                        other => Error::Connect(other.to_string()),
                    });
                }
                Ok(Some((other, _))) => {
                    return Err(Error::Protocol(format!("expected Welcome, got {other:?}")));
                }
                Ok(None) => {}
                Err(e) => return Err(Error::Protocol(e.to_string())),
            }
            match recv.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    return Err(Error::Connect(
                        quic.close_reason()
                            .map_or("broker closed the stream".to_owned(), |r| r.to_string()),
                    ));
                }
                Ok(_) => {}
            }
        };
        let limits = Limits {
            max_frame: welcome.max_frame as usize,
            max_key: welcome.max_key as usize,
        };
        let conn = Arc::new(Conn {
            quic,
            welcome,
            limits,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            out: Mutex::new(Out {
                buf: Vec::with_capacity(4096),
                send,
                failed: false,
            }),
            out_ready: Notify::new(),
            closed: AtomicBool::new(false),
            closed_notify: Notify::new(),
            abandoned: AtomicUsize::new(0),
            abandoned_settled: Notify::new(),
        });
        tokio::spawn(conn.clone().write_loop());
        tokio::spawn(conn.clone().read_loop(recv, buf));
        Ok(conn)
    }

    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves when the connection has ended.
    pub(crate) async fn closed(&self) {
        let notified = self.closed_notify.notified();
        if self.is_closed() {
            return;
        }
        notified.await;
    }

    /// Checks a key against the broker's limit before it is sent.
    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.len() > self.limits.max_key {
            return Err(Error::Invalid(format!(
                "key of {} bytes exceeds the broker's limit of {} bytes",
                key.len(),
                self.limits.max_key
            )));
        }
        Ok(())
    }

    /// Sends a request built around a fresh id and returns the id and its answer.
    pub(crate) fn request(
        &self,
        build: impl FnOnce(u64) -> Frame,
    ) -> Result<(u64, oneshot::Receiver<Frame>), Error> {
        if self.is_closed() {
            return Err(self.disconnected());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Pending::Waiting(tx));
        self.send(&build(id));
        Ok((id, rx))
    }

    /// A fresh id for a frame that gets no answer.
    pub(crate) fn fresh_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Writes a frame into the stream now, or queues it behind frames still waiting for flow
    /// control (the writer task flushes those).
    pub(crate) fn send(&self, frame: &Frame) {
        self.send_as(frame, self.busy());
    }

    /// [`Conn::send`] with `busy` (more than one request in flight) already known: callers
    /// holding the `pending` lock must not take it again. Lock order: `pending`, then `out`.
    fn send_as(&self, frame: &Frame, busy: bool) {
        let wake_writer = {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            if out.failed {
                return;
            }
            let was_empty = out.buf.is_empty();
            encode(frame, &mut out.buf);
            // Alone on the connection: write now (latency). With other requests in flight,
            // let the writer task gather the burst into one write (throughput).
            !(was_empty
                && !busy
                && out
                    .flush(&mut Context::from_waker(Waker::noop()))
                    .is_ready())
        };
        if wake_writer {
            self.out_ready.notify_one();
        }
    }

    /// More than one request awaits an answer.
    fn busy(&self) -> bool {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len() > 1
    }

    /// Gives up on request `id`, whose answer would come on `rx`. Still pending: cancel it on
    /// the broker; for an acquire (`key` set), a grant that crosses the cancel is released when
    /// it arrives. Already answered with a grant: release it now.
    pub(crate) fn give_up(&self, id: u64, key: Option<Bytes>, mut rx: oneshot::Receiver<Frame>) {
        // `route` answers under the same lock, so the answer is either still pending here or
        // already in `rx`.
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = pending.get_mut(&id) {
            match key {
                Some(key) => {
                    *slot = Pending::Abandoned(key);
                    self.abandoned.fetch_add(1, Ordering::AcqRel);
                }
                None => {
                    pending.remove(&id);
                }
            }
            drop(pending);
            self.send(&Frame::Cancel { id });
            return;
        }
        drop(pending);
        if let (Ok(Frame::Granted(g)), Some(key)) = (rx.try_recv(), key) {
            self.release_unwanted(g.rewritten.unwrap_or(key), g.fence, self.busy());
        }
    }

    /// Releases (fire-and-forget) a lease nobody is waiting for any more.
    fn release_unwanted(&self, key: Bytes, fence: u64, busy: bool) {
        let release = Frame::Release(Release {
            id: self.fresh_id(),
            key,
            fence,
            ack: false,
        });
        self.send_as(&release, busy);
    }

    /// Waits until no abandoned acquire of `key` is unresolved on the broker. The broker may
    /// have granted it before reading our `Cancel`; that grant is released when it arrives, and
    /// a new acquire of the key sent before then would be refused with `AlreadyHeld`.
    pub(crate) async fn settle_abandoned(&self, key: &[u8]) {
        while self.abandoned.load(Ordering::Acquire) > 0 {
            let settled = self.abandoned_settled.notified();
            let outstanding = self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .any(|p| matches!(p, Pending::Abandoned(k) if k[..] == *key));
            if !outstanding || self.is_closed() {
                return;
            }
            settled.await;
        }
    }

    /// Forgets a pending request whose caller stopped waiting (non-acquire requests).
    pub(crate) fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Closes the connection on purpose: the broker releases this session's leases at once.
    pub(crate) fn close(&self) {
        self.quic.close(CLOSE_CLEAN.into(), b"bye");
    }

    pub(crate) fn disconnected(&self) -> Error {
        Error::Disconnected(
            self.quic
                .close_reason()
                .map_or_else(|| "connection closed".to_owned(), |r| r.to_string()),
        )
    }

    /// Flushes frames queued while the stream was flow-control blocked or while other
    /// requests were in flight.
    async fn write_loop(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = self.out_ready.notified() => {}
                () = self.closed() => return,
            }
            // Let frames produced in the same burst join this write.
            tokio::task::yield_now().await;
            poll_fn(|cx| self.out.lock().unwrap_or_else(|e| e.into_inner()).flush(cx)).await;
            if self.out.lock().unwrap_or_else(|e| e.into_inner()).failed {
                return;
            }
        }
    }

    async fn read_loop(self: Arc<Self>, mut recv: quinn::RecvStream, mut buf: BytesMut) {
        'read: loop {
            loop {
                match decode(&buf, &self.limits) {
                    Ok(Some((frame, n))) => {
                        buf.advance(n);
                        self.route(frame);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!("broker sent a bad frame: {e}");
                        self.quic.close(1u32.into(), b"bad frame");
                        break 'read;
                    }
                }
            }
            match recv.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        self.closed.store(true, Ordering::Release);
        // Dropping every waiting sender wakes its request with "disconnected".
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.closed_notify.notify_waiters();
        self.abandoned_settled.notify_waiters();
    }

    fn route(&self, frame: Frame) {
        let id = frame.id();
        if id == 0 {
            if let Frame::Error { code, message, .. } = &frame {
                tracing::warn!("broker: {code:?}: {message}");
            }
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.remove(&id) {
            Some(Pending::Waiting(tx)) => {
                // Answered under the lock: see `give_up`.
                let _ = tx.send(frame);
            }
            Some(Pending::Abandoned(key)) => {
                // Queue the release before the entry is seen gone (`settle_abandoned` reads
                // under this lock), so it precedes any new acquire of the key on the stream.
                if let Frame::Granted(g) = frame {
                    // `pending` is held: pass what `busy()` would read instead of locking again.
                    let busy = pending.len() > 1;
                    self.release_unwanted(g.rewritten.unwrap_or(key), g.fence, busy);
                }
                self.abandoned.fetch_sub(1, Ordering::AcqRel);
                drop(pending);
                self.abandoned_settled.notify_waiters();
            }
            None => {}
        }
    }
}
