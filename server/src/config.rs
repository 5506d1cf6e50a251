//! Command line and environment (`TIDECHAT_*`) options, and the validated [`Config`] the server runs
//! with. Every limit has a named default here; tests build a `Config` with [`Config::default`] and
//! change what they exercise.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::addr::Proxies;
use crate::limits::{JOIN_COST, MAX_NAME_CHARS, MAX_ROOM_CHARS};
use crate::origin::HostPolicy;
use crate::per_ip::PerIpLimits;
use crate::protocol::Limits;

/// Largest websocket message, in bytes, enforced from the frame header before buffering.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Largest `text` of one chat message, in bytes.
pub const DEFAULT_MAX_TEXT_BYTES: usize = 16 * 1024;

/// Bytes of events a room buffers for lagging receivers: 256 messages of the largest text, or 4x
/// `--history-bytes`, so a burst in a busy room does not cut off a reader that keeps up.
pub const DEFAULT_ROOM_BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Where the chat page lives when `--static-dir` is not given: the workspace's `static/`, so
/// `cargo run -p server` serves it from any working directory.
const DEFAULT_STATIC_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../static");

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line (ndjson), for log collectors.
    Json,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// tidechat: a real-time websocket chat server.
#[derive(Debug, Parser)]
#[command(name = "tidechat", version, about)]
pub struct Args {
    /// Address to listen on; use 0.0.0.0:3000 to expose it beyond this machine.
    #[arg(long, env = "TIDECHAT_BIND", default_value = "127.0.0.1:3000")]
    pub bind: SocketAddr,
    /// Accept queue of the listeners (--bind, --metrics-bind): connections the kernel completes
    /// before the server accepts them. SYNs that find it full are dropped and retried after 1 s,
    /// so it must hold the largest burst of connects. Linux caps it at net.core.somaxconn
    /// (logged when it does). At most 65535.
    #[arg(long, env = "TIDECHAT_BACKLOG", default_value_t = crate::listen::DEFAULT_BACKLOG)]
    pub backlog: u32,
    /// Directory served at `/` (the chat page). Default: the `static/` directory of the source
    /// tree the binary was built from.
    #[arg(long, env = "TIDECHAT_STATIC_DIR", default_value = DEFAULT_STATIC_DIR, hide_default_value = true)]
    pub static_dir: PathBuf,
    /// Origin allowed to open websockets (repeatable, e.g. `https://chat.example.com`; `*` allows
    /// any). Default: only the server's own origin (the request's scheme, Host and port). A
    /// request without Origin (not a browser) is allowed.
    #[arg(
        long = "allowed-origin",
        env = "TIDECHAT_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,
    /// Host the server may be called by (repeatable; `host` for any port or `host:port`; `*`
    /// allows any, for a proxy that checks Host itself). `localhost`, the address a connection
    /// arrived on and the hosts of `--allowed-origin` are always allowed. Other Hosts get 421,
    /// which stops DNS rebinding.
    #[arg(
        long = "allowed-host",
        env = "TIDECHAT_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Reverse proxy whose `X-Forwarded-For`/`Forwarded` (client address) and
    /// `X-Forwarded-Proto` (scheme) are believed (repeatable CIDR or address, e.g. 127.0.0.1/32,
    /// 10.0.0.0/8): the client is the rightmost forwarded address that is not a trusted proxy.
    /// Default: none, the TCP peer is the client.
    #[arg(
        long = "trusted-proxy",
        env = "TIDECHAT_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Most open websockets per client address (IPv6: per /64); more get HTTP 429.
    #[arg(long, env = "TIDECHAT_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: usize,
    /// Sustained websocket handshakes per second per client address; more get HTTP 429 with
    /// Retry-After.
    #[arg(long, env = "TIDECHAT_HANDSHAKE_RATE_PER_IP", default_value_t = 10.0)]
    pub handshake_rate_per_ip: f64,
    /// Websocket handshakes per client address in a burst above the rate.
    #[arg(long, env = "TIDECHAT_HANDSHAKE_BURST_PER_IP", default_value_t = 20)]
    pub handshake_burst_per_ip: u32,
    /// Most open TCP connections that are not (yet) websockets; more are closed at once.
    #[arg(long, env = "TIDECHAT_MAX_HTTP_CONNECTIONS", default_value_t = 2_048)]
    pub max_http_connections: usize,
    /// Most open non-websocket TCP connections per TCP peer address (not applied to
    /// `--trusted-proxy` peers); more are closed at once.
    #[arg(
        long,
        env = "TIDECHAT_MAX_HTTP_CONNECTIONS_PER_IP",
        default_value_t = 64
    )]
    pub max_http_connections_per_ip: usize,
    /// Total time a non-websocket TCP connection may stay open (request heads, responses and
    /// keep-alive idling together), so slow headers or keep-alive cannot hold it forever.
    #[arg(long, env = "TIDECHAT_HTTP_DEADLINE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_deadline: Duration,
    /// Largest websocket message in bytes (larger ones close the connection with 1009).
    #[arg(long, env = "TIDECHAT_MAX_MESSAGE_BYTES", default_value_t = DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Largest chat message text in bytes, counted as it is serialized in JSON (larger ones get
    /// `text_too_long`).
    #[arg(long, env = "TIDECHAT_MAX_TEXT_BYTES", default_value_t = DEFAULT_MAX_TEXT_BYTES)]
    pub max_text_bytes: usize,
    /// Most websocket connections at once (more get HTTP 503 on upgrade).
    #[arg(long, env = "TIDECHAT_MAX_CONNECTIONS", default_value_t = 25_000)]
    pub max_connections: usize,
    /// Most rooms held by the server: the room empty for longest is evicted to make space
    /// (`server_full` when none is empty).
    #[arg(long, env = "TIDECHAT_MAX_ROOMS", default_value_t = 1_000)]
    pub max_rooms: usize,
    /// Most rooms one connection may be in (`too_many_rooms`).
    #[arg(long, env = "TIDECHAT_MAX_ROOMS_PER_CONNECTION", default_value_t = 8)]
    pub max_rooms_per_connection: usize,
    /// Messages kept per room for history and resume.
    #[arg(long, env = "TIDECHAT_HISTORY", default_value_t = 500)]
    pub history: usize,
    /// Bytes of history kept per room (oldest messages go first; a lobby message counts its
    /// JSON and its `/chatSocket` line).
    #[arg(long, env = "TIDECHAT_HISTORY_BYTES", default_value_t = 1024 * 1024)]
    pub history_bytes: usize,
    /// Messages older than this leave the history (removed in the background), e.g. 30d;
    /// `none` keeps them until --history or --history-bytes pushes them out.
    #[arg(long, env = "TIDECHAT_HISTORY_AGE", default_value = "none", value_parser = parse_optional_duration)]
    pub history_age: MaybeDuration,
    /// Where history is kept on disk so that a restart loses nothing (relative to the working
    /// directory; created if missing; one server per directory, a second one refuses to start);
    /// `none` keeps it in memory only (lost on restart, and when a room is evicted at
    /// --max-rooms).
    #[arg(long, env = "TIDECHAT_DATA_DIR", default_value = "data")]
    pub data_dir: String,
    /// How long a name stays reserved for its resume token after its connection dropped without
    /// `leave`; the others see `left` only when it runs out. 0s frees names at once.
    #[arg(long, env = "TIDECHAT_NAME_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub name_grace: Duration,
    /// Share rooms with other nodes through Redis: `redis://HOST:PORT/DB` or
    /// `unix:///path/redis.sock`, or `rediss://` for TLS. Repeat it (or give a comma list) to
    /// spread rooms over several instances; every node must list the same instances in the same
    /// order. History then lives in Redis (not in --data-dir). See README, Running several nodes.
    #[arg(long, env = "TIDECHAT_REDIS", value_delimiter = ',')]
    pub redis: Vec<String>,
    /// With a `rediss://` --redis: the CA certificate(s) (PEM file) its server certificate must
    /// chain to; default: the system's trusted roots.
    #[arg(long, env = "TIDECHAT_REDIS_CA")]
    pub redis_ca: Option<PathBuf>,
    /// With --redis: a node refreshes its members every third of this; the members of a node
    /// that died leave within it (plus a second).
    #[arg(long, env = "TIDECHAT_PRESENCE_TTL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub presence_ttl: Duration,
    /// With --redis: a command, or the PING sent every second, with no reply within this marks
    /// Redis unavailable (messages are refused with `unavailable`) and the node reconnects
    /// (after 100 ms, doubling to 5 s).
    #[arg(long, env = "TIDECHAT_REDIS_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,
    /// Most messages a `joined` or `history` frame holds; a resume across a longer gap pages
    /// with `history` requests.
    #[arg(long, env = "TIDECHAT_JOIN_HISTORY", default_value_t = 50)]
    pub join_history: usize,
    /// Most bytes of messages a `joined` or `history` frame holds (a single larger message
    /// still goes out alone).
    #[arg(long, env = "TIDECHAT_JOIN_HISTORY_BYTES", default_value_t = 256 * 1024)]
    pub join_history_bytes: usize,
    /// Events buffered per room for receivers that fall behind; past it a receiver is closed
    /// with 4008 (slow consumer). Each holds a serialized event, shared by every receiver.
    #[arg(long, env = "TIDECHAT_ROOM_BUFFER", default_value_t = 1024)]
    pub room_buffer: usize,
    /// Bytes of events buffered per room for receivers that fall behind (the oldest go first,
    /// and a receiver that had not read them is closed with 4008). At least
    /// --max-message-bytes.
    #[arg(long, env = "TIDECHAT_ROOM_BUFFER_BYTES", default_value_t = DEFAULT_ROOM_BUFFER_BYTES)]
    pub room_buffer_bytes: usize,
    /// Rooms with more members than this send no join/leave presence and list only this many
    /// members in `joined`, so very large rooms do not cost O(members²).
    #[arg(long, env = "TIDECHAT_PRESENCE_CAP", default_value_t = 1_000)]
    pub presence_cap: usize,
    /// Presence changes of a room within this long go out as one frame (a join storm sends
    /// one per member per window, not one per join); the first change after a quiet window
    /// goes at once. A room waits one window per 250 members, at most four (1 s for 1,000).
    /// 0s sends every change at once.
    #[arg(long, env = "TIDECHAT_PRESENCE_WINDOW", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub presence_window: Duration,
    /// Sustained frames per second a connection may send, control frames included (token
    /// bucket; a refused `say` gets `rate_limited`).
    #[arg(long, env = "TIDECHAT_RATE", default_value_t = 20.0)]
    pub rate: f64,
    /// Frames a connection may send in a burst above the rate.
    #[arg(long, env = "TIDECHAT_BURST", default_value_t = 40)]
    pub burst: u32,
    /// Frames dropped for rate limiting in a row before the connection is closed (1008).
    #[arg(long, env = "TIDECHAT_RATE_STRIKES", default_value_t = 20)]
    pub rate_strikes: u32,
    /// Time allowed for each HTTP request, its head included (and between keep-alive requests).
    #[arg(long, env = "TIDECHAT_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,
    /// Interval of server pings: each connection gets one per interval, the first at least one
    /// interval after it connected (from one server-wide clock that pings a sixteenth of the
    /// connections at a time).
    #[arg(long, env = "TIDECHAT_PING_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed (4000; checked
    /// at each ping).
    #[arg(long, env = "TIDECHAT_IDLE_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Longest a connection may stay behind (from a write that cannot complete at once until it
    /// has written everything) before it is closed as a slow consumer (4008).
    #[arg(long, env = "TIDECHAT_WRITE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,
    /// A message whose first byte has arrived must be complete within this (a fragmented message
    /// never finished, a frame trickled a byte at a time), else the connection is closed (1008).
    /// 10s lets the largest message (--max-message-bytes) arrive at under 7 KB/s.
    #[arg(long, env = "TIDECHAT_MESSAGE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub message_timeout: Duration,
    /// On SIGINT/SIGTERM, time allowed to close every socket before exiting.
    #[arg(long, env = "TIDECHAT_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// Log level of the lines on stderr: error, warn, info, debug, trace, off.
    #[arg(long, env = "TIDECHAT_LOG_LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,
    /// Log line format: `json` for one JSON object per line with named fields (README, Logs).
    #[arg(
        long,
        env = "TIDECHAT_LOG_FORMAT",
        value_enum,
        default_value = "pretty"
    )]
    pub log_format: LogFormat,
    /// Prometheus metrics at `GET /metrics`; `off` counts nothing and answers 404 there.
    #[arg(long, env = "TIDECHAT_METRICS", value_enum, default_value = "on")]
    pub metrics: Switch,
    /// Serve `/metrics` only on this address (a private port for the scraper), not on --bind.
    /// Default: on --bind.
    #[arg(long, env = "TIDECHAT_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Executor threads; 0 = one less than the CPUs (at least 1). On this project's 2-core
    /// machine one thread sustained more fan-out at lower latency than two (README,
    /// Performance): cross-thread wake-ups cost more than a second core gives.
    #[arg(long, env = "TIDECHAT_THREADS", default_value_t = 0)]
    pub threads: usize,
    /// A publisher writes a room's new events straight to the sockets of members whose writers
    /// are idle, instead of waking each connection's task (README, Performance). `off` wakes
    /// every receiver's task, as tidechat did before direct writes; for comparison.
    #[arg(long, env = "TIDECHAT_DIRECT_WRITE", value_enum, default_value = "on")]
    pub direct_write: Switch,
    /// How long a room's direct writes wait for more events to go with them in one write per
    /// socket: less CPU per delivery at high rates for that much more latency (README,
    /// Performance). At most 1s.
    #[arg(long, env = "TIDECHAT_WRITE_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub write_delay: Duration,
    /// The same wait for rooms that publish more than 200 messages a second (judged over each
    /// second), where nobody sees a few ms and several messages per write cut the CPU per
    /// delivery; quieter rooms send at once. 0s: hot rooms wait no longer than others. At
    /// most 1s.
    #[arg(long, env = "TIDECHAT_HOT_WRITE_DELAY", default_value = "2ms", value_parser = humantime::parse_duration)]
    pub hot_write_delay: Duration,
    /// Check the configuration and exit instead of serving: the options, the `TIDECHAT_*`
    /// environment, the static directory and the data directory (it must exist or be creatable,
    /// and be writable; nothing is left in it). Prints every option's effective value and where
    /// it came from, then exits 0, or exits 2 with the reason. It binds no port and does not
    /// contact Redis (the running server holds the port; a build host may not reach Redis).
    #[arg(long)]
    pub check_config: bool,
    /// Prints the README's table of options (Markdown), rendered from these definitions, and
    /// exits. Hidden from `--help`.
    #[arg(long, hide = true)]
    pub help_markdown: bool,
    /// Test only: busy CPU work added per frame written, so that the benchmark gate can be shown
    /// a server that costs measurably more per delivery than the same tree (0: none). Hidden
    /// from `--help`.
    #[arg(long, env = "TIDECHAT_TEST_WORK_PER_DELIVERY", default_value = "0s", value_parser = humantime::parse_duration, hide = true)]
    pub test_work_per_delivery: Duration,
}

