//! The HTTP request log: one info line per request (`method`, `route`, `status`, `ms`, `peer`),
//! and nothing per websocket message.
//!
//! - An accepted websocket upgrade (101) gets no request line: its `connect` line (and later its
//!   `disconnect` line) is the line for it.
//! - Probes (`/healthz`, `/readyz`, `/metrics`) are logged at debug: a load balancer or Prometheus
//!   asks every few seconds, and those lines would say nothing new while drowning the others
//!   (what they report is logged when it changes: a shutdown, a Redis going away).
//! - Clients choose how many requests they send, so they would choose the log's volume: at most
//!   [`LINES_PER_SEC`] request lines a second are written (bursts of [`LINES_BURST`], a few
//!   hundred page loads); past that requests are counted, and the next line that is written says
//!   how many were not.
//!
//! `route` is the endpoint, never the path a client sent: a bounded set of names an operator can
//! search for (see [`route`]).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tide::{Next, Request, StatusCode};

use crate::addr::ClientInfo;
use crate::limits::TokenBucket;
use crate::server::State;

/// Request lines written per second, sustained.
pub const LINES_PER_SEC: f64 = 50.0;
/// Request lines written in a burst above the rate.
pub const LINES_BURST: u32 = 500;

/// The endpoint a request was for: `page`, `static`, `stats`, `metrics`, `healthz`, `readyz`,
/// `status`, `ws`, `chatSocket`, or `other` (a path nothing serves).
pub fn route(path: &str, status: StatusCode) -> &'static str {
    match path {
        "/" | "/index.html" => "page",
        "/ws" => "ws",
        "/chatSocket" => "chatSocket",
        "/stats" => "stats",
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/status" => "status",
        _ if status.is_success() || status == StatusCode::NotModified => "static",
        _ => "other",
    }
}

/// The client as logs show it: its address, or `PROXY for CLIENT` behind a trusted proxy.
pub fn peer(req: &Request<Arc<State>>) -> String {
    let tcp = req.peer_addr().unwrap_or("?");
    match req.ext::<ClientInfo>() {
        Some(c) if tcp.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()) != Some(c.ip) => {
            format!("{tcp} for {}", c.ip)
        }
        _ => tcp.to_string(),
    }
}

/// The middleware (one per app: it holds the line budget).
pub struct AccessLog {
    budget: Mutex<Budget>,
}

struct Budget {
    bucket: TokenBucket,
    /// Request lines not written since the last one that was.
    skipped: u64,
}

impl Default for AccessLog {
    fn default() -> Self {
        Self {
            budget: Mutex::new(Budget {
                bucket: TokenBucket::new(LINES_PER_SEC, LINES_BURST),
                skipped: 0,
            }),
        }
    }
}

impl AccessLog {
    /// Whether a request line may be written now, and how many were skipped before it.
    fn admit(&self) -> Option<u64> {
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if b.bucket.take() {
            Some(std::mem::take(&mut b.skipped))
        } else {
            b.skipped += 1;
            None
        }
    }
}

#[async_trait::async_trait]
impl tide::Middleware<Arc<State>> for AccessLog {
    async fn handle(&self, req: Request<Arc<State>>, next: Next<'_, Arc<State>>) -> tide::Result {
        let started = Instant::now();
        let method = req.method();
        let path = req.url().path().to_owned();
        let peer = peer(&req);
        let res = next.run(req).await;
        let status = res.status();
        if status == StatusCode::SwitchingProtocols {
            return Ok(res);
        }
        let route = route(&path, status);
        // To the microsecond: more digits would be noise.
        let ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1000.0;
        let status = status as u16;
        let probe = matches!(route, "healthz" | "readyz" | "metrics");
        let level = if probe {
            log::Level::Debug
        } else {
            log::Level::Info
        };
        if !log::log_enabled!(level) {
            return Ok(res);
        }
        if !probe {
            match self.admit() {
                None => return Ok(res),
                Some(0) => {}
                Some(n) => {
                    log::warn!("{n} HTTP requests not logged (more than {LINES_PER_SEC} a second)")
                }
            }
        }
        log::log!(
            level,
            method:% = method, route = route, status = status, ms = ms, peer = peer.as_str();
            "{method} {route} {status} {ms:.1} ms {peer}"
        );
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_endpoints_not_paths() {
        assert_eq!(route("/", StatusCode::Ok), "page");
        assert_eq!(route("/ws", StatusCode::Forbidden), "ws");
        assert_eq!(route("/readyz", StatusCode::ServiceUnavailable), "readyz");
        assert_eq!(route("/app.js", StatusCode::Ok), "static");
        assert_eq!(route("/app.js", StatusCode::NotModified), "static");
        assert_eq!(route("/../../etc/passwd", StatusCode::NotFound), "other");
    }

    #[test]
    fn lines_past_the_budget_are_counted_and_reported_with_the_next_one() {
        let log = AccessLog::default();
        for _ in 0..LINES_BURST {
            assert_eq!(log.admit(), Some(0));
        }
        let over = (0..100).filter(|_| log.admit().is_none()).count() as u64;
        assert!(over > 90, "the burst is spent: {over}");
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(log.admit(), Some(over));
        assert_eq!(log.admit(), Some(0), "reported once");
    }
}
