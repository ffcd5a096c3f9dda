//! One function, two deployments. `refill_cache` takes a keyed lock through `Client`; the
//! monolith runs it on `Client::embedded()` (an in-process lock table: no broker, no network),
//! the service fleet on a broker — the function does not change, only how the client is built.
//!
//! `cargo run -p lockbroker-sdk --example monolith_to_cluster` runs it embedded. With a broker
//! running (`cargo run -p lockbroker -- serve`), set `LOCKBROKER_URL=quic://127.0.0.1:7420`
//! and `LOCKBROKER_CA=.lockbroker/dev-cert.pem` to run the very same code against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockbroker_sdk::{Client, Error};

/// Refills `key`'s cache entry once however many requests miss it at the same time: the
/// first task to get the lock refills, the others wait their turn (FIFO) and find it full.
async fn refill_cache(
    client: &Client,
    key: &str,
    refills: &AtomicU32,
    filled: &AtomicU32,
) -> Result<(), Error> {
    let guard = client
        .lock(format!("cache/{key}"))
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(5))
        .await?;
    if filled.load(Ordering::SeqCst) == 0 {
        refills.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await; // the expensive query
        filled.store(1, Ordering::SeqCst);
    }
    guard.unlock().await
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = match std::env::var("LOCKBROKER_URL") {
        Ok(url) => Client::connect(&url).await?,
        Err(_) => Client::embedded(),
    };
    let (refills, filled) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (client, refills, filled) = (client.clone(), refills.clone(), filled.clone());
        tasks.push(tokio::spawn(async move {
            refill_cache(&client, "user:42", &refills, &filled).await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Error::Invalid(e.to_string()))??;
    }
    println!(
        "32 concurrent misses, {} refill ({})",
        refills.load(Ordering::SeqCst),
        if std::env::var("LOCKBROKER_URL").is_ok() {
            "broker"
        } else {
            "embedded"
        }
    );
    client.close().await;
    Ok(())
}
