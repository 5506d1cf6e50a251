//! Slow consumers: a client that does not read never holds up the others, and is closed.

mod common;

use std::time::Duration;

use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use common::*;
use futures::SinkExt;
use serde_json::json;
use tidechat::Config;

const MESSAGES: usize = 3200;
const TEXT_BYTES: usize = 8 * 1024;
/// Messages the sender puts in flight before it reads its own echoes (divides MESSAGES).
const WINDOW: usize = 16;

fn config() -> Config {
    Config {
        rate: 1e9,
        burst: u32::MAX,
        ..Config::default()
    }
}

/// A websocket client whose socket has a tiny receive buffer, so that the server's writes
/// block as soon as it stops reading.
async fn tiny_buffer_client(s: &TestServer) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&s.addr.into()).unwrap();
    let std: std::net::TcpStream = socket.into();
    let raw = std.try_clone().unwrap();
    let (ws, _) = async_tungstenite::client_async(s.url("/ws"), TcpStream::from(std))
        .await
        .unwrap();
    let mut c = Client { ws, raw };
    assert_eq!(c.recv().await["type"], "hello");
    c
}

/// A reader task that counts the room's messages until it has `MESSAGES`; returns their ids
/// and the client, still connected.
fn reader(mut c: Client) -> async_std::task::JoinHandle<(Vec<u64>, Client)> {
    async_std::task::spawn(async move {
        let mut ids = Vec::with_capacity(MESSAGES);
        while ids.len() < MESSAGES {
            ids.push(c.recv_type("message").await["id"].as_u64().unwrap());
        }
        (ids, c)
    })
}

/// Sends `MESSAGES` big messages, reading its own echoes to stay within a window.
async fn send_all(sender: &mut Client) {
    let text = "z".repeat(TEXT_BYTES);
    let frame = json!({"type": "say", "room": "lobby", "text": text}).to_string();
    for chunk in 0..MESSAGES / WINDOW {
        for _ in 0..WINDOW {
            sender
                .ws
                .feed(Message::Text(frame.clone().into()))
                .await
                .unwrap();
        }
        sender.ws.flush().await.unwrap();
        for i in 0..WINDOW {
            let m = sender.recv_type("message").await;
            assert_eq!(m["id"].as_u64(), Some((chunk * WINDOW + i + 1) as u64));
        }
    }
}

#[async_std::test]
async fn lagging_client_is_closed_with_4008_and_others_get_everything() {
    let mut c = config();
    c.room_buffer = 256;
    c.write_timeout = Duration::from_secs(120);
    let s = TestServer::start(c).await;
    let mut slow = tiny_buffer_client(&s).await;
    slow.join("lobby", "slow").await;
    let mut handles = Vec::new();
    for i in 0..2 {
        handles.push(reader(s.join("lobby", &format!("fast{i}")).await.0));
    }
    let (mut sender, _) = s.join("lobby", "sender").await;
    send_all(&mut sender).await;
    let expected: Vec<u64> = (1..=MESSAGES as u64).collect();
    let mut fast = Vec::new();
    for h in handles {
        let (ids, c) = h.await;
        assert_eq!(ids, expected);
        fast.push(c);
    }
    // The slow client now reads: what the server had already written, then 4008.
    let mut got = 0;
    let code = loop {
        match slow.next().await {
            Some(Message::Text(_)) => got += 1,
            Some(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Some(_) => {}
            None => break None,
        }
    };
    assert_eq!(code, Some(4008));
    assert!(
        got < MESSAGES,
        "the slow client cannot have received everything ({got})"
    );
    s.wait_stats("the slow client to be gone", |st| {
        st.hub.members == 3 && st.hub.receivers == 3
    })
    .await;
    s.stop().await;
}

#[async_std::test]
async fn client_that_never_reads_is_dropped_after_the_write_timeout() {
    let mut c = config();
    c.write_timeout = Duration::from_millis(500);
    let s = TestServer::start(c).await;
    let mut stuck = tiny_buffer_client(&s).await;
    stuck.join("lobby", "stuck").await;
    let (fast, _) = s.join("lobby", "fast").await;
    let handle = reader(fast);
    let (mut sender, _) = s.join("lobby", "sender").await;
    send_all(&mut sender).await;
    let (ids, _fast) = handle.await;
    assert_eq!(ids, (1..=MESSAGES as u64).collect::<Vec<_>>());
    s.wait_stats("the stuck client to be dropped", |st| {
        st.connections == 2 && st.hub.members == 2
    })
    .await;
    s.stop().await;
}
