//! The accept loop, shared server state, the connection caps and graceful shutdown.
//!
//! tide's own `listen` cannot stop accepting or wait for its connections, so the server accepts
//! TCP connections itself and hands each to async-h1 with the tide app as the endpoint.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_std::net::{TcpListener, TcpStream};
use async_tungstenite::tungstenite::Utf8Bytes;
use event_listener::Event;
use serde::Serialize;

use crate::addr::{self, ClientInfo, Forwarding};
use crate::config::Config;
use crate::conn::{self, Ctx};
use crate::hub::broker::{Broker, MemoryBroker};
use crate::hub::store::durable::DurableStore;
use crate::hub::store::memory::MemoryStore;
use crate::hub::store::HistoryStore;
use crate::hub::{Hub, HubConfig, HubStats};
use crate::metrics::Metrics;
use crate::per_ip::{self, PerIp};
use crate::protocol::{self, ServerFrame, PROTOCOL_VERSION};
use crate::shutdown::Shutdown;

/// First pause after a failed `accept` (e.g. out of file descriptors: the connection stays in
/// the backlog, so the listener is ready again at once and the loop would spin); it doubles on
/// each failure in a row up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause between accepts while they fail: also how long recovery can take to be noticed.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Time allowed to write a 400 answer to a request that could not be parsed.
const BAD_REQUEST_WRITE: Duration = Duration::from_secs(1);
/// How often name graces (and other housekeeping) are checked: a name is freed at most this
/// long after its grace ends.
const TICK: Duration = Duration::from_millis(250);
/// At most one log line per this long about connections closed at an HTTP connection cap.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Everything connections share.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub hub: Arc<Hub>,
    /// The `hello` frame, serialized once.
    pub hello: Utf8Bytes,
    /// What each connection is held to.
    pub limits: conn::Limits,
    pub shutdown: Shutdown,
    /// Open connections and handshakes per client address.
    pub per_ip: Arc<PerIp>,
    /// Open TCP connections that are not websockets (yet), under `--max-http-connections`.
    http_open: AtomicUsize,
    next_conn: AtomicU64,
    /// Open websocket connections.
    active: AtomicUsize,
    /// Notified when `active` drops to zero.
    idle: Event,
    /// `None` with `--metrics off`.
    pub metrics: Option<Arc<Metrics>>,
    /// When this state was made: the clock of connections' `last_seen`.
    pub(crate) started: Instant,
    /// Where `--metrics-bind` was bound, once it is.
    metrics_addr: OnceLock<SocketAddr>,
}

/// Counts served at `/stats`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub connections: usize,
    /// Open TCP connections that are not websockets (yet).
    pub http_connections: usize,
    #[serde(flatten)]
    pub hub: HubStats,
    /// Messages published since start (as `messages`).
    pub messages_total: u64,
    /// Frames written to clients since start (`null` with `--metrics off`).
    pub deliveries_total: Option<u64>,
    /// p99 of the fan-out latency over the last 10 s (since start in the first 10 s), in ms;
    /// `null` without deliveries then or with `--metrics off`.
    pub fanout_p99_ms: Option<f64>,
}

/// A websocket connection's place under `--max-connections`; released on drop.
#[derive(Debug)]
pub struct ConnSlot {
    state: Arc<State>,
    /// The connection's number (seed users are called by it).
    pub id: u64,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if self.state.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.idle.notify(usize::MAX);
        }
    }
}

/// A plain HTTP connection's place under `--max-http-connections` (and, as `_per_ip`, under
/// `--max-http-connections-per-ip`); released on drop.
struct HttpSlot {
    state: Arc<State>,
    _per_ip: Option<per_ip::Slot>,
}

