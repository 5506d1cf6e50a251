//! The reader of a connection: every frame the client sends, its limits (rate, sizes, rooms per
//! connection) and the requests of protocol v1 and the seed protocol. Replies go to the
//! connection's writer through its inbox.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use async_tungstenite::tungstenite::{Error as WsError, Message};
use futures::{AsyncRead, StreamExt};

use super::direct::Direct;
use super::incoming::Incoming;
use super::{Ctx, Ending, Mode, Out};
use crate::hub::{HubError, JoinRequest, Joined, Page, Pusher};
use crate::limits::{self, valid_name, valid_room, TokenBucket};
use crate::protocol::seed::ROOM as SEED_ROOM;
use crate::protocol::{self, close, error_code, ClientFrame, ServerFrame};

/// Longest `ref` a client may attach.
const MAX_REF_CHARS: usize = 64;

/// A room this connection is in, under which name.
pub(super) struct Membership {
    pub room: Arc<str>,
    pub name: Arc<str>,
}

/// A refused request: the `error` frame's code and message.
struct Refusal {
    code: &'static str,
    message: Cow<'static, str>,
}

impl Refusal {
    fn new(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<HubError> for Refusal {
    fn from(e: HubError) -> Self {
        use error_code::*;
        let code = match e {
            HubError::NameTaken => NAME_TAKEN,
            HubError::AlreadyJoined => ALREADY_JOINED,
            HubError::ServerFull => SERVER_FULL,
            HubError::NotInRoom => NOT_IN_ROOM,
            HubError::Unavailable(_) => UNAVAILABLE,
        };
        Self::new(code, e.to_string())
    }
}

pub(super) struct Reader<'a> {
    ctx: Ctx<'a>,
    mode: Mode,
    conn: u64,
    /// The connection's handle: its inbox, and what joins give the hub.
    handle: &'a Arc<Direct>,
    memberships: &'a mut Vec<Membership>,
    last_seen: &'a AtomicU64,
    bucket: TokenBucket,
    strikes: u32,
    /// While a message is unfinished: its `--message-timeout` deadline and timer. Here rather
    /// than in the wait for a message, which every idle connection's future would hold.
    message_timer: Option<Box<(Instant, async_io::Timer)>>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(
        ctx: Ctx<'a>,
        mode: Mode,
        conn: u64,
        handle: &'a Arc<Direct>,
        memberships: &'a mut Vec<Membership>,
        last_seen: &'a AtomicU64,
    ) -> Self {
        Self {
            ctx,
            mode,
            conn,
            handle,
            memberships,
            last_seen,
            bucket: TokenBucket::new(ctx.limits().rate, ctx.limits().burst),
            strikes: 0,
            message_timer: None,
        }
    }
}

/// What handling one client frame decided.
type Step = Result<(), Ending>;

impl<'a> Reader<'a> {
    /// Handles the client's frames until the connection ends. Not an async fn: see
    /// [`super::run`] (an async fn would hold this reader twice, 152 B more per connection).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(super) fn run<'w, S>(
        mut self,
        ws: &'w mut Incoming<S>,
    ) -> impl Future<Output = Ending> + use<'a, 'w, S>
    where
        S: AsyncRead + Unpin,
    {
        async move {
            // A labelled block, not a `match` on the start's result: a scrutinee stays in the
            // future for as long as its arms run, here the connection's whole life.
            let ending = 'run: {
                // Boxed: a seed connection's start is a whole join, which an idle connection's
                // future would otherwise keep room for.
                if let Err(ending) = Box::pin(self.start()).await {
                    break 'run ending;
                }
                loop {
                    // In a block: the message is moved into the boxed handling, but its slot
                    // would stay in the future (56 B) for as long as that is awaited.
                    let handling = {
                        let msg = futures::future::poll_fn(|cx| self.poll_message(cx, ws)).await;
                        count_received(self.ctx, ws);
                        let msg = match msg {
                            Ok(msg) => msg,
                            Err(ending) => break 'run ending,
                        };
                        for room in self.handle.inbox.take_evicted() {
                            self.memberships.retain(|m| m.room != room);
                        }
                        // Boxed: handling a frame needs far more state than waiting for one,
                        // and an idle connection should not carry that state inline (760 B).
                        Box::pin(self.frame(msg))
                    };
                    if let Err(ending) = handling.await {
                        break 'run ending;
                    }
                }
            };
            let last = match ending {
                Ending::Closed(code, reason) => Out::Close(code, reason),
                Ending::ClientClosed => Out::Close(close::NORMAL, ""),
                Ending::Gone(_) => Out::Finish,
            };
            if let Out::Finish = last {
                self.handle.inbox.push(last);
            } else {
                // Boxed: the wait for room in the inbox is the biggest state of the reader's
                // future, and only its last step needs it.
                Box::pin(self.handle.inbox.send(last)).await;
            }
            ending
        }
    }

    /// The client's next message; a message begun but not finished within
    /// `--message-timeout` ends the connection. The timer exists only while such a message is
    /// open, which the common case (a message in one read) never is.
    fn poll_message<S: AsyncRead + Unpin>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        ws: &mut Incoming<S>,
    ) -> Poll<Result<Option<Result<Message, WsError>>, Ending>> {
        if let Poll::Ready(msg) = ws.poll_next_unpin(cx) {
            self.message_timer = None;
            return Poll::Ready(Ok(msg));
        }
        let Some(since) = ws.incomplete_since() else {
            return Poll::Pending;
        };
        let deadline = since + self.ctx.limits().message_timeout;
        let timer = self
            .message_timer
            .get_or_insert_with(|| Box::new((deadline, async_io::Timer::at(deadline))));
        if timer.0 != deadline {
            timer.1.set_at(deadline);
            timer.0 = deadline;
        }
        match Pin::new(&mut timer.1).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Ending::Closed(
                close::POLICY_VIOLATION,
                "message incomplete",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    async fn start(&mut self) -> Step {
        match self.mode {
            Mode::V1 => self.send(Out::Text(self.ctx.hello().clone())).await,
            Mode::Seed => {
                let name = self.conn.to_string();
                match self.join(SEED_ROOM, &name, None, None, None).await {
                    Ok(joined) => self.send(Out::Subscribe(Box::new(joined))).await,
                    Err(e) => Err(Ending::Gone(
                        format!("cannot enter {SEED_ROOM}: {e}").into(),
                    )),
                }
            }
        }
    }

    async fn send(&self, out: Out) -> Step {
        self.handle.inbox.send(out).await;
        Ok(())
    }

    async fn frame(&mut self, msg: Option<Result<Message, WsError>>) -> Step {
        let msg = match msg {
            None => return Err(Ending::Gone("end of stream".into())),
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(read_error(e)),
        };
        match msg {
            Message::Binary(_) => {
                return Err(Ending::Closed(
                    close::UNSUPPORTED_DATA,
                    "binary frames are not supported",
                ))
            }
            Message::Close(_) => return Err(Ending::ClientClosed),
            _ => {}
        }
        // Every frame costs a token, pings and pongs too: each ping costs the server a pong.
        // A refused frame is not a sign of life, or a flood would keep the connection alive.
        if !self.bucket.take() {
            let text = match &msg {
                Message::Text(text) => Some(text.as_str()),
                _ => None,
            };
            return self.rate_limited(text).await;
        }
        self.strikes = 0;
        let millis = self.ctx.now_ms();
        self.last_seen.store(millis, Ordering::Relaxed);
        match msg {
            Message::Text(text) => {
                // A disk that stopped syncing holds every sender here (see `MAX_UNSYNCED`).
                self.ctx.hub().broker().commits().room().await;
                match self.mode {
                    Mode::V1 => self.request(text.as_str()).await,
                    Mode::Seed => self.seed_text(text.as_str()).await,
                }
            }
            // tungstenite only reads here, so the writer answers pings.
            Message::Ping(data) => self.send(Out::Pong(data)).await,
            // Pongs are signs of life only; binary and close frames ended the connection above.
            _ => Ok(()),
        }
    }

    /// A frame over the rate: dropped (a ping gets no pong), and too many in a row close.
    async fn rate_limited(&mut self, text: Option<&str>) -> Step {
        self.strike()?;
        let Some(text) = text.filter(|_| self.mode == Mode::V1) else {
            return Ok(());
        };
        // Say which message was dropped, so a client can mark it failed; the parse is bounded
        // by the strikes before the close above.
        // A refused page or join names its room too, so a client can retry it.
        let (room, reference) = match serde_json::from_str::<ClientFrame>(text) {
            Ok(ClientFrame::Say {
                room, reference, ..
            }) => (Some(room), reference),
            Ok(ClientFrame::History { room, .. } | ClientFrame::Join { room, .. })
                if valid_room(&room) =>
            {
                (Some(room), None)
            }
            _ => (None, None),
        };
        self.refuse(rate_refusal(), room.as_deref(), reference.as_deref())
            .await
    }

    /// Counts a frame dropped for the rate limit; too many in a row close the connection.
    fn strike(&mut self) -> Step {
        if let Some(m) = self.ctx.metrics() {
            m.rate_limited();
        }
        self.strikes += 1;
        if self.strikes > self.ctx.limits().rate_strikes {
            return Err(Ending::Closed(
                close::POLICY_VIOLATION,
                "rate limit exceeded",
            ));
        }
        Ok(())
    }

    /// Takes what a `join` or `history` costs beyond the token its frame took: each builds a
    /// page of messages, so they must not come at the frame rate. `Some` is the step to take
    /// when the bucket cannot pay.
    async fn charge_page(&mut self, room: Option<&str>) -> Option<Step> {
        let extra = self.ctx.limits().join_cost.saturating_sub(1);
        if self.bucket.take_n(extra) {
            return None;
        }
        if let Err(ending) = self.strike() {
            return Some(Err(ending));
        }
        Some(self.refuse(rate_refusal(), room, None).await)
    }

    /// Answers a refused request with an `error` frame; the connection stays.
    async fn refuse(&self, r: Refusal, room: Option<&str>, reference: Option<&str>) -> Step {
        let frame = ServerFrame::Error {
            code: r.code,
            message: &r.message,
            room,
            reference,
        };
        self.send(Out::Text(protocol::to_text(&frame).into())).await
    }

    /// The answer to a request, sent to the client (replies go through the writer's inbox).
    async fn answer(
        &self,
        result: Result<Out, Refusal>,
        room: Option<&str>,
        r: Option<&str>,
    ) -> Step {
        match result {
            Ok(out) => self.send(out).await,
            Err(refusal) => self.refuse(refusal, room, r).await,
        }
    }

    async fn request(&mut self, text: &str) -> Step {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                let refusal = Refusal::new(
                    error_code::BAD_REQUEST,
                    format!("not a protocol v1 frame: {e}"),
                );
                return self.refuse(refusal, None, None).await;
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
                // An invalid room name is not echoed back.
                let echo = valid_room(&room).then_some(room.as_str());
                if let Err(refusal) = self.join_checks(&room, &name) {
                    return self.refuse(refusal, echo, None).await;
                }
                // Charged once the request is known to build a frame.
                if let Some(step) = self.charge_page(echo).await {
                    return step;
                }
                let result = self
                    .join(&room, &name, since, epoch, token.as_deref())
                    .await
                    .map(|joined| Out::Subscribe(Box::new(joined)))
                    .map_err(Refusal::from);
                self.answer(result, echo, None).await
            }
            ClientFrame::History {
                room,
                since,
                before,
                limit,
            } => {
                let echo = valid_room(&room).then_some(room.as_str());
                let (page, name) = match self.history_checks(&room, since, before, limit) {
                    Ok(checked) => checked,
                    Err(refusal) => return self.refuse(refusal, echo, None).await,
                };
                if let Some(step) = self.charge_page(echo).await {
                    return step;
                }
                let result = self
                    .ctx
                    .hub()
                    .history(&room, &name, self.conn, page, limit.unwrap_or(usize::MAX))
                    .await
                    .map(|page| Out::Page {
                        frame: protocol::v1::history(&page).into(),
                        ticket: page.ticket,
                    })
                    .map_err(Refusal::from);
                self.answer(result, echo, None).await
            }
            ClientFrame::Leave { room } => {
                let result = self.leave(&room).await;
                self.answer(result, Some(&room), None).await
            }
            ClientFrame::Say {
                room,
                text,
                reference,
            } => {
                let reference = reference.as_deref();
                if let Err(refusal) = self.say(&room, &text, reference).await {
                    // A too-long ref is not echoed back.
                    let reference = reference.filter(|r| ref_ok(r));
                    return self.refuse(refusal, Some(&room), reference).await;
                }
                Ok(())
            }
            ClientFrame::Ping { reference } => {
                let reference = reference.as_deref();
                let result = match reference {
                    Some(r) if !ref_ok(r) => Err(ref_too_long()),
                    _ => Ok(Out::Text(
                        protocol::to_text(&ServerFrame::Pong { reference }).into(),
                    )),
                };
                self.answer(result, None, None).await
            }
        }
    }

    /// What a `join` must pass before it costs the hub anything.
    fn join_checks(&self, room: &str, name: &str) -> Result<(), Refusal> {
        if !valid_room(room) {
            return Err(Refusal::new(error_code::INVALID_ROOM, limits::room_rule()));
        }
        if !valid_name(name) {
            return Err(Refusal::new(error_code::INVALID_NAME, limits::name_rule()));
        }
        if self.memberships.iter().any(|m| &*m.room == room) {
            return Err(HubError::AlreadyJoined.into());
        }
        if self.memberships.len() >= self.ctx.limits().max_rooms_per_connection {
            return Err(Refusal::new(
                error_code::TOO_MANY_ROOMS,
                "you are in the maximum number of rooms; leave one first",
            ));
        }
        Ok(())
    }

    /// What a `history` request must pass before it costs the hub anything: where its page
    /// starts, and this connection's name in the room.
    fn history_checks(
        &self,
        room: &str,
        since: Option<u64>,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<(Page, Arc<str>), Refusal> {
        let page = match (since, before) {
            (Some(id), None) => Page::Since(id),
            (None, Some(id)) => Page::Before(id),
            _ => {
                return Err(Refusal::new(
                    error_code::BAD_REQUEST,
                    "history needs exactly one of since or before",
                ))
            }
        };
        if limit == Some(0) {
            return Err(Refusal::new(
                error_code::BAD_REQUEST,
                "history limit must be at least 1",
            ));
        }
        Ok((page, self.membership(room)?.name.clone()))
    }

    /// This connection's place in `room`.
    fn membership(&self, room: &str) -> Result<&Membership, HubError> {
        self.memberships
            .iter()
            .find(|m| &*m.room == room)
            .ok_or(HubError::NotInRoom)
    }

    async fn join(
        &mut self,
        room: &str,
        name: &str,
        since: Option<u64>,
        epoch: Option<u64>,
        token: Option<&str>,
    ) -> Result<Joined, HubError> {
        let joined = self
            .ctx
            .hub()
            .join(JoinRequest {
                room,
                name,
                since,
                epoch,
                token,
                conn: self.conn,
                evictor: self.handle.clone(),
                // See [`super::direct`].
                pusher: self
                    .ctx
                    .limits()
                    .direct_write
                    .then(|| self.handle.clone() as Pusher),
                snapshot: self.mode == Mode::V1,
            })
            .await?;
        self.memberships.push(Membership {
            room: joined.room.clone(),
            name: name.into(),
        });
        Ok(joined)
    }

    async fn leave(&mut self, room: &str) -> Result<Out, Refusal> {
        let i = self
            .memberships
            .iter()
            .position(|m| &*m.room == room)
            .ok_or(HubError::NotInRoom)?;
        let m = self.memberships.swap_remove(i);
        self.ctx.hub().leave(&m.room, &m.name, self.conn).await;
        Ok(Out::Unsubscribe {
            room: m.room,
            reason: "left",
        })
    }

    /// Publishes a message; its echo (from the room) is the sender's acknowledgement.
    async fn say(
        &mut self,
        room: &str,
        text: &str,
        reference: Option<&str>,
    ) -> Result<(), Refusal> {
        if reference.is_some_and(|r| !ref_ok(r)) {
            return Err(ref_too_long());
        }
        if text.trim().is_empty() {
            return Err(Refusal::new(
                error_code::EMPTY_TEXT,
                "empty messages are not sent",
            ));
        }
        let max = self.ctx.limits().max_text_bytes;
        if protocol::json_str_len(text) > max {
            return Err(Refusal::new(
                error_code::TEXT_TOO_LONG,
                format!(
                    "messages are limited to {max} bytes as sent in JSON (line breaks, quotes \
                     and backslashes count 2, other control characters 6)"
                ),
            ));
        }
        let name = &self.membership(room)?.name;
        self.ctx
            .hub()
            .say(room, name, self.conn, text, reference)
            .await?;
        Ok(())
    }

    /// A line from a `/chatSocket` client: relayed to the lobby like the original demo did.
    async fn seed_text(&mut self, text: &str) -> Step {
        if protocol::json_str_len(text) > self.ctx.limits().max_text_bytes {
            log::debug!("#{}: seed message over the text limit dropped", self.conn);
            return Ok(());
        }
        if let Some(m) = self.memberships.first() {
            // A seed connection is only ever in the lobby; a failure means it was removed.
            if let Err(e) = self
                .ctx
                .hub()
                .say(&m.room, &m.name, self.conn, text, None)
                .await
            {
                return Err(Ending::Gone(format!("lobby: {e}").into()));
            }
        }
        Ok(())
    }
}

/// Adds what the connection has read since the last call to the received counters.
pub(super) fn count_received<S: AsyncRead + Unpin>(ctx: Ctx<'_>, ws: &mut Incoming<S>) {
    let (frames, bytes) = ws.take_counts();
    if let Some(m) = ctx.metrics() {
        m.received(frames, bytes);
    }
}

fn rate_refusal() -> Refusal {
    Refusal::new(
        error_code::RATE_LIMITED,
        "you are sending too fast; this message was dropped",
    )
}

fn ref_ok(reference: &str) -> bool {
    reference.chars().count() <= MAX_REF_CHARS
}

fn ref_too_long() -> Refusal {
    Refusal::new(
        error_code::BAD_REQUEST,
        format!("ref is longer than {MAX_REF_CHARS} characters"),
    )
}

/// Maps a read error to the close the client gets.
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
        other => Ending::Gone(other.to_string().into()),
    }
}
