//! The counters behind `GET /metrics` (Prometheus text, or OpenMetrics when the scraper asks for
//! it) and the fan-out figures of `/stats`.
//!
//! **Crate: `prometheus-client`** (the Prometheus project's own Rust client). It has typed
//! families (a label set is a type, so no metric can be given a label it was not declared
//! with), no global registry (each server owns its [`Metrics`], so tests and embedders can run
//! several in one process), and both text encoders (Prometheus 0.0.4 and OpenMetrics 1.0).
//! `metrics` + `metrics-exporter-prometheus` would record through a process-global recorder
//! behind string-keyed macros, which is what two servers in one test process must not share.
//!
//! **Off the hot path.** Nothing here takes a lock when a frame goes out. Counters and gauges
//! are single atomics. A connection's writer adds up one batch (its frames, bytes, close frame
//! and each room event's fan-out latency) in a [`Tally`] on its stack and adds that to the
//! atomics once per batch (one `writev`); a publisher's direct-write pass does the same for all
//! the members it writes to, in a [`PassTally`]. The fan-out histogram is this module's own
//! [`Histogram`] (prometheus-client's holds a mutex): one atomic per bucket. What is reported
//! per client frame (frames and bytes received, rate-limit hits) is counted per frame; clients
//! send far less than they receive. Handshake, connection and HTTP request counts are per
//! event. Room, member and history counts, broker state and readiness are read when scraped.
//! No metric has a per-room (or otherwise client-chosen) label.
//!
//! **Fan-out latency** (`tidechat_fanout_seconds`): from the moment the hub renders a room event
//! (`Hub::deliver`: a publish the broker accepted, a presence change) to the moment the writer's
//! `writev` that carried the frame returned, one observation per frame written, recorded per
//! batch. A pass reads the clock once per 16 members, so its observations are early by at most
//! 15 sends (tens of µs). `/stats` reports its p99 over the last 10 s (since start during the
//! first 10 s).
//!
//! `--metrics off` builds no [`Metrics`]: nothing is counted, events carry no timestamp, and
//! `/metrics` is 404.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::Config;
use crate::conn::Mode;
use crate::protocol::close;
use crate::server::State;

/// Upper bounds of the latency buckets, in seconds (1-2-5 steps from 100 µs to 10 s).
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
    10.0,
];
/// The bucket bounds in nanoseconds, for the writer's per-frame comparison.
const BOUNDS_NS: [u64; 16] = {
    let mut ns = [0u64; 16];
    let mut i = 0;
    while i < 16 {
        // The bounds are whole numbers of nanoseconds, so the cast is exact.
        ns[i] = (BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    ns
};
/// Buckets including the overflow (+Inf) one.
const SLOTS: usize = BUCKETS.len() + 1;

/// How often the fan-out window takes a snapshot, and how many it keeps (the window for
/// `/stats`' p99 is their span).
const WINDOW_STEP: Duration = Duration::from_secs(1);
const WINDOW_SNAPSHOTS: usize = 11;

/// Why a websocket handshake was refused (label `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403: a foreign Origin.
    Origin,
    /// 421: a Host not in `--allowed-host`.
    Host,
    /// 429: `--max-connections-per-ip`.
    PerIpCap,
    /// 429: out of handshakes per address.
    PerIpRate,
    /// 503: `--max-connections` (or shutting down).
    ServerFull,
    /// 400/426: not a valid websocket upgrade (no upgrade headers, version, key, Host).
    BadRequest,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::Origin,
        Refusal::Host,
        Refusal::PerIpCap,
        Refusal::PerIpRate,
        Refusal::ServerFull,
        Refusal::BadRequest,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::Origin => "origin",
            Refusal::Host => "host",
            Refusal::PerIpCap => "per_ip_cap",
            Refusal::PerIpRate => "per_ip_rate",
            Refusal::ServerFull => "server_full",
            Refusal::BadRequest => "bad_request",
        }
    }
}

/// The close codes the server sends, created up front so they show (at 0) before the first.
const CLOSE_CODES: [u16; 10] = [
    close::NORMAL,
    close::GOING_AWAY,
    close::PROTOCOL_ERROR,
    close::UNSUPPORTED_DATA,
    close::INVALID_PAYLOAD,
    close::POLICY_VIOLATION,
    close::MESSAGE_TOO_BIG,
    close::IDLE_TIMEOUT,
    close::SLOW_CONSUMER,
    close::RESYNC,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabel {
    route: &'static str,
    status: u16,
}

/// The route label of a websocket mode.
fn route(mode: Mode) -> &'static str {
    match mode {
        Mode::V1 => "ws",
        Mode::Seed => "chatSocket",
    }
}

