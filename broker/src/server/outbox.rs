//! A session's outbound queue: frames from any thread are encoded into one buffer and a
//! single writer task flushes everything queued at once, so frames ready together share one
//! write (and usually one QUIC packet).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lockbroker_proto::{Frame, encode};
use tokio::sync::Notify;

/// Frames waiting to be written to one session's control stream.
#[derive(Default)]
pub struct Outbox {
    buf: Mutex<Vec<u8>>,
    notify: Notify,
    closing: AtomicBool,
}

impl Outbox {
    /// Queues a frame. Never blocks on I/O.
    pub fn push(&self, frame: &Frame) {
        {
            let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
            encode(frame, &mut buf);
        }
        self.notify.notify_one();
    }

    /// Asks the writer to flush what is queued, finish the stream and stop.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// The writer loop: runs until `close` (or a write error), then finishes the stream and
    /// waits (bounded by `grace`) for the peer to have read everything.
    pub async fn run_writer(&self, mut send: quinn::SendStream, grace: Duration) {
        let mut spare = Vec::with_capacity(4096);
        loop {
            self.notify.notified().await;
            // Let other frames produced in the same burst join this write.
            tokio::task::yield_now().await;
            {
                let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
                std::mem::swap(&mut *buf, &mut spare);
            }
            if !spare.is_empty() {
                if let Err(e) = send.write_all(&spare).await {
                    tracing::debug!("control stream write failed: {e}");
                    return;
                }
                spare.clear();
            }
            if self.closing.load(Ordering::Acquire) {
                let pending =
                    std::mem::take(&mut *self.buf.lock().unwrap_or_else(|e| e.into_inner()));
                if !pending.is_empty() && send.write_all(&pending).await.is_err() {
                    return;
                }
                let _ = send.finish();
                let _ = tokio::time::timeout(grace, send.stopped()).await;
                return;
            }
        }
    }
}
