//! The SDK in this process: a tokio runtime and a client, made on first use and made again in
//! a child after `fork()` (gunicorn, uWSGI, multiprocessing's fork start method). A forked
//! child has the parent's memory but none of its threads: the parent's runtime and
//! connections are never used, dropped or closed there (`std::mem::forget`) — they are the
//! parent's, and its leases stay the parent's.

use std::sync::Arc;
use std::time::Duration;

use lockbroker_sdk::{Client, ClientBuilder};
use parking_lot::Mutex;
use pyo3::prelude::*;

/// How to build the client (kept to build it again in a forked child).
#[derive(Clone, Debug, Default)]
pub(crate) struct Options {
    pub urls: Vec<String>,
    pub ca_files: Vec<String>,
    pub token: Option<String>,
    pub owner: Option<String>,
    pub embedded: bool,
    pub cache_idle: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    /// A client certificate and its key (PEM) for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// One process's runtime and client.
pub(crate) struct Process {
    pub pid: u32,
    /// The runtime's handle (what runs and blocks on futures).
    pub rt: tokio::runtime::Handle,
    /// The runtime itself: taken when dropped, to shut it down without waiting (the last
    /// reference may go on one of its own threads).
    runtime: Option<tokio::runtime::Runtime>,
    /// The client, connected on first use (a networked client reconnects by itself after).
    pub client: Arc<tokio::sync::OnceCell<Client>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Process {
    /// Whether this is the process it was made in.
    pub(crate) fn is_current(&self) -> bool {
        self.pid == std::process::id()
    }
}

/// The process slot of one `NativeClient`.
#[derive(Default)]
pub(crate) struct Slot {
    process: Mutex<Option<Arc<Process>>>,
}

impl Slot {
    /// This process's runtime and client holder: made now if there is none, or if the one
    /// there was made in the parent before a `fork()`.
    pub(crate) fn current(&self) -> PyResult<Arc<Process>> {
        let mut slot = self.process.lock();
        if let Some(p) = slot.as_ref() {
            if p.is_current() {
                return Ok(p.clone());
            }
            // The parent's: its threads do not exist here, so it must never be dropped.
            std::mem::forget(slot.take());
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lockbroker")
            .enable_all()
            .build()
            .map_err(|e| {
                crate::errors::LockError::new_err(format!("cannot start a runtime: {e}"))
            })?;
        let p = Arc::new(Process {
            pid: std::process::id(),
            rt: rt.handle().clone(),
            runtime: Some(rt),
            client: Arc::new(tokio::sync::OnceCell::new()),
        });
        *slot = Some(p.clone());
        Ok(p)
    }

    /// Closes this process's client, if it has one (leases held are released by the broker).
    pub(crate) fn close(&self, py: Python<'_>) {
        let p = self.process.lock().clone();
        if let Some(p) = p.filter(|p| p.is_current())
            && let Some(client) = p.client.get().cloned()
        {
            py.detach(|| p.rt.block_on(client.close()));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(p) = self.process.get_mut().take()
            && !p.is_current()
        {
            std::mem::forget(p);
        }
    }
}

/// The client of `opts`, connected (the first call in a process).
pub(crate) async fn client(
    cell: &tokio::sync::OnceCell<Client>,
    opts: &Options,
) -> lockbroker_sdk::Result<Client> {
    cell.get_or_try_init(|| connect(opts)).await.cloned()
}

async fn connect(opts: &Options) -> lockbroker_sdk::Result<Client> {
    let mut b: ClientBuilder = Client::builder();
    if opts.embedded {
        b = b.embedded();
    }
    for url in &opts.urls {
        b = b.broker(url.clone());
    }
    for ca in &opts.ca_files {
        b = b.ca_file(ca);
    }
    if let Some((cert, key)) = &opts.identity {
        b = b.client_cert(cert.clone(), key.clone());
    }
    if let Some(t) = &opts.token {
        b = b.token(t.clone());
    }
    if let Some(o) = &opts.owner {
        b = b.owner(o.clone());
    }
    if let Some(idle) = opts.cache_idle {
        b = b.cache_locks(idle);
    }
    if let Some(d) = opts.connect_timeout {
        b = b.connect_timeout(d);
    }
    if let Some(d) = opts.request_timeout {
        b = b.request_timeout(d);
    }
    b = b.name(format!("lockbroker-python/{}", env!("CARGO_PKG_VERSION")));
    b.connect().await
}
