//! tidechat: a real-time websocket chat and fan-out server on tide and async-std.
//!
//! # Layout
//! - [`config`]: command line / `TIDECHAT_*` options and the validated [`Config`].
//! - [`check_config`]: `--check-config`, the configuration checked and printed without starting.
//! - [`options_doc`]: the README's table of options, rendered from the clap definitions.
//! - [`protocol`]: the wire: protocol v1 and the seed protocol, rendered once per delivery.
//! - [`hub`]: this node's rooms and fan-out; below it the broker (positions, names), the
//!   history stores (memory, durable) and each room's broadcast channel.
//! - [`conn`]: one websocket connection: its reader, its single writer, the inbox between them.
//! - [`ws`]: the websocket upgrade on tide (handshake checks, per-address and global caps).
//! - [`origin`]: the Host allowlist, the Origin allowlist and the same-origin rule.
//! - [`addr`]: the client address and scheme behind trusted proxies.
//! - [`per_ip`]: per-address caps on connections and handshakes.
//! - [`listen`]: the TCP listeners, bound with the accept backlog of `--backlog`.
//! - [`server`]: accept loop, shared state, graceful shutdown.
//! - [`shutdown`]: the shutdown signal connections watch.
//! - [`limits`]: name/room syntax and the per-connection token bucket.
//! - [`logging`]: pretty or JSON log lines.
//! - [`metrics`]: the counters behind `/metrics` (Prometheus) and the fan-out figures of `/stats`.
//! - [`access_log`]: one log line per HTTP request, within a budget.
//! - [`health`]: `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Tests and embedders start a server with [`run`] on a listener they bound themselves, or with
//! [`Server`] when they also want to look at its state.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod addr;
pub mod check_config;
pub mod config;
pub mod conn;
pub mod health;
pub mod hub;
pub mod limits;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod options_doc;
pub mod origin;
pub mod per_ip;
pub mod protocol;
pub mod server;
pub mod shutdown;
pub mod ws;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use async_std::net::TcpListener;

pub use config::Config;
use conn::Mode;
use server::State;

/// Security headers for every HTTP response. The page loads nothing from elsewhere and runs no
/// inline script, so the policy can be strict; `/classic.html` (the original demo page, which has
/// an inline script) is the one exception.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The tide app: the page at `/`, websockets at `/ws` and `/chatSocket`, counts at `/stats`, the
/// status page at `/status`, probes at `/healthz` and `/readyz`.
pub fn app(state: Arc<State>) -> io::Result<tide::Server<Arc<State>>> {
    let static_dir = state.config.static_dir.clone();
    let mut app = tide::with_state(state);
    app.with(tide::utils::After(|mut res: tide::Response| async move {
        res.insert_header("X-Content-Type-Options", "nosniff");
        res.insert_header("Referrer-Policy", "no-referrer");
        Ok(res)
    }));
    app.with(count_requests);
    // Outside the Host check, so that refused requests are logged too.
    app.with(access_log::AccessLog::default());
    // Before every endpoint: a request for another host is not for this server.
    app.with(host_check);
    app.with(content_security_policy);
    app.at("/ws").get(|req| ws::upgrade(req, Mode::V1));
    app.at("/chatSocket")
        .get(|req| ws::upgrade(req, Mode::Seed));
    app.at("/stats")
        .get(|req: tide::Request<Arc<State>>| async move {
            tide::Body::from_json(&req.state().stats())
        });
    // With --metrics-bind, only on that port (see `metrics_app`).
    if app.state().metrics.is_some() && app.state().config.metrics_bind.is_none() {
        app.at("/metrics").get(metrics_endpoint);
    }
    app.at("/healthz").get(health::healthz);
    app.at("/readyz").get(health::readyz);
    app.at("/status")
        .serve_file(static_dir.join("status.html"))
        .map_err(|e| static_error(&static_dir, e))?;
    app.at("/")
        .serve_file(static_dir.join("index.html"))
        .map_err(|e| static_error(&static_dir, e))?;
    app.at("/")
        .serve_dir(&static_dir)
        .map_err(|e| static_error(&static_dir, e))?;
    Ok(app)
}

/// The app on `--metrics-bind`: `/metrics` only, behind the same Host check.
pub fn metrics_app(state: Arc<State>) -> tide::Server<Arc<State>> {
    let mut app = tide::with_state(state);
    app.with(tide::utils::After(|mut res: tide::Response| async move {
        res.insert_header("X-Content-Type-Options", "nosniff");
        Ok(res)
    }));
    app.with(count_requests);
    app.with(host_check);
    app.at("/metrics").get(metrics_endpoint);
    app
}

/// `GET /metrics`: OpenMetrics when the scraper accepts it, else Prometheus text 0.0.4.
async fn metrics_endpoint(req: tide::Request<Arc<State>>) -> tide::Result {
    let Some(m) = req.state().metrics() else {
        return Ok(tide::Response::new(tide::StatusCode::NotFound));
    };
    let openmetrics = req
        .header("Accept")
        .is_some_and(|v| v.as_str().contains("application/openmetrics-text"));
    let body = m.render(req.state(), openmetrics);
    let mut res = tide::Response::new(tide::StatusCode::Ok);
    res.set_body(body);
    // As the formats' specifications spell it (tide's own Mime would reorder the parameters).
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    res.insert_header("Content-Type", content_type);
    Ok(res)
}

