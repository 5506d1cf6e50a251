//! `/metrics` on a real server over real sockets: a scripted session (connect, join, say, a
//! seed client, refused handshakes, a rate-limited client, a slow consumer) moves every counter
//! by exactly what the clients saw on the wire; the whole output parses as Prometheus text;
//! `--metrics-bind` serves it on a private port only; `--metrics off` counts nothing; a failing
//! store shows in `store_errors`, `broker_up` and `ready`.
//!
//! Every client's socket is tapped: the bytes it read and wrote after the HTTP handshake are
//! parsed into websocket frames, so the expected frames, bytes, close codes and fan-out
//! observations are what crossed the wire, not what the test meant to send.

mod common;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_std::io::{ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use common::store::TestStore;
use common::*;
use futures::{AsyncRead, AsyncWrite, SinkExt, StreamExt};
use serde_json::{json, Value};
use tidechat::{Config, Server};

/// One direction of a socket, parsed into websocket frames after the HTTP head.
#[derive(Debug, Default)]
struct Wire {
    /// The HTTP request or response, until its blank line.
    head: Vec<u8>,
    head_done: bool,
    /// Websocket bytes (everything after the head), whole frames or not.
    bytes: u64,
    hdr: Vec<u8>,
    payload_left: u64,
    opcode: u8,
    prefix: Vec<u8>,
    /// Whole frames: opcode and the first bytes of the payload (unmasked directions only).
    frames: Vec<(u8, Vec<u8>)>,
}

impl Wire {
    fn feed(&mut self, mut b: &[u8]) {
        while !self.head_done && !b.is_empty() {
            self.head.push(b[0]);
            b = &b[1..];
            self.head_done = self.head.ends_with(b"\r\n\r\n");
        }
        self.bytes += b.len() as u64;
        while !b.is_empty() {
            if self.payload_left > 0 {
                let n = (self.payload_left as usize).min(b.len());
                let want = 48usize.saturating_sub(self.prefix.len()).min(n);
                self.prefix.extend_from_slice(&b[..want]);
                self.payload_left -= n as u64;
                b = &b[n..];
                if self.payload_left == 0 {
                    self.frames
                        .push((self.opcode, std::mem::take(&mut self.prefix)));
                }
                continue;
            }
            self.hdr.push(b[0]);
            b = &b[1..];
            let h = &self.hdr;
            if h.len() < 2 {
                continue;
            }
            let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
            let ext = match h[1] & 0x7f {
                126 => 2,
                127 => 8,
                _ => 0,
            };
            if h.len() < 2 + ext + mask {
                continue;
            }
            let len = match ext {
                0 => u64::from(h[1] & 0x7f),
                _ => h[2..2 + ext]
                    .iter()
                    .fold(0, |l, b| (l << 8) | u64::from(*b)),
            };
            self.opcode = h[0] & 0x0f;
            self.hdr.clear();
            if len == 0 {
                self.frames.push((self.opcode, Vec::new()));
            } else {
                self.payload_left = len;
            }
        }
    }

    fn close_codes(&self) -> Vec<u16> {
        self.frames
            .iter()
            .filter(|(op, p)| *op == 0x8 && p.len() >= 2)
            .map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
            .collect()
    }
}

/// What a client's socket carried: `read` from the server, `written` to it.
#[derive(Debug, Default)]
struct Tap {
    read: Wire,
    written: Wire,
}

/// A TCP stream that shows its tap every byte that passes.
struct Tapped {
    inner: TcpStream,
    tap: Arc<Mutex<Tap>>,
}

impl AsyncRead for Tapped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read {
            self.tap.lock().unwrap().read.feed(&buf[..n]);
        }
        read
    }
}

