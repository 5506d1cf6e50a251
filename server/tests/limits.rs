//! Every limit with its exact close code or error frame, and the server serving others after.

mod common;

use std::time::Duration;

use async_std::io::{ReadExt, WriteExt};
use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::Frame;
use async_tungstenite::tungstenite::{Error as WsError, Message};
use common::*;
use futures::SinkExt;
use serde_json::json;
use tidechat::Config;

/// After a bad client is dealt with, a bystander in the same room still gets messages.
async fn still_serving(s: &TestServer, bystander: &mut Client) {
    let (mut probe, _) = s.join("lobby", &format!("probe{}", fastrand_name())).await;
    probe.say("lobby", "still here").await;
    assert_eq!(bystander.recv_type("message").await["text"], "still here");
}

fn fastrand_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("x{}", N.fetch_add(1, Ordering::Relaxed))
}

#[async_std::test]
async fn oversized_message_closes_with_1009() {
    let config = Config {
        max_message_bytes: 1024,
        max_text_bytes: 512,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut bystander, _) = s.join("lobby", "bystander").await;
    let (mut big, _) = s.join("lobby", "big").await;
    let _ = big.ws.send(Message::Text("x".repeat(2000).into())).await;
    assert_eq!(big.closed().await, Some(1009));
    still_serving(&s, &mut bystander).await;
    s.stop().await;
}

#[async_std::test]
async fn text_over_the_text_limit_gets_an_error_frame() {
    let config = Config {
        max_text_bytes: 100,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut a, _) = s.join("lobby", "alice").await;
    a.send(json!({"type": "say", "room": "lobby", "text": "y".repeat(101), "ref": "r9"}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("text_too_long"), Some("r9"))
    );
    a.say("lobby", "   ").await;
    assert_eq!(a.recv_type("error").await["code"], "empty_text");
    a.say("lobby", &"y".repeat(100)).await;
    assert_eq!(a.recv_type("message").await["id"], 1);
    s.stop().await;
}

#[async_std::test]
async fn invalid_utf8_closes_with_1007() {
    let s = TestServer::default().await;
    let (mut bystander, _) = s.join("lobby", "bystander").await;
    let mut bad = s.connect().await;
    let frame = Frame::message(vec![0xff, 0xfe, 0x80], OpCode::Data(Data::Text), true);
    bad.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(bad.closed().await, Some(1007));
    still_serving(&s, &mut bystander).await;
    s.stop().await;
}

#[async_std::test]
async fn binary_frames_close_with_1003() {
    let s = TestServer::default().await;
    let mut bad = s.connect().await;
    bad.ws
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(bad.closed().await, Some(1003));
    let mut seed = s.connect_raw("/chatSocket").await;
    seed.ws.send(Message::Binary(vec![1].into())).await.unwrap();
    assert_eq!(seed.closed().await, Some(1003));
    s.stop().await;
}

#[async_std::test]
async fn malformed_frames_get_an_error_and_the_connection_stays() {
    let s = TestServer::default().await;
    let mut c = s.connect().await;
    for bad in [
        "not json",
        "{\"type\":\"dance\"}",
        "{\"type\":\"say\",\"room\":\"lobby\"}",
        "{\"type\":\"ping\",\"extra\":1}",
        "[1,2,3]",
    ] {
        c.send_text(bad).await;
        let e = c.recv().await;
        assert_eq!(
            (e["type"].as_str(), e["code"].as_str()),
            (Some("error"), Some("bad_request")),
            "{bad}: {e}"
        );
    }
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong"}));
    s.stop().await;
}

