//! Test harness: a real tidechat on 127.0.0.1:0 and real websocket clients.
#![allow(dead_code, unused_imports)]

use std::sync::Arc;
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream};
use async_std::task::JoinHandle;
use async_tungstenite::tungstenite::client::IntoClientRequest;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::WebSocketStream;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tidechat::server::State;
use tidechat::{Config, Server};

pub mod msg;
pub mod node;
pub mod presence;
pub mod redis;
pub mod store;

/// Generous bound for anything a test waits on; never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<TcpStream>;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    pub state: Arc<State>,
    stop: async_channel::Sender<()>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        Self::serve(Server::new(config).expect("server")).await
    }

    /// Serves an already built server (e.g. one over a test's own history store).
    pub async fn serve(server: Server) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = server.state();
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let task = async_std::task::spawn(server.run(listener, async move {
            let _ = stopped.recv().await;
        }));
        TestServer {
            addr,
            state,
            stop,
            task: Some(task),
        }
    }

    pub async fn default() -> Self {
        Self::start(Config::default()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    /// Opens a raw websocket to `path` (no hello consumed).
    pub async fn connect_raw(&self, path: &str) -> Client {
        let std = std::net::TcpStream::connect(self.addr).unwrap();
        let raw = std.try_clone().unwrap();
        let (ws, _) = async_tungstenite::client_async(self.url(path), TcpStream::from(std))
            .await
            .unwrap();
        Client { ws, raw }
    }

    /// Opens `/ws` and reads the hello frame.
    pub async fn connect(&self) -> Client {
        let mut c = self.connect_raw("/ws").await;
        let hello = c.recv().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        c
    }

    /// Connects and joins `room` as `name`, returning the client and its `joined` frame.
    pub async fn join(&self, room: &str, name: &str) -> (Client, Value) {
        let mut c = self.connect().await;
        let joined = c.join(room, name).await;
        (c, joined)
    }

    /// Polls `/stats` until `pred` holds (bounded by PATIENCE).
    pub async fn wait_stats(&self, what: &str, pred: impl Fn(&tidechat::server::Stats) -> bool) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let stats = self.state.stats();
            if pred(&stats) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            async_std::task::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.try_send(());
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

pub struct Client {
    pub ws: Ws,
    /// The same socket, for socket options (reset) the async stream does not expose.
    pub raw: std::net::TcpStream,
}

impl Client {
    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub async fn send_text(&mut self, t: &str) {
        self.ws.send(Message::Text(t.into())).await.unwrap();
    }

    /// Next frame of any kind, bounded by PATIENCE.
    pub async fn next(&mut self) -> Option<Message> {
        async_std::future::timeout(PATIENCE, self.ws.next())
            .await
            .expect("timed out waiting for a frame")
            .map(|r| r.expect("read error"))
    }

    /// Next text frame as JSON (pings are skipped).
    pub async fn recv(&mut self) -> Value {
        loop {
            match self.next().await {
                Some(Message::Text(t)) => return serde_json::from_str(t.as_str()).unwrap(),
                Some(Message::Ping(_)) | Some(Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Next frame of the given type, skipping others (e.g. presence).
    pub async fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == ty {
                return v;
            }
        }
    }

    pub async fn join(&mut self, room: &str, name: &str) -> Value {
        self.send(json!({"type": "join", "room": room, "name": name}))
            .await;
        let v = self.recv().await;
        assert_eq!(v["type"], "joined", "{v}");
        v
    }

    pub async fn say(&mut self, room: &str, text: &str) {
        self.send(json!({"type": "say", "room": room, "text": text}))
            .await;
    }

    /// Reads to the end: the number of text frames before the close, and the close code (`None`
    /// when the stream ends without a close frame).
    pub async fn texts_until_close(&mut self) -> (usize, Option<u16>) {
        let mut texts = 0;
        loop {
            match self.next().await {
                Some(Message::Text(_)) => texts += 1,
                Some(Message::Close(f)) => return (texts, f.map(|f| u16::from(f.code))),
                Some(_) => {}
                None => return (texts, None),
            }
        }
    }

    /// Waits for the close frame and returns its code; the stream may end without one only if
    /// `None` is acceptable to the caller.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Some(Message::Close(frame)) => {
                    // tungstenite queues its close reply; a browser sends it at once, and the
                    // server waits for it (bounded) before closing the socket.
                    let _ = self.ws.flush().await;
                    return frame.map(|f: CloseFrame| u16::from(f.code));
                }
                Some(_) => continue,
                None => return None,
            }
        }
    }
}

