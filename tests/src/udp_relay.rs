//! An in-process UDP relay in front of one broker whose answers a test can *hold*: while held,
//! every datagram from the broker to its clients waits in the relay (in order), and is
//! delivered when the hold ends — an answer delayed on the network, with both ends alive and
//! the connection open. Datagrams from the clients always pass.
//!
//! Each client address gets its own upstream socket (so the broker tells the clients apart),
//! and a task relaying that socket's datagrams back. Everything stops when the relay is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Largest datagram relayed (QUIC's are far smaller).
const MAX_DATAGRAM: usize = 65_535;

/// The relay; it stops (with all its tasks) when dropped.
pub struct UdpRelay {
    /// Where clients send to reach the broker.
    pub addr: SocketAddr,
    held: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl UdpRelay {
    /// Relays between an ephemeral loopback port and `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let (held, held_rx) = watch::channel(false);
        let task = tokio::spawn(relay(front, upstream, held_rx));
        Ok(UdpRelay { addr, held, task })
    }

    /// Holds (true) or delivers, then passes again (false), the broker's datagrams.
    pub fn hold_answers(&self, hold: bool) {
        self.held.send_replace(hold);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the clients' datagrams until aborted (its `JoinSet` aborts the return tasks with it).
async fn relay(front: Arc<UdpSocket>, upstream: SocketAddr, held: watch::Receiver<bool>) {
    let mut back = JoinSet::new();
    let mut sockets: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let Ok((n, client)) = front.recv_from(&mut buf).await else {
            return;
        };
        let socket = match sockets.get(&client) {
            Some(s) => s.clone(),
            None => {
                let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if s.connect(upstream).await.is_err() {
                    continue;
                }
                let s = Arc::new(s);
                sockets.insert(client, s.clone());
                back.spawn(answers(s.clone(), front.clone(), client, held.clone()));
                s
            }
        };
        let _ = socket.send(&buf[..n]).await;
    }
}

/// Relays the broker's datagrams for `client`, holding them while the hold is on.
async fn answers(
    socket: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    mut held: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut waiting: Vec<Vec<u8>> = Vec::new();
    loop {
        tokio::select! {
            got = socket.recv(&mut buf) => {
                let Ok(n) = got else { return };
                waiting.push(buf[..n].to_vec());
                if !*held.borrow() {
                    deliver(&front, client, &mut waiting).await;
                }
            }
            changed = held.changed() => {
                if changed.is_err() {
                    return;
                }
                if !*held.borrow_and_update() {
                    deliver(&front, client, &mut waiting).await;
                }
            }
        }
    }
}

/// Sends `client` the datagrams waiting for it, in order.
async fn deliver(front: &UdpSocket, client: SocketAddr, waiting: &mut Vec<Vec<u8>>) {
    for datagram in waiting.drain(..) {
        let _ = front.send_to(&datagram, client).await;
    }
}
