//! The single writer of a connection: it owns the socket's write side and sends everything the
//! connection sends (room events, replies, pings, the close frame).
//!
//! It waits for the first input, takes whatever else is already queued (up to [`MAX_BATCH`]),
//! and writes the whole batch with one `writev`: each frame is its header (formatted by
//! tungstenite's `FrameHeader`) plus the event's shared payload, so fan-out copies no payload
//! in user space and keeps no write buffer between batches. What the client sends is read by
//! [`Incoming`](super::Incoming), which never writes.
//!
//! `--write-timeout` bounds the whole backlog, not one write: the writer is *behind* from the
//! first write that cannot complete at once until it has written everything and no input is
//! waiting. Behind for longer than the timeout, it is a slow consumer (4008), however steadily
//! the client takes a few bytes. While a write is blocked it still watches the shutdown (1001),
//! the idle check of the ping tick (4000) and that deadline, but takes no new input.
//!
//! With `--direct-write on` the writer does not listen to its rooms while it has nothing to do:
//! it parks, and publishers write to the socket directly (see [`super::direct`]). It unparks for
//! its inbox, the ping tick, the shutdown, or when a publisher hands it what it could not send.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_broadcast::{RecvError, TryRecvError};
use async_tungstenite::tungstenite::protocol::frame::coding::{Control, OpCode};
use async_tungstenite::tungstenite::Bytes;
use futures::AsyncWrite;

use super::direct::{Direct, Handoff, Sub, Subs, Unparked};
use super::frame::{account, busy, frame_for, Frame};
use super::inbox::Inbox;
use super::{Ctx, Ending, Mode, Out};
use crate::hub::EventRef;
use crate::metrics::Metrics;
use crate::protocol::{self, close, ServerFrame};
use crate::shutdown::{Beat, Shutdown};
use event_listener::EventListener;

/// Frames the writer sends in one `writev` before it looks at its inputs again (two iovecs a
/// frame, well under the kernel's limit of 1,024).
const MAX_BATCH: usize = 256;

pub(super) struct Writer<'a> {
    pub ctx: Ctx<'a>,
    pub mode: Mode,
    pub conn: u64,
    pub subs: Subs,
    pub last_seen: &'a AtomicU64,
    /// The newest commit ticket of this connection's own messages in the batch being built: the
    /// batch waits until it is durable (a sender's echo is its acknowledgement).
    pub ack: u64,
    /// With `--direct-write on`: where the writer parks.
    pub direct: Option<&'a Direct>,
    /// Parked: `subs` are with `direct`.
    pub parked: bool,
    /// The rest of a direct write the socket cut (its frames and the bytes written): first out.
    /// (Both boxed: rare, and every connection's future holds the slots.)
    pub rest: Option<Box<(Vec<Frame>, usize)>>,
    /// Inputs a publisher took from the subscriptions and left to the writer, oldest first.
    #[allow(clippy::box_collection)] // on purpose: 8 B in every connection, not 32
    pub handoff: Option<Box<VecDeque<Handoff>>>,
    /// The wait for the pulse and the shutdown (see [`crate::shutdown`]).
    pub beat: Option<EventListener>,
    /// The pulse came while the writer waited for a commit: the tick is still to be done.
    pub tick_due: bool,
    /// When the connection began, in ms on the server's clock (truncated; see [`Self::pings`]).
    pub connected_ms: u32,
}

/// One thing the writer reacts to.
enum Input {
    Ctl(Out),
    Event(usize, Option<Result<EventRef, RecvError>>),
    /// The rest of a cut direct write: its frames and the bytes already written.
    Rest(Vec<Frame>, usize),
    Tick,
    Shutdown,
}

/// The pulse and the shutdown are inputs like the others.
impl From<Beat> for Input {
    fn from(beat: Beat) -> Self {
        match beat {
            Beat::Tick => Input::Tick,
            Beat::Shutdown => Input::Shutdown,
        }
    }
}

