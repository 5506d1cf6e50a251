//! One simulated chat client as a goose user: `connect` (on start), `chat` (the loop: receive,
//! and send on schedule when a sender) and `drain` (on stop: wait for messages in flight, close).
//!
//! The socket lives in the user's session data and is read inside the `chat` transaction itself,
//! so a client costs one task. Each delivery is parsed only as far as the stamp in its text
//! ([`crate::wire`]); latencies go into the run's sharded HDR histograms, and goose gets one
//! sample every [`Run::sample_every`] deliveries.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use goose::prelude::*;
use tokio::net::{TcpSocket, TcpStream};

use crate::config::Protocol;
use crate::metrics::{self, Seen, Tally, Track};
use crate::run::Run;
use crate::wire::{self, Received, Stamp};
use crate::ws::{Frame, WsClient, CLOSE_NORMAL};

/// Longest a `chat` transaction runs before it returns to goose (which checks for the end of the
/// run between transactions).
const ITERATION: Duration = Duration::from_secs(1);
/// Time allowed for TCP connect + websocket handshake + `hello`, and for `join` -> `joined`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client waits in `drain` for the senders of its room to stop.
const SENDERS_STOP_WAIT: Duration = Duration::from_secs(5);
/// Time allowed for the close handshake at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Receive buffer per socket. It never grows: a larger frame is read only as far as its
/// beginning (type and stamp), see [`crate::ws`]. 1 KiB holds about six 64-byte messages.
const READ_BUFFER: usize = 1024;
/// A send later than this against its schedule counts as late.
pub const LATE_SEND_US: u64 = 10_000;

/// Goose request names.
pub const REQ_METHOD: &str = "WS";
pub const REQ_CONNECT: &str = "connect";
pub const REQ_JOIN: &str = "join";
pub const REQ_FANOUT: &str = "fanout";
pub const REQ_SAY: &str = "say";
pub const REQ_DISCONNECT: &str = "disconnect";

type Ws = WsClient;

/// A connected client, kept in goose session data between transactions.
pub struct Client {
    ws: Option<Ws>,
    state: State,
}

/// What a client knows besides its socket.
struct State {
    room: usize,
    /// Slot among the room's senders when this client sends.
    slot: Option<usize>,
    /// Per sender of the room: what was received from it.
    tracks: Vec<Track>,
    /// Per sender: its message count when this client stopped listening (None: still listening).
    ends: Option<Vec<u64>>,
    acks: u64,
    /// Messages stamped for another room or another run.
    foreign: u64,
    /// Frames that are neither a stamped message nor a known frame of the protocol.
    unrecognized: u64,
    /// Deliveries until the next goose sample.
    until_sample: u64,
    /// Goose samples gathered during the current transaction: (name, microseconds).
    samples: Vec<(&'static str, u64)>,
    /// When this sender's next message is due, in microseconds since the run's epoch.
    next_send_us: Option<u64>,
    /// Messages this client sent.
    sent: u64,
    /// The schedule was closed (see [`State::stop_schedule`]).
    schedule_stopped: bool,
    /// This sender's place in a sending period (0..1), spreading the senders evenly.
    phase: f64,
    /// Reusable buffers for outgoing messages (the text, and the frame's JSON).
    text: String,
    frame: String,
}

/// Session data: goose wants `Clone + Sync`; the client is taken out for each transaction.
#[derive(Clone)]
pub struct Session(pub Arc<Mutex<Option<Box<Client>>>>);

fn take(user: &GooseUser) -> Option<Box<Client>> {
    let s = user.get_session_data::<Session>()?;
    let mut g = match s.0.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    g.take()
}

fn put(user: &GooseUser, client: Box<Client>) {
    if let Some(s) = user.get_session_data::<Session>() {
        let mut g = match s.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Some(client);
    }
}

/// Opens the TCP connection from source address 127.0.0.(1 + index % n) for loopback targets.
async fn tcp_connect(target: SocketAddr, index: usize, sources: u8) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if sources > 1 && target.ip().is_loopback() {
        let ip = Ipv4Addr::new(127, 0, 0, 1 + (index % sources as usize) as u8);
        socket.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))?;
    }
    let stream = socket.connect(target).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// `(host:port, path)` of a `ws://host:port/path` URL.
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
    Ok(match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// Target address of a `ws://host:port/...` URL.
async fn resolve(url: &str) -> Result<SocketAddr, String> {
    let (hostport, _) = split_url(url)?;
    let mut addrs = tokio::net::lookup_host(hostport)
        .await
        .map_err(|e| format!("{hostport}: {e}"))?;
    addrs
        .find(|a| a.is_ipv4())
        .ok_or_else(|| format!("{hostport}: no IPv4 address"))
}

/// Reads text frames until `done` decides on one (`Some`), with a deadline.
async fn wait_for(
    ws: &mut Ws,
    deadline: Instant,
    done: impl FnMut(&[u8]) -> Option<Result<(), String>>,
) -> Result<(), String> {
    let r = read_until(ws, deadline, done).await;
    if r.is_err() && ws.is_closing() {
        // The server closed, or broke the protocol: answer with the close frame queued for it.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.reply_close()).await;
    }
    r
}

async fn read_until(
    ws: &mut Ws,
    deadline: Instant,
    mut done: impl FnMut(&[u8]) -> Option<Result<(), String>>,
) -> Result<(), String> {
    loop {
        while let Some(frame) = ws.next_frame()? {
            match frame {
                Frame::Text { payload, .. } => {
                    if let Some(r) = done(payload) {
                        return r;
                    }
                }
                Frame::Close(code) => return Err(format!("closed {code}")),
                Frame::Other => {}
            }
        }
        if ws.has_control() {
            ws.flush_control().await.map_err(|e| e.to_string())?;
        }
        let n = tokio::time::timeout_at(deadline.into(), ws.read())
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed".into());
        }
    }
}

