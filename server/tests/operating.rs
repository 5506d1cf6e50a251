//! What operators rely on (README "Operating"): `/healthz` and `/readyz` as probes see them
//! (over real sockets; readiness flipping with a failing history store, during the real
//! binary's graceful shutdown, and with `--redis` while the test's own redis-server is down);
//! the real binary's `--log-format json` lines and their named fields.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_std::io::{BufReader, ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_std::prelude::*;
use async_tungstenite::tungstenite::Message;
use common::node::Tidechat;
use common::redis::RedisServer;
use common::*;
use serde_json::Value;
use tidechat::hub::position::StreamState;
use tidechat::hub::record::Publication;
use tidechat::hub::store::memory::MemoryStore;
use tidechat::hub::store::{HistoryStore, Read, StoreError};
use tidechat::hub::Page;
use tidechat::{Config, Server};

// ---------------------------------------------------------------------------------------------
// HTTP as a probe speaks it.

/// Sends `GET path` with `Host: host` on a keep-alive connection and reads the whole response:
/// its status and body, or `None` once the server has closed the connection.
async fn get_on(tcp: &mut BufReader<TcpStream>, host: &str, path: &str) -> Option<(u16, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    tcp.get_mut().write_all(req.as_bytes()).await.ok()?;
    let mut status = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if tcp.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        if status.is_none() {
            status = line.split(' ').nth(1)?.parse().ok();
        } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().ok()?;
        } else if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; length];
    tcp.read_exact(&mut body).await.ok()?;
    Some((status?, String::from_utf8(body).ok()?))
}

/// A keep-alive HTTP connection to `addr`.
async fn keep_alive(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

/// `GET path` on a connection of its own, as most probes send it.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = keep_alive(addr).await;
    async_std::future::timeout(PATIENCE, get_on(&mut tcp, &addr.to_string(), path))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path}"))
        .unwrap_or_else(|| panic!("connection closed before the answer to GET {path}"))
}

/// Polls `GET path` (every 20 ms, bounded by PATIENCE) until it answers `status`; returns the
/// body.
async fn until_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (got, body) = get(addr, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still answers {got} {body:?}, not {status}"
        );
        async_std::task::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Probes.

/// A durable history store (the memory store inside) whose syncs fail while the test says so.
#[derive(Debug)]
struct Flaky {
    inner: MemoryStore,
    failing: AtomicBool,
}

impl HistoryStore for Flaky {
    fn open(&self, room: &Arc<str>) -> Result<StreamState, StoreError> {
        self.inner.open(room)
    }
    fn append(&self, p: &Arc<Publication>) -> Result<(), StoreError> {
        self.inner.append(p)
    }
    fn read(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        bytes: usize,
    ) -> Result<Read, StoreError> {
        self.inner.read(room, page, max, bytes)
    }
    fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.expire(now_ms)
    }
    fn forget(&self, room: &str) {
        self.inner.forget(room)
    }
    fn durable(&self) -> bool {
        true
    }
    fn sync(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::Acquire) {
            return Err(StoreError::Failed("test: the disk refuses".into()));
        }
        Ok(())
    }
    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_std::test]
async fn readyz_says_503_while_the_history_store_fails_and_ok_once_it_works_again() {
    let config = Config::default();
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(config.retention()),
        failing: AtomicBool::new(false),
    });
    let s = TestServer::serve(Server::with_store(config, store.clone())).await;
    assert_eq!(get(s.addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(s.addr, "/readyz").await, (200, "ok\n".into()));

    store.failing.store(true, Ordering::Release);
    let (mut alice, _) = s.join("r", "alice").await;
    // Appended, so the committer syncs: that sync fails.
    alice.say("r", "not acknowledged").await;
    let body = until_status(s.addr, "/readyz", 503).await;
    assert_eq!(body, "not ready: the history store is unavailable\n");
    assert_eq!(
        get(s.addr, "/healthz").await,
        (200, "ok\n".into()),
        "alive all the same"
    );

    store.failing.store(false, Ordering::Release);
    assert_eq!(until_status(s.addr, "/readyz", 200).await, "ok\n");
    assert_eq!(alice.recv_type("message").await["text"], "not acknowledged");
    s.stop().await;
}

#[async_std::test]
async fn probes_go_through_the_host_check() {
    let s = TestServer::default().await;
    for path in ["/healthz", "/readyz"] {
        let mut tcp = keep_alive(s.addr).await;
        let (status, _) = get_on(&mut tcp, "evil.example", path).await.unwrap();
        assert_eq!(status, 421, "{path}");
    }
    s.stop().await;
}

