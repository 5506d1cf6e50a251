//! Fan-out through direct writes (`--direct-write on`, the default): publishers write to idle
//! members' sockets themselves, and a write the socket cuts goes back to the connection's
//! writer mid-frame. Everything still arrives whole and in order, with several publishers at
//! once and a reader that keeps the socket nearly full; and `--direct-write off` does the same.

mod common;

use std::time::Duration;

use common::*;
use tidechat::Config;

/// Messages per sender.
const EACH: usize = 400;
const SENDERS: usize = 3;
/// 19 MB in all: far more than the slow client's socket buffers (a 4 KiB receive buffer, and the
/// server's send buffer autotuned up to 4 MiB), so direct writes to it are cut mid-frame.
const TEXT_BYTES: usize = 16 * 1024;

fn config(direct: bool) -> Config {
    Config {
        rate: 1e9,
        burst: u32::MAX,
        direct_write: direct,
        write_timeout: Duration::from_secs(60),
        // The slow client lags by up to the socket buffers; it is not to be closed for it.
        room_buffer: 100_000,
        room_buffer_bytes: 64 << 20,
        ..Config::default()
    }
}

/// Reads messages until it has `n`, pausing `pause` every 8; returns their ids.
fn reader(mut c: Client, n: usize, pause: Duration) -> async_std::task::JoinHandle<Vec<u64>> {
    async_std::task::spawn(async move {
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let m = c.recv_type("message").await;
            assert_eq!(m["text"].as_str().map(str::len), Some(TEXT_BYTES));
            ids.push(m["id"].as_u64().unwrap());
            if ids.len() % 8 == 0 && !pause.is_zero() {
                async_std::task::sleep(pause).await;
            }
        }
        ids
    })
}

async fn everything_arrives_whole_and_in_order(direct: bool) {
    let s = TestServer::start(config(direct)).await;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&s.addr.into()).unwrap();
    let mut slow = ws_over(socket.into(), s.addr).await;
    slow.join("lobby", "slow").await;
    let (fast, _) = s.join("lobby", "fast").await;
    let total = EACH * SENDERS;
    let readers = [
        reader(slow, total, Duration::from_millis(20)),
        reader(fast, total, Duration::ZERO),
    ];
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let (mut c, _) = s.join("lobby", &format!("sender{i}")).await;
        senders.push(async_std::task::spawn(async move {
            let text = "d".repeat(TEXT_BYTES);
            for _ in 0..EACH {
                c.say("lobby", &text).await;
            }
            c
        }));
    }
    let mut keep = Vec::new();
    for h in senders {
        keep.push(h.await);
    }
    let expected: Vec<u64> = (1..=total as u64).collect();
    for r in readers {
        let ids = async_std::future::timeout(PATIENCE * 4, r)
            .await
            .expect("every message within the patience");
        assert_eq!(ids, expected);
    }
    s.stop().await;
}

#[async_std::test]
async fn direct_writes_cut_mid_frame_still_deliver_everything_in_order() {
    everything_arrives_whole_and_in_order(true).await;
}

#[async_std::test]
async fn without_direct_writes_everything_arrives_in_order_too() {
    everything_arrives_whole_and_in_order(false).await;
}

/// Reads `c`'s messages until the one saying `text`; when it came.
async fn arrival(c: &mut Client, text: &str) -> std::time::Instant {
    loop {
        let m = c.recv_type("message").await;
        if m["text"] == text {
            return std::time::Instant::now();
        }
    }
}

/// `--hot-write-delay`: a room that published more than 200 messages over its last second
/// waits that long before each pass; a quiet room on the same server writes at once.
#[async_std::test]
async fn a_hot_rooms_writes_wait_and_a_quiet_rooms_do_not() {
    let delay = Duration::from_millis(300);
    let s = TestServer::start(Config {
        rate: 1e9,
        burst: u32::MAX,
        hot_write_delay: delay,
        ..Config::default()
    })
    .await;
    let (mut hot_tx, _) = s.join("firehose", "a").await;
    let (mut hot_rx, _) = s.join("firehose", "b").await;
    let (mut quiet_tx, _) = s.join("quiet", "c").await;
    let (mut quiet_rx, _) = s.join("quiet", "d").await;
    // Read all along, so that the socket never fills and every write stays the pass's; say
    // which warm message came last.
    let (warm_seen, warm_came) = async_channel::unbounded::<u32>();
    let hot_arrival = async_std::task::spawn(async move {
        loop {
            let m = hot_rx.recv_type("message").await;
            let text = m["text"].as_str().unwrap_or_default();
            if text == "hot" {
                return std::time::Instant::now();
            }
            if let Some(i) = text.strip_prefix("warm ").and_then(|i| i.parse().ok()) {
                let _ = warm_seen.send(i).await;
            }
        }
    });
    // Up to 600 at once: the room's first second, not yet judged, sends them without waiting.
    let start = std::time::Instant::now();
    let mut warm = 0;
    while warm < 600 && start.elapsed() < Duration::from_millis(800) {
        hot_tx.say("firehose", &format!("warm {warm}")).await;
        warm += 1;
    }
    assert!(warm >= 300, "only {warm} messages in 0.8 s");
    // Every warm message delivered, so that no pass is still to run when the measured message
    // comes (it would go with that pass, without the wait: seen under load).
    while warm_came.recv().await.expect("the reader is reading") < warm - 1 {}
    // Then quiet until its first second is well over (the writers parked): the next message
    // closes that second, judges the room hot and waits the whole delay.
    async_std::task::sleep(Duration::from_millis(1300).saturating_sub(start.elapsed())).await;
    quiet_tx.say("quiet", "hello").await;
    let sent = std::time::Instant::now();
    hot_tx.say("firehose", "hot").await;
    let quiet = arrival(&mut quiet_rx, "hello").await - sent;
    let hot = hot_arrival.await - sent;
    assert!(
        hot >= delay - Duration::from_millis(20),
        "hot room: {hot:?} after {warm} messages"
    );
    assert!(quiet < hot, "quiet room {quiet:?}, hot room {hot:?}");
    s.stop().await;
}