/// `on_start`: connect, join the room, wait until ready to receive.
pub async fn connect(user: &mut GooseUser) -> TransactionResult {
    let run = &crate::attack::run();
    let index = user.weighted_users_index;
    let (room, slot) = run.role(index);
    // unwrap: the semaphore is never closed.
    let permit = run.handshakes.acquire().await.unwrap();
    // Timed from here: waiting for a handshake slot is the generator's doing, not the server's.
    let started = Instant::now();
    let result = open_socket(run, index).await;
    let elapsed = started.elapsed();
    drop(permit);
    let mut ws = match result {
        Ok(ws) => ws,
        Err(e) => {
            run.connect_failures.add(e.clone());
            give_up(run, room, slot);
            user.record_custom_request_duration(
                REQ_METHOD,
                REQ_CONNECT,
                elapsed,
                false,
                None,
                Some(&e),
            )
            .await?;
            return Ok(());
        }
    };
    run.socket_opened();
    Run::record_into(&run.connect_hist, elapsed.as_micros() as u64);
    user.record_custom_request_duration(REQ_METHOD, REQ_CONNECT, elapsed, true, None, None)
        .await?;

    if run.params.protocol == Protocol::V1 {
        let join = wire::join_frame(&run.rooms[room].name, &format!("lt{index}"));
        let t0 = Instant::now();
        let joined = async {
            ws.send_text(join.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            // In a big room `joined` lists up to 1,000 members: only its beginning is read.
            wait_for(&mut ws, t0 + CONNECT_TIMEOUT, wire::join_reply).await
        }
        .await;
        let took = t0.elapsed();
        if let Err(e) = joined {
            run.connect_failures.add(format!("join: {e}"));
            run.socket_closed();
            give_up(run, room, slot);
            user.record_custom_request_duration(REQ_METHOD, REQ_JOIN, took, false, None, Some(&e))
                .await?;
            return Ok(());
        }
        Run::record_into(&run.join_hist, took.as_micros() as u64);
        user.record_custom_request_duration(REQ_METHOD, REQ_JOIN, took, true, None, None)
            .await?;
    }

    // Ready to receive: everything a sender sends from now on is owed to this client.
    let r = &run.rooms[room];
    let tracks = r
        .senders
        .iter()
        .map(|s| Track::new(s.sent.load(Ordering::SeqCst)))
        .collect();
    r.members.fetch_add(1, Ordering::AcqRel);
    let client = Client {
        ws: Some(ws),
        state: State {
            room,
            slot,
            tracks,
            ends: None,
            acks: 0,
            foreign: 0,
            unrecognized: 0,
            until_sample: 1 + index as u64 % run.sample_every(),
            samples: Vec::new(),
            next_send_us: None,
            sent: 0,
            schedule_stopped: false,
            phase: 0.0,
            text: String::new(),
            frame: String::new(),
        },
    };
    user.set_session_data(Session(Arc::new(Mutex::new(Some(Box::new(client))))));
    run.client_settled(true);
    Ok(())
}

fn give_up(run: &Run, room: usize, slot: Option<usize>) {
    if let Some(s) = slot {
        run.sender_done(room, s);
    }
    run.client_settled(false);
}

async fn open_socket(run: &Run, index: usize) -> Result<Ws, String> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let url = &run.targets[run.target_of(index)];
    let work = async {
        let target = resolve(url).await?;
        let (host, path) = split_url(url)?;
        let tcp = tcp_connect(target, index, run.params.source_addrs)
            .await
            .map_err(|e| format!("tcp: {e}"))?;
        let mut ws = WsClient::handshake(tcp, host, path, READ_BUFFER, index as u32).await?;
        if run.params.protocol == Protocol::V1 {
            wait_for(&mut ws, deadline, |text| {
                Some(if wire::is_hello(text) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected hello, got {:.80}",
                        String::from_utf8_lossy(text)
                    ))
                })
            })
            .await?;
        }
        Ok(ws)
    };
    tokio::time::timeout_at(deadline.into(), work)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The main loop: receive for up to [`ITERATION`], sending on schedule when a sender.
