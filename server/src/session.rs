//! One websocket connection: the reader, which handles what the client sends, run together with
//! the single [writer](crate::writer) that sends everything to the client.
//!
//! Both run as two futures inside the connection's one task (less memory than two tasks), each
//! polled only when its own waker fired ([`crate::race`]). The reader hands replies to the writer
//! through the connection's [`Inbox`]; the writer also forwards the events of every room the
//! connection is in. Whichever side ends first ends the connection: the reader because the
//! client left or broke a rule (the writer then sends the close frame), the writer because the
//! socket failed, fell behind (4008), went idle (4000) or the server is shutting down (1001).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use async_tungstenite::WebSocketStream;
use futures::future::Either;
use futures::{AsyncRead, AsyncWrite, Stream, StreamExt};

use crate::hub::{HubError, JoinRequest, Joined, SEED_ROOM};
use crate::inbox::{FromEviction, Inbox};
use crate::limits::{valid_name, valid_room, TokenBucket};
use crate::protocol::{self, close, error_code, ClientFrame, ServerFrame};
use crate::server::State;
use crate::writer::Writer;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Protocol v1 (JSON) on `/ws`.
    V1,
    /// The original demo's plain text on `/chatSocket`: text in, `"N: text"` out, room `lobby`.
    Seed,
}

/// Time the writer gets to flush a final close frame after the reader has ended.
const CLOSE_FLUSH: Duration = Duration::from_secs(2);
/// Longest `ref` a client may attach.
const MAX_REF_CHARS: usize = 64;

/// What the reader (and the hub) ask the writer to do.
#[derive(Debug)]
pub(crate) enum Out {
    Text(Utf8Bytes),
    /// Answer to a client's ping.
    Pong(Bytes),
    /// Send the `joined` frame, then forward the room's events.
    Subscribe(Joined),
    /// Stop forwarding a room and say so with a `left` frame.
    Unsubscribe {
        room: Arc<str>,
        reason: &'static str,
    },
    Close(u16, &'static str),
    /// The reader has ended: flush what is queued and stop.
    Finish,
}

impl FromEviction for Out {
    /// The hub gave this connection's place in a room to a resuming connection.
    fn eviction(room: Arc<str>) -> Self {
        Out::Unsubscribe {
            room,
            reason: error_code::REPLACED,
        }
    }
}

/// Why a connection ended (logged at info).
#[derive(Debug)]
pub(crate) enum Ending {
    /// The client sent a close frame.
    ClientClosed,
    /// The socket ended or failed without a close handshake.
    Gone(String),
    /// The server closed it with this code.
    Closed(u16, &'static str),
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

/// A room this connection is in, under which name.
struct Membership {
    room: Arc<str>,
    name: Arc<str>,
}

/// Runs a connection to its end and releases everything it held in the hub. `ws` is read (it
/// must not write: see [`crate::ws::ReadOnly`]); every byte to the client goes through `out`.
pub async fn run<S, W>(
    ws: Box<WebSocketStream<S>>,
    out: W,
    state: Arc<State>,
    mode: Mode,
    conn: u64,
    peer: String,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    W: futures::AsyncWrite + Unpin + Send,
{
    log::info!("connect #{conn} {peer} {mode:?}");
    let inbox: Arc<Inbox<Out>> = Arc::default();
    let started = Instant::now();
    let last_seen = AtomicU64::new(0);
    let mut memberships: Vec<Membership> = Vec::with_capacity(1);

    let ending = {
        let reader = Reader {
            state: &state,
            mode,
            conn,
            inbox: &inbox,
            memberships: &mut memberships,
            started,
            last_seen: &last_seen,
            bucket: TokenBucket::new(state.config.rate, state.config.burst),
            strikes: 0,
        }
        .run(ws);
        let writer = Writer {
            state: &state,
            mode,
            // Most connections are in one room; a Vec grows to 4 slots at its first push.
            subs: Vec::with_capacity(1),
            started,
            last_seen: &last_seen,
        }
        .run(out, &inbox);
        futures::pin_mut!(reader, writer);
        match crate::race::race(reader.as_mut(), writer.as_mut()).await {
            Either::Left(ending) => {
                // The writer sends the close (ours, or the reply to the client's) and stops.
                let _ = async_std::future::timeout(CLOSE_FLUSH, writer).await;
                ending
            }
            Either::Right(ending) => ending,
        }
    };
    for m in &memberships {
        state.hub.leave(&m.room, &m.name, conn);
    }
    log::info!("disconnect #{conn} {peer}: {ending}");
}

struct Reader<'a> {
    state: &'a State,
    mode: Mode,
    conn: u64,
    inbox: &'a Arc<Inbox<Out>>,
    memberships: &'a mut Vec<Membership>,
    started: Instant,
    last_seen: &'a AtomicU64,
    bucket: TokenBucket,
    strikes: u32,
}

/// What handling one client frame decided.
type Step = Result<(), Ending>;

impl Reader<'_> {
    async fn run<R>(mut self, mut stream: R) -> Ending
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let ending = match self.start().await {
            Ok(()) => loop {
                let msg = stream.next().await;
                for room in self.inbox.take_evicted() {
                    self.memberships.retain(|m| m.room != room);
                }
                // Boxed: handling a frame needs far more state than waiting for one, and
                // an idle connection should not carry that state inline (760 B each).
                if let Err(ending) = Box::pin(self.frame(msg)).await {
                    break ending;
                }
            },
            Err(ending) => ending,
        };
        match ending {
            Ending::Closed(code, reason) => self.inbox.send(Out::Close(code, reason)).await,
            Ending::ClientClosed => self.inbox.send(Out::Close(close::NORMAL, "")).await,
            Ending::Gone(_) => self.inbox.push(Out::Finish),
        }
        ending
    }

