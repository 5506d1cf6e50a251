//! One websocket connection: a reader (`reader.rs`) that handles what the client sends (its
//! frames read by [`Incoming`]) and the
//! single writer (`writer.rs`) that sends everything to the client, run as two futures in the
//! connection's one task ([`race`]), talking through the connection's [`inbox::Inbox`].
//!
//! Whichever side ends first ends the connection: the reader because the client left or broke a
//! rule (the writer then sends the close frame), the writer because the socket failed, fell
//! behind (4008), went idle (4000) or the server is shutting down (1001).

mod direct;
mod frame;
pub mod inbox;
mod incoming;
pub mod race;
mod reader;
mod writer;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_std::net::TcpStream;
use async_tungstenite::tungstenite::{Bytes, Utf8Bytes};
use futures::future::Either;
use futures::{AsyncRead, StreamExt};

use crate::config::Config;
use crate::hub::{Hub, Joined};
use crate::metrics::Metrics;
use crate::server::State;
use crate::shutdown::Shutdown;
use inbox::{Cost, FromEviction};
pub use incoming::Incoming;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Protocol v1 (JSON) on `/ws`.
    V1,
    /// The original demo's plain text on `/chatSocket`: text in, `"N: text"` out, room `lobby`.
    Seed,
}

impl Mode {
    /// The route it is served on, as logs name it.
    pub fn route(self) -> &'static str {
        match self {
            Mode::V1 => "ws",
            Mode::Seed => "chatSocket",
        }
    }
}

/// Once a connection's end is decided: time for the writer to send the close frame and for the
/// client to answer it.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);

/// The per-connection limits, from [`Config`].
#[derive(Debug, Clone)]
pub struct Limits {
    /// `--max-message-bytes`: a client frame or message, checked from the frame header.
    pub max_message_bytes: usize,
    pub max_text_bytes: usize,
    pub max_rooms_per_connection: usize,
    /// Tokens a `join` or `history` request takes from the rate bucket.
    pub join_cost: u32,
    pub rate: f64,
    pub burst: u32,
    pub rate_strikes: u32,
    pub ping_interval: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// See [`crate::config::Args::message_timeout`].
    pub message_timeout: Duration,
    /// See [`crate::config::Args::direct_write`].
    pub direct_write: bool,
    /// See [`crate::config::Args::test_work_per_delivery`].
    pub test_work_per_delivery: Duration,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_message_bytes: c.max_message_bytes,
            max_text_bytes: c.max_text_bytes,
            max_rooms_per_connection: c.max_rooms_per_connection,
            join_cost: c.join_cost(),
            rate: c.rate,
            burst: c.burst,
            rate_strikes: c.rate_strikes,
            ping_interval: c.ping_interval,
            idle_timeout: c.idle_timeout,
            write_timeout: c.write_timeout,
            message_timeout: c.message_timeout,
            direct_write: c.direct_write,
            test_work_per_delivery: c.test_work_per_delivery,
        }
    }
}

/// What a connection uses of the server: the hub, its limits, the shutdown signal, the pings'
/// pulse and the `hello` frame (serialized once). One reference, copied into the connection's
/// run, reader and writer: five of them were 40 B in each.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a>(&'a State);

impl<'a> Ctx<'a> {
    pub fn new(state: &'a State) -> Self {
        Self(state)
    }

    pub fn hub(self) -> &'a Hub {
        &self.0.hub
    }

    pub fn limits(self) -> &'a Limits {
        &self.0.limits
    }

    pub fn shutdown(self) -> &'a Shutdown {
        &self.0.shutdown
    }

    pub fn hello(self) -> &'a Utf8Bytes {
        &self.0.hello
    }

    /// `None` with `--metrics off`.
    pub fn metrics(self) -> Option<&'a Arc<Metrics>> {
        self.0.metrics.as_ref()
    }

    /// Milliseconds since the server started: what a connection's `last_seen` counts in (one
    /// clock for all, rather than an `Instant` kept by each connection).
    pub fn now_ms(self) -> u64 {
        self.0.started.elapsed().as_millis() as u64
    }
}

/// What the reader (and the hub) ask the writer to do.
#[derive(Debug)]
pub(crate) enum Out {
    Text(Utf8Bytes),
    /// A `history` reply: sent once commit `ticket` is durable (it may show the client's own
    /// last messages).
    Page {
        frame: Utf8Bytes,
        ticket: u64,
    },
    /// Answer to a client's ping.
    Pong(Bytes),
    /// Send the `joined` frame (rendered by the writer, so a seed connection never builds it),
    /// then forward the room's events.
    Subscribe(Box<Joined>),
    /// Stop forwarding a room and say so with a `left` frame.
    Unsubscribe {
        room: Arc<str>,
        reason: &'static str,
    },
    Close(u16, &'static str),
    /// The reader has ended: flush what is queued and stop.
    Finish,
}

impl Cost for Out {
    /// Bytes this item becomes on the wire (what the inbox's byte bound counts).
    fn cost(&self) -> usize {
        match self {
            Out::Text(t) | Out::Page { frame: t, .. } => t.len(),
            Out::Pong(b) => b.len(),
            Out::Subscribe(j) => j.frame_bytes(),
            Out::Unsubscribe { .. } | Out::Close(..) | Out::Finish => 0,
        }
    }
}

impl FromEviction for Out {
    /// The hub gave this connection's place in a room to a resuming connection.
    fn eviction(room: Arc<str>) -> Self {
        Out::Unsubscribe {
            room,
            reason: crate::protocol::error_code::REPLACED,
        }
    }
}

/// Why a connection ended (logged at info).
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent a close frame.
    ClientClosed,
    /// The socket ended or failed without a close handshake.
    Gone(Box<str>),
    /// The server closed it with this code.
    Closed(u16, &'static str),
}

impl Ending {
    /// The close code the server sent, if it closed the connection.
    fn code(&self) -> Option<u16> {
        match self {
            Ending::Closed(code, _) => Some(*code),
            _ => None,
        }
    }

