//! Transport hardening against a hostile client, through real sockets: the Host allowlist (DNS
//! rebinding), the Origin scheme behind a trusted proxy, per-address caps on websockets,
//! handshakes and HTTP connections, `X-Forwarded-For` only from trusted proxies, and the total
//! deadline of an HTTP connection. A second client address is another loopback address
//! (127.0.0.2), bound before connecting.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use async_std::io::prelude::*;
use async_std::io::BufReader;
use async_std::net::TcpStream;
use async_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use common::*;
use tidechat::Config;

const ATTACKER: &str = "127.0.0.1";
const OTHER: &str = "127.0.0.2";

/// A config from command line flags, parsed and validated as the binary does.
fn config(args: &[&str]) -> Config {
    use clap::Parser;
    let mut argv = vec!["tidechat"];
    argv.extend_from_slice(args);
    let mut config = tidechat::config::Args::try_parse_from(argv)
        .unwrap()
        .into_config()
        .unwrap();
    // History in memory, as with `Config::default`: the binary's default `./data` would be one
    // directory for every server of these parallel tests, and only the first could open it.
    config.data_dir = None;
    config
}

/// A TCP connection to `server` from the loopback address `from`.
fn std_from(from: &str, server: SocketAddr) -> std::net::TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(from.parse().unwrap(), 0).into())
        .unwrap();
    sock.connect(&server.into()).unwrap();
    sock.into()
}

fn tcp_from(from: &str, server: SocketAddr) -> TcpStream {
    TcpStream::from(std_from(from, server))
}

/// Sends one raw request from `from` and returns the response's status and head.
async fn exchange(from: &str, server: SocketAddr, request: &str) -> (u16, String) {
    let mut tcp = tcp_from(from, server);
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = async_std::future::timeout(PATIENCE, tcp.read(&mut byte))
            .await
            .expect("no response")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head)
}

/// A GET request for `path` with `Host: host` and extra header lines.
fn get(path: &str, host: &str, extra: &[&str]) -> String {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req + "\r\n"
}

