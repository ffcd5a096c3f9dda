//! `--only throughput`: lock+unlock cycles per second, N tasks on distinct keys over 1 or 8
//! connections — the broker (fire-and-forget and acknowledged release) against Redis.

use anyhow::Result;

use crate::load::{System, run_throughput};
use crate::opts::Opts;
use crate::procs::{Broker, Redis};
use crate::redis_lock::RedisLock;
use crate::report::{Report, Target};
use crate::stats::fmt_rate;

pub async fn run(opts: &Opts, broker: &Broker, redis: &Redis, report: &mut Report) -> Result<()> {
    println!("\n== throughput (lock+unlock cycles/s, distinct keys per task) ==");
    for conns in [1usize, 8] {
        let mut clients = Vec::new();
        let mut rls = Vec::new();
        for _ in 0..conns {
            clients.push(broker.client_builder().connect().await?);
            rls.push(RedisLock::connect(&redis.url()).await?);
        }
        for tasks in [1usize, 16, 64, 256] {
            let mut rate = [0.0f64; 3];
            for (i, sys) in [System::BrokerFf, System::BrokerAck, System::Redis]
                .into_iter()
                .enumerate()
            {
                rate[i] = run_throughput(sys, tasks, &clients, &rls, opts.tp_window).await?;
            }
            println!(
                "  {tasks:>3} tasks × {conns} conn: broker f&f {}/s, broker ack {}/s, redis {}/s",
                fmt_rate(rate[0]),
                fmt_rate(rate[1]),
                fmt_rate(rate[2])
            );
            let target = (tasks == 64).then_some(Target::AtLeast(2.0));
            report.row(
                format!("throughput {tasks} tasks, {conns} conn: lock+drop vs Redis (cycles/s)"),
                fmt_rate(rate[0]),
                fmt_rate(rate[2]),
                Some(rate[0] / rate[2]),
                target,
            );
            report.row(
                format!("throughput {tasks} tasks, {conns} conn: lock+unlock(ack) vs Redis"),
                fmt_rate(rate[1]),
                fmt_rate(rate[2]),
                Some(rate[1] / rate[2]),
                target,
            );
        }
        for c in &clients {
            c.close().await;
        }
    }
    Ok(())
}
