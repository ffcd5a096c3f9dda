//! Single-runner job: several replicas run the same scheduler; each tick, only the replica
//! that gets the lock runs the job. The lease is renewed while the job runs; if renewal fails
//! (`lost()`), the job stops, and the fencing token is passed to the storage it writes so a
//! stale runner's late writes can be refused.
//!
//! Run a broker (`cargo run -p lockbroker -- serve`), then start this example twice:
//! `LOCKBROKER_CA=.lockbroker/dev-cert.pem cargo run -p lockbroker-sdk --example single_runner`

use std::time::Duration;

use lockbroker_sdk::{Client, Error};

async fn run_job(fence: u64) {
    println!("running the nightly job with fence {fence}");
    // e.g. UPDATE jobs SET ... WHERE last_fence < $fence
    tokio::time::sleep(Duration::from_secs(2)).await;
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("LOCKBROKER_URL").unwrap_or_else(|_| "quic://127.0.0.1:7420".into());
    let client = Client::connect(&url).await?;
    for tick in 0..3 {
        match client
            .try_lock("jobs/nightly")
            .ttl(Duration::from_secs(5))
            .await
        {
            Ok(guard) => {
                tokio::select! {
                    () = run_job(guard.fence()) => guard.unlock().await?,
                    lost = guard.lost() => eprintln!("stopping: {lost}"),
                }
            }
            Err(Error::Busy) => println!("tick {tick}: another replica runs the job"),
            Err(e) => return Err(e),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    client.close().await;
    Ok(())
}
