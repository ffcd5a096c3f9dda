//! One live connection to a broker: the control stream, the table of pending requests, a
//! reader task that routes answers to the requests waiting for them, and a writer task.
//!
//! Everything mutable about the connection lives in one [`State`] behind one
//! `parking_lot::Mutex`, so there is no lock order to remember. The rules that keep it simple:
//!
//! * the lock is never held across an `.await`;
//! * the lock is never re-entered: [`Conn`] methods take it once and call [`State`] methods,
//!   which get `&mut State` and cannot reach the lock (they know nothing of `Conn`);
//! * side effects on other tasks happen after the guard is dropped: `State` methods return
//!   what to do ([`After`]: wake the writer, hand an answer to its requester), and the `Conn`
//!   method does it unlocked.
//!
//! Writing: a frame sent while nothing is queued and at most one request is in flight is
//! written straight into the QUIC stream by the sending task (lowest latency; quinn packs what
//! was written before its driver runs into one packet). With other requests in flight, or
//! frames already queued, the frame is appended to the outbound buffer and the writer task,
//! woken through the one `Notify`, gathers the burst into one write and waits out flow control.
//!
//! Embedded: a connection to the in-process table ([`crate::embedded`]) has no stream. Its
//! frames are queued in the state unencoded and handed to the engine right after the lock is
//! released (where a QUIC connection would wake its writer); the engine hands answers back
//! through [`Conn::route`], like the reader task does.
//!
//! Reading: one answer the client cannot read (larger than the frame limit the broker
//! announced, malformed, of an unknown kind) does not end the connection — that would orphan
//! every lease of the session until its TTL. [`Inbound`] steps over such a frame by its length
//! prefix and the request it answered, if its id can be read, fails with [`Error::Protocol`];
//! the other requests and the leases carry on. Only a length prefix beyond [`MAX_SKIP`], which
//! no broker sends, makes the stream impossible to follow and ends the connection.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use lockbroker_proto::{
    DecodeError, Frame, Hello, Limits, Release, Welcome, decode, encode, frame_head,
};
use parking_lot::Mutex;
use tokio::io::AsyncReadExt;
use tokio::sync::oneshot::error::TryRecvError;
use tokio::sync::{Notify, oneshot};

use crate::embedded::Engine;
use crate::error::Error;
use crate::shards::{LeaseEnd, Pushes};

/// Application close code for a deliberate, clean close (the broker releases our leases).
pub(crate) const CLOSE_CLEAN: u32 = 0;

/// The outbound buffer is given back to the allocator after a burst larger than this.
const KEEP_OUT_CAPACITY: usize = 64 * 1024;

/// A frame from the broker announced larger than this cannot be stepped over: the stream is
/// taken to be out of step (no broker sends such a frame) and the connection ends.
const MAX_SKIP: usize = 16 * 1024 * 1024;

enum Pending {
    /// Someone awaits the answer.
    Waiting(oneshot::Sender<Frame>),
    /// The caller gave up (dropped the future) on an acquire: a grant that still arrives is
    /// released at once, the `Cancelled` answer is swallowed. A new acquire of the key need
    /// not wait for this: ownership is per lease, so it simply queues.
    Abandoned(Abandon),
}

/// What to do with the grant of an acquire its caller gave up.
pub(crate) struct Abandon {
    /// The key asked for (the grant names it again only if a policy rewrote it).
    pub(crate) key: Bytes,
    /// Cluster mode: where the grant goes instead of a release on this connection — the
    /// lease path of a higher floor, which follows the key's shard (a grant that arrives
    /// after the shard moved has its lease at the new owner, not at this broker).
    pub(crate) late: Option<LateGrant>,
}

/// Releases a grant nobody waits for any more where its lease lives (spawned as a task).
pub(crate) type LateGrant = Box<
    dyn FnOnce(lockbroker_proto::Granted) -> Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// The mutable state of a connection, behind [`Conn::state`].
struct State {
    /// Requests awaiting an answer, by request id.
    pending: HashMap<u64, Pending>,
    /// The next request id (0 is reserved for frames that answer nothing).
    next_id: u64,
    /// Encoded frames not yet accepted by the stream.
    out: Vec<u8>,
    sink: Sink,
    /// Writing to the stream failed: nothing more is written.
    failed: bool,
    /// The reader has ended: the connection is gone, `pending` has been emptied.
    closed: bool,
}

