//! `--only metrics`: what recording lock metrics costs. Two brokers side by side, one with
//! `[admin] metrics = false` (nothing recorded on the lock path) and one with the default
//! (recording, and scraped every second — a pessimistic Prometheus), both with the admin
//! listener on. Lock+unlock(ack) and lock+drop throughput at 64 tasks over 8 connections,
//! rounds alternating which broker goes first; the median of each is compared.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use lockbroker_sdk::Client;

use crate::fixture::broker_config;
use crate::load::{System, run_throughput};
use crate::opts::Opts;
use crate::procs::Broker;
use crate::report::{Report, Target};
use crate::stats::fmt_rate;

const TASKS: usize = 64;
const CONNS: usize = 8;

async fn clients(b: &Broker) -> Result<Vec<Client>> {
    let mut v = Vec::new();
    for _ in 0..CONNS {
        v.push(b.client_builder().connect().await?);
    }
    Ok(v)
}

/// GET /metrics once; the response's length.
async fn scrape(admin: SocketAddr) -> Result<usize> {
    crate::procs::admin_get(admin, "/metrics").await
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn run(opts: &Opts, bin: &Path, report: &mut Report) -> Result<()> {
    println!("\n== metrics overhead (lock cycles/s, {TASKS} tasks × {CONNS} conn) ==");
    let base = broker_config(opts);
    let off = Broker::start(bin, &format!("{base}[admin]\nmetrics = false\n"))?;
    let on = Broker::start(bin, &base)?;
    let admin = on
        .admin
        .context("the metrics broker printed no admin address")?;
    let (off_clients, on_clients) = (clients(&off).await?, clients(&on).await?);
    let scraper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let _ = scrape(admin).await;
        }
    });
    let rounds = if opts.quick { 3 } else { 7 };
    for sys in [System::BrokerAck, System::BrokerFf] {
        let (mut r_off, mut r_on) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order: [(bool, &[Client]); 2] = if round % 2 == 0 {
                [(false, &off_clients), (true, &on_clients)]
            } else {
                [(true, &on_clients), (false, &off_clients)]
            };
            for (metrics, c) in order {
                let rate = run_throughput(sys, TASKS, c, &[], opts.tp_window).await?;
                if metrics {
                    r_on.push(rate)
                } else {
                    r_off.push(rate)
                }
            }
        }
        let (m_off, m_on) = (median(&mut r_off), median(&mut r_on));
        let what = if sys == System::BrokerAck {
            "lock+unlock(ack)"
        } else {
            "lock+drop"
        };
        println!(
            "  {what}: metrics off {}/s, on {}/s (on/off {:.3}; rounds off {:?}, on {:?})",
            fmt_rate(m_off),
            fmt_rate(m_on),
            m_on / m_off,
            r_off.iter().map(|r| fmt_rate(*r)).collect::<Vec<_>>(),
            r_on.iter().map(|r| fmt_rate(*r)).collect::<Vec<_>>(),
        );
        report.row(
            format!("metrics on vs off: {what}, {TASKS} tasks × {CONNS} conn (cycles/s)"),
            fmt_rate(m_on),
            fmt_rate(m_off),
            Some(m_on / m_off),
            Some(Target::AtLeast(0.97)),
        );
    }
    scraper.abort();
    println!("  last scrape: {} bytes", scrape(admin).await.unwrap_or(0));
    for c in off_clients.iter().chain(&on_clients) {
        c.close().await;
    }
    Ok(())
}