impl Drop for HttpSlot {
    fn drop(&mut self) {
        self.state.http_open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl State {
    /// The state for `config`, with its history store opened (which can fail: a damaged or
    /// unreadable data directory).
    pub fn new(config: Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config.redis.is_empty(),
            "--redis needs Server::open, which connects to Redis"
        );
        let store = Self::store(&config)?;
        Ok(Self::with_store(config, store))
    }

    /// The history store `config` names, opened (and its recovery logged).
    fn store(config: &Config) -> anyhow::Result<Arc<dyn HistoryStore>> {
        let store: Arc<dyn HistoryStore> = match &config.data_dir {
            None => Arc::new(MemoryStore::new(config.retention())),
            Some(dir) => {
                let store = DurableStore::open(dir, config.retention())?;
                let r = store.recovery();
                let how = match (r.crashed, r.power_loss) {
                    (false, _) => "after a clean stop",
                    (true, false) => "after a crash of the process (nothing lost)",
                    (true, true) => {
                        "after a machine restart without a clean stop: messages that were \
                         not yet acknowledged to their senders may be lost"
                    }
                };
                log::info!(
                    "history store {}: {} rooms, {} messages, opened in {} ms {how}{}",
                    dir.display(),
                    r.rooms,
                    r.messages,
                    r.took.as_millis(),
                    if r.damaged_rooms.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} rooms had unreadable history and start over",
                            r.damaged_rooms.len()
                        )
                    }
                );
                store
            }
        };
        Ok(store)
    }

    /// The state for `config` over `store` (an embedder's or a test's own).
    pub fn with_store(config: Config, store: Arc<dyn HistoryStore>) -> Self {
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(store, config.presence_cap));
        Self::with_broker(config, broker)
    }

    /// The state for `config` over `broker` (e.g. the Redis broker).
    pub fn with_broker(config: Config, broker: Arc<dyn Broker>) -> Self {
        let metrics = Metrics::for_config(&config);
        Self::with_metrics(config, broker, metrics)
    }

    /// The state for `config` over `broker`, counting into `metrics` (which the broker may
    /// already use).
    pub fn with_metrics(
        config: Config,
        broker: Arc<dyn Broker>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let hello = protocol::to_text(&ServerFrame::Hello {
            protocol: PROTOCOL_VERSION,
            limits: &config.limits(),
        });
        let hub = Hub::new(
            HubConfig {
                max_rooms: config.max_rooms,
                room_buffer: config.room_buffer,
                room_buffer_bytes: config.room_buffer_bytes,
                presence_cap: config.presence_cap,
                page_messages: config.join_history,
                page_bytes: config.join_history_bytes,
                name_grace: config.name_grace,
                timestamps: metrics.is_some(),
                write_delay: config.write_delay,
                hot_write_delay: config.hot_write_delay,
                pass_tasks: executor_threads(),
                presence_window: config.presence_window,
            },
            broker,
        );
        let per_ip = Arc::new(PerIp::new(config.per_ip));
        Self {
            per_ip,
            limits: conn::Limits::from(&config),
            config,
            hub,
            hello: hello.into(),
            shutdown: Shutdown::default(),
            http_open: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            idle: Event::new(),
            metrics,
            metrics_addr: OnceLock::new(),
            started: Instant::now(),
        }
    }

    /// The metrics, unless `--metrics off`.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }

    /// Where `/metrics` is served with `--metrics-bind`, once bound.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr.get().copied()
    }

    /// Whether this node takes traffic: not shutting down, and its broker (store or Redis)
    /// works.
    pub fn ready(&self) -> bool {
        crate::health::readiness(self).is_ok()
    }

    /// What a connection gets to work with.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx::new(self)
    }

    /// Takes a connection slot, or `None` at `--max-connections` or during shutdown.
    pub fn try_acquire(self: &Arc<Self>) -> Option<ConnSlot> {
        if self.shutdown.started() {
            return None;
        }
        let max = self.config.max_connections;
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(ConnSlot {
            state: self.clone(),
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// Takes a plain HTTP connection place for a TCP peer, or `None` at a cap. Trusted proxies
    /// carry many clients, so only the total cap applies to them.
    fn try_http(self: &Arc<Self>, peer: std::net::IpAddr) -> Option<HttpSlot> {
        let max = self.config.max_http_connections;
        let per_ip = if self.config.trusted_proxies.trusts(peer) {
            None
        } else {
            Some(self.per_ip.http(addr::key(peer))?)
        };
        self.http_open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(HttpSlot {
            state: self.clone(),
            _per_ip: per_ip,
        })
    }

    pub fn stats(&self) -> Stats {
        let hub = self.hub.stats();
        let m = self.metrics();
        Stats {
            connections: self.active.load(Ordering::Acquire),
            http_connections: self.http_open.load(Ordering::Acquire),
            hub,
            messages_total: hub.messages,
            deliveries_total: m.map(Metrics::deliveries),
            fanout_p99_ms: m.and_then(Metrics::fanout_p99_ms),
        }
    }

    async fn connections_closed(&self) {
        loop {
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            let listener = self.idle.listen();
            if self.active.load(Ordering::Acquire) == 0 {
                return;
            }
            listener.await;
        }
    }
}

/// Starts async-io 1.x's reactor now, while file descriptors are free. async-h1 times each
/// request head with that version's timer, whose reactor is created on first use and panics when
/// it cannot get its two descriptors then: out of descriptors (the moment the accept loop is
/// backing off), every HTTP connection's task would panic instead (seen in `nofile.rs`).
fn start_h1_reactor() {
    let mut far = async_io_v1::Timer::after(Duration::from_secs(3600));
    let waker = futures::task::noop_waker();
    // Polling registers the timer, which creates the reactor; dropping it deregisters it.
    let _ = Pin::new(&mut far).poll(&mut std::task::Context::from_waker(&waker));
}

/// Serves `listener` until `shutdown` resolves, then closes every websocket with 1001 and
/// returns once they are closed or `--shutdown-timeout` has passed.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = crate::app(state.clone())?;
    start_h1_reactor();
    let metrics_listener = match state.config.metrics_bind {
        Some(addr) if state.metrics.is_some() => {
            let listener = crate::listen::bind(addr, state.config.backlog).map_err(|e| {
                io::Error::new(e.kind(), format!("binding --metrics-bind {addr}: {e}"))
            })?;
            let bound = listener.local_addr()?;
            log::info!("metrics on http://{bound}/metrics");
            let _ = state.metrics_addr.set(bound);
            Some(listener)
        }
        _ => None,
    };
    {
        let accept = async {
            // Failed accepts in a row, and the pause after the last one.
            let mut failures = AcceptFailures::default();
            let mut refusals = Refusals::default();
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        failures.ended();
                        // Closed at once, unread: a task and a read buffer per connection is
                        // what a flood would cost otherwise.
                        let Some(slot) = state.try_http(peer.ip().to_canonical()) else {
                            refusals.note(peer.ip());
                            continue;
                        };
                        // Writes are already batched per flush; Nagle would only hold the next
                        // batch back until the previous one is acknowledged.
                        if let Err(e) = stream.set_nodelay(true) {
                            log::debug!("set_nodelay: {e}");
                        }
                        // Without async-std's task wrapper (nothing here uses task locals): each
                        // layer of a spawn moves the future once more.
                        async_global_executor::spawn(http_connection(app.clone(), stream, slot))
                            .detach();
                    }
                    Err(e) => {
                        async_io::Timer::after(failures.failed(&e)).await;
                    }
                }
            }
        };
        let housekeeping = async {
            let mut ticks = async_io::Timer::interval(TICK);
            loop {
                futures::StreamExt::next(&mut ticks).await;
                let now = Instant::now();
                state.hub.tick(now).await;
                if let Some(m) = state.metrics() {
                    m.tick(now);
                }
            }
        };
        let presence = async {
            let window = state.hub.presence_window();
            if window.is_zero() {
                return futures::future::pending().await;
            }
            let mut ticks = async_io::Timer::interval(window);
            loop {
                futures::StreamExt::next(&mut ticks).await;
                state.hub.flush_presence(Instant::now());
            }
        };
        // The connections' pings (and their checks for silence).
        let pulse = state.shutdown.pulse(state.config.ping_interval);
        let presence = futures::future::select(Box::pin(presence), Box::pin(pulse));
        let metrics = async {
            match &metrics_listener {
                Some(l) => serve_metrics(l, crate::metrics_app(state.clone()), &state).await,
                None => futures::future::pending().await,
            }
        };
        futures::pin_mut!(accept, housekeeping, presence, metrics, shutdown);
        let work = futures::future::select(accept, housekeeping);
        let work = futures::future::select(work, presence);
        futures::future::select(futures::future::select(work, metrics), shutdown).await;
    }
    drop(listener);
    drop(metrics_listener);
    let open = state.active.load(Ordering::Acquire);
    log::info!("shutting down: closing {open} connections");
    state.shutdown.begin();
    let timeout = state.config.shutdown_timeout;
    if async_std::future::timeout(timeout, state.connections_closed())
        .await
        .is_err()
    {
        let left = state.active.load(Ordering::Acquire);
        log::warn!("shutdown timeout: {left} connections still open");
    }
    // Every acknowledged message is durable already; this syncs the rest and marks the store
    // as closed cleanly.
    if let Err(e) = state.hub.broker().close().await {
        log::error!("closing the history store: {e}");
    }
    Ok(())
}