/// Where a connection's frames go.
enum Sink {
    /// Encoded into `State::out`, written to the control stream.
    Quic(quinn::SendStream),
    /// Queued for the embedded engine (handed over after the lock is released).
    Local(Vec<Frame>),
}

/// The other end of a connection.
enum Link {
    Quic(quinn::Connection),
    Local { engine: Arc<Engine>, session: u64 },
}

/// What a [`State`] method leaves to do once the lock is released.
#[derive(Default)]
#[must_use]
struct After {
    /// Frames are queued for the writer task.
    wake_writer: bool,
    /// A late grant to hand to its [`LateGrant`] (spawned; boxed: rare, and `After` is
    /// returned on every request).
    late: Option<Box<(LateGrant, lockbroker_proto::Granted)>>,
}

impl After {
    fn writer(wake_writer: bool) -> After {
        After {
            wake_writer,
            late: None,
        }
    }
}

/// Where `State::route` sends an answer.
enum Routed {
    /// Hand `frame` to the requester (outside the lock).
    Deliver(oneshot::Sender<Frame>, Frame),
    Done(After),
}

impl State {
    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues `frame`, or writes it into the stream right away when nothing is queued and no
    /// other request is in flight. Returns whether the writer task must be woken.
    fn send(&mut self, frame: Frame) -> bool {
        if self.closed || self.failed {
            return false;
        }
        if let Sink::Local(queued) = &mut self.sink {
            queued.push(frame);
            return true;
        }
        let was_empty = self.out.is_empty();
        encode(&frame, &mut self.out);
        // Alone on the connection: write now (latency). With other requests in flight, let
        // the writer task gather the burst into one write (throughput). A direct write only
        // happens with an empty buffer, so the writer task is never parked on the stream then
        // (its waker is not overwritten by the no-op one).
        let alone = self.pending.len() <= 1;
        !(was_empty
            && alone
            && self
                .flush(&mut Context::from_waker(Waker::noop()))
                .is_ready())
    }

