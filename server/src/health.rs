//! Liveness and readiness, for Kubernetes probes and load balancers: `GET /healthz` says the
//! process serves HTTP (200 `ok` for as long as it answers at all); `GET /readyz` says whether
//! clients should be sent here now (200 `ok`, or 503 `not ready: REASON` while the server shuts
//! down or its broker cannot take and give messages: a failing history store, or with `--redis`
//! an instance that is not connected).
//!
//! Both are cheap (a few atomic loads, no I/O: a probe must not wait on the thing it reports),
//! answer one line, and go through the same Host check as every other path.

use std::sync::Arc;

use tide::{Request, StatusCode};

use crate::plain;
use crate::server::State;

/// Whether the server should be given clients now, or why not (a short phrase).
pub fn readiness(state: &State) -> Result<(), &'static str> {
    if state.shutdown.started() {
        return Err("shutting down");
    }
    if !state.hub.broker().ready() {
        return Err(if state.config.redis.is_empty() {
            "the history store is unavailable"
        } else {
            "redis is unavailable"
        });
    }
    Ok(())
}

/// `GET /healthz`.
pub async fn healthz(_req: Request<Arc<State>>) -> tide::Result {
    Ok(probe(StatusCode::Ok, "ok"))
}

/// `GET /readyz`.
pub async fn readyz(req: Request<Arc<State>>) -> tide::Result {
    Ok(match readiness(req.state()) {
        Ok(()) => probe(StatusCode::Ok, "ok"),
        Err(why) => probe(StatusCode::ServiceUnavailable, &format!("not ready: {why}")),
    })
}

/// A probe's answer; never cached, since it is only true now.
fn probe(status: StatusCode, line: &str) -> tide::Response {
    let mut res = plain(status, line);
    res.insert_header("Cache-Control", "no-store");
    res
}
