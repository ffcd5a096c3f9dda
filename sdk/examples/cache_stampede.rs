//! Cache-stampede guard: when a cached value expires, many workers notice at once; only one
//! should recompute it while the others wait for the result instead of hammering the database.
//!
//! Run a broker (`cargo run -p lockbroker -- serve`), then:
//! `LOCKBROKER_CA=.lockbroker/dev-cert.pem cargo run -p lockbroker-sdk --example cache_stampede`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbroker_sdk::{Client, Error};

/// A stand-in for a shared cache (Redis, memcached…): here a map shared by the workers.
type Cache = Arc<Mutex<HashMap<String, String>>>;

async fn get_or_compute(
    client: &Client,
    cache: &Cache,
    key: &str,
    worker: usize,
) -> Result<String, Error> {
    loop {
        if let Some(v) = cache.lock().unwrap().get(key).cloned() {
            return Ok(v);
        }
        // Only one worker recomputes; the others wait for the lock to be released (pushed by
        // the broker, no polling) and then read the cache.
        match client
            .try_lock(format!("cache/{key}"))
            .ttl(Duration::from_secs(10))
            .await
        {
            Ok(guard) => {
                println!(
                    "worker {worker}: recomputing {key} (fence {})",
                    guard.fence()
                );
                tokio::time::sleep(Duration::from_millis(300)).await; // the expensive query
                cache
                    .lock()
                    .unwrap()
                    .insert(key.to_owned(), format!("value computed by worker {worker}"));
                guard.unlock().await?;
            }
            Err(Error::Busy) => {
                client.wait_until_unlocked(format!("cache/{key}")).await?;
            }
            Err(e) => return Err(e),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("LOCKBROKER_URL").unwrap_or_else(|_| "quic://127.0.0.1:7420".into());
    let cache: Cache = Arc::default();
    let mut tasks = Vec::new();
    // One client per worker, as if each were its own process: one session holds a key once
    // (a client may also be shared by many tasks: each lock is its own lease and waits its turn).
    for worker in 0..8 {
        let client = Client::connect(&url).await?;
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            let v = get_or_compute(&client, &cache, "report", worker).await;
            client.close().await;
            v
        }));
    }
    for t in tasks {
        let v = t.await.expect("worker panicked")?;
        println!("got: {v}");
    }
    Ok(())
}