/// What handling one input decided.
enum Then {
    Continue,
    /// Write what is queued, then end.
    End(Ending),
}

impl<'a> Writer<'a> {
    /// Sends everything the connection sends until it ends. Not an async fn: see
    /// [`super::run`] (an async fn would hold this writer twice, 184 B more per connection).
    #[allow(clippy::manual_async_fn)] // on purpose: see above
    pub(super) fn run<'i, W: AsyncWrite + Unpin>(
        mut self,
        mut out: W,
        inbox: &'i Inbox<Out>,
    ) -> impl Future<Output = Ending> + use<'a, 'i, W> {
        async move {
            // `self.ctx` throughout, not a copy: a local would be 40 B more in every future.
            let metrics = self.ctx.metrics().map(|m| &**m);
            // Boxed: only a writer that falls behind needs it, and every connection's future holds
            // the slot.
            let mut behind: Option<Box<Behind>> = None;
            loop {
                let mut batch = Vec::new();
                let mut skip = 0;
                // In a block, so that the input's slot ends with it instead of staying in the
                // future through the waits below (48 B).
                let mut then = {
                    let first = futures::future::poll_fn(|cx| {
                        let input = match self.direct {
                            Some(direct) => self.poll_parked(cx, direct, inbox),
                            None => self.poll_input(cx, inbox),
                        };
                        if input.is_pending() {
                            // Everything written and nothing waiting: caught up.
                            behind = None;
                        }
                        input
                    })
                    .await;
                    match first {
                        Input::Rest(frames, written) => {
                            batch = frames;
                            skip = written;
                            Then::Continue
                        }
                        first => self.apply(first, &mut batch),
                    }
                };
                // Take what is already queued, without registering wakers (polling with another
                // waker would re-register the listeners and the pulse listener every time).
                while matches!(then, Then::Continue) && batch.len() < MAX_BATCH {
                    match self.try_input(inbox) {
                        Some(input) => then = self.apply(input, &mut batch),
                        None => break,
                    }
                }
                if behind
                    .as_ref()
                    .is_some_and(|b| b.deadline <= Instant::now())
                {
                    // Between batches, at a frame boundary: the close frame can go first.
                    if let Some(m) = self.ctx.metrics() {
                        m.slow_consumer();
                    }
                    return give_up(&mut out, &[], Stop::SlowConsumer, metrics, (&[], 0, 0));
                }
                if self.ack != 0 {
                    // The sender's own message goes out (with what came before it) once it is on
                    // disk; shutdown still ends the wait.
                    let commits = self.ctx.hub().broker().commits();
                    let mut durable = Box::pin(commits.wait(std::mem::take(&mut self.ack)));
                    let shutdown = futures::future::poll_fn(|cx| {
                        if durable.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(false);
                        }
                        // The pulse itself, not `poll_beat`: that returns a tick left due, and
                        // this loop would take it again for ever (seen: the executor spun).
                        loop {
                            match self.ctx.shutdown().poll_beat(self.conn, &mut self.beat, cx) {
                                Poll::Ready(Beat::Tick) => self.tick_due = true,
                                Poll::Ready(Beat::Shutdown) => return Poll::Ready(true),
                                Poll::Pending => return Poll::Pending,
                            }
                        }
                    });
                    if shutdown.await {
                        return give_up(&mut out, &[], Stop::Shutdown, metrics, (&[], 0, 0));
                    }
                }
                let work = self.ctx.limits().test_work_per_delivery;
                if !work.is_zero() {
                    busy(work * batch.len() as u32);
                }
                let blocked = match write_ready(&mut out, &batch, skip, metrics) {
                    Ok(blocked) => blocked,
                    Err(ending) => return ending,
                };
                if let Some(written) = blocked {
                    let (ctx, last_seen) = (self.ctx, self.last_seen);
                    let write = Write {
                        out: &mut out,
                        behind: &mut behind,
                        limit: ctx.limits().write_timeout,
                        conn: self.conn,
                        shutdown: ctx.shutdown(),
                        beat: &mut self.beat,
                        idle: move || idle(ctx, last_seen),
                        metrics,
                    };
                    // Boxed: only a write the socket blocks needs this state, and every
                    // connection's future would otherwise keep room for it.
                    if let Err(ending) = Box::pin(write.all(&batch, written)).await {
                        return ending;
                    }
                }
                if let Then::End(ending) = then {
                    return ending;
                }
            }
        }
    }

    /// The pulse or the shutdown, if either has come (a tick left from a commit wait first).
    fn poll_beat(&mut self, cx: &mut Context<'_>) -> Poll<Beat> {
        if std::mem::take(&mut self.tick_due) {
            return Poll::Ready(Beat::Tick);
        }
        self.ctx.shutdown().poll_beat(self.conn, &mut self.beat, cx)
    }

    fn poll_input(&mut self, cx: &mut Context<'_>, inbox: &Inbox<Out>) -> Poll<Input> {
        if let Poll::Ready(beat) = self.poll_beat(cx) {
            return Poll::Ready(beat.into());
        }
        if let Poll::Ready(out) = inbox.poll_next(cx) {
            return Poll::Ready(Input::Ctl(out));
        }
        for (i, sub) in self.subs.iter_mut().enumerate() {
            if let Poll::Ready(ev) = Pin::new(&mut sub.rx).poll_recv(cx) {
                return Poll::Ready(Input::Event(i, ev));
            }
        }
        Poll::Pending
    }

    /// [`Self::poll_input`] with `--direct-write on`: the subscriptions are read without
    /// listening, and with nothing to do the writer parks them with `direct` instead.
    fn poll_parked(
        &mut self,
        cx: &mut Context<'_>,
        direct: &Direct,
        inbox: &Inbox<Out>,
    ) -> Poll<Input> {
        if self.parked {
            // Polled only when woken (see `race`): for an unpark or one of the inputs below.
            self.parked = false;
            self.take_back(direct.unpark());
        }
        let commits = self.ctx.hub().broker().commits();
        loop {
            // A cut frame is finished before anything else can go out.
            if let Some(rest) = self.rest.take() {
                let (frames, written) = *rest;
                return Poll::Ready(Input::Rest(frames, written));
            }
            if let Some(input) = self.handed_off() {
                return Poll::Ready(input);
            }
            if let Poll::Ready(beat) = self.poll_beat(cx) {
                return Poll::Ready(beat.into());
            }
            if let Poll::Ready(out) = inbox.poll_next(cx) {
                return Poll::Ready(Input::Ctl(out));
            }
            if let Some(input) = self.try_event() {
                return Poll::Ready(input);
            }
            match direct.park(std::mem::take(&mut self.subs), commits, cx) {
                Ok(()) => {
                    self.parked = true;
                    return Poll::Pending;
                }
                Err(back) => self.take_back(back),
            }
        }
    }

    fn take_back(&mut self, back: Unparked) {
        debug_assert!(self.subs.is_empty() && self.rest.is_none());
        self.subs = back.subs;
        self.rest = back.rest;
        if !back.handoff.is_empty() {
            // Kept once made: a sender's own messages come this way each time.
            let handoff = self.handoff.get_or_insert_with(Default::default);
            handoff.extend(back.handoff);
        }
    }

    /// The next queued input, if any, without waiting.
    fn try_input(&mut self, inbox: &Inbox<Out>) -> Option<Input> {
        // A handed-off event first: it names its subscription by index, which an unsubscribe
        // from the inbox would shift.
        if let Some(input) = self.handed_off() {
            return Some(input);
        }
        if let Some(out) = inbox.try_next() {
            return Some(Input::Ctl(out));
        }
        self.try_event()
    }

    /// The oldest input a publisher left to the writer, if any.
    fn handed_off(&mut self) -> Option<Input> {
        let (i, ev) = self.handoff.as_mut()?.pop_front()?;
        Some(Input::Event(i, ev))
    }

    /// The next room event (or the end of a room), if any, without waiting.
    fn try_event(&mut self) -> Option<Input> {
        if let Some(input) = self.handed_off() {
            return Some(input);
        }
        for (i, sub) in self.subs.iter_mut().enumerate() {
            match sub.rx.try_recv() {
                Ok(ev) => return Some(Input::Event(i, Some(Ok(ev)))),
                Err(TryRecvError::Overflowed(n)) => {
                    return Some(Input::Event(i, Some(Err(RecvError::Overflowed(n)))))
                }
                Err(TryRecvError::Closed) => return Some(Input::Event(i, None)),
                Err(TryRecvError::Empty) => {}
            }
        }
        None
    }

    fn apply(&mut self, input: Input, batch: &mut Vec<Frame>) -> Then {
        match input {
            Input::Event(_, Some(Ok(ev))) if ev.reset => {
                return close(
                    batch,
                    close::RESYNC,
                    "resync: reconnect and join with since",
                );
            }
            Input::Event(i, Some(Ok(ev))) => self.event(i, &ev, batch),
            Input::Event(i, Some(Err(RecvError::Overflowed(n)))) => {
                let room = &*self.subs[i].room;
                log::debug!(
                    conn = self.conn, room = room;
                    "#{}: receiver lagged by {n} events in {room:?}", self.conn
                );
                if let Some(m) = self.ctx.metrics() {
                    m.slow_consumer();
                }
                return close(batch, close::SLOW_CONSUMER, "slow consumer");
            }
            Input::Event(i, Some(Err(RecvError::Closed)) | None) => {
                self.subs.swap_remove(i);
            }
            Input::Ctl(Out::Text(text)) => batch.push(Frame::text(text)),
            Input::Ctl(Out::Page { frame, ticket }) => {
                self.ack = self.ack.max(ticket);
                batch.push(Frame::text(frame));
            }
            Input::Ctl(Out::Pong(data)) => {
                batch.push(Frame::new(OpCode::Control(Control::Pong), data))
            }
            Input::Ctl(Out::Subscribe(joined)) => {
                // Rendered here, just before it is written, so that queued joins hold shared
                // message events rather than copies of them.
                if self.mode == Mode::V1 {
                    batch.push(Frame::text(protocol::v1::joined(&joined).into()));
                    // Its history may hold this client's own last messages: what a client is
                    // shown as its own is on disk.
                    self.ack = self.ack.max(joined.ticket);
                }
                let joined = *joined;
                self.subs.push(Sub {
                    room: joined.room,
                    rx: joined.rx,
                    after: joined.state.last,
                    presence_after: joined.presence_version,
                });
            }
            Input::Ctl(Out::Unsubscribe { room, reason }) => self.unsubscribe(batch, room, reason),
            Input::Ctl(Out::Close(code, reason)) => {
                // What was already published (e.g. the client's own last message) goes first.
                while let Some(Input::Event(i, Some(Ok(ev)))) = self.try_event() {
                    self.event(i, &ev, batch);
                }
                return close(batch, code, reason);
            }
            // Only ever the first input of a batch (see `run`).
            Input::Rest(..) => unreachable!("a cut direct write is the first input of a batch"),
            // The reader ended on a dead socket: nothing more to say.
            Input::Ctl(Out::Finish) => return Then::End(Ending::Gone("reader ended".into())),
            Input::Tick if !self.pings() => {}
            Input::Tick => {
                if self.idle() {
                    return close(batch, close::IDLE_TIMEOUT, "idle timeout");
                }
                batch.push(Frame::new(OpCode::Control(Control::Ping), Bytes::new()));
            }
            Input::Shutdown => return close(batch, close::GOING_AWAY, "server shutting down"),
        }
        Then::Continue
    }

    /// Adds room event `ev` of subscription `i` to the batch, unless the `joined` frame had it.
    fn event(&mut self, i: usize, ev: &EventRef, batch: &mut Vec<Frame>) {
        // A reset is never wanted: it only comes here while closing anyway (see `apply`).
        if !self.subs[i].wants(ev) {
            return;
        }
        if ev.origin == self.conn {
            self.ack = self.ack.max(ev.ticket);
        }
        batch.extend(frame_for(self.mode, ev));
    }

    fn idle(&self) -> bool {
        idle(self.ctx, self.last_seen)
    }

    /// Whether a tick pings: not within the first `--ping-interval` after connecting. The pulse
    /// comes at the connection's shard's time, not the connection's own, and a client paces its
    /// frames by the rate limit, which its pongs take tokens from: a ping right after connecting
    /// had a paced browser's eighth message refused (`limits.test.js`, rate 2/s). Wrapping:
    /// after 49 days a connection skips at most one ping.
    fn pings(&self) -> bool {
        let age = (self.ctx.now_ms() as u32).wrapping_sub(self.connected_ms);
        u128::from(age) >= self.ctx.limits().ping_interval.as_millis()
    }

    fn unsubscribe(&mut self, batch: &mut Vec<Frame>, room: Arc<str>, reason: &str) {
        self.subs.retain(|sub| sub.room != room);
        if self.mode == Mode::V1 {
            let left = ServerFrame::Left {
                room: &room,
                reason,
            };
            batch.push(Frame::text(protocol::to_text(&left).into()));
        }
    }
}

