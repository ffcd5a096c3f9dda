//! The locked-down WASI context given to plugins. Rust guests built for `wasm32-wasip2` import
//! a few WASI interfaces through `std` (environment for `RUST_BACKTRACE`, stderr for panic
//! messages, random for `HashMap` seeds, clocks), so the host links WASI p2 — but with nothing
//! behind it: no files (no preopens), no network (every socket use denied), no environment
//! variables, no arguments, stdin closed, stdout discarded. stderr goes to a small in-memory tail
//! buffer whose content is quoted in the deny reason when the instance traps (panic messages).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// Bytes of stderr kept per instance (the most recent ones).
const STDERR_TAIL: usize = 1024;

/// A WASI context with no capabilities; stderr goes to `stderr`.
pub fn locked_down_ctx(stderr: &TailPipe) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(wasmtime_wasi::p2::pipe::SinkOutputStream)
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}

/// An output stream that never fails and keeps only the last `STDERR_TAIL` bytes written.
#[derive(Clone, Debug, Default)]
pub struct TailPipe(Arc<Tail>);

#[derive(Debug, Default)]
struct Tail {
    buf: Mutex<Vec<u8>>,
    /// Bytes ever written (lets a caller take only what one call wrote, without locking).
    written: AtomicU64,
}

impl TailPipe {
    /// A new, empty tail.
    pub fn new() -> Self {
        Self::default()
    }

    fn push(&self, bytes: &[u8]) {
        self.0
            .written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        let mut buf = self.0.buf.lock();
        let bytes = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
        buf.extend_from_slice(bytes);
        if buf.len() > STDERR_TAIL {
            let excess = buf.len() - STDERR_TAIL;
            buf.drain(..excess);
        }
    }

    /// A position to pass to [`TailPipe::text_since`] later.
    pub fn mark(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// The retained text written after `mark` (lossy UTF-8, at most the tail size).
    pub fn text_since(&self, mark: u64) -> String {
        let buf = self.0.buf.lock();
        let new = self.0.written.load(Ordering::Relaxed).saturating_sub(mark);
        let new = usize::try_from(new).unwrap_or(usize::MAX).min(buf.len());
        String::from_utf8_lossy(&buf[buf.len() - new..]).into_owned()
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for TailPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail() {
        let pipe = TailPipe::new();
        pipe.push(&[b'a'; 1000]);
        let mark = pipe.mark();
        pipe.push(&[b'b'; 100]);
        let text = pipe.text_since(0);
        assert_eq!(text.len(), STDERR_TAIL);
        assert!(text.ends_with(&"b".repeat(100)));
        assert_eq!(pipe.text_since(mark), "b".repeat(100));
        pipe.push(&[b'c'; 5000]);
        assert_eq!(pipe.text_since(mark), "c".repeat(STDERR_TAIL));
        assert_eq!(pipe.text_since(pipe.mark()), "");
    }
}