/// SIGTERM: the listener closes, and a probe on a connection that was already open sees 503
/// while the websockets are being closed (a client that never answers the close frame holds the
/// shutdown for the close bound); `/healthz` stays 200 until the process ends.
#[async_std::test]
async fn readyz_flips_to_503_during_the_graceful_shutdown_of_the_binary() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let node = Tidechat::start(
        "tidechat",
        &["--data-dir", dir, "--shutdown-timeout", "30s"],
    );
    let host = node.addr.to_string();
    let mut probe = keep_alive(node.addr).await;
    assert_eq!(
        get_on(&mut probe, &host, "/readyz").await,
        Some((200, "ok\n".into()))
    );
    let mut mute = raw_upgrade(node.addr, "/ws").await;
    let mut upgraded = [0u8; 12];
    mute.read_exact(&mut upgraded).await.unwrap();
    assert_eq!(&upgraded, b"HTTP/1.1 101");
    node.wait_log("connect #");

    node.sigterm();
    // Polled from the moment of the signal, so the answer is seen however short the window.
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        let answer = get_on(&mut probe, &host, "/readyz")
            .await
            .expect("the probe's connection closed before /readyz said 503");
        if answer.0 != 200 || Instant::now() > deadline {
            break answer;
        }
    };
    assert_eq!(answer, (503, "not ready: shutting down\n".into()));
    assert_eq!(
        get_on(&mut probe, &host, "/healthz").await,
        Some((200, "ok\n".into()))
    );
    assert!(node.log().contains("shutting down"));
    let status = node.exit_status().await;
    assert!(status.success(), "{status}");
    drop(mute);
}

/// With `--redis`: 503 within moments of the test's redis-server being killed (the node's
/// connections to it break), 200 again once it is back and the node has reconnected.
#[async_std::test]
async fn readyz_follows_redis_down_and_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = Tidechat::start("node", &["--data-dir", "none", "--redis", &url]);
    assert_eq!(get(node.addr, "/readyz").await, (200, "ok\n".into()));

    redis.kill();
    let body = until_status(node.addr, "/readyz", 503).await;
    assert_eq!(body, "not ready: redis is unavailable\n");
    assert_eq!(get(node.addr, "/healthz").await, (200, "ok\n".into()));

    redis.restart();
    assert_eq!(until_status(node.addr, "/readyz", 200).await, "ok\n");
    // Ready means it takes messages.
    let mut alice = join_lobby_at(node.addr, "alice").await;
    alice.say("lobby", "back").await;
    assert_eq!(alice.recv_type("message").await["text"], "back");
    node.sigterm();
    assert!(node.exit_status().await.success());
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// Every line of the binary's stderr so far, each of which must be a JSON object with `level`,
/// `time` and `msg`.
fn json_lines(node: &Tidechat) -> Vec<Value> {
    node.log()
        .lines()
        .filter(|l| *l != "<end>")
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(
                v["level"].is_u64() && v["time"].is_u64() && v["msg"].is_string(),
                "{l}"
            );
            v
        })
        .collect()
}

