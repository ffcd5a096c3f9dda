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
//! Wakeups: quinn keeps one waker per blocked stream, the last one polled. A write from a
//! pushing task therefore polls with the *writer task's* waker (kept by [`Outbox::run_writer`]
//! each time it polls), never a no-op one: a no-op waker polled while the writer waited for
//! flow control replaced the writer's, and the answers then stayed queued for good (the
//! connection open, nobody woken — issue 23's "answers that never arrive").
//!
//! Backpressure: the read loop checks [`Outbox::queued`] before handling each frame; past the
//! session's cap it stops reading (so QUIC flow control pushes back on the client) and waits,
//! bounded, in [`Outbox::wait_below`] for the writer to drain it.
//!
//! Every outbox of a broker adds its queued bytes to one shared [`OutboxBudget`]
//! ([`Outbox::count_in`]), so the read loops can hold the sum under
//! `limits.max_outbox_total_bytes` (`Broker::outbox_cap`).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lockbroker_proto::{Frame, encode};
use parking_lot::Mutex;
use tokio::sync::Notify;

/// A queue that grew past this is given back to the allocator once drained.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Bytes queued in all outboxes of a broker (an O(1) read for the read loops).
#[derive(Debug, Default)]
pub struct OutboxBudget(AtomicUsize);

impl OutboxBudget {
    /// Bytes queued over all sessions now.
    #[inline]
    pub fn queued(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

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
    /// The writer task's waker, as of its last poll: every write polls with it, so the stream
    /// wakes the writer when it takes data again, whoever wrote last.
    writer: Option<Waker>,
    /// When the stream last took bytes (or the queue was last empty): a queue that has not
    /// moved for long is a stalled writer ([`Outbox::stalled_for`]).
    progress: Option<std::time::Instant>,
    /// The broker's sum of queued bytes, which this queue's length is part of.
    budget: Option<Arc<OutboxBudget>>,
}

impl Inner {
    /// Tells the budget the queue went from `before` bytes to its length now.
    #[inline]
    fn account(&self, before: usize) {
        let Some(b) = &self.budget else { return };
        let now = self.buf.len();
        if now > before {
            b.0.fetch_add(now - before, Ordering::Relaxed);
        } else if now < before {
            b.0.fetch_sub(before - now, Ordering::Relaxed);
        }
    }

    /// Writes what the stream takes without waiting: true when nothing is left queued. Polls
    /// with the writer's waker (see the module doc); the caller wakes the writer when false.
    fn try_flush(&mut self) -> bool {
        let waker = self.writer.clone();
        let waker = waker.as_ref().unwrap_or(Waker::noop());
        self.flush(&mut Context::from_waker(waker)).is_ready()
    }

    /// Writes as much of `buf` as the stream takes now. `Ready(Ok)` when `buf` is empty,
    /// `Pending` when the stream is blocked (`cx` is woken when it is writable again).
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let before = self.buf.len();
        let r = self.write_out(cx);
        self.account(before);
        r
    }

    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let Some(send) = self.send.as_mut() else {
            return Poll::Pending;
        };
        while !self.buf.is_empty() {
            match Pin::new(&mut *send).poll_write(cx, &self.buf) {
                Poll::Ready(Ok(n)) if n == self.buf.len() => {
                    self.buf.clear();
                    self.progress = None;
                }
                Poll::Ready(Ok(n)) => {
                    self.buf.drain(..n);
                    self.progress = Some(std::time::Instant::now());
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
            let mut inner = self.inner.lock();
            if inner.failed {
                return;
            }
            let was_empty = inner.buf.is_empty();
            if was_empty {
                inner.progress = Some(std::time::Instant::now());
            }
            let before = inner.buf.len();
            encode(frame, &mut inner.buf);
            inner.account(before);
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

    /// Counts this queue's bytes in `budget` from now on (once, before the first frame).
    pub fn count_in(&self, budget: Arc<OutboxBudget>) {
        let mut inner = self.inner.lock();
        budget.0.fetch_add(inner.buf.len(), Ordering::Relaxed);
        inner.budget = Some(budget);
    }

    /// Starts a batch: frames pushed until [`Outbox::end_batch`] are only appended.
    pub fn begin_batch(&self) {
        self.inner.lock().batching = true;
    }

    /// Ends a batch: writes everything it appended in one write (or leaves it to the writer
    /// task when flow control blocks the stream).
    pub fn end_batch(&self) {
        let wake_writer = {
            let mut inner = self.inner.lock();
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
            let mut inner = self.inner.lock();
            if !inner
                .writer
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                inner.writer = Some(cx.waker().clone());
            }
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
        self.inner.lock().buf.len()
    }

    /// How long answers have been queued without the stream taking any (`None`: nothing is
    /// queued, or the stream took bytes just now). The stall detector and `/metrics` read it.
    pub fn stalled_for(&self) -> Option<Duration> {
        let inner = self.inner.lock();
        if inner.buf.is_empty() {
            return None;
        }
        inner.progress.map(|p| p.elapsed())
    }

    /// Resolves once at most `limit` bytes are queued (or the connection failed).
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            {
                let inner = self.inner.lock();
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
        let waker = poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
        {
            let mut inner = self.inner.lock();
            inner.send = Some(send);
            inner.writer = Some(waker);
        }
        loop {
            if self.drain().await.is_err() {
                return;
            }
            if self.closing.load(Ordering::Acquire) {
                if self.drain().await.is_err() {
                    return;
                }
                let send = self.inner.lock().send.take();
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

impl Drop for Outbox {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        if let Some(b) = &inner.budget {
            b.0.fetch_sub(inner.buf.len(), Ordering::Relaxed);
        }
    }
}