/// Serves `/metrics` alone on the `--metrics-bind` listener (connections count under the HTTP
/// connection caps like any other).
async fn serve_metrics(listener: &TcpListener, app: tide::Server<Arc<State>>, state: &Arc<State>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Some(slot) = state.try_http(peer.ip().to_canonical()) else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                async_global_executor::spawn(http_connection(app.clone(), stream, slot)).detach();
            }
            Err(e) => {
                log::debug!("metrics accept: {e}");
                async_io::Timer::after(ACCEPT_BACKOFF_MAX).await;
            }
        }
    }
}

/// Answers a request that could not be parsed with 400 and the reason, best effort (the
/// connection is closed after it either way).
async fn bad_request(out: &mut TcpStream, reason: &str) {
    use futures::AsyncWriteExt;
    let body = format!("{reason}\n");
    let res = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = async_std::future::timeout(BAD_REQUEST_WRITE, out.write_all(res.as_bytes())).await;
}

/// A run of failed accepts: how long to pause, and its log lines. Once per run, not per
/// accept, since an attacker holding every descriptor would otherwise fill the log at the
/// accept rate; and a run that starts within [`REFUSAL_LOG_INTERVAL`] of the last one logged is
/// logged only if it lasts past that, so a limit hit and freed over and over costs at most two
/// lines a second.
#[derive(Default)]
struct AcceptFailures {
    /// Failures in the current run (0: accepting).
    failures: u64,
    /// The pause after the last failure.
    backoff: Duration,
    /// Whether the current run's start was logged.
    logged: bool,
    /// When the last run's start was logged.
    last_logged: Option<Instant>,
    /// Runs not logged since then.
    quiet_runs: u64,
}

