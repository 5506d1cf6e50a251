//! Measures the Redis broker's publish path on this machine: publishes per second through one
//! node's pipelined connection, and what one publish script costs inside Redis (its
//! `INFO commandstats`), with the node subscribed to the room so every publish is also fanned out
//! to it. Needs a running Redis:
//! `cargo run --release -p server --example redis_publish -- unix:///path/redis.sock [publishes] [tasks]`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tidechat::hub::broker::{Broker, Deliver, Delivery, NewMessage};
use tidechat::hub::redis::{RedisBroker, RedisSettings};
use tidechat::hub::store::Retention;

/// Counts what comes back through the feed.
#[derive(Default)]
struct Count(AtomicU64);

impl Deliver for Count {
    fn deliver(&self, _: Delivery) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn reset(&self, _: &Arc<str>) {}
    fn replaced(&self, _: &Arc<str>, _: &str, _: u64) {}
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: redis_publish URL [n] [tasks]"))?;
    let total: u64 = args.next().map_or(Ok(100_000), |s| s.parse())?;
    let tasks: u64 = args.next().map_or(Ok(64), |s| s.parse())?;
    async_std::task::block_on(async move {
        let broker = RedisBroker::connect(RedisSettings {
            urls: vec![url.clone()],
            ca: None,
            retention: Retention {
                messages: 500,
                bytes: 1 << 20,
                age: None,
            },
            presence_cap: 1000,
            presence_ttl: Duration::from_secs(15),
            timeout: Duration::from_secs(2),
            roundtrip: None,
        })
        .await?;
        let count = Arc::new(Count::default());
        let weak: Weak<Count> = Arc::downgrade(&count);
        broker.attach(weak);
        let room: Arc<str> = "bench".into();
        broker.subscribe(&room).await?;
        let client = redis::Client::open(url.as_str())?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut conn)
            .await?;
        let started = Instant::now();
        let per = total / tasks;
        let mut handles = Vec::new();
        for t in 0..tasks {
            let broker = broker.clone();
            let room = room.clone();
            handles.push(async_std::task::spawn(async move {
                let from: Arc<str> = format!("u{t}").into();
                let text = "x".repeat(64);
                for _ in 0..per {
                    broker
                        .publish(NewMessage {
                            room: &room,
                            from: &from,
                            text: &text,
                            reference: Some("r1"),
                            origin: t + 1,
                        })
                        .await
                        .expect("publish");
                }
            }));
        }
        for h in handles {
            h.await;
        }
        let took = started.elapsed();
        let end = Instant::now() + Duration::from_secs(10);
        while count.0.load(Ordering::Relaxed) < per * tasks && Instant::now() < end {
            async_io::Timer::after(Duration::from_millis(5)).await;
        }
        let back = started.elapsed();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await?;
        println!(
            "{} publishes from {tasks} tasks in {:.3} s: {:.0}/s; all back through the feed after {:.3} s",
            per * tasks,
            took.as_secs_f64(),
            (per * tasks) as f64 / took.as_secs_f64(),
            back.as_secs_f64()
        );
        for line in stats
            .lines()
            .filter(|l| l.contains("evalsha") || l.contains("publish"))
        {
            println!("{line}");
        }
        anyhow::Ok(())
    })
}