/// True when the client has sent nothing (not even a pong) for `--idle-timeout`.
fn idle(ctx: Ctx<'_>, last_seen: &AtomicU64) -> bool {
    let idle = ctx
        .now_ms()
        .saturating_sub(last_seen.load(Ordering::Relaxed));
    Duration::from_millis(idle) > ctx.limits().idle_timeout
}

fn close(batch: &mut Vec<Frame>, code: u16, reason: &'static str) -> Then {
    batch.push(Frame::close(code, reason));
    Then::End(Ending::Closed(code, reason))
}

/// How many of `frames` the socket has taken bytes of, when it took `written` bytes of them.
fn touched(frames: &[Frame], written: usize) -> usize {
    let mut end = 0;
    for (i, f) in frames.iter().enumerate() {
        if end >= written {
            return i;
        }
        end += f.wire_len();
    }
    frames.len()
}

/// Writes `frames` (less the first `skip` bytes, on the wire already) as far as the socket takes
/// them now. Returns `None` when all are written, or the bytes written (counting `skip`) where
/// the socket blocked: [`Write::all`] waits for the rest.
fn write_ready<W: AsyncWrite + Unpin>(
    out: &mut W,
    frames: &[Frame],
    skip: usize,
    metrics: Option<&Metrics>,
) -> Result<Option<usize>, Ending> {
    let mut slices = slices(frames);
    let mut bufs = &mut slices[..];
    IoSlice::advance_slices(&mut bufs, skip);
    let mut written = skip;
    // No waker yet: a write that blocks is polled again, with the task's, by `Write::all`.
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let blocked = loop {
        if bufs.is_empty() {
            break false;
        }
        match Pin::new(&mut *out).poll_write_vectored(&mut cx, bufs) {
            Poll::Ready(Ok(0)) => return Err(Ending::Gone("socket accepts no more bytes".into())),
            Poll::Ready(Ok(n)) => {
                written += n;
                IoSlice::advance_slices(&mut bufs, n);
            }
            Poll::Ready(Err(e)) => return Err(Ending::Gone(e.to_string().into())),
            Poll::Pending => break true,
        }
    };
    account(metrics, frames, skip, written);
    Ok(blocked.then_some(written))
}

