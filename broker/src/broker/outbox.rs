//! A session's outbound queue. A frame pushed while nothing is queued is written straight into
//! the QUIC stream by the pushing task (no hand-off to another task: quinn buffers it and its
//! connection driver packs everything written before it runs into as few packets as possible).
//! Only when the stream is flow-control blocked do frames queue up in one buffer, which the
//! writer task flushes in a single write as soon as the stream accepts data again.
//!
//! While the session's read loop handles a burst of frames that arrived together it opens a
//! *batch*: every frame pushed meanwhile (its own replies and grants pushed by other sessions)
//! is only appended, and the batch's end writes them all with one stream write.
//!
//! Backpressure: the read loop checks [`Outbox::queued`] before handling each frame; past the
//! session's cap it stops reading (so QUIC flow control pushes back on the client) and waits,
//! bounded, in [`Outbox::wait_below`] for the writer to drain it.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lockbroker_proto::{Frame, encode};
use tokio::sync::Notify;

/// A queue that grew past this is given back to the allocator once drained.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Frames waiting to be written to one session's control stream.
#[derive(Default)]
pub struct Outbox {
    inner: Mutex<Inner>,
    notify: Notify,
    /// Woken whenever the stream took queued bytes (for [`Outbox::wait_below`]).
    drained: Notify,
    closing: AtomicBool,
}

#[derive(Default)]
struct Inner {
    /// Encoded frames not yet accepted by the stream, in order.
    buf: Vec<u8>,
    /// The control stream, once the writer runs (until it finishes the stream).
    send: Option<quinn::SendStream>,
    /// A write failed: the connection is gone, frames are dropped.
    failed: bool,
    /// The read loop is handling a burst: append only, [`Outbox::end_batch`] writes.
    batching: bool,
}

impl Inner {
    /// Writes what the stream takes without waiting: true when nothing is left queued.
    fn try_flush(&mut self) -> bool {
        self.flush(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    /// Writes as much of `buf` as the stream takes now. `Ready(Ok)` when `buf` is empty,
    /// `Pending` when the stream is blocked (`cx` is woken when it is writable again).
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let Some(send) = self.send.as_mut() else {
            return Poll::Pending;
        };
        while !self.buf.is_empty() {
            match Pin::new(&mut *send).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(n)) if n == self.buf.len() => self.buf.clear(),
                Poll::Ready(Ok(n)) => {
                    self.buf.drain(..n);
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!("control stream write failed: {e}");
                    self.failed = true;
                    self.buf.clear();
                    return Poll::Ready(Err(()));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl Outbox {
    /// Queues a frame and, if nothing was queued before it, writes it into the stream at once.
    /// Never blocks on I/O.
    pub fn push(&self, frame: &Frame) {
        let wake_writer = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            if inner.failed {
                return;
            }
            let was_empty = inner.buf.is_empty();
            encode(frame, &mut inner.buf);
            if inner.batching {
                return;
            }
            // Frames queued before this one are the writer's: keep the order.
            !(was_empty && inner.send.is_some() && inner.try_flush())
        };
        if wake_writer {
            self.notify.notify_one();
        }
    }

    /// Starts a batch: frames pushed until [`Outbox::end_batch`] are only appended.
    pub fn begin_batch(&self) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .batching = true;
    }

    /// Ends a batch: writes everything it appended in one write (or leaves it to the writer
    /// task when flow control blocks the stream).
    pub fn end_batch(&self) {
        let wake_writer = {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            inner.batching = false;
            let flushed = inner.send.is_some() && inner.try_flush();
            !inner.buf.is_empty() && !flushed
        };
        if wake_writer {
            self.notify.notify_one();
        }
    }

    /// Asks the writer to flush what is queued, finish the stream and stop.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Writes whatever is queued, waiting for flow control as needed.
    async fn drain(&self) -> Result<(), ()> {
        poll_fn(|cx| {
            let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let before = inner.buf.len();
            let r = inner.flush(cx);
            if inner.buf.len() < before {
                self.drained.notify_waiters();
            }
            r
        })
        .await
    }

    /// Bytes queued and not yet taken by the stream.
    pub fn queued(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buf
            .len()
    }

    /// Resolves once at most `limit` bytes are queued (or the connection failed).
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
                if inner.failed || inner.buf.len() <= limit {
                    return;
                }
            }
            drained.await;
        }
    }

    /// The writer loop: owns the stream's flow-control waits. Runs until `close` (or a write
    /// error), then finishes the stream and waits (bounded by `grace`) for the peer to have
    /// read everything.
    pub async fn run_writer(&self, send: quinn::SendStream, grace: Duration) {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).send = Some(send);
        loop {
            if self.drain().await.is_err() {
                return;
            }
            if self.closing.load(Ordering::Acquire) {
                if self.drain().await.is_err() {
                    return;
                }
                let send = self
                    .inner
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .send
                    .take();
                if let Some(mut send) = send {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(grace, send.stopped()).await;
                }
                return;
            }
            self.notify.notified().await;
        }
    }
}
