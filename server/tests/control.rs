//! Control frames and unfinished messages (issue 9, finding 6): pings pay the rate limit like
//! any frame (and a refused one is no sign of life), and a message begun but not finished within
//! `--message-timeout` closes with 1008, while the other clients in the room are served.

mod common;

use std::time::{Duration, Instant};

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use common::*;
use futures::SinkExt;
use serde_json::Value;
use tidechat::Config;

/// A masked client frame with the given first byte (FIN bit and opcode).
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126, "short frames only");
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![b0, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads server frames from an upgraded raw socket, one at a time.
struct RawReader {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl RawReader {
    /// Reads the 101 response off `tcp`.
    async fn upgraded(tcp: TcpStream) -> Self {
        let mut r = RawReader {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = r.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(r.fill().await, "no upgrade response");
        };
        assert!(r.buf.starts_with(b"HTTP/1.1 101"), "not upgraded");
        r.buf.drain(..end);
        r
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        let n = async_std::future::timeout(PATIENCE, self.tcp.read(&mut chunk))
            .await
            .expect("timed out waiting for the server")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next frame as (opcode, payload), or `None` at the end of the stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let b = &self.buf;
            if b.len() >= 2 {
                let (len, head) = match b[1] & 0x7f {
                    126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                    127 if b.len() >= 10 => (
                        u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && b.len() >= head + len {
                    let frame = (b[0] & 0x0f, b[head..head + len].to_vec());
                    self.buf.drain(..head + len);
                    return Some(frame);
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads up to the server's close frame; returns its code and the text frames before it.
    async fn until_close(&mut self) -> (Option<u16>, Vec<Value>) {
        let mut texts = Vec::new();
        while let Some((op, payload)) = self.frame().await {
            match op {
                0x1 => texts.push(serde_json::from_slice(&payload).unwrap()),
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (code, texts);
                }
                _ => {}
            }
        }
        (None, texts)
    }
}

/// `alice` says `n` messages; `bob` must receive every one of them.
async fn chat_works(alice: &mut Client, bob: &mut Client, n: usize, tag: &str) {
    for i in 0..n {
        alice.say("lobby", &format!("{tag} {i}")).await;
    }
    for i in 0..n {
        let m = bob.recv_type("message").await;
        assert_eq!(m["text"], format!("{tag} {i}"), "{m}");
    }
}

#[async_std::test]
async fn ping_flood_gets_a_bounded_number_of_pongs_then_1008() {
    // alice joins and says 10 messages in all: within the burst.
    let (rate, burst) = (2.0, 20);
    let config = Config {
        rate,
        burst,
        rate_strikes: 5,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut alice, _) = s.join("lobby", "alice").await;
    let (mut bob, _) = s.join("lobby", "bob").await;
    let (mut mallory, _) = s.join("lobby", "mallory").await;

    let started = Instant::now();
    let pings = 500;
    for i in 0..pings {
        mallory
            .ws
            .feed(Message::Ping(format!("{i}").into()))
            .await
            .unwrap();
    }
    // The server may already have closed: later writes can fail, which is fine.
    let _ = mallory.ws.flush().await;
    chat_works(&mut alice, &mut bob, 5, "during the flood").await;

    let mut pongs = 0u32;
    let code = loop {
        match mallory.next().await {
            Some(Message::Pong(_)) => pongs += 1,
            Some(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Some(_) => continue,
            None => break None,
        }
    };
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(code, Some(1008), "after {pongs} pongs");
    let bound = burst as f64 + rate * secs.ceil();
    assert!(
        f64::from(pongs) <= bound,
        "{pongs} pongs for {pings} pings in {secs:.1}s (bound {bound})"
    );
    assert!(pongs >= 1, "pings within the burst are answered");
    chat_works(&mut alice, &mut bob, 5, "after the flood").await;
}

#[async_std::test]
async fn unfinished_fragmented_message_closes_with_1008() {
    let config = Config {
        message_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut alice, _) = s.join("lobby", "alice").await;
    let (mut bob, _) = s.join("lobby", "bob").await;

    let mut tcp = raw_upgrade(s.addr, "/ws").await;
    let writer = tcp.clone();
    let mut r = RawReader::upgraded(writer).await;
    let hello = r.frame().await.unwrap();
    assert_eq!(hello.0, 0x1);
    // A text frame without FIN, and no continuation ever.
    tcp.write_all(&client_frame(0x01, br#"{"type":"ping","#))
        .await
        .unwrap();
    chat_works(&mut alice, &mut bob, 5, "while it hangs").await;
    let (code, texts) = r.until_close().await;
    assert_eq!(code, Some(1008), "{texts:?}");
    chat_works(&mut alice, &mut bob, 5, "after it").await;
}

#[async_std::test]
async fn frame_trickled_a_byte_at_a_time_closes_with_1008() {
    let config = Config {
        message_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut alice, _) = s.join("lobby", "alice").await;
    let (mut bob, _) = s.join("lobby", "bob").await;

    let tcp = raw_upgrade(s.addr, "/ws").await;
    let mut r = RawReader::upgraded(tcp.clone()).await;
    assert_eq!(r.frame().await.unwrap().0, 0x1, "hello");
    // 6 bytes of header + 30 of payload at 200 ms a byte: ~7 s, well past the timeout.
    let frame = client_frame(0x81, br#"{"type":"ping","ref":"trickle"}"#);
    let trickle = async_std::task::spawn(async move {
        let mut tcp = tcp;
        for b in frame {
            if tcp.write_all(&[b]).await.is_err() {
                return false;
            }
            async_std::task::sleep(Duration::from_millis(200)).await;
        }
        true
    });
    chat_works(&mut alice, &mut bob, 5, "while it trickles").await;
    let (code, texts) = r.until_close().await;
    assert_eq!(code, Some(1008), "{texts:?}");
    assert!(
        texts.iter().all(|t| t["type"] != "pong"),
        "the trickled message was never completed: {texts:?}"
    );
    chat_works(&mut alice, &mut bob, 5, "after it").await;
    drop(trickle);
}

#[async_std::test]
async fn fragmented_message_sent_at_once_still_works() {
    let config = Config {
        message_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let mut tcp = raw_upgrade(s.addr, "/ws").await;
    let mut r = RawReader::upgraded(tcp.clone()).await;
    assert_eq!(r.frame().await.unwrap().0, 0x1, "hello");
    let mut bytes = client_frame(0x01, br#"{"type":"ping","#);
    // A ping between fragments is allowed (RFC 6455 §5.4) and answered.
    bytes.extend(client_frame(0x89, b"mid"));
    bytes.extend(client_frame(0x00, br#""ref":"fr"#));
    bytes.extend(client_frame(0x80, br#"ag"}"#));
    tcp.write_all(&bytes).await.unwrap();
    let mut got_pong_frame = false;
    let reply = loop {
        let (op, payload) = r.frame().await.expect("connection ended");
        match op {
            0xA => got_pong_frame = true,
            0x1 => break serde_json::from_slice::<Value>(&payload).unwrap(),
            0x8 => panic!("closed: {payload:?}"),
            _ => {}
        }
    };
    assert_eq!(reply["type"], "pong", "{reply}");
    assert_eq!(reply["ref"], "frag", "{reply}");
    assert!(
        got_pong_frame,
        "the ping between fragments was answered first"
    );
    // Messages after it are still fine, past the timeout.
    async_std::task::sleep(Duration::from_millis(700)).await;
    tcp.write_all(&client_frame(0x81, br#"{"type":"ping","ref":"next"}"#))
        .await
        .unwrap();
    let (op, payload) = r.frame().await.expect("connection ended");
    assert_eq!(op, 0x1);
    assert_eq!(
        serde_json::from_slice::<Value>(&payload).unwrap()["ref"],
        "next"
    );
}

/// A frame the rate limit refuses is no sign of life: a client that only sends pings over its
/// rate (and answers none of the server's) is closed as idle (4000), not kept open by them.
#[async_std::test]
async fn refused_pings_do_not_keep_a_connection_alive() {
    let config = Config {
        rate: 0.01,
        burst: 1,
        // Far more strikes than the pings below: the close must come from the idle check.
        rate_strikes: 100_000,
        ping_interval: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let tcp = raw_upgrade(s.addr, "/ws").await;
    let mut reader = RawReader::upgraded(tcp.clone()).await;
    // 40 s of pings, twice PATIENCE: without the fix the connection outlives the wait below.
    let pinger = async_std::task::spawn(async move {
        let mut tcp = tcp;
        for _ in 0..400 {
            if tcp.write_all(&client_frame(0x89, b"")).await.is_err() {
                return;
            }
            async_std::task::sleep(Duration::from_millis(100)).await;
        }
    });
    // The server's own pings keep arriving, so bound the whole wait, not each read.
    let (code, _) = async_std::future::timeout(PATIENCE, reader.until_close())
        .await
        .expect("still open: refused pings kept it alive");
    assert_eq!(code, Some(4000));
    pinger.cancel().await;
    s.stop().await;
}

/// Each violation of RFC 6455 a client can commit closes it with 1002 (after what it sent
/// before), and the room's other members are served throughout.
#[async_std::test]
async fn protocol_violations_close_with_1002_and_others_are_served() {
    let s = TestServer::start(Config::default()).await;
    let (mut alice, _) = s.join("lobby", "alice").await;
    let (mut bob, _) = s.join("lobby", "bob").await;
    let mut unmasked = client_frame(0x81, br#"{"type":"ping"}"#);
    unmasked[1] &= 0x7f;
    let violations: [(&str, Vec<u8>); 6] = [
        ("unmasked", unmasked),
        ("reserved bit", client_frame(0xc1, br#"{"type":"ping"}"#)),
        ("fragmented ping", client_frame(0x09, b"")),
        ("continuation first", client_frame(0x80, b"x")),
        ("opcode 3", client_frame(0x83, b"")),
        ("one-byte close", client_frame(0x88, &[3])),
    ];
    for (what, bad) in violations {
        let mut tcp = raw_upgrade(s.addr, "/ws").await;
        let mut r = RawReader::upgraded(tcp.clone()).await;
        assert_eq!(r.frame().await.unwrap().0, 0x1, "hello");
        // Two pings and the violation in one write: the pings are answered first.
        let mut bytes = client_frame(0x81, br#"{"type":"ping","ref":"1"}"#);
        bytes.extend(client_frame(0x81, br#"{"type":"ping","ref":"2"}"#));
        bytes.extend(bad);
        tcp.write_all(&bytes).await.unwrap();
        let (code, texts) = r.until_close().await;
        assert_eq!(code, Some(1002), "{what}");
        let refs: Vec<_> = texts.iter().map(|t| t["ref"].clone()).collect();
        assert_eq!(refs, ["1", "2"], "{what}: {texts:?}");
        chat_works(&mut alice, &mut bob, 3, what).await;
    }
}
