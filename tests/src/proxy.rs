//! An in-process TCP proxy between the broker and redis-server that a test (or the chaos
//! checker's nemesis) can *stall*:
//! while stalled, no byte is forwarded in either direction, yet every connection stays open
//! (a network partition that neither side can tell from a slow peer).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// The proxy; it stops (with all its connections) when dropped.
pub struct StallableProxy {
    pub addr: SocketAddr,
    stalled: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
}

impl StallableProxy {
    /// Listens on an ephemeral loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<StallableProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stalled, stall_rx) = watch::channel(false);
        let accept_task = tokio::spawn(accept_loop(listener, upstream, stall_rx));
        Ok(StallableProxy {
            addr,
            stalled,
            accept_task,
        })
    }

    /// `redis://<proxy>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Stops (true) or resumes (false) forwarding.
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.send_replace(stalled);
    }
}

impl Drop for StallableProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

/// Accepts until the proxy is dropped (the task is aborted, and its `JoinSet` with it aborts
/// every connection).
async fn accept_loop(listener: TcpListener, upstream: SocketAddr, stall: watch::Receiver<bool>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => {
                    connections.spawn(forward(inbound, upstream, stall.clone()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Forwards one connection both ways until either side closes.
async fn forward(inbound: TcpStream, upstream: SocketAddr, stall: watch::Receiver<bool>) {
    let Ok(Ok(outbound)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(upstream)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::select! {
        _ = pump(in_read, out_write, stall.clone()) => {}
        _ = pump(out_read, in_write, stall) => {}
    }
}

/// Copies bytes from `from` to `to`, holding each chunk while the proxy is stalled. Ends at
/// EOF or on an error.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stall: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stall.wait_for(|stalled| !*stalled).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