impl Args {
    /// The executor size `--threads` asks for.
    pub fn executor_threads(&self) -> usize {
        match self.threads {
            0 => {
                std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
            }
            n => n,
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("--backlog {0} is above {max} (older kernels keep it in 16 bits; Linux caps it at net.core.somaxconn anyway)", max = crate::listen::MAX_BACKLOG)]
    Backlog(u32),
    #[error("{0} must be longer than 0s (e.g. 10s)")]
    ZeroDuration(&'static str),
    #[error("--max-text-bytes ({text}) must be below --max-message-bytes ({message})")]
    TextAboveMessage { text: usize, message: usize },
    #[error("--room-buffer-bytes ({buffer}) must be at least --max-message-bytes ({message})")]
    RoomBufferBelowMessage { buffer: usize, message: usize },
    #[error("--rate must be a positive number, got {0}")]
    Rate(f64),
    #[error("--allowed-origin {0:?} is not an origin like https://host:port or *")]
    Origin(String),
    #[error("--allowed-host {0:?} is not a host like chat.example.com, host:port or *")]
    Host(String),
    #[error("--trusted-proxy {0:?} is not a network like 10.0.0.0/8 or an address")]
    Proxy(String),
    #[error("--handshake-rate-per-ip must be a positive number, got {0}")]
    HandshakeRate(f64),
    #[error("{0} ({1:?}) must be at most 1s")]
    WriteDelay(&'static str, Duration),
    #[error("--idle-timeout ({idle:?}) must be longer than --ping-interval ({ping:?})")]
    IdleBelowPing { idle: Duration, ping: Duration },
    #[error("--redis {0:?}: {1} (e.g. redis://127.0.0.1:6379/0 or unix:///run/redis.sock)")]
    Redis(String, String),
    #[error("--redis-ca {0}: {1}")]
    RedisCa(String, String),
    #[error("--metrics-bind {0}: {1}")]
    MetricsBind(SocketAddr, &'static str),
}

/// Everything the server needs to run, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// `--backlog`: the accept queue asked of the kernel for each listener.
    pub backlog: u32,
    pub static_dir: PathBuf,
    /// Normalized origins (`scheme://host:port`, lower case); empty means same-origin only.
    pub allowed_origins: Vec<String>,
    /// True when `*` was given.
    pub any_origin: bool,
    /// `--allowed-host`, with `localhost` and the hosts of `--allowed-origin`.
    pub hosts: HostPolicy,
    /// `--trusted-proxy`.
    pub trusted_proxies: Proxies,
    /// `--max-connections-per-ip`, `--max-http-connections-per-ip` and the handshake bucket.
    pub per_ip: PerIpLimits,
    pub max_http_connections: usize,
    pub http_deadline: Duration,
    pub max_message_bytes: usize,
    pub max_text_bytes: usize,
    pub max_connections: usize,
    pub max_rooms: usize,
    pub max_rooms_per_connection: usize,
    pub history: usize,
    pub history_bytes: usize,
    pub history_age: Option<Duration>,
    /// `None`: history in memory only.
    pub data_dir: Option<PathBuf>,
    pub name_grace: Duration,
    /// `--redis`: empty for the single-node broker.
    pub redis: Vec<String>,
    /// `--redis-ca`: PEM bytes, read at start.
    pub redis_ca: Option<Vec<u8>>,
    pub presence_ttl: Duration,
    pub redis_timeout: Duration,
    pub join_history: usize,
    pub join_history_bytes: usize,
    pub room_buffer: usize,
    pub room_buffer_bytes: usize,
    pub presence_cap: usize,
    pub presence_window: Duration,
    pub rate: f64,
    pub burst: u32,
    pub rate_strikes: u32,
    pub handshake_timeout: Duration,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub message_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// `--metrics on`.
    pub metrics: bool,
    /// `--metrics-bind`: `/metrics` is served there only.
    pub metrics_bind: Option<SocketAddr>,
    /// `--direct-write on`.
    pub direct_write: bool,
    pub write_delay: Duration,
    pub hot_write_delay: Duration,
    /// See [`Args::test_work_per_delivery`].
    pub test_work_per_delivery: Duration,
}

impl Config {
    /// The history the store keeps per room.
    pub fn retention(&self) -> crate::hub::store::Retention {
        crate::hub::store::Retention {
            messages: self.history,
            bytes: self.history_bytes,
            age: self.history_age,
        }
    }
}

impl Default for Config {
    /// The binary's defaults, except that history stays in memory: a test or an embedder that
    /// wants a data directory names one.
    fn default() -> Self {
        // unwrap: the defaults above are valid; `config::tests` checks it.
        let mut config = Args::parse_from(["tidechat"]).into_config().unwrap();
        config.data_dir = None;
        config
    }
}

/// A Redis URL with its secrets replaced by `***`: the user and password (`redis://user:pw@host`)
/// and a `pass`/`password` query parameter (`unix:///run/redis.sock?pass=pw`). For logs and
/// printed configurations.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}")
}

/// A duration, or `none` (a type of its own: clap reads a bare `Option` as "may be absent").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaybeDuration(pub Option<Duration>);

fn parse_optional_duration(s: &str) -> Result<MaybeDuration, humantime::DurationError> {
    if s == "none" {
        return Ok(MaybeDuration(None));
    }
    humantime::parse_duration(s).map(|d| MaybeDuration(Some(d)))
}

impl Args {
    /// Validates the options into a [`Config`].
    pub fn into_config(self) -> Result<Config, ConfigError> {
        for (name, v) in [
            ("--backlog", self.backlog as usize),
            ("--max-message-bytes", self.max_message_bytes),
            ("--max-text-bytes", self.max_text_bytes),
            ("--max-connections", self.max_connections),
            ("--max-rooms", self.max_rooms),
            ("--max-rooms-per-connection", self.max_rooms_per_connection),
            ("--room-buffer", self.room_buffer),
            ("--join-history", self.join_history),
            ("--join-history-bytes", self.join_history_bytes),
            ("--burst", self.burst as usize),
            ("--rate-strikes", self.rate_strikes as usize),
            ("--max-connections-per-ip", self.max_connections_per_ip),
            (
                "--handshake-burst-per-ip",
                self.handshake_burst_per_ip as usize,
            ),
            ("--max-http-connections", self.max_http_connections),
            (
                "--max-http-connections-per-ip",
                self.max_http_connections_per_ip,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        // A zero ping interval would tick in a busy loop; zero timeouts would cut every
        // connection (or shutdown) at once.
        for (name, d) in [
            ("--ping-interval", self.ping_interval),
            ("--handshake-timeout", self.handshake_timeout),
            ("--write-timeout", self.write_timeout),
            ("--message-timeout", self.message_timeout),
            ("--shutdown-timeout", self.shutdown_timeout),
            ("--history-age", self.history_age.0.unwrap_or(Duration::MAX)),
            ("--http-deadline", self.http_deadline),
            ("--presence-ttl", self.presence_ttl),
            ("--redis-timeout", self.redis_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        for url in &self.redis {
            if let Err(e) = redis::Client::open(url.as_str()) {
                return Err(ConfigError::Redis(redact_url(url), e.to_string()));
            }
            if self.redis.iter().filter(|u| *u == url).count() > 1 {
                return Err(ConfigError::Redis(redact_url(url), "given twice".into()));
            }
        }
        let redis_ca = match &self.redis_ca {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| ConfigError::RedisCa(path.display().to_string(), e.to_string()))?,
            ),
            None => None,
        };
        if self.backlog > crate::listen::MAX_BACKLOG {
            return Err(ConfigError::Backlog(self.backlog));
        }
        if self.max_text_bytes >= self.max_message_bytes {
            return Err(ConfigError::TextAboveMessage {
                text: self.max_text_bytes,
                message: self.max_message_bytes,
            });
        }
        // Smaller, and one message of the allowed size would cut off every receiver that has not
        // read it yet.
        if self.room_buffer_bytes < self.max_message_bytes {
            return Err(ConfigError::RoomBufferBelowMessage {
                buffer: self.room_buffer_bytes,
                message: self.max_message_bytes,
            });
        }
        if !(self.rate.is_finite() && self.rate > 0.0) {
            return Err(ConfigError::Rate(self.rate));
        }
        if !(self.handshake_rate_per_ip.is_finite() && self.handshake_rate_per_ip > 0.0) {
            return Err(ConfigError::HandshakeRate(self.handshake_rate_per_ip));
        }
        if self.write_delay > Duration::from_secs(1) {
            return Err(ConfigError::WriteDelay("--write-delay", self.write_delay));
        }
        if self.hot_write_delay > Duration::from_secs(1) {
            return Err(ConfigError::WriteDelay(
                "--hot-write-delay",
                self.hot_write_delay,
            ));
        }
        if self.idle_timeout <= self.ping_interval {
            return Err(ConfigError::IdleBelowPing {
                idle: self.idle_timeout,
                ping: self.ping_interval,
            });
        }
        if let Some(addr) = self.metrics_bind {
            if self.metrics == Switch::Off {
                return Err(ConfigError::MetricsBind(addr, "needs --metrics on"));
            }
            if addr == self.bind && addr.port() != 0 {
                return Err(ConfigError::MetricsBind(addr, "must differ from --bind"));
            }
        }
        let any_origin = self.allowed_origins.iter().any(|o| o == "*");
        let allowed_origins = self
            .allowed_origins
            .iter()
            .filter(|o| o.as_str() != "*")
            .map(|o| {
                crate::origin::normalize_origin(o).ok_or_else(|| ConfigError::Origin(o.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let hosts =
            HostPolicy::new(&self.allowed_hosts, &allowed_origins).map_err(ConfigError::Host)?;
        let trusted_proxies = Proxies::parse(&self.trusted_proxies).map_err(ConfigError::Proxy)?;
        Ok(Config {
            backlog: self.backlog,
            static_dir: self.static_dir,
            allowed_origins,
            any_origin,
            hosts,
            trusted_proxies,
            per_ip: PerIpLimits {
                websockets: self.max_connections_per_ip,
                http: self.max_http_connections_per_ip,
                rate: self.handshake_rate_per_ip,
                burst: self.handshake_burst_per_ip,
            },
            max_http_connections: self.max_http_connections,
            http_deadline: self.http_deadline,
            max_message_bytes: self.max_message_bytes,
            max_text_bytes: self.max_text_bytes,
            max_connections: self.max_connections,
            max_rooms: self.max_rooms,
            max_rooms_per_connection: self.max_rooms_per_connection,
            history: self.history,
            history_bytes: self.history_bytes,
            history_age: self.history_age.0,
            data_dir: (self.data_dir != "none").then(|| PathBuf::from(self.data_dir)),
            name_grace: self.name_grace,
            redis: self.redis,
            redis_ca,
            presence_ttl: self.presence_ttl,
            redis_timeout: self.redis_timeout,
            join_history: self.join_history,
            join_history_bytes: self.join_history_bytes,
            room_buffer: self.room_buffer,
            room_buffer_bytes: self.room_buffer_bytes,
            presence_cap: self.presence_cap,
            presence_window: self.presence_window,
            rate: self.rate,
            burst: self.burst,
            rate_strikes: self.rate_strikes,
            handshake_timeout: self.handshake_timeout,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            write_timeout: self.write_timeout,
            message_timeout: self.message_timeout,
            shutdown_timeout: self.shutdown_timeout,
            metrics: self.metrics == Switch::On,
            metrics_bind: self.metrics_bind,
            direct_write: self.direct_write == Switch::On,
            write_delay: self.write_delay,
            hot_write_delay: self.hot_write_delay,
            test_work_per_delivery: self.test_work_per_delivery,
        })
    }
}

impl Config {
    /// Rate tokens a `join` or `history` request costs: [`JOIN_COST`], or the whole burst when
    /// that is smaller (so a full bucket always allows one).
    pub fn join_cost(&self) -> u32 {
        JOIN_COST.min(self.burst)
    }

    /// The limits clients are told about in `hello`.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_text_bytes: self.max_text_bytes,
            max_name_chars: MAX_NAME_CHARS,
            max_room_chars: MAX_ROOM_CHARS,
            max_rooms_per_connection: self.max_rooms_per_connection,
            rate_per_sec: self.rate,
            rate_burst: self.burst,
            join_cost: self.join_cost(),
            page_messages: self.join_history,
            page_bytes: self.join_history_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        assert_eq!(c.max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES);
        assert!(c.allowed_origins.is_empty() && !c.any_origin);
    }

    #[test]
    fn write_delays_over_a_second_are_refused_by_name() {
        for flag in ["--write-delay", "--hot-write-delay"] {
            let ok = Args::try_parse_from(["tidechat", flag, "1s"]).unwrap();
            assert!(ok.into_config().is_ok(), "{flag} 1s");
            let over = Args::try_parse_from(["tidechat", flag, "1001ms"]).unwrap();
            let e = over.into_config().unwrap_err().to_string();
            assert!(e.starts_with(&format!("{flag} (")), "{e}");
        }
    }

    #[test]
    fn history_is_on_disk_by_default_except_for_embedders() {
        let parse = |argv: &[&str]| Args::try_parse_from(argv).unwrap().into_config().unwrap();
        assert_eq!(parse(&["tidechat"]).data_dir, Some(PathBuf::from("data")));
        assert_eq!(parse(&["tidechat", "--data-dir", "none"]).data_dir, None);
        assert_eq!(
            parse(&["tidechat", "--data-dir", "/srv/chat"]).data_dir,
            Some(PathBuf::from("/srv/chat"))
        );
        assert_eq!(Config::default().data_dir, None);
    }

    #[test]
    fn redis_urls_are_shown_without_their_secrets() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            (
                "redis://:s3cret@10.0.0.5:6379/0",
                "redis://***@10.0.0.5:6379/0",
            ),
            ("rediss://user:s3cret@host", "rediss://***@host"),
            ("redis://u:p@ss@host/1", "redis://***@host/1"),
            ("redis://host/0?x=a@b", "redis://host/0?x=a@b"),
            (
                "unix:///run/r.sock?db=1&pass=s3cret",
                "unix:///run/r.sock?db=1&pass=***",
            ),
            (
                "unix:///run/r.sock?PASSWORD=s3cret",
                "unix:///run/r.sock?PASSWORD=***",
            ),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let e = Args::try_parse_from(["tidechat", "--redis", "http://:s3cret@h"])
            .unwrap()
            .into_config()
            .unwrap_err();
        assert!(!e.to_string().contains("s3cret"), "{e}");
    }

    #[test]
    fn rejects_bad_values() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["tidechat"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).unwrap().into_config()
        };
        for flag in ["--max-rooms", "--join-history", "--join-history-bytes"] {
            let e = parse(&[flag, "0"]).unwrap_err();
            assert!(matches!(e, ConfigError::Zero(f) if f == flag), "{e}");
        }
        assert!(matches!(
            parse(&["--max-text-bytes", "70000"]),
            Err(ConfigError::TextAboveMessage { .. })
        ));
        assert!(matches!(parse(&["--rate", "0"]), Err(ConfigError::Rate(_))));
        let e = parse(&["--room-buffer-bytes", "0"]).unwrap_err();
        assert!(
            matches!(e, ConfigError::RoomBufferBelowMessage { .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("--room-buffer-bytes"), "{e}");
        for bad in ["http://127.0.0.1:6379", "redis://"] {
            let e = parse(&["--redis", bad]).unwrap_err();
            assert!(matches!(e, ConfigError::Redis(..)), "{bad}: {e}");
        }
        let e = parse(&["--redis", "redis://a:1,redis://a:1"]).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        let e = parse(&["--redis-ca", "/nonexistent/ca.pem"]).unwrap_err();
        assert!(matches!(e, ConfigError::RedisCa(..)), "{e}");
        let two = parse(&["--redis", "redis://a:1/0,unix:///run/r.sock"]).unwrap();
        assert_eq!(two.redis, ["redis://a:1/0", "unix:///run/r.sock"]);
        for flag in [
            "--ping-interval",
            "--handshake-timeout",
            "--write-timeout",
            "--message-timeout",
            "--shutdown-timeout",
            "--presence-ttl",
            "--redis-timeout",
        ] {
            let e = parse(&[flag, "0s"]).unwrap_err();
            assert!(
                matches!(e, ConfigError::ZeroDuration(f) if f == flag),
                "{e}"
            );
            assert!(e.to_string().starts_with(flag), "{e}");
        }
        assert!(matches!(
            parse(&["--allowed-origin", "not an origin"]),
            Err(ConfigError::Origin(_))
        ));
        for (flag, bad) in [
            ("--allowed-host", "http://x"),
            ("--trusted-proxy", "10.0.0.0/33"),
            ("--max-connections-per-ip", "0"),
            ("--handshake-rate-per-ip", "0"),
            ("--handshake-burst-per-ip", "0"),
            ("--max-http-connections", "0"),
            ("--max-http-connections-per-ip", "0"),
            ("--http-deadline", "0s"),
        ] {
            let e = parse(&[flag, bad]).unwrap_err().to_string();
            assert!(e.starts_with(flag), "{flag}: {e}");
        }
        for args in [
            &["--metrics", "off", "--metrics-bind", "127.0.0.1:9100"][..],
            &[
                "--bind",
                "127.0.0.1:9100",
                "--metrics-bind",
                "127.0.0.1:9100",
            ],
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.starts_with("--metrics-bind"), "{args:?}: {e}");
        }
        let on = parse(&["--metrics-bind", "127.0.0.1:9100"]).unwrap();
        assert!(on.metrics && on.metrics_bind == Some("127.0.0.1:9100".parse().unwrap()));
        assert!(!parse(&["--metrics=off"]).unwrap().metrics);
        let ok = parse(&["--trusted-proxy", "10.0.0.0/8,127.0.0.1"]).unwrap();
        assert!(ok.trusted_proxies.trusts("10.9.8.7".parse().unwrap()));
        assert!(ok.trusted_proxies.trusts("127.0.0.1".parse().unwrap()));
        assert!(!ok.trusted_proxies.trusts("127.0.0.2".parse().unwrap()));
        let ok = parse(&[
            "--allowed-origin",
            "HTTPS://Chat.Example.com",
            "--allowed-origin",
            "*",
        ])
        .unwrap();
        assert_eq!(
            ok.allowed_origins,
            vec!["https://chat.example.com:443".to_string()]
        );
        assert!(ok.any_origin);
    }
}
