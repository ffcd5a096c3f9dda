//! Leader election: several candidates stand for `svc/scheduler`; one leads at a time, the
//! others wait (no polling: the broker pushes the grant when the leader steps down or its
//! lease ends), and anyone can ask who leads. A leader stops leading as soon as `lost()` fires,
//! and passes its fence to what it writes so a deposed leader's late writes are refused.
//!
//! `cargo run -p lockbroker-sdk --example leader_election` (embedded); set `LOCKBROKER_URL`
//! and `LOCKBROKER_CA` to elect through a broker instead.

use std::time::Duration;

use lockbroker_sdk::{Client, Error};

async fn candidate(client: Client, name: String) -> Result<(), Error> {
    let leadership = client.elect("svc/scheduler", name.clone()).await?;
    println!("{name} leads (fence {})", leadership.fence());
    tokio::select! {
        // Lead for a while, then step down and let the next candidate lead.
        () = tokio::time::sleep(Duration::from_millis(300)) => leadership.unlock().await?,
        lost = leadership.lost() => println!("{name} lost the leadership: {lost}"),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let client = match std::env::var("LOCKBROKER_URL") {
        Ok(url) => Client::connect(&url).await?,
        Err(_) => Client::embedded(),
    };
    let mut tasks = Vec::new();
    for i in 0..3 {
        tasks.push(tokio::spawn(candidate(client.clone(), format!("node-{i}"))));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("leader now: {:?}", client.leader("svc/scheduler").await?);
    for t in tasks {
        t.await.map_err(|e| Error::Invalid(e.to_string()))??;
    }
    println!(
        "leader at the end: {:?}",
        client.leader("svc/scheduler").await?
    );
    client.close().await;
    Ok(())
}
