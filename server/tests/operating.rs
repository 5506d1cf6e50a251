//! What operators rely on (README "Operating"): `/healthz` and `/readyz` as probes see them
//! (over real sockets; readiness flipping with a failing history store, during the real
//! binary's graceful shutdown, and with `--redis` while the test's own redis-server is down).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_std::io::{BufReader, ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_std::prelude::*;
use common::node::Tidechat;
use common::redis::RedisServer;
use common::*;
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