fn mode_index(mode: Mode) -> usize {
    match mode {
        Mode::V1 => 0,
        Mode::Seed => 1,
    }
}

/// The `route` label of a plain HTTP request (not per path, so a client cannot make new
/// series); `None` for the websocket routes, which have metrics of their own.
pub fn http_route(path: &str, status: u16) -> Option<&'static str> {
    Some(match path {
        "/ws" | "/chatSocket" => return None,
        "/" | "/index.html" => "page",
        "/stats" => "stats",
        "/metrics" => "metrics",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/status" => "status",
        _ if status < 400 => "static",
        _ => "other",
    })
}

/// A latency histogram kept in atomics: one counter per bucket and the sum in nanoseconds (the
/// count is their total, so a scrape is always consistent with itself). Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    counts: [AtomicU64; SLOTS],
    sum_ns: AtomicU64,
}

/// The bucket a duration of `ns` nanoseconds falls in (`le` semantics: at most the bound).
fn slot(ns: u64) -> usize {
    BOUNDS_NS
        .iter()
        .position(|&b| ns <= b)
        .unwrap_or(BUCKETS.len())
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.inner.counts[slot(ns)].fetch_add(1, Ordering::Relaxed);
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Adds a batch's observations (only the buckets it touched).
    fn add(&self, counts: &[u32; SLOTS], sum_ns: u64) {
        for (i, &n) in counts.iter().enumerate() {
            if n > 0 {
                self.inner.counts[i].fetch_add(u64::from(n), Ordering::Relaxed);
            }
        }
        self.inner.sum_ns.fetch_add(sum_ns, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; SLOTS] {
        std::array::from_fn(|i| self.inner.counts[i].load(Ordering::Relaxed))
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self.counts();
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(counts)
            .collect();
        let sum = self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The quantile `q` of the observations in `counts`, in seconds, interpolated within its bucket
/// as Prometheus' `histogram_quantile` does; `None` without observations.
fn quantile(counts: &[u64; SLOTS], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = BUCKETS.get(i) else {
                // In the overflow bucket: the highest bound is all that is known.
                return Some(BUCKETS[BUCKETS.len() - 1]);
            };
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            let within = (rank - below as f64) / n as f64;
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    Some(BUCKETS[BUCKETS.len() - 1])
}

/// What one writer batch (or the part of it that reached the socket) adds, summed on the
/// writer's stack and added to the atomics once by [`Metrics::record`].
#[derive(Debug)]
pub struct Tally {
    now: Instant,
    frames: u64,
    bytes: u64,
    fanout: [u32; SLOTS],
    fanout_ns: u64,
    close: Option<u16>,
}

impl Tally {
    /// A tally of frames written by `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            now,
            frames: 0,
            bytes: 0,
            fanout: [0; SLOTS],
            fanout_ns: 0,
            close: None,
        }
    }

    /// A whole frame was written; `published` is when its room event was rendered.
    #[inline]
    pub fn frame(&mut self, published: Option<Instant>) {
        self.frames += 1;
        if let Some(at) = published {
            let ns = self.now.saturating_duration_since(at).as_nanos() as u64;
            self.fanout[slot(ns)] += 1;
            self.fanout_ns += ns;
        }
    }

    /// A whole close frame with `code` was written.
    pub fn close(&mut self, code: u16) {
        self.frames += 1;
        self.close = Some(code);
    }

    /// Bytes written (frame headers included, whole frames or not).
    pub fn bytes(&mut self, n: usize) {
        self.bytes += n as u64;
    }
}

/// What the direct writes of one pass (`hub::push_all`) add, summed over its members and added
/// to the atomics once at its end, with one clock read per group of members. Per delivery, a
/// clock read and four atomic additions were 0.7% of the server's samples in `chat`.
#[derive(Debug, Default)]
pub struct PassTally {
    /// Where the counts go (every member of a server shares it) and the counts, from the first
    /// member that counted anything.
    open: Option<(Arc<Metrics>, Tally)>,
    /// The clock is read again before the next member's frames are counted.
    stale: bool,
}

impl PassTally {
    /// The members after this one are written a little later: the next count reads the clock.
    pub fn next_group(&mut self) {
        self.stale = true;
    }

    /// The tally to add a member's frames to; `m` is where they go at [`PassTally::finish`].
    pub fn tally(&mut self, m: &Arc<Metrics>) -> &mut Tally {
        let stale = std::mem::take(&mut self.stale);
        if let Some((_, t)) = &mut self.open {
            if stale {
                t.now = Instant::now();
            }
        }
        &mut self
            .open
            .get_or_insert_with(|| (m.clone(), Tally::new(Instant::now())))
            .1
    }

    /// Adds the pass's counts to the metrics.
    pub fn finish(self) {
        if let Some((m, t)) = self.open {
            m.record(&t);
        }
    }
}

/// This server's metrics; built only with `--metrics on`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    open: [Gauge; 2],
    accepted: [Counter; 2],
    refused: [Counter; 6],
    http: Family<HttpLabel, Counter>,
    frames_sent: Counter,
    bytes_sent: Counter,
    frames_received: Counter,
    bytes_received: Counter,
    closes: Family<CodeLabel, Counter>,
    close_known: [Counter; CLOSE_CODES.len()],
    slow_consumers: Counter,
    rate_limited: Counter,
    fanout: Histogram,
    /// The Redis PING round trip (registered only with `--redis`).
    roundtrip: Histogram,
    window: Mutex<VecDeque<(Instant, [u64; SLOTS])>>,
}