/// Each frame's header and payload, in order.
fn slices(frames: &[Frame]) -> Vec<IoSlice<'_>> {
    let mut slices = Vec::with_capacity(frames.len() * 2);
    for f in frames {
        slices.push(IoSlice::new(f.head()));
        if !f.payload.is_empty() {
            slices.push(IoSlice::new(&f.payload));
        }
    }
    slices
}

/// Since when the writer is behind, and the timer that wakes it when that has lasted too long.
/// Created only when a write blocks: a timer per write cost ~10% of the server's CPU in fan-out
/// (profiled), and almost every write completes at once.
struct Behind {
    deadline: Instant,
    timer: async_io::Timer,
}

/// Why a blocked write was given up.
#[derive(Debug, Clone, Copy)]
enum Stop {
    SlowConsumer,
    Idle,
    Shutdown,
}

impl Stop {
    fn close(self) -> (u16, &'static str) {
        match self {
            Stop::SlowConsumer => (close::SLOW_CONSUMER, "write timeout"),
            Stop::Idle => (close::IDLE_TIMEOUT, "idle timeout"),
            Stop::Shutdown => (close::GOING_AWAY, "server shutting down"),
        }
    }
}

/// One batch's write, with what it watches while the socket takes nothing.
struct Write<'w, W, I> {
    out: &'w mut W,
    behind: &'w mut Option<Box<Behind>>,
    limit: Duration,
    conn: u64,
    shutdown: &'w Shutdown,
    beat: &'w mut Option<EventListener>,
    idle: I,
    metrics: Option<&'w Metrics>,
}