/// Counts plain HTTP requests by route and status (`tidechat_http_requests_total`).
fn count_requests<'a>(
    req: tide::Request<Arc<State>>,
    next: tide::Next<'a, Arc<State>>,
) -> Pin<Box<dyn Future<Output = tide::Result> + Send + 'a>> {
    Box::pin(async move {
        let metrics = req.state().metrics.clone();
        let path = req.url().path().to_owned();
        let res = next.run(req).await;
        if let Some(m) = metrics {
            let status = res.status() as u16;
            if let Some(route) = metrics::http_route(&path, status) {
                m.http_request(route, status);
            }
        }
        Ok(res)
    })
}

fn content_security_policy<'a>(
    req: tide::Request<Arc<State>>,
    next: tide::Next<'a, Arc<State>>,
) -> Pin<Box<dyn Future<Output = tide::Result> + Send + 'a>> {
    Box::pin(async move {
        let classic = req.url().path() == "/classic.html";
        let mut res = next.run(req).await;
        if !classic {
            res.insert_header("Content-Security-Policy", CSP);
        }
        Ok(res)
    })
}

/// 421 for a Host not in `--allowed-host` (DNS rebinding), 400 without exactly one Host.
fn host_check<'a>(
    req: tide::Request<Arc<State>>,
    next: tide::Next<'a, Arc<State>>,
) -> Pin<Box<dyn Future<Output = tide::Result> + Send + 'a>> {
    Box::pin(async move {
        let handshake = matches!(req.url().path(), "/ws" | "/chatSocket");
        let refused = |why| {
            if let Some(m) = req.state().metrics().filter(|_| handshake) {
                m.refused(why);
            }
        };
        let host = match req.header("Host") {
            Some(v) if v.iter().count() == 1 => v.as_str().to_string(),
            _ => {
                refused(metrics::Refusal::BadRequest);
                return Ok(plain(
                    tide::StatusCode::BadRequest,
                    "exactly one Host header",
                ));
            }
        };
        let https = req.ext::<addr::ClientInfo>().is_some_and(|c| c.https);
        let local = req.local_addr().and_then(|a| a.parse().ok());
        if !req.state().config.hosts.allows(&host, local, https) {
            log::debug!(
                peer = access_log::peer(&req).as_str(), reason = "host";
                "refused host {host:?} from {:?}", req.peer_addr()
            );
            refused(metrics::Refusal::Host);
            return Ok(plain(
                tide::StatusCode::MisdirectedRequest,
                "this server is not called by that host name (see --allowed-host)",
            ));
        }
        Ok(next.run(req).await)
    })
}

/// A plain-text response.
pub(crate) fn plain(status: tide::StatusCode, body: &str) -> tide::Response {
    let mut res = tide::Response::new(status);
    res.set_body(format!("{body}\n"));
    res
}

fn static_error(dir: &std::path::Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("static directory {}: {e}", dir.display()))
}

/// A server that has not started yet; [`Server::state`] stays usable while it runs.
pub struct Server {
    state: Arc<State>,
}

impl Server {
    /// A server for `config`; fails when its history store cannot be opened. With `--redis`,
    /// use [`Server::open`], which connects to Redis.
    pub fn new(config: Config) -> anyhow::Result<Self> {
        Ok(Self {
            state: Arc::new(State::new(config)?),
        })
    }

    /// A server for `config`, with its history store opened or, with `--redis`, its Redis
    /// instances connected (each must answer and agree on the instance list).
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        if config.redis.is_empty() {
            return Self::new(config);
        }
        let metrics = metrics::Metrics::for_config(&config);
        let broker = hub::redis::RedisBroker::connect(hub::redis::RedisSettings {
            urls: config.redis.clone(),
            ca: config.redis_ca.clone(),
            retention: config.retention(),
            presence_cap: config.presence_cap,
            presence_ttl: config.presence_ttl,
            timeout: config.redis_timeout,
            roundtrip: metrics.as_ref().map(|m| m.broker_roundtrip()),
        })
        .await?;
        Ok(Self {
            state: Arc::new(State::with_metrics(config, broker, metrics)),
        })
    }

    /// A server for `config` that keeps history in `store` (an embedder's own store).
    pub fn with_store(config: Config, store: Arc<dyn hub::store::HistoryStore>) -> Self {
        Self {
            state: Arc::new(State::with_store(config, store)),
        }
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Serves until `shutdown` resolves; see [`server::serve`].
    pub async fn run(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        server::serve(listener, self.state, shutdown).await
    }
}

/// Serves `config` on `listener` until `shutdown` resolves, then closes every connection.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::new(config)?.run(listener, shutdown).await?;
    Ok(())
}