    async fn start(&mut self) -> Step {
        match self.mode {
            Mode::V1 => self.send(Out::Text(self.state.hello.clone())).await,
            Mode::Seed => {
                let name = self.conn.to_string();
                match self.join(SEED_ROOM, &name, None, None, None) {
                    Ok(joined) => self.send(Out::Subscribe(joined)).await,
                    Err(e) => Err(Ending::Gone(format!("cannot enter {SEED_ROOM}: {e}"))),
                }
            }
        }
    }

    async fn send(&self, out: Out) -> Step {
        self.inbox.send(out).await;
        Ok(())
    }

    async fn frame(&mut self, msg: Option<Result<Message, WsError>>) -> Step {
        let msg = match msg {
            None => return Err(Ending::Gone("end of stream".into())),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(read_error(e)),
        };
        let millis = self.started.elapsed().as_millis() as u64;
        self.last_seen.store(millis, Ordering::Relaxed);
        match msg {
            Message::Text(text) => {
                if !self.bucket.take() {
                    return self.rate_limited(text.as_str()).await;
                }
                self.strikes = 0;
                match self.mode {
                    Mode::V1 => self.request(text.as_str()).await,
                    Mode::Seed => self.seed_text(text.as_str()),
                }
            }
            Message::Binary(_) => Err(Ending::Closed(
                close::UNSUPPORTED_DATA,
                "binary frames are not supported",
            )),
            Message::Close(_) => Err(Ending::ClientClosed),
            // tungstenite only reads here, so the writer answers pings.
            Message::Ping(data) => self.send(Out::Pong(data)).await,
            // Any frame counts as a sign of life.
            Message::Pong(_) | Message::Frame(_) => Ok(()),
        }
    }

    async fn rate_limited(&mut self, text: &str) -> Step {
        self.strikes += 1;
        if self.strikes > self.state.config.rate_strikes {
            return Err(Ending::Closed(
                close::POLICY_VIOLATION,
                "rate limit exceeded",
            ));
        }
        if self.mode == Mode::Seed {
            return Ok(());
        }
        // Say which message was dropped, so a client can mark it failed; the parse is bounded
        // by the strikes before the close above.
        let (room, reference) = match serde_json::from_str::<ClientFrame>(text) {
            Ok(ClientFrame::Say {
                room, reference, ..
            }) => (Some(room), reference),
            _ => (None, None),
        };
        let message = "you are sending too fast; this message was dropped";
        self.error(
            error_code::RATE_LIMITED,
            message,
            room.as_deref(),
            reference.as_deref(),
        )
        .await
    }

    async fn error(
        &self,
        code: &str,
        message: &str,
        room: Option<&str>,
        reference: Option<&str>,
    ) -> Step {
        let frame = ServerFrame::Error {
            code,
            message,
            room,
            reference,
        };
        self.send(Out::Text(protocol::to_text(&frame).into())).await
    }