impl AsyncWrite for Tapped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.tap.lock().unwrap().written.feed(&buf[..n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A websocket client over a tapped socket.
struct Tc {
    ws: WebSocketStream<Tapped>,
    tap: Arc<Mutex<Tap>>,
    raw: std::net::TcpStream,
    seed: bool,
}

impl Tc {
    /// Opens `path` on `addr`; `tiny`: with a 4 KiB receive buffer, so that the server's writes
    /// block as soon as the client stops reading.
    async fn open(addr: SocketAddr, path: &str, tiny: bool) -> Tc {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        if tiny {
            socket.set_recv_buffer_size(4096).unwrap();
        }
        socket.connect(&addr.into()).unwrap();
        let std: std::net::TcpStream = socket.into();
        let raw = std.try_clone().unwrap();
        let tap = Arc::new(Mutex::new(Tap::default()));
        let stream = Tapped {
            inner: TcpStream::from(std),
            tap: tap.clone(),
        };
        let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}{path}"), stream)
            .await
            .unwrap();
        let mut c = Tc {
            ws,
            tap,
            raw,
            seed: path == "/chatSocket",
        };
        if !c.seed {
            assert_eq!(c.recv().await["type"], "hello");
        }
        c
    }

    async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> Option<Message> {
        async_std::future::timeout(PATIENCE, self.ws.next())
            .await
            .expect("timed out waiting for a frame")
            .map(|r| r.expect("read error"))
    }

    async fn recv_text(&mut self) -> String {
        loop {
            match self.next().await {
                Some(Message::Text(t)) => return t.to_string(),
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    async fn recv(&mut self) -> Value {
        serde_json::from_str(&self.recv_text().await).unwrap()
    }

    async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    async fn join(&mut self, room: &str, name: &str) {
        self.send(json!({"type": "join", "room": room, "name": name}))
            .await;
        assert_eq!(self.recv_type("joined").await["type"], "joined");
    }

    /// Reads to the end of the stream; the close code, if a close frame came.
    async fn read_to_close(&mut self) -> Option<u16> {
        let mut code = None;
        while let Ok(Some(Ok(msg))) = async_std::future::timeout(PATIENCE, self.ws.next()).await {
            if let Message::Close(f) = msg {
                code = f.map(|f| u16::from(f.code));
            }
        }
        code
    }

    /// Closes from the client side and reads until the server's reply and the end.
    async fn close(mut self) -> Arc<Mutex<Tap>> {
        self.ws.close(None).await.unwrap();
        assert_eq!(self.read_to_close().await, Some(1000));
        self.tap
    }

    /// Reads what the server wrote to the raw socket until it ends, without answering anything
    /// (this takes the socket out of non-blocking mode; the websocket is not used again).
    async fn drain_raw(self) -> Arc<Mutex<Tap>> {
        let Tc { ws, tap, raw, .. } = self;
        let sink = tap.clone();
        async_std::task::spawn_blocking(move || {
            use std::io::Read;
            let mut raw = raw;
            raw.set_nonblocking(false).unwrap();
            raw.set_read_timeout(Some(PATIENCE)).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match raw.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => sink.lock().unwrap().read.feed(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("the server did not end the stream: {e}"),
                }
            }
        })
        .await;
        drop(ws);
        tap
    }
}

/// What the clients saw, in the terms of the server's counters.
#[derive(Debug, Default)]
struct Seen {
    frames_sent: u64,
    bytes_sent: u64,
    frames_received: u64,
    bytes_received: u64,
    /// Room events (messages, presence; every text to a seed client) the clients got whole.
    events: u64,
    closes: HashMap<u16, u64>,
}

impl Seen {
    fn add(&mut self, tap: &Arc<Mutex<Tap>>, seed: bool) {
        let t = tap.lock().unwrap();
        self.frames_sent += t.read.frames.len() as u64;
        self.bytes_sent += t.read.bytes;
        self.frames_received += t.written.frames.len() as u64;
        self.bytes_received += t.written.bytes;
        for (op, prefix) in &t.read.frames {
            let event = *op == 0x1
                && (seed
                    || prefix.starts_with(br#"{"type":"message""#)
                    || prefix.starts_with(br#"{"type":"presence""#));
            self.events += u64::from(event);
        }
        for code in t.read.close_codes() {
            *self.closes.entry(code).or_default() += 1;
        }
    }
}

/// An HTTP request by hand; returns the status, the head (lower case) and the body (read by
/// its Content-Length, so a kept-alive connection does not hold the test up).
async fn http(addr: SocketAddr, path: &str, host: &str, extra: &[&str]) -> (u16, String, String) {
    use async_std::io::{BufReadExt, BufReader};
    let mut tcp = BufReader::new(TcpStream::connect(addr).await.unwrap());
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    tcp.get_mut().write_all(req.as_bytes()).await.unwrap();
    let answer = async {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(tcp.read_line(&mut line).await.unwrap() > 0, "no answer");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line.to_ascii_lowercase());
        }
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        let mut body = vec![0u8; length];
        tcp.read_exact(&mut body).await.unwrap();
        (head, String::from_utf8(body).unwrap())
    };
    let (head, body) = async_std::future::timeout(PATIENCE, answer)
        .await
        .expect("no answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, body)
}

/// A parsed scrape: `name{labels}` (labels sorted) -> value, and histograms by name.
#[derive(Debug)]
struct Scrape {
    values: HashMap<String, f64>,
    histograms: HashMap<String, Vec<(f64, f64)>>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .values
            .get(key)
            .unwrap_or_else(|| panic!("{key} is not in the scrape: {:?}", self.values.keys()))
    }

    /// Observations in histogram `name` (its `+Inf` bucket).
    fn observations(&self, name: &str) -> f64 {
        let buckets = &self.histograms[name];
        buckets.last().unwrap().1
    }
}

/// Parses a whole `/metrics` body with prometheus-parse and checks that nothing was skipped:
/// every sample line became a sample, every sample's family was declared with `# TYPE`, every
/// histogram's buckets are cumulative and end at `+Inf` = `_count`.
fn parse(body: &str) -> Scrape {
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text");
    let sample_lines = body
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    let types: HashMap<&str, &str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let mut values = HashMap::new();
    let mut histograms = HashMap::new();
    let mut parsed_lines = 0;
    for s in parsed.samples {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| {
                s.metric
                    .strip_suffix(suffix)
                    .filter(|f| types.get(f) == Some(&"histogram"))
            })
            .unwrap_or(&s.metric);
        assert!(
            types.contains_key(family),
            "{} has no # TYPE line",
            s.metric
        );
        assert!(s.metric.starts_with("tidechat_"), "{}", s.metric);
        let key = if s.labels.is_empty() {
            s.metric.clone()
        } else {
            format!("{}{{{}}}", s.metric, s.labels)
        };
        match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => {
                assert!(v.is_finite() && v >= 0.0, "{key} = {v}");
                parsed_lines += 1;
                values.insert(key, v);
            }
            prometheus_parse::Value::Histogram(b) => {
                parsed_lines += b.len();
                let mut b: Vec<(f64, f64)> = b.iter().map(|c| (c.less_than, c.count)).collect();
                b.sort_by(|x, y| x.0.total_cmp(&y.0));
                assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "{key}: {b:?}");
                assert_eq!(b.last().unwrap().0, f64::INFINITY, "{key}");
                histograms.insert(key, b);
            }
            other => panic!("{key}: unexpected {other:?}"),
        }
    }
    assert_eq!(
        parsed_lines, sample_lines,
        "lines the parser skipped:\n{body}"
    );
    for (name, b) in &histograms {
        assert_eq!(
            b.last().unwrap().1,
            values[&format!("{name}_count")],
            "{name}"
        );
    }
    Scrape { values, histograms }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, head, body) = http(addr, "/metrics", &addr.to_string(), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse(&body)
}

/// Waits (bounded) until the server's stats satisfy `pred`.
async fn until(s: &TestServer, what: &str, pred: impl Fn(&tidechat::server::Stats) -> bool) {
    s.wait_stats(what, pred).await;
}

const BIG: usize = 6 << 20;
const BURST: u32 = 40;
const STRIKES: u32 = 20;

fn session_config() -> Config {
    Config {
        allowed_origins: vec!["https://chat.example:443".into()],
        // No token comes back during the test: what the rate limit refuses is exact.
        rate: 0.001,
        burst: BURST,
        rate_strikes: STRIKES,
        max_message_bytes: 8 << 20,
        max_text_bytes: 7 << 20,
        room_buffer_bytes: 64 << 20,
        write_timeout: Duration::from_millis(500),
        // No server pings (and so no client pongs) during the test.
        ping_interval: Duration::from_secs(600),
        idle_timeout: Duration::from_secs(1200),
        // Every presence change goes out as it happens: a batch flushed after a client's tap
        // was read would be counted by the server only.
        presence_window: Duration::ZERO,
        ..Config::default()
    }
}

#[async_std::test]
async fn a_scripted_session_moves_every_counter_by_what_crossed_the_wire() {
    let s = TestServer::start(session_config()).await;
    let host = s.addr.to_string();
    let before = scrape(s.addr).await;

    // Refused handshakes: a foreign Origin, no upgrade at all, a Host not allowed.
    let upgrade = [
        "Connection: Upgrade",
        "Upgrade: websocket",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    ];
    let mut foreign = upgrade.to_vec();
    foreign.push("Origin: http://evil.example");
    assert_eq!(http(s.addr, "/ws", &host, &foreign).await.0, 403);
    assert_eq!(http(s.addr, "/ws", &host, &[]).await.0, 426);
    assert_eq!(http(s.addr, "/ws", "evil.example", &upgrade).await.0, 421);

    // Connect, join, say: two v1 clients and a seed client in the lobby.
    let mut alice = Tc::open(s.addr, "/ws", false).await;
    alice.join("lobby", "alice").await;
    let mut bob = Tc::open(s.addr, "/ws", false).await;
    bob.join("lobby", "bob").await;
    let mut seed = Tc::open(s.addr, "/chatSocket", false).await;
    until(&s, "the seed client in the lobby", |st| st.hub.members == 3).await;
    let say = |room: &str, text: &str| json!({"type": "say", "room": room, "text": text});
    alice.send(say("lobby", "one")).await;
    alice.send(say("lobby", "two")).await;
    bob.send(say("lobby", "three")).await;
    seed.ws.send(Message::Text("four".into())).await.unwrap();
    for c in [&mut alice, &mut bob] {
        for _ in 0..4 {
            c.recv_type("message").await;
        }
    }
    for _ in 0..4 {
        seed.recv_text().await;
    }

    // A client over the rate: the burst is served, then STRIKES refused frames get an error
    // each and one more closes it with 1008.
    let mut flood = Tc::open(s.addr, "/ws", false).await;
    for _ in 0..BURST + STRIKES + 1 {
        flood
            .ws
            .feed(Message::Text(json!({"type": "ping"}).to_string().into()))
            .await
            .unwrap();
    }
    flood.ws.flush().await.unwrap();
    assert_eq!(flood.read_to_close().await, Some(1008));
    let flood = flood.tap;

    // A slow consumer: it stops reading, its writer blocks on the big messages, and after
    // --write-timeout it is closed (4008, or dropped when the close frame cannot be written).
    let mut stuck = Tc::open(s.addr, "/ws", true).await;
    stuck.join("slow", "stuck").await;
    let mut sender = Tc::open(s.addr, "/ws", false).await;
    sender.join("slow", "sender").await;
    let text = "z".repeat(BIG);
    for _ in 0..4 {
        sender
            .send(json!({"type": "say", "room": "slow", "text": text}))
            .await;
        sender.recv_type("message").await;
    }
    until(&s, "the slow consumer to be dropped", |st| {
        st.connections == 4
    })
    .await;
    let stuck = stuck.drain_raw().await;

    let mut seen = Seen::default();
    seen.add(&flood, false);
    seen.add(&stuck, false);
    for c in [alice, bob, sender] {
        seen.add(&c.close().await, false);
    }
    seen.add(&seed.close().await, true);
    until(&s, "every connection to end", |st| st.connections == 0).await;
    let after = scrape(s.addr).await;

    let delta = |key: &str| after.get(key) - before.get(key);
    assert_eq!(delta(r#"tidechat_connections_total{route="ws"}"#), 5.0);
    assert_eq!(
        delta(r#"tidechat_connections_total{route="chatSocket"}"#),
        1.0
    );
    for route in ["ws", "chatSocket"] {
        let key = format!(r#"tidechat_connections_open{{route="{route}"}}"#);
        assert_eq!((before.get(&key), after.get(&key)), (0.0, 0.0), "{key}");
    }
    for (reason, n) in [
        ("origin", 1.0),
        ("host", 1.0),
        ("bad_request", 1.0),
        ("per_ip_cap", 0.0),
        ("per_ip_rate", 0.0),
        ("server_full", 0.0),
    ] {
        let key = format!(r#"tidechat_handshakes_refused_total{{reason="{reason}"}}"#);
        assert_eq!(delta(&key), n, "{key}");
    }
    assert_eq!(delta("tidechat_messages_published_total"), 8.0);
    assert_eq!(delta("tidechat_rate_limited_total"), f64::from(STRIKES + 1));
    assert_eq!(delta("tidechat_slow_consumer_closes_total"), 1.0);
    assert_eq!(
        delta("tidechat_frames_sent_total"),
        seen.frames_sent as f64,
        "{seen:?}"
    );
    assert_eq!(delta("tidechat_bytes_sent_total"), seen.bytes_sent as f64);
    assert_eq!(
        delta("tidechat_frames_received_total"),
        seen.frames_received as f64
    );
    assert_eq!(
        delta("tidechat_bytes_received_total"),
        seen.bytes_received as f64
    );
    assert!(
        seen.bytes_sent > 4 * BIG as u64,
        "the big messages went out"
    );
    for code in [1000u16, 1001, 1008, 4000, 4008, 4009] {
        let key = format!(r#"tidechat_closes_total{{code="{code}"}}"#);
        let want = seen.closes.get(&code).copied().unwrap_or(0);
        assert_eq!(delta(&key), want as f64, "{key}: {seen:?}");
    }
    assert_eq!(seen.closes[&1000], 4, "{seen:?}");
    assert_eq!(seen.closes[&1008], 1, "{seen:?}");
    let fanout = after.observations("tidechat_fanout_seconds")
        - before.observations("tidechat_fanout_seconds");
    assert_eq!(fanout, seen.events as f64, "{seen:?}");
    assert!(seen.events >= 4 * 2 + 4, "{seen:?}");
    assert!(after.get("tidechat_fanout_seconds_sum") > 0.0);
    assert_eq!(after.get("tidechat_rooms"), 2.0);
    assert_eq!(after.get("tidechat_members"), 0.0);
    // The lobby keeps its 4; the slow room keeps only its newest (each is over --history-bytes).
    assert_eq!(after.get("tidechat_history_messages"), 5.0);
    assert_eq!(delta("tidechat_store_errors_total"), 0.0);
    assert_eq!(after.get("tidechat_broker_up"), 1.0);
    assert_eq!(after.get("tidechat_ready"), 1.0);
    assert_eq!(after.get("tidechat_log_lines_dropped_total"), 0.0);
    assert!(!after
        .histograms
        .contains_key("tidechat_broker_roundtrip_seconds"));
    // The first scrape, counted once it was answered (a series that appears with its first).
    let scrapes = r#"tidechat_http_requests_total{route="metrics",status="200"}"#;
    assert!(!before.values.contains_key(scrapes));
    assert_eq!(after.get(scrapes), 1.0);

    // /stats carries the same counts for the status page.
    let (status, _, body) = http(s.addr, "/stats", &host, &[]).await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["messages_total"], 8);
    assert_eq!(
        stats["deliveries_total"].as_f64(),
        Some(after.get("tidechat_frames_sent_total"))
    );
    let p99 = stats["fanout_p99_ms"]
        .as_f64()
        .expect("a p99 after deliveries");
    assert!(p99 > 0.0 && p99 <= 10_000.0, "{p99}");

    // OpenMetrics for a scraper that asks for it.
    let (status, head, body) = http(
        s.addr,
        "/metrics",
        &host,
        &["Accept: application/openmetrics-text; version=1.0.0"],
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(body.contains("tidechat_frames_sent_total "), "{body}");
    s.stop().await;
}

#[async_std::test]
async fn metrics_bind_serves_metrics_on_the_private_port_only() {
    let s = TestServer::start(Config {
        metrics_bind: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .await;
    let deadline = Instant::now() + PATIENCE;
    let private = loop {
        if let Some(addr) = s.state.metrics_addr() {
            break addr;
        }
        assert!(Instant::now() < deadline, "the metrics port was not bound");
        async_std::task::sleep(Duration::from_millis(10)).await;
    };
    assert_ne!(private, s.addr);
    let (mut a, _) = s.join("lobby", "alice").await;
    a.say("lobby", "hi").await;
    a.recv_type("message").await;
    let m = scrape(private).await;
    assert_eq!(m.get("tidechat_messages_published_total"), 1.0);
    assert_eq!(m.get(r#"tidechat_connections_open{route="ws"}"#), 1.0);
    let host = s.addr.to_string();
    assert_eq!(http(s.addr, "/metrics", &host, &[]).await.0, 404);
    // Only /metrics there: the chat is not served on the private port.
    assert_eq!(http(private, "/", &private.to_string(), &[]).await.0, 404);
    assert_eq!(http(private, "/metrics", "evil.example", &[]).await.0, 421);
    s.stop().await;
}

#[async_std::test]
async fn metrics_off_counts_nothing_and_answers_404() {
    let s = TestServer::start(Config {
        metrics: false,
        ..Config::default()
    })
    .await;
    assert!(s.state.metrics.is_none());
    let (mut a, _) = s.join("lobby", "alice").await;
    a.say("lobby", "hi").await;
    a.recv_type("message").await;
    let host = s.addr.to_string();
    assert_eq!(http(s.addr, "/metrics", &host, &[]).await.0, 404);
    let (_, _, body) = http(s.addr, "/stats", &host, &[]).await;
    let stats: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["messages_total"], 1);
    assert!(stats["deliveries_total"].is_null(), "{stats}");
    assert!(stats["fanout_p99_ms"].is_null(), "{stats}");
    s.stop().await;
}

#[async_std::test]
async fn the_binary_takes_metrics_bind_and_metrics_off() {
    let args = ["--data-dir", "none", "--metrics-bind", "127.0.0.1:0"];
    let t = common::node::Tidechat::start("metrics", &args);
    t.wait_log("metrics on http://");
    let private: SocketAddr = common::node::log_messages(&t.log())
        .iter()
        .find_map(|m| {
            m.strip_prefix("metrics on http://")?
                .strip_suffix("/metrics")?
                .parse()
                .ok()
        })
        .expect("the metrics address in the log");
    let m = scrape(private).await;
    assert_eq!(m.get("tidechat_ready"), 1.0);
    let main = t.addr.to_string();
    assert_eq!(http(t.addr, "/metrics", &main, &[]).await.0, 404);
    t.kill();

    let t = common::node::Tidechat::start("no-metrics", &["--data-dir", "none", "--metrics=off"]);
    let main = t.addr.to_string();
    assert_eq!(http(t.addr, "/metrics", &main, &[]).await.0, 404);
    assert_eq!(http(t.addr, "/stats", &main, &[]).await.0, 200);
    t.kill();
}

#[async_std::test]
async fn store_failures_show_in_store_errors_broker_up_and_ready() {
    let config = Config::default();
    let store = TestStore::new(config.retention());
    let s = TestServer::serve(Server::with_store(config, store.clone())).await;
    let (mut a, _) = s.join("lobby", "alice").await;
    let m = scrape(s.addr).await;
    assert_eq!(m.get("tidechat_store_errors_total"), 0.0);

    // Each refused append is one store error.
    store.fail_appends(true);
    for _ in 0..3 {
        a.say("lobby", "lost").await;
        assert_eq!(a.recv_type("error").await["code"], "unavailable");
    }
    store.fail_appends(false);
    let m = scrape(s.addr).await;
    assert_eq!(m.get("tidechat_store_errors_total"), 3.0);
    assert_eq!(m.get("tidechat_history_messages"), 0.0);
    assert_eq!(m.get("tidechat_broker_up"), 1.0);

    // A disk that stops syncing: the broker is down and the node not ready until it syncs.
    store.fail_syncs(true);
    a.say("lobby", "unsynced").await;
    let deadline = Instant::now() + PATIENCE;
    let m = loop {
        let m = scrape(s.addr).await;
        if m.get("tidechat_broker_up") == 0.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "broker_up stayed 1");
        async_std::task::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(m.get("tidechat_ready"), 0.0);
    assert!(m.get("tidechat_store_errors_total") >= 4.0);
    store.fail_syncs(false);
    assert_eq!(a.recv_type("message").await["text"], "unsynced");
    let m = scrape(s.addr).await;
    assert_eq!(
        (m.get("tidechat_broker_up"), m.get("tidechat_ready")),
        (1.0, 1.0)
    );
    assert_eq!(m.get("tidechat_history_messages"), 1.0);
    s.stop().await;
}

#[async_std::test]
async fn with_redis_the_ping_round_trip_is_timed_and_broker_up_follows_redis() {
    let mut redis = common::redis::RedisServer::start();
    let config = Config {
        redis: vec![redis.url()],
        redis_timeout: Duration::from_millis(500),
        ..Config::default()
    };
    let s = TestServer::serve(Server::open(config).await.unwrap()).await;
    let until_scrape = |what: &'static str, pred: fn(&Scrape) -> bool| async move {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let m = scrape(s.addr).await;
            if pred(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            async_std::task::sleep(Duration::from_millis(50)).await;
        }
    };
    // One PING a second.
    let m = until_scrape("a PING round trip", |m| {
        m.observations("tidechat_broker_roundtrip_seconds") >= 1.0
    })
    .await;
    assert_eq!(
        (m.get("tidechat_broker_up"), m.get("tidechat_ready")),
        (1.0, 1.0)
    );
    assert!(!m.values.contains_key("tidechat_history_messages"));
    redis.kill();
    let m = until_scrape("broker_up 0", |m| m.get("tidechat_broker_up") == 0.0).await;
    assert_eq!(m.get("tidechat_ready"), 0.0);
    redis.restart();
    until_scrape("broker_up 1 again", |m| m.get("tidechat_broker_up") == 1.0).await;
    s.stop().await;
}

/// The README's list of metrics (between its `metrics:begin` and `metrics:end` lines) names
/// exactly the families a real server exposes, so the list (and the dashboard, which the
/// operating tests hold to it) cannot drift from the code.
#[async_std::test]
async fn the_readme_lists_exactly_the_metrics_served() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let list = readme
        .split("<!-- metrics:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- metrics:end -->").next())
        .expect("the README has a metrics list");
    let listed: std::collections::BTreeSet<String> = list
        .lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .map(|l| l.split(['`', '{']).next().unwrap().to_string())
        .collect();
    let server = TestServer::default().await;
    // The second scrape has a request to count (the first).
    http(server.addr, "/metrics", &server.addr.to_string(), &[]).await;
    let (status, _, body) = http(server.addr, "/metrics", &server.addr.to_string(), &[]).await;
    assert_eq!(status, 200);
    // Only a Redis broker has a round trip to time.
    let mut listed = listed;
    assert!(listed.remove("tidechat_broker_roundtrip_seconds"));
    let served: std::collections::BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(listed, served, "README metrics list vs /metrics");
}