/// Waits (bounded) for a line that `pred` accepts and returns it.
fn wait_line(node: &Tidechat, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = json_lines(node).into_iter().find(&pred) {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} line:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn msg(v: &Value) -> &str {
    v["msg"].as_str().unwrap()
}

/// The request line for `route` with `status`.
fn request_line(node: &Tidechat, route: &str, status: u16) -> Value {
    wait_line(node, &format!("{route} {status} request"), |v| {
        v["route"] == route && v["status"] == status && v.get("method").is_some()
    })
}

/// Sends `n` 16 KiB messages to `room`, one at a time (each after the echo of the last: with
/// `--room-buffer-bytes` at four of them, nobody who reads may fall behind).
async fn say_big(c: &mut Client, room: &str, n: usize) {
    let text = "z".repeat(16 * 1024 - 64);
    for _ in 0..n {
        c.say(room, &text).await;
        c.recv_type("message").await;
    }
}

#[async_std::test]
async fn json_log_lines_carry_stable_fields_and_nothing_per_websocket_message() {
    // Debug, so that the lines with a room are on too; rooms that hold 64 KiB of events, so
    // that a client that stops reading lags soon.
    let node = Tidechat::start(
        "tidechat",
        &[
            "--data-dir",
            "none",
            "--log-level",
            "debug",
            "--room-buffer-bytes",
            "65536",
            "--write-timeout",
            "120s",
        ],
    );
    let addr = node.addr;

    // HTTP requests: one line each, at info; probes at debug.
    assert_eq!(get(addr, "/").await.0, 200);
    assert_eq!(get(addr, "/app.js").await.0, 200);
    assert_eq!(get(addr, "/no/such/file").await.0, 404);
    assert_eq!(get(addr, "/stats").await.0, 200);
    assert_eq!(get(addr, "/healthz").await.0, 200);
    for (route, status) in [
        ("page", 200),
        ("static", 200),
        ("other", 404),
        ("stats", 200),
    ] {
        let v = request_line(&node, route, status);
        assert_eq!(v["level"], 30, "{v}");
        assert_eq!(v["method"], "GET", "{v}");
        assert!(v["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{v}");
        assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    }
    assert_eq!(request_line(&node, "healthz", 200)["level"], 20);

    // A refused handshake: its request line, and at debug why.
    let mut foreign = TcpStream::connect(addr).await.unwrap();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: http://evil.example\r\n\r\n"
    );
    foreign.write_all(upgrade.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    foreign.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 403");
    assert_eq!(request_line(&node, "ws", 403)["level"], 30);
    let refused = wait_line(&node, "refused origin", |v| v["reason"] == "origin");
    assert_eq!(
        (refused["route"].as_str(), refused["level"].as_u64()),
        (Some("ws"), Some(20))
    );
    assert!(refused["peer"].is_string(), "{refused}");

    // Connects: conn, peer, route.
    let mut alice = join_lobby_at(addr, "alice").await;
    let (seed_ws, _) = async_tungstenite::client_async(
        format!("ws://{addr}/chatSocket"),
        TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    let mut seed = Client {
        ws: seed_ws,
        raw: std::net::TcpStream::connect(addr).unwrap(),
    };
    let connect = |route: &'static str| {
        wait_line(&node, &format!("{route} connect"), move |v| {
            msg(v).starts_with("connect #") && v["route"] == route
        })
    };
    let (a, s) = (connect("ws"), connect("chatSocket"));
    for v in [&a, &s] {
        assert_eq!(v["level"], 30, "{v}");
        assert!(v["conn"].is_u64(), "{v}");
        assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    }
    // The extra socket opened for `raw` above is a plain HTTP connection that sends nothing.
    drop(std::mem::replace(
        &mut seed.raw,
        std::net::TcpStream::connect(addr).unwrap(),
    ));

    // Chat in both protocols: not one line for it.
    let before = json_lines(&node).len();
    for i in 0..10 {
        alice.say("lobby", &format!("from alice {i}")).await;
        alice.recv_type("message").await;
        assert_eq!(seed_text(&mut seed).await, format!("alice: from alice {i}"));
        seed.send_text(&format!("from seed {i}")).await;
        assert_eq!(
            alice.recv_type("message").await["text"],
            format!("from seed {i}")
        );
        assert!(seed_text(&mut seed)
            .await
            .ends_with(&format!(": from seed {i}")));
    }
    assert_eq!(get(addr, "/stats").await.0, 200);
    let marker = |v: &Value| v["route"] == "stats";
    wait_line(&node, "marker", |v| {
        marker(v) && json_lines(&node).iter().filter(|w| marker(w)).count() == 2
    });
    let during: Vec<Value> = json_lines(&node).split_off(before);
    assert!(
        during.len() == 1 && marker(&during[0]),
        "lines during websocket traffic: {during:?}"
    );

    // A slow consumer: its room at debug, its close code and reason at info.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut slow = ws_over(socket.into(), addr).await;
    slow.join("busy", "slow").await;
    let slow_conn = wait_line(&node, "slow's connect", |v| {
        msg(v).starts_with("connect #") && v["conn"] != a["conn"] && v["conn"] != s["conn"]
    })["conn"]
        .clone();
    alice.join("busy", "alice").await;
    // Far more than the socket buffers hold, so its writer blocks, and the room moves on.
    say_big(&mut alice, "busy", 1500).await;
    let (_, code) = slow.texts_until_close().await;
    assert_eq!(code, Some(4008));
    let lagged = wait_line(&node, "lagged", |v| msg(v).contains("lagged"));
    assert_eq!(
        (&lagged["conn"], lagged["room"].as_str()),
        (&slow_conn, Some("busy"))
    );
    let gone = wait_line(&node, "slow's disconnect", |v| {
        msg(v).starts_with("disconnect #") && v["conn"] == slow_conn
    });
    assert_eq!(gone["code"], 4008, "{gone}");
    assert_eq!(gone["reason"], "slow consumer", "{gone}");
    assert_eq!(gone["route"], "ws", "{gone}");

    // A client that closes: no code of the server's.
    alice.ws.close(None).await.unwrap();
    while alice.ws.next().await.is_some() {}
    let bye = wait_line(&node, "alice's disconnect", |v| {
        msg(v).starts_with("disconnect #") && v["conn"] == a["conn"]
    });
    assert_eq!(bye["reason"], "client closed", "{bye}");
    assert!(bye.get("code").is_none(), "{bye}");

    // Shutdown closes the rest with 1001.
    node.sigterm();
    assert_eq!(seed.closed().await, Some(1001));
    let shut = wait_line(&node, "seed's disconnect", |v| {
        msg(v).starts_with("disconnect #") && v["conn"] == s["conn"]
    });
    assert_eq!(
        (shut["code"].as_u64(), shut["route"].as_str()),
        (Some(1001), Some("chatSocket"))
    );
    assert!(node.exit_status().await.success());
}

/// The next text frame of a `/chatSocket` client.
async fn seed_text(c: &mut Client) -> String {
    loop {
        match c.next().await {
            Some(Message::Text(t)) => return t.to_string(),
            Some(Message::Ping(_)) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}
