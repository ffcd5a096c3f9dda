//! Account transfers with `lock_all`: each transfer locks both accounts at once — never one
//! and then the other — so transfers naming the same accounts in opposite orders (1→2 while
//! 2→1) cannot deadlock, and a transfer is not starved by a stream of single-account
//! operations (FIFO per key). Every lease has its own fence, to pass to the ledger's writes.
//!
//! `cargo run -p lockbroker-sdk --example account_transfer` (embedded); set `LOCKBROKER_URL`
//! and `LOCKBROKER_CA` to run it through a broker (in cluster mode, give the accounts of one
//! transfer a common `{tag}` so they share a shard).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockbroker_sdk::{Client, Error};

type Ledger = Arc<Mutex<HashMap<u32, i64>>>;

async fn transfer(
    client: &Client,
    ledger: &Ledger,
    from: u32,
    to: u32,
    amount: i64,
) -> Result<(), Error> {
    let leases = client
        .lock_all([format!("acct/{from}"), format!("acct/{to}")])
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(5))
        .await?;
    {
        let mut l = ledger.lock().map_err(|e| Error::Invalid(e.to_string()))?;
        *l.entry(from).or_default() -= amount;
        *l.entry(to).or_default() += amount;
    }
    for lease in leases {
        lease.unlock().await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = match std::env::var("LOCKBROKER_URL") {
        Ok(url) => Client::connect(&url).await?,
        Err(_) => Client::embedded(),
    };
    let ledger: Ledger = Arc::new(Mutex::new(HashMap::from([(1, 100), (2, 100), (3, 100)])));
    let mut tasks = Vec::new();
    for i in 0..30u32 {
        let (client, ledger) = (client.clone(), ledger.clone());
        // Opposite directions on the same accounts, all at the same time.
        let (from, to) = [(1, 2), (2, 1), (2, 3), (3, 1)][i as usize % 4];
        tasks.push(tokio::spawn(async move {
            transfer(&client, &ledger, from, to, 5).await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Error::Invalid(e.to_string()))??;
    }
    let balances = ledger
        .lock()
        .map_err(|e| Error::Invalid(e.to_string()))?
        .clone();
    let total: i64 = balances.values().sum();
    println!("30 concurrent transfers done, no deadlock; total still {total}: {balances:?}");
    client.close().await;
    Ok(())
}
