//! A connected client's state machine: receiving (every frame classified, every delivery
//! counted against what its room's senders owe it), sending on schedule when it is a sender,
//! and adding up at the end.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use goose::prelude::*;

use super::{Ws, CLOSE_TIMEOUT, LATE_SEND_US, REQ_DISCONNECT, REQ_FANOUT, REQ_METHOD, REQ_SAY};
use crate::metrics::{self, Seen, Tally, Track};
use crate::run::Run;
use crate::wire::{self, Received, Stamp};
use crate::ws::Frame;

/// A connected client, kept in goose session data between transactions.
pub struct Client {
    pub(super) ws: Option<Ws>,
    pub(super) state: State,
}

/// What a client knows besides its socket.
pub(super) struct State {
    pub(super) room: usize,
    /// Slot among the room's senders when this client sends.
    pub(super) slot: Option<usize>,
    /// Per sender of the room: what was received from it.
    pub(super) tracks: Vec<Track>,
    /// Per sender: its message count when this client stopped listening (None: still listening).
    pub(super) ends: Option<Vec<u64>>,
    pub(super) acks: u64,
    /// Messages stamped for another room or another run.
    pub(super) foreign: u64,
    /// Frames that are neither a stamped message nor a known frame of the protocol.
    pub(super) unrecognized: u64,
    /// Deliveries until the next goose sample.
    pub(super) until_sample: u64,
    /// Goose samples gathered during the current transaction: (name, microseconds).
    pub(super) samples: Vec<(&'static str, u64)>,
    /// When this sender's next message is due, in microseconds since the run's epoch.
    pub(super) next_send_us: Option<u64>,
    /// Messages this client sent.
    pub(super) sent: u64,
    /// The schedule was closed (see [`State::stop_schedule`]).
    pub(super) schedule_stopped: bool,
    /// This sender's place in a sending period (0..1), spreading the senders evenly.
    pub(super) phase: f64,
    /// Reusable buffers for outgoing messages (the text, and the frame's JSON).
    pub(super) text: String,
    pub(super) frame: String,
}

impl Client {
    /// Receives until `deadline`; sends on schedule when `send` and this client is a sender.
    pub(super) async fn receive_until(&mut self, run: &Run, deadline: Instant, send: bool) {
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
    pub(super) async fn send_due(&mut self, run: &Run) {
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
    pub(super) async fn on_readable(&mut self, run: &Run) {
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
    pub(super) fn disconnected(&mut self, run: &Run, why: String) {
        if self.ws.take().is_some() {
            self.state.disconnected(run, why);
        }
    }
}

impl State {
    /// This sender stops for good: adds what its schedule asked for until now to the run's
    /// scheduled sends (scenarios at a constant rate; `step` checks its senders per step), so
    /// that a generator whose senders fell behind is told from a server that was slow.
    pub(super) fn stop_schedule(&mut self, run: &Run) {
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

    /// Deliveries still owed to this client by senders that have stopped, and the echoes of its
    /// own messages.
    pub(super) fn owed(&self, run: &Run) -> u64 {
        let room = &run.rooms[self.room];
        let others: u64 = self
            .tracks
            .iter()
            .enumerate()
            .filter(|(s, _)| Some(*s) != self.slot)
            .map(|(s, t)| {
                let end = room.senders[s].sent.load(Ordering::Acquire);
                end.saturating_sub(t.start).saturating_sub(t.in_window)
            })
            .sum();
        // Its own messages not yet echoed: a server may acknowledge later than it delivers to
        // the others (tidechat's durable store waits for the disk).
        others + self.sent.saturating_sub(self.acks)
    }

    pub(super) fn on_text(&mut self, run: &Run, frame: &[u8]) {
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
    pub(super) fn disconnected(&mut self, run: &Run, why: String) {
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

    pub(super) async fn flush_samples(&mut self, user: &mut GooseUser) -> TransactionResult {
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
    pub(super) fn finish(&self, run: &Run) {
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