impl<W: AsyncWrite + Unpin, I: Fn() -> bool> Write<'_, W, I> {
    /// Writes every frame with as few `writev` calls as the socket allows, waiting while it
    /// blocks (the first `skip` bytes are on the wire already).
    async fn all(self, frames: &[Frame], skip: usize) -> Result<(), Ending> {
        let Write {
            out,
            behind,
            limit,
            conn,
            shutdown,
            beat,
            idle,
            metrics,
        } = self;
        let mut slices = slices(frames);
        let total = slices.len();
        let mut bufs = &mut slices[..];
        IoSlice::advance_slices(&mut bufs, skip);
        let mut written = skip;
        let stop = futures::future::poll_fn(|cx| {
            while !bufs.is_empty() {
                match Pin::new(&mut *out).poll_write_vectored(cx, bufs) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Ending::Gone(
                            "socket accepts no more bytes".into(),
                        )));
                    }
                    Poll::Ready(Ok(n)) => {
                        written += n;
                        IoSlice::advance_slices(&mut bufs, n);
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(Ending::Gone(e.to_string().into())))
                    }
                    Poll::Pending => break,
                }
            }
            if bufs.is_empty() {
                return Poll::Ready(Ok(None));
            }
            // Blocked: the socket's writability is registered; watch the rest too.
            let b = behind.get_or_insert_with(|| {
                let deadline = Instant::now() + limit;
                Box::new(Behind {
                    deadline,
                    timer: async_io::Timer::at(deadline),
                })
            });
            if Pin::new(&mut b.timer).poll(cx).is_ready() {
                return Poll::Ready(Ok(Some(Stop::SlowConsumer)));
            }
            // No ping can go out while blocked; the tick only checks for silence. Bounded: a
            // tick takes the listener, and the next poll makes a new one, which is pending.
            loop {
                match shutdown.poll_beat(conn, beat, cx) {
                    Poll::Ready(Beat::Shutdown) => return Poll::Ready(Ok(Some(Stop::Shutdown))),
                    Poll::Ready(Beat::Tick) if idle() => return Poll::Ready(Ok(Some(Stop::Idle))),
                    Poll::Ready(Beat::Tick) => {}
                    Poll::Pending => return Poll::Pending,
                }
            }
        });
        let stop = match stop.await {
            Ok(Some(stop)) => stop,
            done => {
                account(metrics, frames, skip, written);
                return done.map(|_| ());
            }
        };
        if let (Stop::SlowConsumer, Some(m)) = (stop, metrics) {
            m.slow_consumer();
        }
        // The frame the socket stopped in must be finished before a close frame can follow.
        let done = total - bufs.len();
        let (rest, was_close) = frame_rest(frames, done, bufs);
        let sent = (&frames[..touched(frames, written)], skip, written);
        if was_close {
            // Cut in our own close frame: finish it if the socket takes it, send no second one.
            let (code, reason) = stop.close();
            let want: usize = rest.iter().map(|s| s.len()).sum();
            let more = try_write(out, rest);
            account(metrics, sent.0, sent.1, sent.2 + more);
            return Err(match more == want {
                true => Ending::Closed(code, reason),
                false => Ending::Gone(format!("{reason}: socket blocked, close frame cut").into()),
            });
        }
        Err(give_up(out, &rest, stop, metrics, sent))
    }
}