/// A websocket counted as open until this is dropped.
#[derive(Debug)]
pub struct OpenConnection<'a> {
    gauge: &'a Gauge,
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Metrics {
    /// The metrics `config` asks for (`None` with `--metrics off`).
    pub fn for_config(config: &Config) -> Option<Arc<Self>> {
        config
            .metrics
            .then(|| Arc::new(Self::new(!config.redis.is_empty())))
    }

    fn new(redis: bool) -> Self {
        let mut registry = Registry::with_prefix("tidechat");
        let open: Family<RouteLabel, Gauge> = Family::default();
        registry.register(
            "connections_open",
            "Open websocket connections",
            open.clone(),
        );
        let accepted: Family<RouteLabel, Counter> = Family::default();
        registry.register(
            "connections",
            "Websocket connections accepted",
            accepted.clone(),
        );
        let refused: Family<ReasonLabel, Counter> = Family::default();
        registry.register(
            "handshakes_refused",
            "Websocket handshakes refused, by reason",
            refused.clone(),
        );
        let http: Family<HttpLabel, Counter> = Family::default();
        registry.register(
            "http_requests",
            "Plain HTTP requests answered (not the websocket routes), by route and status",
            http.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let frames_sent = counter(
            &mut registry,
            "frames_sent",
            "Websocket frames written to clients",
        );
        let bytes_sent = counter(
            &mut registry,
            "bytes_sent",
            "Websocket bytes written to clients (frame headers included)",
        );
        let frames_received = counter(
            &mut registry,
            "frames_received",
            "Websocket frames read from clients",
        );
        let bytes_received = counter(
            &mut registry,
            "bytes_received",
            "Websocket bytes read from clients (frame headers included)",
        );
        let closes: Family<CodeLabel, Counter> = Family::default();
        registry.register(
            "closes",
            "Close frames the server sent, by close code",
            closes.clone(),
        );
        let slow_consumers = counter(
            &mut registry,
            "slow_consumer_closes",
            "Connections closed as slow consumers (4008), close frame written or not",
        );
        let rate_limited = counter(
            &mut registry,
            "rate_limited",
            "Client frames refused by the rate limit",
        );
        let fanout = Histogram::default();
        registry.register(
            "fanout_seconds",
            "From a room event rendered by the hub to its frame written to a socket",
            fanout.clone(),
        );
        let roundtrip = Histogram::default();
        if redis {
            registry.register(
                "broker_roundtrip_seconds",
                "Round trip of the PING each node sends each Redis instance every second",
                roundtrip.clone(),
            );
        }
        let modes = [Mode::V1, Mode::Seed];
        Self {
            open: modes.map(|m| open.get_or_create_owned(&RouteLabel { route: route(m) })),
            accepted: modes.map(|m| accepted.get_or_create_owned(&RouteLabel { route: route(m) })),
            refused: Refusal::ALL
                .map(|r| refused.get_or_create_owned(&ReasonLabel { reason: r.label() })),
            close_known: CLOSE_CODES.map(|code| closes.get_or_create_owned(&CodeLabel { code })),
            http,
            closes,
            frames_sent,
            bytes_sent,
            frames_received,
            bytes_received,
            slow_consumers,
            rate_limited,
            fanout,
            roundtrip,
            registry,
            window: Mutex::new(VecDeque::from([(Instant::now(), [0; SLOTS])])),
        }
    }

    /// The histogram the Redis broker times its PINGs into.
    pub fn broker_roundtrip(&self) -> Histogram {
        self.roundtrip.clone()
    }

    /// A websocket was accepted on `mode`'s route; it counts as open until the guard drops.
    pub fn connection(&self, mode: Mode) -> OpenConnection<'_> {
        let i = mode_index(mode);
        self.accepted[i].inc();
        let gauge = &self.open[i];
        gauge.inc();
        OpenConnection { gauge }
    }

    pub fn refused(&self, why: Refusal) {
        // The index of `why` in `Refusal::ALL`.
        self.refused[why as usize].inc();
    }

    pub fn http_request(&self, route: &'static str, status: u16) {
        self.http.get_or_create(&HttpLabel { route, status }).inc();
    }

    /// Frames and bytes read from a client since the last call.
    pub fn received(&self, frames: u64, bytes: u64) {
        if frames > 0 {
            self.frames_received.inc_by(frames);
        }
        if bytes > 0 {
            self.bytes_received.inc_by(bytes);
        }
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    /// Adds what a writer put on the wire.
    pub fn record(&self, t: &Tally) {
        if t.frames > 0 {
            self.frames_sent.inc_by(t.frames);
        }
        if t.bytes > 0 {
            self.bytes_sent.inc_by(t.bytes);
        }
        if t.fanout_ns > 0 || t.fanout.iter().any(|&n| n > 0) {
            self.fanout.add(&t.fanout, t.fanout_ns);
        }
        if let Some(code) = t.close {
            match CLOSE_CODES.iter().position(|&c| c == code) {
                Some(i) => {
                    self.close_known[i].inc();
                }
                None => {
                    self.closes.get_or_create(&CodeLabel { code }).inc();
                }
            }
        }
    }

    /// Housekeeping (a few times a second): the fan-out window's snapshot, once per step.
    pub fn tick(&self, now: Instant) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if window
            .back()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < WINDOW_STEP)
        {
            return;
        }
        window.push_back((now, self.fanout.counts()));
        while window.len() > WINDOW_SNAPSHOTS {
            window.pop_front();
        }
    }

    /// Frames written to clients since start.
    pub fn deliveries(&self) -> u64 {
        self.frames_sent.get()
    }

    /// The p99 fan-out latency over the last 10 s (since start during the first 10 s), in
    /// milliseconds; `None` when nothing was delivered then.
    pub fn fanout_p99_ms(&self) -> Option<f64> {
        let now = self.fanout.counts();
        let window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let then = window.front().map_or([0; SLOTS], |(_, c)| *c);
        drop(window);
        let recent: [u64; SLOTS] = std::array::from_fn(|i| now[i].saturating_sub(then[i]));
        quantile(&recent, 0.99).map(|s| s * 1e3)
    }

    /// The text a scrape gets: Prometheus 0.0.4, or OpenMetrics 1.0 with `openmetrics`.
    pub fn render(&self, state: &State, openmetrics: bool) -> String {
        let now = self.now_registry(state);
        let mut out = String::with_capacity(8 * 1024);
        let written = if openmetrics {
            use prometheus_client::encoding::text;
            text::encode_registry(&mut out, &self.registry)
                .and_then(|()| text::encode_registry(&mut out, &now))
                .and_then(|()| text::encode_eof(&mut out))
        } else {
            use prometheus_client::encoding::prometheus_text;
            prometheus_text::encode(&mut out, &self.registry)
                .and_then(|()| prometheus_text::encode(&mut out, &now))
        };
        // Writing into a String cannot fail; an encoder error would be a bug, shown as such.
        if let Err(e) = written {
            log::error!("encoding /metrics: {e}");
        }
        out
    }

    /// What is read when scraped rather than counted: rooms, members, messages, history,
    /// broker and readiness, dropped log lines.
    fn now_registry(&self, state: &State) -> Registry {
        let mut r = Registry::with_prefix("tidechat");
        let hub = state.hub.stats();
        let broker = state.hub.broker();
        let gauge = |v: usize| ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
        r.register("rooms", "Rooms held by this node", gauge(hub.rooms));
        r.register(
            "members",
            "Names held in rooms on this node",
            gauge(hub.members),
        );
        r.register(
            "messages_published",
            "Messages published through this node",
            ConstCounter::new(hub.messages),
        );
        if let Some(n) = broker.history_messages() {
            r.register(
                "history_messages",
                "Messages kept in the history store",
                ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX)),
            );
        }
        r.register(
            "store_errors",
            "History store operations that failed (writes, reads, syncs, retention)",
            ConstCounter::new(broker.store_errors()),
        );
        r.register(
            "broker_up",
            "1 when the broker works (memory: the store syncs; Redis: every instance connected)",
            ConstGauge::new(i64::from(broker.ready())),
        );
        r.register(
            "ready",
            "1 when this node takes traffic (what /readyz says)",
            ConstGauge::new(i64::from(state.ready())),
        );
        r.register(
            "log_lines_dropped",
            "Log lines dropped because stderr did not keep up",
            ConstCounter::new(crate::logging::dropped_lines()),
        );
        r
    }
}

