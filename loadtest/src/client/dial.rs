//! Opening a client's socket: TCP from its source address, the websocket upgrade, `hello`;
//! and reading frames until one decides (with a deadline).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use tokio::net::{TcpSocket, TcpStream};

use super::{Ws, CLOSE_TIMEOUT, CONNECT_TIMEOUT, READ_BUFFER};
use crate::config::Protocol;
use crate::run::Run;
use crate::wire;
use crate::ws::{Frame, WsClient};

/// Opens the TCP connection from source address 127.0.0.(1 + index % n) for loopback targets.
async fn tcp_connect(target: SocketAddr, index: usize, sources: u8) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if sources > 1 && target.ip().is_loopback() {
        let ip = Ipv4Addr::new(127, 0, 0, 1 + (index % sources as usize) as u8);
        socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `(host:port, path)` of a `ws://host:port/path` URL.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Target address of a `ws://host:port/...` URL.
async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let (hostport, _) = split_url(url)?;
    let mut addrs = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?;
    addrs
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{hostport}: no IPv4 address"))
}

/// Reads text frames until `done` decides on one (`Some`), with a deadline.
pub(super) async fn wait_for(
    ws: &mut Ws,
    deadline: Instant,
    done: impl FnMut(&[u8]) -> Option<Result<(), String>>,
) -> Result<(), String> {
    let r = read_until(ws, deadline, done).await;
    if r.is_err() && ws.is_closing() {
        // The server closed, or broke the protocol: answer with the close frame queued for it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.reply_close()).await;
    }
    r
}

async fn read_until(
    ws: &mut Ws,
    deadline: Instant,
    mut done: impl FnMut(&[u8]) -> Option<Result<(), String>>,
) -> Result<(), String> {
    loop {
        while let Some(frame) = ws.next_frame()? {
            match frame {
                Frame::Text { payload, .. } => {
                    if let Some(r) = done(payload) {
                        return r;
                    }
                }
                Frame::Close(code) => return Err(format!("closed {code}")),
                Frame::Other => {}
            }
        }
        if ws.has_control() {
            ws.flush_control().await.map_err(|e| e.to_string())?;
        }
        let n = tokio::time::timeout_at(deadline.into(), ws.read())
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
    }
}

/// Connects client `index` to its target: TCP, the upgrade, and `hello` on v1.
pub(super) async fn open_socket(run: &Run, index: usize) -> Result<Ws, String> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let url = &run.targets[run.target_of(index)];
    let work = async {
        let target = resolve(url).await?;
        let (host, path) = split_url(url)?;
        let tcp = tcp_connect(target, index, run.params.source_addrs)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        let mut ws = WsClient::handshake(tcp, host, path, READ_BUFFER, index as u32).await?;
        if run.params.protocol == Protocol::V1 {
            wait_for(&mut ws, deadline, |text| {
                Some(if wire::is_hello(text) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected hello, got {:.80}",
                        String::from_utf8_lossy(text)
                    ))
                })
            })
            .await?;
        }
        Ok(ws)
    };
    tokio::time::timeout_at(deadline.into(), work)
        .await
        .map_err(|_| "timed out".to_string())?
}