/// What is left of the frame a blocked write stopped in: `bufs` (the unwritten slices, the first
/// perhaps cut) up to that frame's end, empty when the write stopped at a frame boundary; and
/// whether that frame is a close frame.
fn frame_rest<'a>(frames: &[Frame], done: usize, bufs: &[IoSlice<'a>]) -> (Vec<IoSlice<'a>>, bool) {
    let mut first = 0;
    for f in frames {
        let parts = 1 + usize::from(!f.payload.is_empty());
        if done < first + parts {
            let part = done - first;
            let whole = if part == 0 {
                f.header_len as usize
            } else {
                f.payload.len()
            };
            if part == 0 && bufs[0].len() == whole {
                return (Vec::new(), false);
            }
            let close = f.header[0] & 0x0f == 0x8;
            return (bufs[..parts - part].to_vec(), close);
        }
        first += parts;
    }
    (Vec::new(), false)
}

/// Writes `slices` as far as the socket takes them without waiting; returns the bytes written.
/// Not an async fn, so that this cold path adds nothing to every connection's future.
fn try_write<W: AsyncWrite + Unpin>(out: &mut W, mut slices: Vec<IoSlice<'_>>) -> usize {
    // The connection ends right after this, so no one needs to be woken.
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    let mut bufs = &mut slices[..];
    let mut written = 0;
    while !bufs.is_empty() {
        match Pin::new(&mut *out).poll_write_vectored(&mut cx, bufs) {
            Poll::Ready(Ok(n)) if n > 0 => {
                written += n;
                IoSlice::advance_slices(&mut bufs, n);
            }
            _ => break,
        }
    }
    written
}