#[async_std::test]
async fn names_and_rooms_are_checked() {
    let s = TestServer::default().await;
    let mut c = s.connect().await;
    let cases = [
        (
            json!({"type": "join", "room": "has space", "name": "ok"}),
            "invalid_room",
        ),
        (
            json!({"type": "join", "room": "", "name": "ok"}),
            "invalid_room",
        ),
        (
            json!({"type": "join", "room": "r".repeat(65), "name": "ok"}),
            "invalid_room",
        ),
        (
            json!({"type": "join", "room": "lobby", "name": "<script>"}),
            "invalid_name",
        ),
        (
            json!({"type": "join", "room": "lobby", "name": "n".repeat(33)}),
            "invalid_name",
        ),
        (
            json!({"type": "join", "room": "lobby", "name": "123"}),
            "invalid_name",
        ),
        (
            json!({"type": "join", "room": "lobby", "name": " pad"}),
            "invalid_name",
        ),
    ];
    for (frame, code) in cases {
        c.send(frame.clone()).await;
        assert_eq!(c.recv().await["code"], code, "{frame}");
    }
    c.join("lobby", "fine name").await;
    c.send(json!({"type": "join", "room": "lobby", "name": "other"}))
        .await;
    assert_eq!(c.recv().await["code"], "already_joined");
    s.stop().await;
}

