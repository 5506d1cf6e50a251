//! The websocket upgrade on tide: RFC 6455 handshake checks, the Origin allowlist, the
//! connection cap, then the connection is handed to the current `async-tungstenite` (for
//! reading, with an explicit
//! [`WebSocketConfig`](async_tungstenite::tungstenite::protocol::WebSocketConfig)) and to the
//! connection's [writer](crate::writer) (for writing).
//!
//! Not tide-websockets: its last release pins async-tungstenite 0.13 with no way to set message
//! limits (64 MiB accepted), and its `send` holds a thread-blocking lock across socket writes.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_std::net::TcpStream;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use async_tungstenite::tungstenite::protocol::Role;
use async_tungstenite::WebSocketStream;
use futures::{AsyncRead, AsyncWrite};
use tide::http::{headers, Url};
use tide::{Request, Response, StatusCode};

use crate::server::State;
use crate::session::{self, Mode};

/// Answers an upgrade request on `/ws` (protocol v1) or `/chatSocket` (seed protocol).
pub async fn upgrade(req: Request<Arc<State>>, mode: Mode) -> tide::Result {
    let header = |name: &str| req.header(name).map(|v| v.as_str().to_string());
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Connection", "upgrade") || !has_token("Upgrade", "websocket") {
        return Ok(plain(
            StatusCode::UpgradeRequired,
            "this is a websocket endpoint",
        ));
    }
    if header("Sec-WebSocket-Version").as_deref() != Some("13") {
        let mut res = plain(
            StatusCode::UpgradeRequired,
            "websocket version 13 is required",
        );
        res.insert_header("Sec-WebSocket-Version", "13");
        return Ok(res);
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| !k.trim().is_empty()) else {
        return Ok(plain(StatusCode::BadRequest, "missing Sec-WebSocket-Key"));
    };
    let state = req.state().clone();
    if !origin_allowed(
        &state,
        header("Origin").as_deref(),
        header("Host").as_deref(),
    ) {
        log::info!(
            "refused websocket from {:?}: origin {:?}",
            req.peer_addr(),
            header("Origin")
        );
        return Ok(plain(StatusCode::Forbidden, "origin not allowed"));
    }
    // The connection's writer writes to the socket itself (see `writer`); the accept loop puts
    // a handle on it in every request.
    let Some(tcp) = req.ext::<TcpStream>().cloned() else {
        log::error!("websocket request without its TCP stream: serve with tidechat::server::serve");
        let msg = "websockets need tidechat's accept loop";
        return Ok(plain(StatusCode::InternalServerError, msg));
    };
    let Some(slot) = state.try_acquire() else {
        return Ok(plain(
            StatusCode::ServiceUnavailable,
            "server is at its connection limit",
        ));
    };

    let mut res = Response::new(StatusCode::SwitchingProtocols);
    res.insert_header(headers::UPGRADE, "websocket");
    res.insert_header(headers::CONNECTION, "Upgrade");
    res.insert_header(
        "Sec-WebSocket-Accept",
        derive_accept_key(key.trim().as_bytes()),
    );
    let http_res: &mut tide::http::Response = res.as_mut();
    let upgrade = http_res.recv_upgrade().await;
    let peer = req.peer_addr().unwrap_or("?").to_string();
    async_std::task::spawn(async move {
        let Some(stream) = upgrade.await else {
            return;
        };
        let config = Some(state.ws_config);
        // Boxed: an async fn keeps its arguments for its whole life, so passing the stream by
        // value would hold a second, dead copy of it (~600 B) in every connection's future.
        let ws = Box::new(
            WebSocketStream::from_raw_socket(ReadOnly(stream), Role::Server, config).await,
        );
        session::run(ws, tcp, state, mode, slot.id, peer).await;
        drop(slot);
    });
    Ok(res)
}

/// The upgraded connection as tungstenite sees it: reads pass through, writes are dropped.
/// tungstenite queues pong and close replies and writes them while reading; the connection's
/// writer sends those itself, so tungstenite's copies must not interleave with its frames.
#[derive(Debug)]
pub struct ReadOnly<S>(pub S);

impl<S: AsyncRead + Unpin> AsyncRead for ReadOnly<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: Unpin> AsyncWrite for ReadOnly<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn plain(status: StatusCode, body: &str) -> Response {
    let mut res = Response::new(status);
    res.set_body(format!("{body}\n"));
    res
}

/// Browsers always send Origin on websocket requests; a request without one comes from a
/// non-browser client, which could forge any Origin anyway, so it is allowed.
fn origin_allowed(state: &State, origin: Option<&str>, host: Option<&str>) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if state.config.any_origin {
        return true;
    }
    let Some(origin) = normalize_origin(origin) else {
        return false;
    };
    if state.config.allowed_origins.contains(&origin) {
        return true;
    }
    host.is_some_and(|h| same_origin(&origin, h))
}

/// `scheme://host:port` in lower case with the scheme's default port made explicit, or `None`
/// for anything that is not an http(s) origin.
pub fn normalize_origin(origin: &str) -> Option<String> {
    let url = Url::parse(origin).ok()?;
    if !matches!(url.scheme(), "http" | "https") || !matches!(url.path(), "" | "/") {
        return None;
    }
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        host.to_ascii_lowercase(),
        port
    ))
}

/// Whether a normalized origin names the host (and port) the request was sent to.
fn same_origin(origin: &str, host_header: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    let host_header = host_header.trim().to_ascii_lowercase();
    let (host, port) = match host_header.rsplit_once(':') {
        Some((h, p)) if !host_header.ends_with(']') => (h.to_string(), p.parse::<u16>().ok()),
        _ => (host_header.clone(), None),
    };
    let port = port.unwrap_or(if scheme == "https" { 443 } else { 80 });
    rest == format!("{host}:{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_normalize() {
        assert_eq!(
            normalize_origin("http://LocalHost:3000").as_deref(),
            Some("http://localhost:3000")
        );
        assert_eq!(
            normalize_origin("https://a.example").as_deref(),
            Some("https://a.example:443")
        );
        assert_eq!(
            normalize_origin("http://[::1]:8080").as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(normalize_origin("null"), None);
        assert_eq!(normalize_origin("ftp://x"), None);
        assert_eq!(normalize_origin("http://x/path"), None);
    }

    #[test]
    fn same_origin_compares_host_and_port() {
        assert!(same_origin("http://localhost:3000", "localhost:3000"));
        assert!(same_origin("http://localhost:3000", "LOCALHOST:3000"));
        assert!(same_origin("http://example.com:80", "example.com"));
        assert!(same_origin("http://[::1]:3000", "[::1]:3000"));
        assert!(!same_origin("http://localhost:3000", "localhost:3001"));
        assert!(!same_origin("http://evil.example:3000", "localhost:3000"));
        assert!(!same_origin("http://127.0.0.1:3000", "localhost:3000"));
    }
}
