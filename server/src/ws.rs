//! The websocket upgrade on tide: RFC 6455 handshake checks, the [Origin allowlist](crate::origin),
//! the [per-address caps](crate::per_ip) and the connection cap, then the connection is handed
//! to [`crate::conn`]: its frames are read by [`conn::Incoming`] and written by the connection's
//! writer.
//!
//! Not tide-websockets: its last release pins async-tungstenite 0.13 with no way to set message
//! limits (64 MiB accepted), and its `send` holds a thread-blocking lock across socket writes.
//! (tungstenite is still used for the handshake's accept key and its frame types and errors.)

use std::sync::Arc;

use async_std::net::TcpStream;
use futures::FutureExt;

use async_tungstenite::tungstenite::handshake::derive_accept_key;
use tide::http::headers;
use tide::{Request, Response, StatusCode};

use crate::addr::{self, ClientInfo};
use crate::conn::{self, Mode, Peer};
use crate::metrics::Refusal;
use crate::origin;
use crate::per_ip::Refused;
use crate::plain;
use crate::server::State;

/// Answers an upgrade request on `/ws` (protocol v1) or `/chatSocket` (seed protocol).
pub async fn upgrade(req: Request<Arc<State>>, mode: Mode) -> tide::Result {
    let refused = |why| {
        if let Some(m) = req.state().metrics() {
            m.refused(why);
        }
    };
    let header = |name: &str| req.header(name).map(|v| v.as_str().to_string());
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Connection", "upgrade") || !has_token("Upgrade", "websocket") {
        refused(Refusal::BadRequest);
        return Ok(plain(
            StatusCode::UpgradeRequired,
            "this is a websocket endpoint",
        ));
    }
    if header("Sec-WebSocket-Version").as_deref() != Some("13") {
        refused(Refusal::BadRequest);
        let mut res = plain(
            StatusCode::UpgradeRequired,
            "websocket version 13 is required",
        );
        res.insert_header("Sec-WebSocket-Version", "13");
        return Ok(res);
    }
    let Some(key) = header("Sec-WebSocket-Key").filter(|k| !k.trim().is_empty()) else {
        refused(Refusal::BadRequest);
        return Ok(plain(StatusCode::BadRequest, "missing Sec-WebSocket-Key"));
    };
    let state = req.state().clone();
    let client = req.ext::<ClientInfo>().copied();
    if !origin::allowed(
        &state.config.allowed_origins,
        state.config.any_origin,
        header("Origin").as_deref(),
        header("Host").as_deref(),
        client.is_some_and(|c| c.https),
    ) {
        // At debug, and cut short: a client chooses how often and what it sends here.
        let origin: Option<String> = header("Origin").map(|o| o.chars().take(100).collect());
        log::debug!(
            peer = crate::access_log::peer(&req).as_str(), route = mode.route(), reason = "origin";
            "refused websocket from {:?}: origin {origin:?}",
            req.peer_addr()
        );
        refused(Refusal::Origin);
        return Ok(plain(StatusCode::Forbidden, "origin not allowed"));
    }
    // The connection's writer writes to the socket itself (see `writer`); the accept loop puts
    // a handle on it in every request.
    let Some(tcp) = req.ext::<TcpStream>().cloned() else {
        log::error!("websocket request without its TCP stream: serve with tidechat::server::serve");
        let msg = "websockets need tidechat's accept loop";
        return Ok(plain(StatusCode::InternalServerError, msg));
    };
    // Before the global cap, so one address at its own cap does not use up everyone's places.
    let ip_slot = match client.map(|c| state.per_ip.websocket(addr::key(c.ip))) {
        None => None,
        Some(Ok(slot)) => Some(slot),
        Some(Err(refused)) => {
            let reason = match refused {
                Refused::Rate { .. } => "per_ip_rate",
                Refused::Connections => "per_ip_cap",
            };
            log::debug!(
                peer = crate::access_log::peer(&req).as_str(), route = mode.route(), reason = reason;
                "refused websocket from {client:?}: {refused:?}"
            );
            if let Some(m) = state.metrics() {
                m.refused(match refused {
                    Refused::Rate { .. } => Refusal::PerIpRate,
                    Refused::Connections => Refusal::PerIpCap,
                });
            }
            let mut res = match refused {
                Refused::Rate { .. } => plain(
                    StatusCode::TooManyRequests,
                    "too many websocket handshakes from your address",
                ),
                Refused::Connections => plain(
                    StatusCode::TooManyRequests,
                    "too many websockets open from your address",
                ),
            };
            if let Refused::Rate { retry_after } = refused {
                res.insert_header("Retry-After", retry_after.as_secs().to_string());
            }
            return Ok(res);
        }
    };
    let Some(slot) = state.try_acquire() else {
        refused(Refusal::ServerFull);
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
    let tcp_peer = req.peer_addr().unwrap_or("?");
    let peer = match client {
        // Behind a proxy, the client it spoke for.
        Some(c)
            if tcp_peer
                .parse::<std::net::SocketAddr>()
                .ok()
                .map(|a| a.ip())
                != Some(c.ip) =>
        {
            format!("{tcp_peer} for {}", c.ip)
        }
        _ => tcp_peer.to_string(),
    };
    // `then`, not an async block around both: a block keeps a slot for the upgrade receiver
    // and for each value it hands on, for the connection's whole life.
    let connection = upgrade.then(move |stream| {
        // The connection reads through our handle on the same socket: the upgrade's own (a
        // boxed clone of it) would be one more allocation per connection.
        let upgraded = stream.is_some();
        drop(stream);
        let peer = Peer {
            conn: slot.id,
            addr: peer.into_boxed_str(),
        };
        // Released when the connection ends (the connection cap's place first).
        let held = (slot, ip_slot);
        conn::run(upgraded.then_some(tcp), state, mode, peer, held)
    });
    // On async-std's executor, without its task wrapper: nothing here uses task locals, and
    // the wrapper (id, name, locals map) is ~50 B more in every connection's task.
    async_global_executor::spawn(connection).detach();
    Ok(res)
}