#[async_std::test]
async fn rooms_per_connection_and_per_server_are_bounded() {
    let config = Config {
        max_rooms_per_connection: 2,
        max_rooms: 3,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let mut a = s.connect().await;
    a.join("r1", "alice").await;
    a.join("r2", "alice").await;
    a.send(json!({"type": "join", "room": "r3", "name": "alice"}))
        .await;
    assert_eq!(a.recv().await["code"], "too_many_rooms");
    let mut b = s.connect().await;
    b.join("r3", "bob").await;
    b.send(json!({"type": "join", "room": "r4", "name": "bob"}))
        .await;
    assert_eq!(b.recv().await["code"], "server_full");
    // Once a room is empty it can be evicted to make space.
    a.send(json!({"type": "leave", "room": "r1"})).await;
    a.recv_type("left").await;
    b.join("r4", "bob").await;
    s.stop().await;
}

#[async_std::test]
async fn rate_limit_warns_then_closes_with_1008() {
    let config = Config {
        rate: 0.01,
        // The join takes JOIN_COST, the ping and the first say one each.
        burst: tidechat::limits::JOIN_COST + 2,
        rate_strikes: 3,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut bystander, _) = s.join("lobby", "bystander").await;
    let mut flood = s.connect().await;
    let frames = [
        json!({"type": "join", "room": "lobby", "name": "flood"}),
        json!({"type": "ping"}),
        json!({"type": "say", "room": "lobby", "text": "a", "ref": "a"}),
        json!({"type": "say", "room": "lobby", "text": "b", "ref": "b"}),
        json!({"type": "ping"}),
        json!({"type": "ping"}),
        json!({"type": "ping"}),
    ];
    for f in frames {
        let _ = flood.ws.feed(Message::Text(f.to_string().into())).await;
    }
    let _ = flood.ws.flush().await;
    // Replies and room messages travel separately, so collect everything up to the close.
    let mut frames = Vec::new();
    let code = loop {
        match flood.next().await {
            Some(Message::Text(t)) => {
                frames.push(serde_json::from_str::<serde_json::Value>(t.as_str()).unwrap())
            }
            Some(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    let types: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(
        types.iter().filter(|t| **t == "error").count(),
        3,
        "{frames:?}"
    );
    assert!(types.contains(&"joined") && types.contains(&"pong"));
    let sent = frames.iter().find(|f| f["type"] == "message").unwrap();
    assert_eq!(sent["ref"], "a");
    let errors: Vec<_> = frames.iter().filter(|f| f["type"] == "error").collect();
    assert!(errors.iter().all(|e| e["code"] == "rate_limited"));
    assert_eq!(
        (errors[0]["room"].as_str(), errors[0]["ref"].as_str()),
        (Some("lobby"), Some("b")),
        "{frames:?}"
    );
    assert_eq!(bystander.recv_type("message").await["text"], "a");
    still_serving(&s, &mut bystander).await;
    s.stop().await;
}

#[async_std::test]
async fn connections_beyond_the_maximum_get_503() {
    let config = Config {
        max_connections: 2,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let _a = s.connect().await;
    let b = s.connect().await;
    let stream = async_std::net::TcpStream::connect(s.addr).await.unwrap();
    match async_tungstenite::client_async(s.url("/ws"), stream).await {
        Err(WsError::Http(res)) => assert_eq!(res.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
    drop(b);
    s.wait_stats("a slot to free up", |st| st.connections == 1)
        .await;
    let _c = s.connect().await;
    s.stop().await;
}

#[async_std::test]
async fn foreign_origin_gets_403() {
    let config = Config {
        allowed_origins: vec!["https://chat.example:443".into()],
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let attempt = |origin: Option<String>| {
        let url = s.url("/ws");
        let addr = s.addr;
        async move {
            let mut req = request(&url);
            if let Some(o) = origin {
                req.headers_mut().insert("Origin", o.parse().unwrap());
            }
            let stream = async_std::net::TcpStream::connect(addr).await.unwrap();
            match async_tungstenite::client_async(req, stream).await {
                Ok(_) => 101,
                Err(WsError::Http(res)) => res.status().as_u16(),
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(attempt(Some("http://evil.example".into())).await, 403);
    assert_eq!(
        attempt(Some(format!("http://localhost:{}", s.addr.port()))).await,
        403
    );
    assert_eq!(attempt(Some(format!("http://{}", s.addr))).await, 101);
    assert_eq!(attempt(Some("https://chat.example".into())).await, 101);
    assert_eq!(attempt(None).await, 101);
    s.stop().await;
}

#[async_std::test]
async fn silent_http_connection_is_dropped_after_the_handshake_timeout() {
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let mut tcp = async_std::net::TcpStream::connect(s.addr).await.unwrap();
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = async_std::future::timeout(PATIENCE, tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the connection");
    s.stop().await;
}

/// The pings' pulse wakes a sixteenth of the connections at a time, at their shard's time; a
/// connection's first ping still waits one whole interval after it connected (its client's
/// pongs take rate tokens it did not plan for).
#[async_std::test]
async fn the_first_ping_waits_a_whole_interval() {
    let interval = Duration::from_millis(1000);
    let s = TestServer::start(Config {
        ping_interval: interval,
        idle_timeout: Duration::from_secs(10),
        ..Config::default()
    })
    .await;
    // Connection 1: its shard's first turn is 125 ms after the server started.
    let mut c = s.connect().await;
    let connected = std::time::Instant::now();
    loop {
        match async_std::future::timeout(Duration::from_secs(3), c.next()).await {
            Ok(Some(Message::Ping(_))) => break,
            Ok(Some(Message::Text(_))) => continue,
            other => panic!("no ping within 3 s: {other:?}"),
        }
    }
    let first = connected.elapsed();
    assert!(
        first >= interval - Duration::from_millis(20),
        "first ping {first:?} after connecting"
    );
    s.stop().await;
}

#[async_std::test]
async fn server_pings_and_idle_connections_close_with_4000() {
    let config = Config {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    // A client that reads nothing sends no pongs and is closed.
    let mut silent = raw_upgrade(s.addr, "/ws").await;
    let frames = raw_frames(&mut silent).await;
    assert!(
        frames.iter().any(|(op, _)| *op == 0x9),
        "no ping before the close"
    );
    assert_eq!(close_code(&frames), Some(4000));
    // A client that reads answers pings (tungstenite does it), so it stays.
    let mut alive = s.connect().await;
    let mut pings = 0;
    while pings < 8 {
        match alive.next().await {
            Some(Message::Ping(_)) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    alive.send(json!({"type": "ping"})).await;
    assert_eq!(alive.recv().await["type"], "pong");
    s.stop().await;
}