    /// Why, without the code: the log line's `reason`.
    fn reason(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Ending::ClientClosed => "client closed".into(),
            Ending::Gone(e) => format!("connection lost: {e}").into(),
            Ending::Closed(_, reason) => (*reason).into(),
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::ClientClosed => write!(f, "client closed"),
            Ending::Gone(e) => write!(f, "connection lost: {e}"),
            Ending::Closed(code, reason) => write!(f, "closed by server: {code} {reason}"),
        }
    }
}

/// Who a connection is, for the hub (its number) and the log (its peer).
#[derive(Debug, Clone)]
pub struct Peer {
    /// The connection's number (seed users are called by it).
    pub conn: u64,
    pub addr: Box<str>,
}

/// Runs a connection to its end and releases everything it held in the hub, then drops
/// `held` (its places under the connection caps). What the client sends is read from `tcp` by
/// an [`Incoming`]; every byte to the client goes through `tcp` as well, from the writer.
/// `None`: the upgrade failed, and there is nothing to run.
///
/// Not an async fn: one keeps a slot for each argument besides the local it moves it into, for
/// the connection's whole life; an async block uses what it captured in place (measured with
/// `-Zprint-type-sizes`, as for [`reader::Reader::run`] and [`writer::Writer::run`]).
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub fn run(
    tcp: Option<TcpStream>,
    state: Arc<State>,
    mode: Mode,
    peer: Peer,
    held: impl Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let Some(tcp) = tcp else {
            return;
        };
        let ctx = state.ctx();
        let open = ctx.metrics().map(|m| m.connection(mode));
        let conn = peer.conn;
        // Made here, not passed in, for the same reason.
        let mut ws = Incoming::new(tcp.clone(), ctx.limits().max_message_bytes);
        log::info!(
            conn = conn, peer = &*peer.addr, route = mode.route();
            "connect #{conn} {} {mode:?}", peer.addr
        );
        let last_seen = AtomicU64::new(ctx.now_ms());
        let mut memberships: Vec<reader::Membership> = Vec::with_capacity(1);
        let handle = Arc::new(direct::Direct::new(
            tcp.clone(),
            mode,
            conn,
            ctx.metrics().cloned(),
            ctx.limits().test_work_per_delivery,
        ));

        let (ending, closing) = {
            // Pinned where they are made: `pin_mut!` moves them, and a future keeps a slot for
            // the moved-from value as well (the reader and writer twice over, ~1.5 KiB).
            let mut reader = std::pin::pin!(reader::Reader::new(
                ctx,
                mode,
                conn,
                &handle,
                &mut memberships,
                &last_seen,
            )
            .run(&mut ws));
            let mut writer = std::pin::pin!(writer::Writer {
                ctx,
                mode,
                conn,
                subs: direct::Subs::new(),
                last_seen: &last_seen,
                ack: 0,
                direct: ctx.limits().direct_write.then_some(&*handle),
                parked: false,
                rest: None,
                handoff: None,
                beat: None,
                tick_due: false,
                connected_ms: ctx.now_ms() as u32,
            }
            .run(tcp, &handle.inbox));
            // Not a `match` on the race: its result would stay in the future through the wait
            // below, and that wait is boxed, so the idle state is the largest (measured).
            let (ending, reader_ended) = match race::race(reader.as_mut(), writer.as_mut()).await {
                Either::Left(ending) => (ending, true),
                Either::Right(ending) => (ending, false),
            };
            let closing = Instant::now() + CLOSE_FLUSH;
            if reader_ended {
                // The writer sends the close (ours, or the reply to the client's) and stops.
                let _ = Box::pin(async_std::future::timeout(CLOSE_FLUSH, writer)).await;
            }
            (ending, closing)
        };
        handle.retire();
        // Out of the rooms first, so that nothing waits for the close handshake below. A v1 name
        // stays reserved for its token for `--name-grace` (the client may be reconnecting); seed
        // users cannot resume.
        // Boxed: a connection's future is as big as its biggest state, and the hub's futures (a
        // broker call each) are far bigger than an idle connection's reader and writer together.
        Box::pin(async {
            for m in &memberships {
                match mode {
                    Mode::V1 => ctx.hub().disconnect(&m.room, &m.name, conn).await,
                    Mode::Seed => ctx.hub().leave(&m.room, &m.name, conn).await,
                }
            }
            if let Ending::Closed(..) = ending {
                // RFC 6455 §7.1.1: the server closes TCP after the client has answered its close,
                // so the client sees a clean close (not a reset); a client that never answers is
                // let go at the same bound that the close frame itself had.
                let left = closing.saturating_duration_since(Instant::now());
                let _ = async_std::future::timeout(left, client_close(&mut ws)).await;
            }
        })
        .await;
        reader::count_received(ctx, &mut ws);
        log::info!(
            conn = conn, peer = &*peer.addr, route = mode.route(), code = ending.code(),
            reason = ending.reason().as_ref();
            "disconnect #{conn} {}: {ending}", peer.addr
        );
        drop(open);
        drop(held);
    }
}

/// Reads until the client's close frame or the end of the stream, discarding the rest: the
/// server has said its last word.
async fn client_close<S: AsyncRead + Unpin>(ws: &mut Incoming<S>) {
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            return;
        }
    }
}
