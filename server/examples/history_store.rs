//! Measures tidechat's durable history store on this machine: appends per second through group
//! commit (one fsync per batch, as the server runs it), page reads, and how long opening a store
//! with N stored messages takes (every message is checked at open), after a clean close and after
//! a crash. `cargo run --release -p server --example history_store -- [messages] [rooms]`.

use std::sync::Arc;
use std::time::Instant;

use tidechat::hub::position::StreamPosition;
use tidechat::hub::record::Publication;
use tidechat::hub::store::durable::DurableStore;
use tidechat::hub::store::{Commits, HistoryStore, Retention};
use tidechat::hub::Page;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let total: u64 = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let rooms: u64 = args.next().map_or(Ok(100), |s| s.parse())?;
    let dir = tempfile::tempdir()?;
    let retention = Retention {
        messages: usize::MAX,
        bytes: usize::MAX,
        age: None,
    };
    let store = DurableStore::open(dir.path(), retention)?;
    let commits = Arc::new(Commits::default());
    commits.start(store.clone());
    let names: Vec<Arc<str>> = (0..rooms).map(|r| format!("room-{r}").into()).collect();
    let mut states: Vec<_> = names
        .iter()
        .map(|n| store.open(n))
        .collect::<Result<_, _>>()?;
    let text = "x".repeat(64);
    let started = Instant::now();
    let cpu0 = cpu_seconds();
    let mut last_ticket = 0;
    for i in 0..total {
        let r = (i % rooms) as usize;
        let s = &mut states[r];
        s.last += 1;
        let p = Arc::new(Publication {
            room: names[r].clone(),
            pos: StreamPosition::new(s.last, s.epoch),
            from: "sender-1".into(),
            text: text.as_str().into(),
            ts: 1_700_000_000_000 + i,
            reference: None,
        });
        store.append(&p)?;
        last_ticket = commits.appended();
    }
    async_std::task::block_on(commits.wait(last_ticket));
    let took = started.elapsed();
    let cpu = cpu_seconds() - cpu0;
    println!(
        "append {total} messages in {rooms} rooms, group commit: {:.0}/s ({:.2} s, {:.1} µs CPU each)",
        total as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        cpu * 1e6 / total as f64
    );
    commits.stop();

    let reads = 2_000;
    let t = Instant::now();
    for i in 0..reads {
        let room = &names[i % names.len()];
        let read = store.read(room, Page::Before(u64::MAX), 50, 1 << 20)?;
        assert_eq!(read.messages.len(), 50);
    }
    println!(
        "latest 50 of a room: {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / reads as f64
    );
    let t = Instant::now();
    for i in 0..reads {
        let room = &names[i % names.len()];
        let read = store.read(room, Page::Since(100 + i as u64), 50, 1 << 20)?;
        assert_eq!(read.messages.len(), 50);
    }
    println!(
        "50 after an offset: {:.1} µs",
        t.elapsed().as_secs_f64() * 1e6 / reads as f64
    );

    store.close()?;
    drop(store);
    let t = Instant::now();
    let store = DurableStore::open(dir.path(), retention)?;
    let r = store.recovery().clone();
    println!(
        "open after a clean close: {} ms ({} rooms, {} messages checked)",
        t.elapsed().as_millis(),
        r.rooms,
        r.messages
    );
    // Not closed: the running marker stays, as after a crash of the process.
    drop(store);
    let t = Instant::now();
    let store = DurableStore::open(dir.path(), retention)?;
    println!(
        "open after a crash: {} ms (crashed: {}, power loss: {})",
        t.elapsed().as_millis(),
        store.recovery().crashed,
        store.recovery().power_loss
    );
    store.close()?;
    Ok(())
}

/// This process's CPU time (user + system), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