/// A websocket upgrade request for `/ws` with extra header lines.
fn upgrade(host: &str, extra: &[&str]) -> String {
    let mut lines = vec![
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    lines.extend_from_slice(extra);
    get("/ws", host, &lines).replace("Connection: close", "Connection: Upgrade")
}

/// A library websocket client on `/ws` from `from`, with extra request headers; the hello frame
/// is read. `Err` carries the HTTP status of a refused upgrade.
async fn ws_from(from: &str, s: &TestServer, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let std = std_from(from, s.addr);
    let raw = std.try_clone().unwrap();
    let tcp = TcpStream::from(std);
    let mut req = request(&s.url("/ws"));
    for (k, v) in headers {
        req.headers_mut().insert(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match async_tungstenite::client_async(req, tcp).await {
        Ok((ws, _)) => {
            let mut c = Client { ws, raw };
            assert_eq!(c.recv().await["type"], "hello");
            Ok(c)
        }
        Err(async_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

/// `sender` says `n` messages in `room`; `receiver` (already joined) must get all of them.
async fn chat(sender: &mut Client, receiver: &mut Client, room: &str, n: usize) {
    for i in 0..n {
        sender.say(room, &format!("m{i}")).await;
    }
    for i in 0..n {
        let m = receiver.recv_type("message").await;
        assert_eq!(m["text"], format!("m{i}"), "{m}");
    }
}

#[async_std::test]
async fn rebinding_host_gets_421_on_every_path_while_a_real_client_chats() {
    let s = TestServer::default().await;
    let (mut alice, _) = s.join("lobby", "alice").await;
    let (mut bob, _) = s.join("lobby", "bob").await;
    let port = s.addr.port();
    // The attacker's page at http://evil.example:PORT, rebound to 127.0.0.1: Origin and Host
    // agree, so only the Host allowlist tells it apart.
    let evil = format!("evil.example:{port}");
    let origin = format!("Origin: http://{evil}");
    for req in [
        get("/", &evil, &[&origin]),
        get("/stats", &evil, &[&origin]),
        get("/app.js", &evil, &[]),
        upgrade(&evil, &[&origin]),
    ] {
        let (status, head) = exchange(ATTACKER, s.addr, &req).await;
        assert_eq!(status, 421, "{req}\n{head}");
    }
    // The names the server is called by.
    for host in [format!("localhost:{port}"), s.addr.to_string()] {
        assert_eq!(exchange(OTHER, s.addr, &get("/", &host, &[])).await.0, 200);
        let origin = format!("Origin: http://{host}");
        assert_eq!(
            exchange(OTHER, s.addr, &upgrade(&host, &[&origin])).await.0,
            101
        );
    }
    let no_host = "GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n";
    assert_eq!(exchange(ATTACKER, s.addr, no_host).await.0, 400);
    let two_hosts = get("/stats", &s.addr.to_string(), &[&format!("Host: {evil}")]);
    assert_eq!(exchange(ATTACKER, s.addr, &two_hosts).await.0, 400);
    chat(&mut alice, &mut bob, "lobby", 5).await;
    s.stop().await;
}

#[async_std::test]
async fn allowed_hosts_and_origins_are_served() {
    let s = TestServer::start(config(&[
        "--allowed-host",
        "chat.example.com",
        "--allowed-origin",
        "https://app.example:8443",
    ]))
    .await;
    let ok = [
        ("chat.example.com", "http://chat.example.com"),
        ("chat.example.com:8080", "http://chat.example.com:8080"),
        ("app.example:8443", "https://app.example:8443"),
        // Allowed origin, served on another of the server's names.
        ("chat.example.com", "https://app.example:8443"),
    ];
    for (host, origin) in ok {
        assert_eq!(
            exchange(ATTACKER, s.addr, &get("/", host, &[])).await.0,
            200
        );
        let origin = format!("Origin: {origin}");
        let (status, head) = exchange(ATTACKER, s.addr, &upgrade(host, &[&origin])).await;
        assert_eq!(status, 101, "{host} {origin}: {head}");
    }
    for host in ["app.example:9000", "other.example"] {
        assert_eq!(
            exchange(ATTACKER, s.addr, &get("/", host, &[])).await.0,
            421
        );
    }
    s.stop().await;
    // `*`: a proxy in front checks Host.
    let s = TestServer::start(config(&["--allowed-host", "*"])).await;
    assert_eq!(
        exchange(ATTACKER, s.addr, &get("/stats", "anything.example", &[]))
            .await
            .0,
        200
    );
    s.stop().await;
}

#[async_std::test]
async fn http_origin_is_refused_when_a_trusted_proxy_says_https() {
    let s = TestServer::start(config(&[
        "--allowed-host",
        "chat.example.com",
        "--trusted-proxy",
        "127.0.0.1/32",
    ]))
    .await;
    let (host, addr) = ("chat.example.com", s.addr);
    let attempt = |from: &'static str, origin: &'static str, fwd: &'static str| {
        let req = upgrade(host, &[&format!("Origin: {origin}"), fwd]);
        async move { exchange(from, addr, &req).await.0 }
    };
    let http = "http://chat.example.com";
    let https = "https://chat.example.com";
    for fwd in [
        "X-Forwarded-Proto: https",
        "Forwarded: for=203.0.113.7;proto=https",
    ] {
        // From the trusted proxy: the page the browser shows is https.
        assert_eq!(attempt(ATTACKER, http, fwd).await, 403, "{fwd}");
        assert_eq!(attempt(ATTACKER, https, fwd).await, 101, "{fwd}");
        // From anyone else the header is ignored: the request is plain http.
        assert_eq!(attempt(OTHER, http, fwd).await, 101, "{fwd}");
        assert_eq!(attempt(OTHER, https, fwd).await, 403, "{fwd}");
    }
    s.stop().await;
}

#[async_std::test]
async fn header_trickle_is_cut() {
    let s = TestServer::start(Config {
        handshake_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let mut tcp = tcp_from(ATTACKER, s.addr);
    let mut reader = tcp.clone();
    let sent = std::cell::Cell::new(0);
    let head = format!("GET / HTTP/1.1\r\nHost: {}\r\nX-Slow: ", s.addr);
    let closed = async {
        let mut buf = [0u8; 256];
        // Any answer (an error status) or the close ends the trickle's hold.
        let _ = reader.read(&mut buf).await;
    };
    let trickle = async {
        for b in head.bytes().chain(std::iter::repeat(b'a')).take(60) {
            if tcp.write_all(&[b]).await.is_err() {
                break;
            }
            sent.set(sent.get() + 1);
            async_std::task::sleep(Duration::from_millis(500)).await;
        }
    };
    let cut = {
        futures::pin_mut!(closed, trickle);
        matches!(
            futures::future::select(closed, trickle).await,
            futures::future::Either::Left(_)
        )
    };
    assert!(
        cut,
        "a request trickled in for {} bytes was never cut",
        sent.get()
    );
    // Meanwhile another client is served.
    let (status, _) = exchange(OTHER, s.addr, &get("/stats", &s.addr.to_string(), &[])).await;
    assert_eq!(status, 200);
    s.stop().await;
}

/// Sends `GET /stats` on a keep-alive connection and reads the whole response; `None` once the
/// server has closed the connection.
async fn keep_alive_stats(tcp: &mut BufReader<TcpStream>, host: &str) -> Option<u16> {
    get_on(tcp, host, "/stats").await.map(|(status, _)| status)
}

#[async_std::test]
async fn keep_alive_connection_is_cut_at_the_http_deadline() {
    let s = TestServer::start(Config {
        http_deadline: Duration::from_secs(2),
        handshake_timeout: Duration::from_secs(10),
        ..Config::default()
    })
    .await;
    let host = s.addr.to_string();
    let mut tcp = BufReader::new(tcp_from(ATTACKER, s.addr));
    let mut served = 0;
    // Each request arrives well within the handshake timeout; only the total deadline ends
    // this connection (~7 requests in).
    for _ in 0..100 {
        match async_std::future::timeout(PATIENCE, keep_alive_stats(&mut tcp, &host))
            .await
            .expect("no answer and no close")
        {
            Some(status) => {
                assert_eq!(status, 200);
                served += 1;
            }
            None => break,
        }
        async_std::task::sleep(Duration::from_millis(300)).await;
    }
    assert!(served >= 2, "only {served} requests served");
    assert!(served < 100, "the keep-alive connection was never cut");
    // The next connection is served again.
    let mut fresh = BufReader::new(tcp_from(ATTACKER, s.addr));
    assert_eq!(keep_alive_stats(&mut fresh, &host).await, Some(200));
    s.stop().await;
}

#[async_std::test]
async fn one_address_at_the_http_cap_does_not_stop_another() {
    let s = TestServer::start(Config {
        max_http_connections: 16,
        per_ip: tidechat::per_ip::PerIpLimits {
            http: 8,
            ..Config::default().per_ip
        },
        ..Config::default()
    })
    .await;
    // 40 idle connections from one address: 8 are kept, the rest closed unread.
    let mut held: Vec<TcpStream> = (0..40).map(|_| tcp_from(ATTACKER, s.addr)).collect();
    s.wait_stats("8 HTTP connections", |st| st.http_connections == 8)
        .await;
    let mut closed = 0;
    for tcp in &mut held[8..] {
        let mut buf = [0u8; 16];
        let read = async_std::future::timeout(PATIENCE, tcp.read(&mut buf)).await;
        if matches!(read, Ok(Ok(0)) | Ok(Err(_))) {
            closed += 1;
        }
    }
    assert_eq!(closed, 32);
    // The other address loads the page and chats.
    let host = s.addr.to_string();
    assert_eq!(exchange(OTHER, s.addr, &get("/", &host, &[])).await.0, 200);
    let mut carol = ws_from(OTHER, &s, &[]).await.unwrap();
    let mut dave = ws_from(OTHER, &s, &[]).await.unwrap();
    carol.join("lobby", "carol").await;
    dave.join("lobby", "dave").await;
    chat(&mut carol, &mut dave, "lobby", 5).await;
    assert_eq!(s.state.stats().http_connections, 8);
    drop(held);
    s.wait_stats("attacker gone", |st| st.http_connections == 0)
        .await;
    s.stop().await;
}

#[async_std::test]
async fn per_address_websocket_cap_gives_429_while_another_address_connects() {
    let s = TestServer::start(Config {
        per_ip: tidechat::per_ip::PerIpLimits {
            websockets: 3,
            ..Config::default().per_ip
        },
        ..Config::default()
    })
    .await;
    let mut mine = Vec::new();
    for _ in 0..3 {
        mine.push(ws_from(ATTACKER, &s, &[]).await.unwrap());
    }
    assert_eq!(ws_from(ATTACKER, &s, &[]).await.err(), Some(429));
    let mut other = ws_from(OTHER, &s, &[]).await.unwrap();
    mine[0].join("lobby", "alice").await;
    other.join("lobby", "bob").await;
    chat(&mut mine[0], &mut other, "lobby", 5).await;
    chat(&mut other, &mut mine[0], "lobby", 5).await;
    // A closed websocket gives its place back.
    reset(mine.pop().unwrap());
    s.wait_stats("one closed", |st| st.connections == 3).await;
    mine.push(ws_from(ATTACKER, &s, &[]).await.unwrap());
    s.stop().await;
}

#[async_std::test]
async fn per_address_handshake_rate_gives_429_with_retry_after() {
    let s = TestServer::start(Config {
        per_ip: tidechat::per_ip::PerIpLimits {
            rate: 0.1,
            burst: 3,
            ..Config::default().per_ip
        },
        ..Config::default()
    })
    .await;
    for _ in 0..3 {
        drop(ws_from(ATTACKER, &s, &[]).await.unwrap());
    }
    let (status, head) = exchange(ATTACKER, s.addr, &upgrade(&s.addr.to_string(), &[])).await;
    assert_eq!(status, 429, "{head}");
    let retry_after: u64 = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(|v| v.trim().to_string())
        })
        .expect("no Retry-After")
        .parse()
        .unwrap();
    assert!(
        (1..=10).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    // Plain HTTP is not a handshake.
    assert_eq!(
        exchange(ATTACKER, s.addr, &get("/", &s.addr.to_string(), &[]))
            .await
            .0,
        200
    );
    let mut a = ws_from(OTHER, &s, &[]).await.unwrap();
    let mut b = ws_from(OTHER, &s, &[]).await.unwrap();
    a.join("lobby", "a").await;
    b.join("lobby", "b").await;
    chat(&mut a, &mut b, "lobby", 3).await;
    s.stop().await;
}

#[async_std::test]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let mut cfg = config(&[
        "--trusted-proxy",
        "127.0.0.2",
        "--max-connections-per-ip",
        "2",
    ]);
    cfg.per_ip.http = 2;
    let s = TestServer::start(cfg).await;
    let xff = |v: &'static str| [("X-Forwarded-For", v)];
    // An untrusted peer cannot escape its cap by naming other clients.
    let _a1 = ws_from(ATTACKER, &s, &xff("203.0.113.1")).await.unwrap();
    let _a2 = ws_from(ATTACKER, &s, &xff("203.0.113.2")).await.unwrap();
    assert_eq!(
        ws_from(ATTACKER, &s, &xff("203.0.113.3")).await.err(),
        Some(429)
    );
    let fwd = [("Forwarded", "for=203.0.113.4")];
    assert_eq!(ws_from(ATTACKER, &s, &fwd).await.err(), Some(429));
    // The trusted proxy's clients are counted each by its own address.
    let _p1 = ws_from(OTHER, &s, &xff("203.0.113.1")).await.unwrap();
    let _p2 = ws_from(OTHER, &s, &xff("203.0.113.1")).await.unwrap();
    assert_eq!(
        ws_from(OTHER, &s, &xff("203.0.113.1")).await.err(),
        Some(429)
    );
    // What the client wrote itself (left of the proxy's entry) does not count.
    assert_eq!(
        ws_from(OTHER, &s, &xff("198.51.100.9, 203.0.113.1"))
            .await
            .err(),
        Some(429)
    );
    let mut p3 = ws_from(OTHER, &s, &xff("203.0.113.2")).await.unwrap();
    let mut p4 = ws_from(OTHER, &s, &[("Forwarded", "for=\"[2001:db8::1]:4711\"")])
        .await
        .unwrap();
    p3.join("lobby", "p3").await;
    p4.join("lobby", "p4").await;
    chat(&mut p3, &mut p4, "lobby", 3).await;
    // The per-peer HTTP cap spares the trusted proxy, not the untrusted peer.
    let from_proxy: Vec<TcpStream> = (0..5).map(|_| tcp_from(OTHER, s.addr)).collect();
    let from_attacker: Vec<TcpStream> = (0..5).map(|_| tcp_from(ATTACKER, s.addr)).collect();
    s.wait_stats("5 + 2 HTTP connections", |st| st.http_connections == 7)
        .await;
    drop((from_proxy, from_attacker));
    s.stop().await;
}
