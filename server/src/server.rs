//! The accept loop, shared server state, the connection cap and graceful shutdown.
//!
//! tide's own `listen` cannot stop accepting or wait for its connections, so the server accepts
//! TCP connections itself and hands each to async-h1 with the tide app as the endpoint.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_std::net::{TcpListener, TcpStream};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use async_tungstenite::tungstenite::Utf8Bytes;
use event_listener::Event;
use serde::Serialize;

use crate::config::Config;
use crate::conn::{self, Ctx};
use crate::hub::{Hub, HubConfig, HubStats};
use crate::protocol::{self, ServerFrame, PROTOCOL_VERSION};
use crate::shutdown::Shutdown;

/// Size of tungstenite's read buffer per connection. Its default (128 KiB) made an idle
/// connection cost ~147 KiB, and 4 KiB cost 13.2 KiB against 9.7 KiB with 512 B (5,000 idle
/// connections, scripts/idle-rss). Client frames are small (a `say` is ~100 B); larger ones
/// still work: the buffer grows for them.
const WS_READ_BUFFER: usize = 256;
/// Bytes queued before tungstenite writes to the socket; `feed` + one `flush` batches only when
/// this is above zero.
const WS_WRITE_BUFFER: usize = 16 * 1024;
/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Everything connections share.
#[derive(Debug)]
pub struct State {
    pub config: Config,
    pub hub: Hub,
    /// The `hello` frame, serialized once.
    pub hello: Utf8Bytes,
    pub ws_config: WebSocketConfig,
    /// What each connection is held to.
    pub limits: conn::Limits,
    pub shutdown: Shutdown,
    next_conn: AtomicU64,
    /// Open websocket connections.
    active: AtomicUsize,
    /// Notified when `active` drops to zero.
    idle: Event,
}

/// Counts served at `/stats`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stats {
    pub connections: usize,
    #[serde(flatten)]
    pub hub: HubStats,
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

impl State {
    pub fn new(config: Config) -> Self {
        let hello = protocol::to_text(&ServerFrame::Hello {
            protocol: PROTOCOL_VERSION,
            limits: &config.limits(),
        });
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(WS_READ_BUFFER)
            .write_buffer_size(WS_WRITE_BUFFER)
            // The buffer holds at most write_buffer_size plus one message before it is flushed.
            .max_write_buffer_size(WS_WRITE_BUFFER + 2 * config.max_message_bytes)
            // Checked from the frame header, before the payload is buffered.
            .max_message_size(Some(config.max_message_bytes))
            .max_frame_size(Some(config.max_message_bytes));
        let hub = Hub::new(HubConfig {
            max_rooms: config.max_rooms,
            history: config.history,
            history_bytes: config.history_bytes,
            room_buffer: config.room_buffer,
            room_buffer_bytes: config.room_buffer_bytes,
            presence_cap: config.presence_cap,
            page_messages: config.join_history,
            page_bytes: config.join_history_bytes,
        });
        Self {
            limits: conn::Limits::from(&config),
            config,
            hub,
            hello: hello.into(),
            ws_config,
            shutdown: Shutdown::default(),
            next_conn: AtomicU64::new(1),
            active: AtomicUsize::new(0),
            idle: Event::new(),
        }
    }

    /// What a connection gets to work with.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            hub: &self.hub,
            limits: &self.limits,
            shutdown: &self.shutdown,
            hello: &self.hello,
        }
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

    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.active.load(Ordering::Acquire),
            hub: self.hub.stats(),
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

/// Serves `listener` until `shutdown` resolves, then closes every websocket with 1001 and
/// returns once they are closed or `--shutdown-timeout` has passed.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let app = crate::app(state.clone())?;
    {
        let accept = async {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        // Writes are already batched per flush; Nagle would only hold the next
                        // batch back until the previous one is acknowledged.
                        if let Err(e) = stream.set_nodelay(true) {
                            log::debug!("set_nodelay: {e}");
                        }
                        async_std::task::spawn(http_connection(
                            app.clone(),
                            stream,
                            state.config.handshake_timeout,
                        ));
                    }
                    Err(e) => {
                        log::warn!("accept failed: {e}");
                        async_io::Timer::after(ACCEPT_BACKOFF).await;
                    }
                }
            }
        };
        futures::pin_mut!(accept, shutdown);
        futures::future::select(accept, shutdown).await;
    }
    drop(listener);
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
    Ok(())
}

/// Serves HTTP requests on one connection until it closes, upgrades, or sits idle for the
/// handshake timeout (which also bounds slow request headers).
async fn http_connection(app: tide::Server<Arc<State>>, stream: TcpStream, timeout: Duration) {
    let peer = stream.peer_addr().ok();
    let local = stream.local_addr().ok();
    let tcp = stream.clone();
    let mut conn = async_h1::server::Server::new(stream, move |mut req: tide::http::Request| {
        req.set_peer_addr(peer);
        req.set_local_addr(local);
        // For the websocket upgrade: its writer writes to the socket directly.
        req.ext_mut().insert(tcp.clone());
        let app = app.clone();
        async move { app.respond(req).await }
    });
    loop {
        match async_std::future::timeout(timeout, conn.accept_one()).await {
            Ok(Ok(async_h1::server::ConnectionStatus::KeepAlive)) => continue,
            Ok(Ok(_)) => break,
            Ok(Err(e)) => {
                log::debug!("http connection from {peer:?}: {e}");
                break;
            }
            Err(_) => break,
        }
    }
}