    /// Writes as much of `out` as the stream takes now: `Ready` once `out` is empty (or the
    /// stream failed), `Pending` while flow control blocks it (`cx` is woken later).
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Sink::Quic(send) = &mut self.sink else {
            return Poll::Ready(());
        };
        while !self.out.is_empty() {
            match Pin::new(&mut *send).poll_write(cx, &self.out) {
                Poll::Ready(Ok(n)) if n == self.out.len() => self.out.clear(),
                Poll::Ready(Ok(n)) => {
                    self.out.drain(..n);
                }
                Poll::Ready(Err(_)) => {
                    self.failed = true;
                    self.out.clear();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.out.capacity() > KEEP_OUT_CAPACITY {
            self.out = Vec::new();
        }
        Poll::Ready(())
    }

    /// The writer task's flush: `Ready(true)` once everything queued is written, `Ready(false)`
    /// when the connection is gone or the stream failed (the writer stops).
    fn poll_writer(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.closed || self.failed {
            return Poll::Ready(false);
        }
        self.flush(cx).map(|()| !self.failed)
    }

    /// Registers a request built around a fresh id and sends it. `None` when the connection
    /// is gone.
    fn request(
        &mut self,
        build: impl FnOnce(u64) -> Frame,
        tx: oneshot::Sender<Frame>,
    ) -> Option<(u64, After)> {
        if self.closed {
            return None;
        }
        let id = self.fresh_id();
        let frame = build(id);
        // Registered before sending, so the in-flight count the send sees includes it.
        self.pending.insert(id, Pending::Waiting(tx));
        Some((id, After::writer(self.send(frame))))
    }

    /// See [`Conn::give_up`]. Runs with the lock held from closing `rx` to marking the request
    /// abandoned, so that `Conn::route` (which hands answers over unlocked) finds the mark when
    /// the hand-over fails.
    fn give_up(
        &mut self,
        id: u64,
        abandon: Option<Abandon>,
        rx: &mut oneshot::Receiver<Frame>,
    ) -> After {
        // From here on the answer can no longer be handed over (the sender sees the receiver
        // closed, and dropping the sender wakes nobody).
        rx.close();
        if let Some(slot) = self.pending.get_mut(&id) {
            // Still pending: cancel it on the broker.
            match abandon {
                Some(abandon) => *slot = Pending::Abandoned(abandon),
                None => {
                    self.pending.remove(&id);
                }
            }
            return After::writer(self.send(Frame::Cancel { id }));
        }
        let Some(abandon) = abandon else {
            return After::default();
        };
        match rx.try_recv() {
            // Answered with a grant before we gave up: release it now.
            Ok(frame @ (Frame::Granted(_) | Frame::GrantedAll(_))) => {
                self.resolve_abandoned(abandon, frame)
            }
            // `route` took the answer out of `pending` and is handing it over: the hand-over
            // fails now and `route` resolves this mark (releasing a grant) under the lock.
            // (After `close`, tokio reports a value not yet sent as `Closed`, not `Empty`.)
            Err(TryRecvError::Empty | TryRecvError::Closed) if !self.closed => {
                self.pending.insert(id, Pending::Abandoned(abandon));
                After::default()
            }
            // Any other answer needs nothing; or the connection is gone.
            Ok(_) | Err(_) => After::default(),
        }
    }

    /// Queues a fire-and-forget release of a lease nobody is waiting for any more.
    fn release_unwanted(&mut self, key: &Bytes, grant: lockbroker_proto::Granted) -> bool {
        let id = self.fresh_id();
        self.send(Frame::Release(Release {
            id,
            key: grant.rewritten.unwrap_or_else(|| key.clone()),
            fence: grant.fence,
            ack: false,
            secret: grant.secret,
        }))
    }

    /// Queues fire-and-forget releases of every lease of a multi-key grant nobody waits for.
    fn release_all_unwanted(&mut self, grant: lockbroker_proto::GrantedAll) -> bool {
        let mut wake = false;
        for lease in grant.leases {
            let id = self.fresh_id();
            wake |= self.send(Frame::Release(Release {
                id,
                key: lease.key,
                fence: lease.fence,
                ack: false,
                secret: lease.secret,
            }));
        }
        wake
    }

    /// Takes the pending entry answered by `frame`.
    fn route(&mut self, id: u64, frame: Frame) -> Routed {
        match self.pending.remove(&id) {
            Some(Pending::Waiting(tx)) => Routed::Deliver(tx, frame),
            Some(Pending::Abandoned(abandon)) => {
                Routed::Done(self.resolve_abandoned(abandon, frame))
            }
            None => Routed::Done(After::default()),
        }
    }

    /// The answer to request `id` could not be handed over: its requester gave up meanwhile.
    /// An acquire was marked abandoned by `give_up`: resolve it. Otherwise drop the answer.
    fn undelivered(&mut self, id: u64, frame: Frame) -> After {
        match self.pending.remove(&id) {
            Some(Pending::Abandoned(abandon)) => self.resolve_abandoned(abandon, frame),
            // No mark: a non-acquire request that timed out (`forget`). A `Waiting` entry
            // cannot be here (`route` took it and ids are not reused).
            _ => After::default(),
        }
    }

    /// The broker answered an abandoned acquire: a grant is released at once — through its
    /// [`LateGrant`] if it has one (and a runtime to run it on), else on this connection.
    fn resolve_abandoned(&mut self, abandon: Abandon, frame: Frame) -> After {
        match frame {
            Frame::Granted(g) => match abandon.late {
                Some(late) if tokio::runtime::Handle::try_current().is_ok() => After {
                    wake_writer: false,
                    late: Some(Box::new((late, g))),
                },
                _ => After::writer(self.release_unwanted(&abandon.key, g)),
            },
            Frame::GrantedAll(g) => After::writer(self.release_all_unwanted(g)),
            _ => After::default(),
        }
    }

    /// The reader ended: marks the connection gone and returns the pending table, whose
    /// dropped senders wake every waiting request with "disconnected".
    fn close(&mut self) -> HashMap<u64, Pending> {
        self.closed = true;
        self.out = Vec::new();
        std::mem::take(&mut self.pending)
    }
}

/// The broker's side of the control stream, cut into frames. A frame that does not decode is
/// stepped over by its length prefix (its bytes dropped as they arrive, never buffered whole)
/// rather than taken for the end of the stream.
struct Inbound {
    buf: BytesMut,
    /// Bytes of a frame being stepped over that have not arrived yet.
    skip: usize,
}

/// What [`Inbound::next`] found at the front of the stream.
enum Next {
    Frame(Frame),
    /// A frame that does not decode (`error`) was stepped over, or is being stepped over as its
    /// bytes arrive; `id` is the request it answered, when that could be read.
    Skipped {
        id: Option<u64>,
        error: DecodeError,
    },
    /// More bytes are needed.
    More,
    /// The stream cannot be followed any further.
    Lost(DecodeError),
}

impl Inbound {
    fn next(&mut self, limits: &Limits) -> Next {
        if self.skip > 0 {
            let n = self.skip.min(self.buf.len());
            self.buf.advance(n);
            self.skip -= n;
            if self.skip > 0 {
                return Next::More;
            }
        }
        let error = match decode(&self.buf, limits) {
            Ok(Some((frame, n))) => {
                self.buf.advance(n);
                return Next::Frame(frame);
            }
            Ok(None) => return Next::More,
            Err(e) => e,
        };
        // Any other decode error is of a frame no longer than the limit.
        if matches!(error, DecodeError::FrameTooLarge { size, .. } if size > MAX_SKIP) {
            return Next::Lost(error);
        }
        // Waits for the frame's id (if it has one) before stepping over it.
        let Some(head) = frame_head(&self.buf) else {
            return Next::More;
        };
        let n = head.total.min(self.buf.len());
        self.buf.advance(n);
        self.skip = head.total - n;
        Next::Skipped { id: head.id, error }
    }
}

/// A fresh connection id.
fn next_conn_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

thread_local! {
    /// An empty frame queue for `Conn::after` to swap in (see there).
    static SPARE_FRAMES: std::cell::Cell<Vec<Frame>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A connection and its control stream.
pub(crate) struct Conn {
    /// This connection among the client's (what `LeaseEnded` pushes are tagged with).
    id: u64,
    /// The broker's address as dialled, `host:port` (empty for an embedded connection).
    addr: String,
    /// Set when the client stopped sending new requests here (it did not answer in time).
    left: AtomicBool,
    link: Link,
    welcome: Welcome,
    limits: Limits,
    state: Mutex<State>,
    /// Set with `State::closed` (read without the state lock: every request asks).
    closed: AtomicBool,
    /// Wakes the writer task: frames are queued, or the connection ended.
    writer: Notify,
    /// Where the broker's pushes go (`LeaseEnded`, `ShardMap`).
    pushes: Pushes,
}

impl Conn {
    /// Opens the control stream, says Hello and waits for Welcome. `member_within`: the
    /// client was given several brokers, which must be members of one cluster — such a broker
    /// sends its shard map right after `Welcome`; one that sends none within this time is not
    /// a cluster member and is refused (`Error::Invalid`).
    pub(crate) async fn open(
        addr: String,
        quic: quinn::Connection,
        token: Option<String>,
        client_name: String,
        pushes: Pushes,
        member_within: Option<Duration>,
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
        if let Some(within) = member_within {
            let map = tokio::time::timeout(within, async {
                loop {
                    match decode(&buf, &limits) {
                        Ok(Some((Frame::ShardMap(m), n))) => {
                            buf.advance(n);
                            return Some(m);
                        }
                        Ok(Some(_)) | Err(_) => return None,
                        Ok(None) => {}
                    }
                    match recv.read_buf(&mut buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    }
                }
            })
            .await
            .ok()
            .flatten();
            match map {
                Some(m) => pushes.routes.update(m),
                None => {
                    quic.close(0u32.into(), b"not a cluster member");
                    return Err(Error::Invalid(format!(
                        "{addr} is not in cluster mode (it sent no shard map): a list of \
                         brokers is only for the members of one cluster; give a single broker \
                         alone"
                    )));
                }
            }
        }
        let limits = Limits {
            max_frame: welcome.max_frame as usize,
            max_key: welcome.max_key as usize,
        };
        let conn = Arc::new(Conn {
            id: next_conn_id(),
            addr,
            left: AtomicBool::new(false),
            link: Link::Quic(quic),
            welcome,
            limits,
            state: Mutex::new(State {
                pending: HashMap::new(),
                next_id: 1,
                out: Vec::with_capacity(4096),
                sink: Sink::Quic(send),
                failed: false,
                closed: false,
            }),
            closed: AtomicBool::new(false),
            writer: Notify::new(),
            pushes,
        });
        tokio::spawn(conn.clone().write_loop());
        tokio::spawn(conn.clone().read_loop(recv, buf));
        Ok(conn)
    }

    /// A session of the in-process table `engine` (an embedded client's connection).
    pub(crate) fn open_local(engine: Arc<Engine>, pushes: Pushes) -> Arc<Conn> {
        let welcome = engine.open_session();
        let session = welcome.session;
        let conn = Arc::new(Conn {
            id: next_conn_id(),
            addr: String::new(),
            left: AtomicBool::new(false),
            link: Link::Local {
                engine: engine.clone(),
                session,
            },
            welcome,
            limits: Limits::default(),
            state: Mutex::new(State {
                pending: HashMap::new(),
                next_id: 1,
                out: Vec::new(),
                sink: Sink::Local(Vec::new()),
                failed: false,
                closed: false,
            }),
            closed: AtomicBool::new(false),
            writer: Notify::new(),
            pushes,
        });
        let deliver: std::sync::Weak<dyn crate::embedded::Deliver> = Arc::downgrade(&conn) as _;
        engine.attach(session, deliver);
        conn
    }

    /// Does what a `State` method left to do; call with the lock released.
    fn after(&self, after: After) {
        if let Some(late) = after.late {
            let (release, grant) = *late;
            tokio::spawn(release(grant));
        }
        if !after.wake_writer {
            return;
        }
        match &self.link {
            Link::Quic(_) => self.writer.notify_one(),
            // Hand the queued frames to the engine, in order, with the lock released (the
            // engine may answer into this very connection).
            Link::Local { engine, session } => {
                // The queue's vector is swapped with an empty one kept per thread, so queueing
                // a frame does not allocate every time.
                let mut frames = match &mut self.state.lock().sink {
                    Sink::Local(queued) => std::mem::replace(queued, SPARE_FRAMES.take()),
                    Sink::Quic(_) => Vec::new(),
                };
                for frame in frames.drain(..) {
                    engine.handle(*session, frame);
                }
                SPARE_FRAMES.set(frames);
            }
        }
    }

    /// An embedded connection that is open: its engine and session, for the direct calls
    /// (`Engine::grant_now`, `Engine::release_now`) that skip frames and reply channels.
    pub(crate) fn local(&self) -> Option<(&Arc<Engine>, u64)> {
        match &self.link {
            Link::Local { engine, session } if !self.is_closed() => Some((engine, *session)),
            _ => None,
        }
    }

    /// An embedded connection's engine, open or not.
    pub(crate) fn engine(&self) -> Option<&Arc<Engine>> {
        match &self.link {
            Link::Local { engine, .. } => Some(engine),
            Link::Quic(_) => None,
        }
    }

    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// This connection's id among the client's.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The broker's address as dialled, `host:port`.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Stops new requests going here (see [`Conn::is_usable`]); what is in flight carries on.
    pub(crate) fn leave(&self) {
        self.left.store(true, Ordering::Release);
    }

    /// Open and not left: new requests may go here.
    pub(crate) fn is_usable(&self) -> bool {
        !self.is_closed() && !self.left.load(Ordering::Acquire)
    }

    /// Marks the connection gone (see `State::close`).
    fn close_state(&self) -> HashMap<u64, Pending> {
        let pending = self.state.lock().close();
        self.closed.store(true, Ordering::Release);
        pending
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
        let (tx, rx) = oneshot::channel();
        let sent = self.state.lock().request(build, tx);
        match sent {
            Some((id, after)) => {
                self.after(after);
                Ok((id, rx))
            }
            None => Err(self.disconnected()),
        }
    }

    /// Sends a frame that gets no answer, built around a fresh id (nothing if the connection
    /// is gone).
    pub(crate) fn post(&self, build: impl FnOnce(u64) -> Frame) {
        let wake_writer = {
            let mut state = self.state.lock();
            let id = state.fresh_id();
            state.send(build(id))
        };
        self.after(After::writer(wake_writer));
    }

    /// Gives up on request `id`, whose answer would come on `rx`. Still pending: cancel it on
    /// the broker; for an acquire (`key` set), a grant that crosses the cancel is released when
    /// it arrives. Already answered with a grant: release it now.
    pub(crate) fn give_up(
        &self,
        id: u64,
        abandon: Option<Abandon>,
        mut rx: oneshot::Receiver<Frame>,
    ) {
        let after = self.state.lock().give_up(id, abandon, &mut rx);
        self.after(after);
    }

    /// Forgets a pending request whose caller stopped waiting (non-acquire requests).
    pub(crate) fn forget(&self, id: u64) {
        // Bound so the entry is dropped after the guard.
        let _entry = self.state.lock().pending.remove(&id);
    }

    /// Closes the connection on purpose: the broker releases this session's leases at once.
    pub(crate) fn close(&self) {
        match &self.link {
            Link::Quic(quic) => quic.close(CLOSE_CLEAN.into(), b"bye"),
            Link::Local { engine, session } => {
                engine.close_session(*session);
                // Dropping every waiting sender wakes its request with "disconnected".
                drop(self.close_state());
            }
        }
    }

    pub(crate) fn disconnected(&self) -> Error {
        Error::Disconnected(match &self.link {
            Link::Quic(quic) => quic
                .close_reason()
                .map_or_else(|| "connection closed".to_owned(), |r| r.to_string()),
            Link::Local { .. } => "the embedded client was closed".to_owned(),
        })
    }

    /// Flushes frames queued while the stream was flow-control blocked or while other
    /// requests were in flight; ends with the connection.
    async fn write_loop(self: Arc<Self>) {
        loop {
            self.writer.notified().await;
            // Let frames produced in the same burst join this write.
            tokio::task::yield_now().await;
            if !poll_fn(|cx| self.state.lock().poll_writer(cx)).await {
                return;
            }
        }
    }

    async fn read_loop(self: Arc<Self>, mut recv: quinn::RecvStream, buf: BytesMut) {
        let mut inbound = Inbound { buf, skip: 0 };
        'read: loop {
            loop {
                match inbound.next(&self.limits) {
                    Next::Frame(frame) => self.route(frame),
                    Next::Skipped { id, error } => self.skipped(id, &error),
                    Next::More => break,
                    Next::Lost(e) => {
                        tracing::warn!("broker sent a frame that cannot be stepped over: {e}");
                        if let Link::Quic(quic) = &self.link {
                            quic.close(1u32.into(), b"bad frame");
                        }
                        break 'read;
                    }
                }
            }
            match recv.read_buf(&mut inbound.buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let pending = self.close_state();
        self.writer.notify_one();
        // Dropping every waiting sender wakes its request with "disconnected".
        drop(pending);
    }

    /// A frame from the broker that does not decode was stepped over: the request it answered
    /// (if its id could be read) fails with the decode error; the connection carries on.
    fn skipped(&self, id: Option<u64>, error: &DecodeError) {
        match id {
            Some(id) if id != 0 => {
                tracing::warn!(
                    request = id,
                    "skipped an unreadable answer from the broker: {error}"
                );
                // Handed to the requester like an error answer (`Error::Protocol`).
                self.route(Frame::Error {
                    id,
                    code: error.code(),
                    message: format!(
                        "the broker's answer could not be read and was skipped: {error}"
                    ),
                });
            }
            _ => tracing::warn!(
                "skipped an unreadable frame from the broker (no request to fail): {error}"
            ),
        }
    }

    /// Hands a frame from the broker (or the embedded engine) to whoever waits for it.
    pub(crate) fn route(&self, frame: Frame) {
        let id = frame.id();
        if id == 0 {
            match frame {
                Frame::Error { code, message, .. } => {
                    tracing::warn!("broker: {code:?}: {message}");
                }
                Frame::LeaseEnded {
                    fence,
                    reason,
                    message,
                    ..
                } => {
                    // No receiver: no guard is alive to care.
                    let why = format!("the broker ended the lease ({reason:?}): {message}");
                    let _ = self.pushes.lease_ended.send(LeaseEnd {
                        conn: self.id,
                        fence,
                        reason,
                        why,
                    });
                }
                Frame::ShardMap(m) => self.pushes.routes.update(m),
                Frame::Recall { key, fence } => {
                    if let Some(cache) = self
                        .pushes
                        .recalls
                        .as_ref()
                        .and_then(std::sync::Weak::upgrade)
                    {
                        cache.recall(&key, fence);
                    }
                }
                _ => {}
            }
            return;
        }
        let routed = self.state.lock().route(id, frame);
        match routed {
            Routed::Deliver(tx, frame) => {
                if let Err(frame) = tx.send(frame) {
                    // The requester gave up between our taking the entry and this hand-over.
                    let after = self.state.lock().undelivered(id, frame);
                    self.after(after);
                }
            }
            Routed::Done(after) => self.after(after),
        }
    }
}

impl crate::embedded::Deliver for Conn {
    fn deliver(&self, frame: Frame) {
        self.route(frame);
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use lockbroker_proto::{DecodeError, ErrorCode, Frame, Limits, encode};

    use super::{Inbound, MAX_SKIP, Next};

    fn bytes(f: &Frame) -> Vec<u8> {
        let mut out = Vec::new();
        encode(f, &mut out);
        out
    }

    /// Feeds `input` to an `Inbound` in `chunk`-byte pieces and collects what it finds.
    fn read_in_chunks(input: &[u8], chunk: usize, limits: &Limits) -> Vec<String> {
        let mut inbound = Inbound {
            buf: BytesMut::new(),
            skip: 0,
        };
        let mut seen = Vec::new();
        for piece in input.chunks(chunk) {
            inbound.buf.extend_from_slice(piece);
            loop {
                match inbound.next(limits) {
                    Next::Frame(f) => seen.push(format!("{f:?}")),
                    Next::Skipped { id, error } => seen.push(format!("skipped {id:?}: {error}")),
                    Next::More => break,
                    Next::Lost(e) => {
                        seen.push(format!("lost: {e}"));
                        return seen;
                    }
                }
            }
            // Never more than one chunk plus a frame's head buffered while stepping over.
            assert!(inbound.buf.len() <= limits.max_frame + chunk);
        }
        seen
    }

    #[test]
    fn an_unreadable_frame_is_stepped_over_however_its_bytes_arrive() {
        let limits = Limits::default();
        let mut input = bytes(&Frame::Pong { id: 1 });
        // Too large (70 KB), answering request 2.
        input.extend(bytes(&Frame::error(2, ErrorCode::Busy, "x".repeat(70_000))));
        // Malformed (a byte too many), answering request 3.
        let mut bad = bytes(&Frame::Pong { id: 3 });
        bad.push(0);
        bad[0] += 1;
        input.extend(bad);
        // An unknown kind: no request to name.
        input.extend([2, 0, 0, 0, lockbroker_proto::PROTOCOL_VERSION, 200]);
        input.extend(bytes(&Frame::Pong { id: 4 }));
        for chunk in [1, 7, 13, 1000, 100_000] {
            let seen = read_in_chunks(&input, chunk, &limits);
            assert_eq!(seen.len(), 5, "chunk {chunk}: {seen:?}");
            assert_eq!(seen[0], "Pong { id: 1 }");
            assert!(
                seen[1].starts_with("skipped Some(2): frame of 70"),
                "{seen:?}"
            );
            assert_eq!(
                seen[2],
                format!(
                    "skipped Some(3): {}",
                    DecodeError::Malformed("trailing bytes")
                )
            );
            assert_eq!(seen[3], "skipped None: unknown frame kind 200");
            assert_eq!(seen[4], "Pong { id: 4 }");
        }
    }

    #[test]
    fn a_length_beyond_the_skip_bound_loses_the_stream() {
        let limits = Limits::default();
        let too_far = u32::try_from(MAX_SKIP).unwrap_or(u32::MAX).to_le_bytes();
        let seen = read_in_chunks(&too_far, 4, &limits);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("lost: frame of"), "{seen:?}");
        // Exactly at the bound it is still stepped over (once its head is in).
        let at = u32::try_from(MAX_SKIP - 4)
            .unwrap_or(u32::MAX)
            .to_le_bytes();
        let mut input = at.to_vec();
        input.extend([lockbroker_proto::PROTOCOL_VERSION, 15]);
        input.extend(9u64.to_le_bytes());
        let seen = read_in_chunks(&input, 3, &limits);
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("skipped Some(9): frame of"), "{seen:?}");
    }
}