impl AcceptFailures {
    /// Notes a failure; returns the pause before the next accept.
    fn failed(&mut self, e: &io::Error) -> Duration {
        if self.failures == 0 {
            self.backoff = ACCEPT_BACKOFF;
            self.logged = false;
            self.quiet_runs += 1;
        } else {
            self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
        }
        // A run that started too soon after the last logged one is logged once it has lasted.
        let due = self
            .last_logged
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL);
        if !self.logged && due {
            log::warn!(
                "accept failed: {e}; pausing accepts (up to {ACCEPT_BACKOFF_MAX:?}) until it works again"
            );
            self.logged = true;
            self.last_logged = Some(Instant::now());
            self.quiet_runs -= 1;
        }
        self.failures += 1;
        self.backoff
    }

    /// Notes a successful accept.
    fn ended(&mut self) {
        if self.failures > 0 && self.logged {
            let quiet = match self.quiet_runs {
                0 => String::new(),
                n => format!(" ({n} shorter runs of failures before it not logged)"),
            };
            log::warn!(
                "accepting connections again after {} failed accepts{quiet}",
                self.failures
            );
            self.quiet_runs = 0;
        }
        self.failures = 0;
    }
}

/// Connections closed at an HTTP connection cap since the last log line about them.
#[derive(Default)]
struct Refusals {
    count: u64,
    logged: Option<Instant>,
}