pub async fn chat(user: &mut GooseUser) -> TransactionResult {
    let run = &crate::attack::run();
    let Some(mut client) = take(user) else {
        // Never connected: idle cheaply until the run ends.
        tokio::time::sleep(ITERATION).await;
        return Ok(());
    };
    let deadline = Instant::now() + ITERATION;
    client.receive_until(run, deadline, true).await;
    client.state.flush_samples(user).await?;
    put(user, client);
    Ok(())
}

/// `on_stop`: stop sending, wait for what is still owed (bounded), close, add up.
pub async fn drain(user: &mut GooseUser) -> TransactionResult {
    let run = &crate::attack::run();
    let Some(mut client) = take(user) else {
        return Ok(());
    };
    client.state.stop_schedule(run);
    let room = &run.rooms[client.state.room];
    let wait_senders = Instant::now() + SENDERS_STOP_WAIT;
    while client.ws.is_some() && !room.senders_done() && Instant::now() < wait_senders {
        let until = (Instant::now() + Duration::from_millis(50)).min(wait_senders);
        client.receive_until(run, until, false).await;
    }
    let drain_end = Instant::now() + Duration::from_secs_f64(run.params.drain_s);
    while client.ws.is_some() && client.state.owed(run) > 0 && Instant::now() < drain_end {
        let until = (Instant::now() + Duration::from_millis(50)).min(drain_end);
        client.receive_until(run, until, false).await;
    }
    client.state.flush_samples(user).await?;
    if let Some(mut ws) = client.ws.take() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(CLOSE_NORMAL)).await;
        run.socket_closed();
        room.members.fetch_sub(1, Ordering::AcqRel);
    }
    client.state.finish(run);
    Ok(())
}

impl Client {
    /// Receives until `deadline`; sends on schedule when `send` and this client is a sender.
    async fn receive_until(&mut self, run: &Run, deadline: Instant, send: bool) {
        let sender = send && self.state.slot.is_some();
        // One timer for the whole call, moved only when the next wake-up changes.
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::pin!(sleep);
        let mut armed = deadline;
        loop {
            let Some(ws) = self.ws.as_mut() else {
                // Disconnected: nothing to do until the run ends.
                if armed != deadline {
                    sleep.as_mut().reset(deadline.into());
                }
                sleep.await;
                return;
            };
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            let mut wake = deadline;
            if sender && !run.stop_sending.load(Ordering::Relaxed) {
                match (self.state.next_send_us, run.send_start()) {
                    (Some(next), _) => wake = wake.min(run.instant_at(next)),
                    (None, Some(start)) => {
                        // Senders are spread evenly over the first period.
                        let rate = run.rate_at(start).max(1e-9);
                        let phase = self.state.slot.unwrap_or(0) as f64 * run.params.rooms as f64
                            + self.state.room as f64;
                        self.state.phase = phase / run.params.senders.max(1) as f64;
                        let offset = self.state.phase / rate;
                        let first = start + (offset * 1e6) as u64;
                        self.state.next_send_us = Some(first);
                        wake = wake.min(run.instant_at(first));
                    }
                    (None, None) => {}
                }
            }
            if wake != armed {
                sleep.as_mut().reset(wake.into());
                armed = wake;
            }
            let waiting_for_start = sender && run.send_start().is_none();
            tokio::select! {
                r = ws.read() => match r {
                    Ok(0) => self.disconnected(run, "closed without close frame".into()),
                    Ok(_) => self.on_readable(run).await,
                    Err(e) => self.disconnected(run, format!("error: {e}")),
                },
                _ = &mut sleep => {
                    if sender {
                        self.send_due(run).await;
                    }
                }
                _ = run.started.notified(), if waiting_for_start => {}
            }
        }
    }