/// A count that goes up and down from several threads and is read as at least 0.
#[derive(Debug, Default)]
pub struct Level(AtomicI64);

impl Level {
    pub fn add(&self, n: u64) {
        self.0
            .fetch_add(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub fn sub(&self, n: u64) {
        self.0
            .fetch_sub(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_le_semantics() {
        assert_eq!(slot(0), 0);
        assert_eq!(slot(100_000), 0);
        assert_eq!(slot(100_001), 1);
        assert_eq!(slot(10_000_000_000), 15);
        assert_eq!(slot(10_000_000_001), 16);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let mut counts = [0u64; SLOTS];
        assert_eq!(quantile(&counts, 0.99), None);
        // 100 observations in (1 ms, 2 ms]: the p50 is half way.
        counts[4] = 100;
        let p50 = quantile(&counts, 0.5).unwrap();
        assert!((p50 - 0.0015).abs() < 1e-9, "{p50}");
        counts[SLOTS - 1] = 1_000;
        assert_eq!(quantile(&counts, 0.99), Some(10.0));
    }

    #[test]
    fn a_tally_adds_up_once() {
        let m = Metrics::new(false);
        let now = Instant::now();
        let mut t = Tally::new(now + Duration::from_millis(3));
        t.frame(Some(now));
        t.frame(None);
        t.close(close::SLOW_CONSUMER);
        t.bytes(42);
        m.record(&t);
        assert_eq!(m.frames_sent.get(), 3);
        assert_eq!(m.bytes_sent.get(), 42);
        assert_eq!(m.fanout.counts()[slot(3_000_000)], 1);
        assert_eq!(m.close_known[8].get(), 1);
        let p99 = m.fanout_p99_ms().unwrap();
        assert!(p99 > 2.0 && p99 <= 5.0, "{p99}");
    }

    #[test]
    fn a_pass_tally_adds_its_members_up_once_at_its_end() {
        let m = Arc::new(Metrics::new(false));
        let published = Instant::now() - Duration::from_millis(3);
        let mut pass = PassTally::default();
        for group in 0..3 {
            pass.next_group();
            for _ in 0..=group {
                let t = pass.tally(&m);
                t.frame(Some(published));
                t.bytes(10);
            }
        }
        assert_eq!(m.frames_sent.get(), 0, "nothing before the pass ends");
        pass.finish();
        assert_eq!(m.frames_sent.get(), 6);
        assert_eq!(m.bytes_sent.get(), 60);
        assert_eq!(m.fanout.counts().iter().sum::<u64>(), 6);
        let p99 = m.fanout_p99_ms().unwrap();
        assert!(p99 > 2.0 && p99 <= 5.0, "{p99}");
        // A pass that wrote nothing records nothing.
        PassTally::default().finish();
        assert_eq!(m.frames_sent.get(), 6);
    }
}