    async fn request(&mut self, text: &str) -> Step {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                let message = format!("not a protocol v1 frame: {e}");
                return self
                    .error(error_code::BAD_REQUEST, &message, None, None)
                    .await;
            }
        };
        match frame {
            ClientFrame::Join {
                room,
                name,
                since,
                epoch,
                token,
            } => {
                self.v1_join(&room, &name, since, epoch, token.as_deref())
                    .await
            }
            ClientFrame::Leave { room } => self.leave(&room).await,
            ClientFrame::Say {
                room,
                text,
                reference,
            } => self.say(&room, &text, reference.as_deref()).await,
            ClientFrame::Ping { reference } => {
                if reference
                    .as_ref()
                    .is_some_and(|r| r.chars().count() > MAX_REF_CHARS)
                {
                    return self
                        .error(error_code::BAD_REQUEST, "ref is too long", None, None)
                        .await;
                }
                let pong = ServerFrame::Pong {
                    reference: reference.as_deref(),
                };
                self.send(Out::Text(protocol::to_text(&pong).into())).await
            }
        }
    }

    async fn v1_join(
        &mut self,
        room: &str,
        name: &str,
        since: Option<u64>,
        epoch: Option<u64>,
        token: Option<&str>,
    ) -> Step {
        if !valid_room(room) {
            let msg = "room names are 1-64 letters, digits, _ or -";
            return self.error(error_code::INVALID_ROOM, msg, None, None).await;
        }
        if !valid_name(name) {
            let msg = "names are 1-32 letters, digits, spaces, _ - or ., not only digits";
            return self
                .error(error_code::INVALID_NAME, msg, Some(room), None)
                .await;
        }
        if self.memberships.iter().any(|m| &*m.room == room) {
            let e = HubError::AlreadyJoined;
            return self.error(e.code(), &e.to_string(), Some(room), None).await;
        }
        if self.memberships.len() >= self.state.config.max_rooms_per_connection {
            let msg = "you are in the maximum number of rooms; leave one first";
            return self
                .error(error_code::TOO_MANY_ROOMS, msg, Some(room), None)
                .await;
        }
        match self.join(room, name, since, epoch, token) {
            Ok(joined) => self.send(Out::Subscribe(joined)).await,
            Err(e) => self.error(e.code(), &e.to_string(), Some(room), None).await,
        }
    }

    fn join(
        &mut self,
        room: &str,
        name: &str,
        since: Option<u64>,
        epoch: Option<u64>,
        token: Option<&str>,
    ) -> Result<Joined, HubError> {
        let joined = self.state.hub.join(JoinRequest {
            room,
            name,
            since,
            epoch,
            token,
            conn: self.conn,
            evictor: self.inbox.clone(),
        })?;
        self.memberships.push(Membership {
            room: joined.room.clone(),
            name: name.into(),
        });
        Ok(joined)
    }

    async fn leave(&mut self, room: &str) -> Step {
        let Some(i) = self.memberships.iter().position(|m| &*m.room == room) else {
            let e = HubError::NotInRoom;
            return self.error(e.code(), &e.to_string(), Some(room), None).await;
        };
        let m = self.memberships.swap_remove(i);
        self.state.hub.leave(&m.room, &m.name, self.conn);
        self.send(Out::Unsubscribe {
            room: m.room,
            reason: "left",
        })
        .await
    }

    async fn say(&mut self, room: &str, text: &str, reference: Option<&str>) -> Step {
        if reference.is_some_and(|r| r.chars().count() > MAX_REF_CHARS) {
            return self
                .error(error_code::BAD_REQUEST, "ref is too long", Some(room), None)
                .await;
        }
        let problem = if text.trim().is_empty() {
            Some((
                error_code::EMPTY_TEXT,
                "empty messages are not sent".to_string(),
            ))
        } else if text.len() > self.state.config.max_text_bytes {
            let max = self.state.config.max_text_bytes;
            Some((
                error_code::TEXT_TOO_LONG,
                format!("messages are limited to {max} bytes"),
            ))
        } else {
            None
        };
        if let Some((code, msg)) = problem {
            return self.error(code, &msg, Some(room), reference).await;
        }
        let Some(m) = self.memberships.iter().find(|m| &*m.room == room) else {
            let e = HubError::NotInRoom;
            return self
                .error(e.code(), &e.to_string(), Some(room), reference)
                .await;
        };
        match self
            .state
            .hub
            .say(room, &m.name, self.conn, text, reference)
        {
            Ok(_) => Ok(()),
            Err(e) => {
                self.error(e.code(), &e.to_string(), Some(room), reference)
                    .await
            }
        }
    }

    /// A line from a `/chatSocket` client: relayed to the lobby like the original demo did.
    fn seed_text(&mut self, text: &str) -> Step {
        if text.len() > self.state.config.max_text_bytes {
            log::debug!("#{}: seed message over the text limit dropped", self.conn);
            return Ok(());
        }
        if let Some(m) = self.memberships.first() {
            // A seed connection is only ever in the lobby; a failure means it was removed.
            if let Err(e) = self.state.hub.say(&m.room, &m.name, self.conn, text, None) {
                return Err(Ending::Gone(format!("lobby: {e}")));
            }
        }
        Ok(())
    }
}

/// Maps a read error to the close the client gets (tungstenite reports, but does not send it).
fn read_error(e: WsError) -> Ending {
    use async_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. })
        | WsError::Capacity(CapacityError::TooManyHeaders) => {
            Ending::Closed(close::MESSAGE_TOO_BIG, "message too big")
        }
        WsError::Utf8(_) => Ending::Closed(close::INVALID_PAYLOAD, "invalid UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            Ending::Gone("reset without closing handshake".into())
        }
        WsError::Protocol(p) => {
            log::debug!("protocol error: {p}");
            Ending::Closed(close::PROTOCOL_ERROR, "protocol error")
        }
        other => Ending::Gone(other.to_string()),
    }
}