impl Refusals {
    fn note(&mut self, peer: std::net::IpAddr) {
        self.count += 1;
        if self
            .logged
            .is_none_or(|t| t.elapsed() >= REFUSAL_LOG_INTERVAL)
        {
            log::warn!(
                "closed {} connection(s) at the HTTP connection caps (latest from {peer})",
                self.count
            );
            self.count = 0;
            self.logged = Some(Instant::now());
        }
    }
}

/// Serves HTTP requests on one connection until it closes, upgrades, sits idle for the
/// handshake timeout (which also bounds one request's slow headers), or reaches
/// `--http-deadline` since it was accepted, whatever it is doing then. An upgraded connection
/// leaves here (and gives back `slot`) once its 101 response is written.
async fn http_connection(app: tide::Server<Arc<State>>, stream: TcpStream, slot: HttpSlot) {
    let config = &slot.state.config;
    let (timeout, deadline) = (config.handshake_timeout, config.http_deadline);
    let proxies = config.trusted_proxies.clone();
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let tcp = stream.clone();
    let mut out = stream.clone();
    // Set when a request reaches the app: an error before that is a request async-h1 could not
    // parse (no Host, a malformed head), which it would answer with a silent close.
    let decoded = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = decoded.clone();
    let mut conn = async_h1::server::Server::new(stream, move |mut req: tide::http::Request| {
        seen.store(true, Ordering::Relaxed);
        req.set_peer_addr(peer);
        req.set_local_addr(local);
        if let Some(peer) = peer {
            let joined = |name: &str| {
                req.header(name)
                    .map(|v| v.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(","))
            };
            let (f, xff, xfp) = (
                joined("Forwarded"),
                joined("X-Forwarded-For"),
                joined("X-Forwarded-Proto"),
            );
            let fwd = Forwarding {
                forwarded: f.as_deref(),
                x_forwarded_for: xff.as_deref(),
                x_forwarded_proto: xfp.as_deref(),
            };
            let client: ClientInfo = addr::client(&proxies, peer.ip(), fwd);
            req.ext_mut().insert(client);
        }
        // For the websocket upgrade: its writer writes to the socket directly.
        req.ext_mut().insert(tcp.clone());
        let app = app.clone();
        async move { app.respond(req).await }
    });
    let requests = async {
        loop {
            decoded.store(false, Ordering::Relaxed);
            // Boxed: a request's future (async-h1's parse, tide's middleware, the endpoint) is
            // ~22 KiB, and unboxed it would make this connection's task that big, copied
            // whole by every layer of the spawn (measured: 23,400 bytes, 1,144 boxed).
            match async_std::future::timeout(timeout, Box::pin(conn.accept_one())).await {
                Ok(Ok(async_h1::server::ConnectionStatus::KeepAlive)) => continue,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    log::debug!("http connection from {peer:?}: {e}");
                    if !decoded.load(Ordering::Relaxed) {
                        bad_request(&mut out, &e.to_string()).await;
                    }
                    break;
                }
                Err(_) => break,
            }
        }
    };
    if async_std::future::timeout(deadline, requests)
        .await
        .is_err()
    {
        log::debug!("http connection from {peer:?}: closed at --http-deadline");
    }
    drop(slot);
}

/// The executor's threads: what `main` set for async-std (`--threads`), else its default, one
/// per CPU.
fn executor_threads() -> usize {
    std::env::var("ASYNC_STD_THREAD_COUNT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_log_flapping_runs_at_most_once_a_second() {
        let e = io::Error::from_raw_os_error(24);
        let mut f = AcceptFailures::default();
        let pauses: Vec<_> = (0..10).map(|_| f.failed(&e)).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF);
        assert!(pauses.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(pauses[9], ACCEPT_BACKOFF_MAX);
        assert!(f.logged);
        f.ended();
        // Hit again at once: counted, not logged, and the pause starts small again.
        assert_eq!(f.failed(&e), ACCEPT_BACKOFF);
        assert!(!f.logged);
        assert_eq!(f.quiet_runs, 1);
        f.ended();
        assert_eq!(f.failures, 0);
    }
}