    /// Sends every message whose time has come (open loop: a late sender catches up).
    async fn send_due(&mut self, run: &Run) {
        let (Some(slot), Some(mut next)) = (self.state.slot, self.state.next_send_us) else {
            return;
        };
        let room = &run.rooms[self.state.room];
        loop {
            let now = run.now_us();
            if next > now || run.stop_sending.load(Ordering::Relaxed) {
                break;
            }
            let rate = run.rate_at(next);
            if rate <= 0.0 {
                match run.next_step_start(next) {
                    // Between steps: on to the next one, at this sender's place in the period.
                    Some(at) => {
                        next = at + (self.state.phase / run.rate_at(at).max(1e-9) * 1e6) as u64;
                        continue;
                    }
                    // Past the last step: stop for good.
                    None => {
                        run.stop_sending.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let seq = room.senders[slot].sent.fetch_add(1, Ordering::SeqCst);
            let sent_us = run.now_us();
            let lag = sent_us.saturating_sub(next);
            Run::record_into(&run.send_lag_hist, lag);
            // Counted in the step of the stamp's time, as the receivers count it.
            if let Some(step) = run.step_of(sent_us) {
                let members = room.members.load(Ordering::Relaxed) as u64;
                let counts = &run.steps[step];
                counts.sent.fetch_add(1, Ordering::Relaxed);
                counts
                    .expected
                    .fetch_add(members.saturating_sub(1), Ordering::Relaxed);
                if lag > LATE_SEND_US {
                    counts.late.fetch_add(1, Ordering::Relaxed);
                }
                Run::record_into(&counts.lag, lag);
            }
            let stamp = Stamp {
                tag: run.tag,
                room: self.state.room as u32,
                slot: slot as u32,
                seq,
                sent_us,
            };
            let st = &mut self.state;
            st.sent += 1;
            wire::message_text(&mut st.text, stamp, run.params.message_size);
            let frame = wire::say_frame(&mut st.frame, run.params.protocol, &room.name, &st.text);
            run.sends.fetch_add(1, Ordering::Relaxed);
            let Some(ws) = self.ws.as_mut() else { break };
            if let Err(e) = ws.send_text(frame.as_bytes()).await {
                self.disconnected(run, format!("send: {e}"));
                break;
            }
            next += (1e6 / rate) as u64;
        }
        self.state.next_send_us = Some(next);
    }

    /// Handles every frame the last read completed, then answers pings.
    async fn on_readable(&mut self, run: &Run) {
        let Some(ws) = self.ws.as_mut() else { return };
        let mut ended = None;
        loop {
            match ws.next_frame() {
                Ok(Some(Frame::Text { payload, .. })) => self.state.on_text(run, payload),
                Ok(Some(Frame::Other)) => {}
                Ok(Some(Frame::Close(code))) => {
                    ended = Some(format!("close {code}"));
                    break;
                }
                Ok(None) => break,
                Err(e) => {
                    ended = Some(format!("error: {e}"));
                    break;
                }
            }
        }
        if ended.is_none() && ws.has_control() {
            if let Err(e) = ws.flush_control().await {
                ended = Some(format!("error: {e}"));
            }
        }
        if let Some(why) = ended {
            if ws.is_closing() {
                // Answer the server's close (or send the 1002 after a protocol error) before
                // the socket is dropped.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.reply_close()).await;
            }
            self.disconnected(run, why);
        }
    }

    /// The socket ended before the run did.
    fn disconnected(&mut self, run: &Run, why: String) {
        if self.ws.take().is_some() {
            self.state.disconnected(run, why);
        }
    }
}

impl State {
    /// This sender stops for good: adds what its schedule asked for until now to the run's
    /// scheduled sends (scenarios at a constant rate; `step` checks its senders per step), so
    /// that a generator whose senders fell behind is told from a server that was slow.
    fn stop_schedule(&mut self, run: &Run) {
        let Some(slot) = self.slot else { return };
        if std::mem::replace(&mut self.schedule_stopped, true) {
            return;
        }
        if run.params.step.is_none() {
            let due = match self.next_send_us {
                Some(next) if run.params.msg_rate > 0.0 => {
                    let now = run.now_us();
                    let interval = 1e6 / run.params.msg_rate;
                    let unsent = if next <= now {
                        ((now - next) as f64 / interval) as u64 + 1
                    } else {
                        0
                    };
                    self.sent + unsent
                }
                _ => self.sent,
            };
            run.scheduled_sends.fetch_add(due, Ordering::AcqRel);
        }
        run.sender_done(self.room, slot);
    }

    /// Deliveries still owed to this client by senders that have stopped.
    fn owed(&self, run: &Run) -> u64 {
        let room = &run.rooms[self.room];
        self.tracks
            .iter()
            .enumerate()
            .filter(|(s, _)| Some(*s) != self.slot)
            .map(|(s, t)| {
                let end = room.senders[s].sent.load(Ordering::Acquire);
                end.saturating_sub(t.start).saturating_sub(t.in_window)
            })
            .sum()
    }

    fn on_text(&mut self, run: &Run, frame: &[u8]) {
        let now = run.now_us();
        let stamp = match wire::classify(frame, run.params.protocol) {
            Received::Message(s) if s.tag == run.tag && s.room as usize == self.room => s,
            Received::Message(_) => {
                self.foreign += 1;
                return;
            }
            Received::Error(code) => {
                run.error_frames.add(code);
                return;
            }
            Received::Control => return,
            Received::Unrecognized => {
                self.unrecognized += 1;
                return;
            }
        };
        let latency = now.saturating_sub(stamp.sent_us);
        let slot = stamp.slot as usize;
        if Some(slot) == self.slot {
            self.acks += 1;
            run.shards.with(|s| metrics::record(&mut s.ack, latency));
            if self.acks % 16 == 1 {
                self.samples.push((REQ_SAY, latency));
            }
            return;
        }
        let Some(track) = self.tracks.get_mut(slot) else {
            // A slot this room does not have: not a message of this run's room.
            self.foreign += 1;
            return;
        };
        if track.receive(stamp.seq) == Seen::Duplicate {
            return;
        }
        let step = if run.params.step.is_some() && stamp.seq >= track.start {
            run.step_of(stamp.sent_us)
        } else {
            None
        };
        run.shards.with(|s| {
            metrics::record(&mut s.fanout, latency);
            metrics::record(&mut s.fanout_interval, latency);
            if let Some(i) = step {
                while s.by_step.len() <= i {
                    s.by_step.push(metrics::new_step_histogram());
                }
                metrics::record(&mut s.by_step[i], latency);
            }
        });
        self.until_sample -= 1;
        if self.until_sample == 0 {
            self.until_sample = run.sample_every();
            self.samples.push((REQ_FANOUT, latency));
        }
    }

    /// The socket ended before the run did.
    fn disconnected(&mut self, run: &Run, why: String) {
        run.disconnects.add(why);
        run.socket_closed();
        let room = &run.rooms[self.room];
        room.members.fetch_sub(1, Ordering::AcqRel);
        self.ends = Some(
            room.senders
                .iter()
                .map(|s| s.sent.load(Ordering::SeqCst))
                .collect(),
        );
        self.stop_schedule(run);
        self.samples.push((REQ_DISCONNECT, 0));
    }

    async fn flush_samples(&mut self, user: &mut GooseUser) -> TransactionResult {
        for (name, us) in self.samples.drain(..) {
            let ok = name != REQ_DISCONNECT;
            user.record_custom_request_duration(
                REQ_METHOD,
                name,
                Duration::from_micros(us),
                ok,
                None,
                (!ok).then_some("connection ended before the run"),
            )
            .await?;
        }
        Ok(())
    }

    /// Adds this client's counts to the run's.
    fn finish(&self, run: &Run) {
        let room = &run.rooms[self.room];
        let mut t = Tally {
            acks: self.acks,
            foreign: self.foreign,
            unrecognized: self.unrecognized,
            ..Tally::default()
        };
        for (s, track) in self.tracks.iter().enumerate() {
            if Some(s) == self.slot {
                continue;
            }
            let end = match &self.ends {
                Some(ends) => ends[s],
                None => room.senders[s].sent.load(Ordering::SeqCst),
            };
            let owed = end.saturating_sub(track.start);
            t.expected += owed + track.early;
            // More received than owed means the bookkeeping is wrong somewhere: counted, never
            // hidden by saturating the loss at zero.
            t.excess += track.in_window.saturating_sub(owed);
            t.received += track.in_window.min(owed) + track.early;
            t.duplicates += track.duplicates;
            t.out_of_order += track.out_of_order;
        }
        t.lost = t.expected - t.received;
        run.add_tally(&t);
    }
}