pub fn request(url: &str) -> async_tungstenite::tungstenite::handshake::client::Request {
    url.into_client_request().unwrap()
}

/// A child process (the real binary) that is killed and reaped when the test ends, whichever
/// way.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Opens `/ws` of a server at `addr` over `std` (a socket connected to it) and reads the hello.
pub async fn ws_over(std: std::net::TcpStream, addr: std::net::SocketAddr) -> Client {
    let raw = std.try_clone().unwrap();
    let (ws, _) = async_tungstenite::client_async(format!("ws://{addr}/ws"), TcpStream::from(std))
        .await
        .unwrap();
    let mut c = Client { ws, raw };
    assert_eq!(c.recv().await["type"], "hello");
    c
}

/// Opens `/ws` of a server at `addr` (e.g. the real binary) and reads the hello.
pub async fn connect_at(addr: std::net::SocketAddr) -> Client {
    ws_over(std::net::TcpStream::connect(addr).unwrap(), addr).await
}

/// Connects to `/ws` of a server at `addr`, reads the hello and joins `lobby` as `name`.
pub async fn join_lobby_at(addr: std::net::SocketAddr, name: &str) -> Client {
    let mut c = connect_at(addr).await;
    c.join("lobby", name).await;
    c
}

/// Drops a client with a TCP reset instead of a close handshake.
pub fn reset(c: Client) {
    socket2::SockRef::from(&c.raw)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
}

/// Sends a websocket upgrade request by hand on a plain TCP stream, for clients that must not
/// behave like a library client (never answer pings, never read).
pub async fn raw_upgrade(addr: std::net::SocketAddr, path: &str) -> TcpStream {
    use async_std::io::WriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    tcp
}

/// Reads a raw upgraded stream to its end and returns the server frames after the 101
/// response as (opcode, payload).
pub async fn raw_frames(tcp: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    use async_std::io::ReadExt;
    let mut bytes = Vec::new();
    let _ = async_std::future::timeout(PATIENCE, tcp.read_to_end(&mut bytes))
        .await
        .expect("server did not close the stream");
    let start = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no HTTP response")
        + 4;
    assert!(bytes.starts_with(b"HTTP/1.1 101"), "not upgraded");
    let mut frames = Vec::new();
    let mut rest = &bytes[start..];
    while rest.len() >= 2 {
        let opcode = rest[0] & 0x0f;
        let (len, header) = match rest[1] & 0x7f {
            126 => (u16::from_be_bytes([rest[2], rest[3]]) as usize, 4),
            127 => (
                u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        if rest.len() < header + len {
            break;
        }
        frames.push((opcode, rest[header..header + len].to_vec()));
        rest = &rest[header + len..];
    }
    frames
}

/// The close code in a list of raw frames, if the server sent a close frame.
pub fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames
        .iter()
        .find(|(op, p)| *op == 0x8 && p.len() >= 2)
        .map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
}

/// Sends `GET path` with `Host: host` on a keep-alive connection and reads the whole response:
/// its status and body, or `None` once the server has closed the connection.
pub async fn get_on(
    tcp: &mut async_std::io::BufReader<TcpStream>,
    host: &str,
    path: &str,
) -> Option<(u16, String)> {
    use async_std::io::{BufReadExt, ReadExt, WriteExt};
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