/// Ends a connection the writer cannot serve any more: sends `rest` (the end of a cut frame) and
/// the close frame if the socket takes them without waiting, else just drops the connection.
/// The unwritten rest of the batch is dropped either way (a client that resumes with `since`
/// gets those messages from history); what the kernel already holds still goes out before the
/// FIN, so a client cut mid-frame sees the stream end without a close frame (1006).
/// `sent` is what the socket already took bytes of (frames, and the bytes of them this writer
/// wrote: from, to), for the metrics.
fn give_up<W: AsyncWrite + Unpin>(
    out: &mut W,
    rest: &[IoSlice<'_>],
    stop: Stop,
    metrics: Option<&Metrics>,
    sent: (&[Frame], usize, usize),
) -> Ending {
    let (code, reason) = stop.close();
    let frame = Frame::close(code, reason);
    let mut slices = rest.to_vec();
    slices.push(IoSlice::new(frame.head()));
    slices.push(IoSlice::new(&frame.payload));
    let want: usize = slices.iter().map(|s| s.len()).sum();
    let written = try_write(out, slices);
    account(
        metrics,
        sent.0.iter().chain([&frame]),
        sent.1,
        sent.2 + written,
    );
    if written == want {
        Ending::Closed(code, reason)
    } else {
        Ending::Gone(format!("{reason}: socket blocked, dropped without a close frame").into())
    }
}
