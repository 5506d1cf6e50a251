//! State shared by every simulated client of one run: who is in which room, each sender's
//! message count, the start barrier, histograms and counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Notify, Semaphore};

use crate::config::{Params, Protocol};
use crate::metrics::{self, Events, Shards, Tally};

/// Not started yet (value of [`Run::send_start_us`]).
const NOT_STARTED: u64 = u64::MAX;
/// Pause between the last join and the first message, so that every server has subscribed the
/// last members (the seed and raw protocols have no `joined` reply to wait for).
const SETTLE_V1: Duration = Duration::from_millis(50);
const SETTLE_SEED: Duration = Duration::from_millis(300);

/// One sender's place in its room.
#[derive(Debug, Default)]
pub struct SenderSlot {
    /// Messages sent so far; the next message's sequence number.
    pub sent: AtomicU64,
    /// The sender has stopped for good (run over, disconnected or never connected).
    pub done: AtomicBool,
}

/// A room of the run.
#[derive(Debug)]
pub struct Room {
    pub name: String,
    pub senders: Vec<SenderSlot>,
    /// Clients that joined and are still connected.
    pub members: AtomicUsize,
}

impl Room {
    pub fn senders_done(&self) -> bool {
        self.senders.iter().all(|s| s.done.load(Ordering::Acquire))
    }
}

/// Per-step counts of the `step` scenario. A message belongs to the step its send time (the
/// time in its stamp) falls in, on the sender's side and on every receiver's, so deliveries
/// still in flight when the next step begins are counted in the step that sent them.
#[derive(Debug)]
pub struct StepCounts {
    /// Deliveries owed for messages sent in this step.
    pub expected: AtomicU64,
    pub sent: AtomicU64,
    /// Sends more than [`crate::client::LATE_SEND_US`] behind schedule.
    pub late: AtomicU64,
    /// How late senders were against their schedule, microseconds.
    pub lag: Mutex<Histogram<u64>>,
}

impl Default for StepCounts {
    fn default() -> Self {
        Self {
            expected: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            late: AtomicU64::new(0),
            lag: Mutex::new(metrics::new_step_histogram()),
        }
    }
}

/// Everything clients share during one run.
pub struct Run {
    pub params: Params,
    /// Websocket URLs of the targets; client `i` connects to the one [`Run::target_of`] names.
    pub targets: Vec<String>,
    /// Tells this run's rooms (and stamps) from another run's against the same server.
    pub tag: u16,
    /// The one monotonic clock of the process: messages carry microseconds since this instant.
    pub epoch: Instant,
    pub rooms: Vec<Room>,
    pub shards: Shards,
    /// Time from starting to connect to a usable socket (after `hello` on v1), microseconds.
    pub connect_hist: Mutex<Histogram<u64>>,
    /// Time from `join` to `joined`.
    pub join_hist: Mutex<Histogram<u64>>,
    /// How late senders were against their schedule.
    pub send_lag_hist: Mutex<Histogram<u64>>,
    /// Connect failures by reason.
    pub connect_failures: Events,
    /// Connections that ended before the run did, by close code or error.
    pub disconnects: Events,
    /// Error frames received, by code.
    pub error_frames: Events,
    pub tally: Mutex<Tally>,
    /// Clients ready to receive (joined), and clients that failed to get there.
    pub joined: AtomicUsize,
    pub failed: AtomicUsize,
    /// When the last client joined or gave up, microseconds since `epoch`.
    pub last_settled_us: AtomicU64,
    /// Sockets open now.
    pub open: AtomicUsize,
    /// Most sockets open at once.
    pub peak_open: AtomicUsize,
    pub handshakes: Semaphore,
    /// When senders start, in microseconds since `epoch` ([`NOT_STARTED`] until then).
    send_start_us: AtomicU64,
    pub started: Notify,
    /// Set by the `step` controller when a bound was exceeded: senders stop.
    pub stop_sending: AtomicBool,
    /// When the last sender stopped, microseconds since `epoch` (0: not yet).
    pub send_end_us: AtomicU64,
    pub sends: AtomicU64,
    /// Sends the schedule asked for, added by each sender when it stops (constant-rate
    /// scenarios).
    pub scheduled_sends: AtomicU64,
    /// Every this many deliveries a client gives goose one sample (follows the rate of the
    /// `step` scenario).
    pub sample_every: AtomicU64,
    pub steps: Vec<StepCounts>,
}

impl Run {
    pub fn new(params: Params, targets: Vec<String>) -> Arc<Self> {
        // A tag per run keeps two runs against one server out of each other's rooms.
        let tag = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
            .unwrap_or(0) as u16;
        let rooms = (0..params.rooms)
            .map(|r| {
                let senders = senders_in_room(params.senders, params.rooms, r);
                Room {
                    name: format!("lt{tag:04x}-{r}"),
                    senders: (0..senders).map(|_| SenderSlot::default()).collect(),
                    members: AtomicUsize::new(0),
                }
            })
            .collect();
        let sample_every = AtomicU64::new(sample_every(&params, params.msg_rate));
        let steps = params
            .step
            .as_ref()
            .map(|s| (0..s.max_steps).map(|_| StepCounts::default()).collect())
            .unwrap_or_default();
        Arc::new(Self {
            handshakes: Semaphore::new(params.max_handshakes),
            params,
            targets,
            tag,
            epoch: Instant::now(),
            rooms,
            shards: Shards::default(),
            connect_hist: Mutex::new(metrics::new_histogram()),
            join_hist: Mutex::new(metrics::new_histogram()),
            send_lag_hist: Mutex::new(metrics::new_histogram()),
            connect_failures: Events::default(),
            disconnects: Events::default(),
            error_frames: Events::default(),
            tally: Mutex::new(Tally::default()),
            joined: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            last_settled_us: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            peak_open: AtomicUsize::new(0),
            send_start_us: AtomicU64::new(NOT_STARTED),
            started: Notify::new(),
            stop_sending: AtomicBool::new(false),
            send_end_us: AtomicU64::new(0),
            sends: AtomicU64::new(0),
            scheduled_sends: AtomicU64::new(0),
            sample_every,
            steps,
        })
    }

    /// Deliveries per goose sample.
    pub fn sample_every(&self) -> u64 {
        self.sample_every.load(Ordering::Relaxed).max(1)
    }

    /// Adapts goose sampling to a new per-sender rate (`step`).
    pub fn set_rate(&self, msg_rate: f64) {
        self.sample_every
            .store(sample_every(&self.params, msg_rate), Ordering::Relaxed);
    }

    /// Microseconds since the run's epoch.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    pub fn instant_at(&self, us: u64) -> Instant {
        self.epoch + Duration::from_micros(us)
    }

    /// Which target user `index` connects to: round-robin within each room, so that a room's
    /// members (users `r`, `r + rooms`, `r + 2 rooms`, ...) are spread over every target.
    pub fn target_of(&self, index: usize) -> usize {
        (index / self.params.rooms) % self.targets.len().max(1)
    }

    /// Which room user `index` is in and, when it sends, its slot among the room's senders.
    pub fn role(&self, index: usize) -> (usize, Option<usize>) {
        let rooms = self.params.rooms;
        let room = index % rooms;
        let slot = (index < self.params.senders).then_some(index / rooms);
        (room, slot)
    }

    /// When senders start (microseconds since epoch), once they may.
    pub fn send_start(&self) -> Option<u64> {
        match self.send_start_us.load(Ordering::Acquire) {
            NOT_STARTED => None,
            us => Some(us),
        }
    }

    /// Lets senders start (after a short settle), once.
    pub fn start_sending(&self) {
        let settle = match self.params.protocol {
            Protocol::V1 => SETTLE_V1,
            Protocol::Seed | Protocol::Raw => SETTLE_SEED,
        };
        let at = self.now_us() + settle.as_micros() as u64;
        if self
            .send_start_us
            .compare_exchange(NOT_STARTED, at, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            crate::sys::release_free_memory();
            self.started.notify_waiters();
        }
    }

    /// A client joined or gave up: start the senders when every client has done one or the other.
    pub fn client_settled(&self, joined: bool) {
        if joined {
            self.joined.fetch_add(1, Ordering::AcqRel);
        } else {
            self.failed.fetch_add(1, Ordering::AcqRel);
        }
        self.last_settled_us
            .fetch_max(self.now_us(), Ordering::AcqRel);
        let settled = self.joined.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire);
        if settled >= self.params.users {
            self.start_sending();
        }
    }

    pub fn socket_opened(&self) {
        let now = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_open.fetch_max(now, Ordering::AcqRel);
    }

    pub fn socket_closed(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    /// Marks a sender slot finished; records when the last one did.
    pub fn sender_done(&self, room: usize, slot: usize) {
        let r = &self.rooms[room];
        if !r.senders[slot].done.swap(true, Ordering::AcqRel)
            && self.rooms.iter().all(Room::senders_done)
        {
            let _ = self.send_end_us.compare_exchange(
                0,
                self.now_us(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// The step (of the `step` scenario) a send time falls in; `None` in the pause after a
    /// step and after the last.
    pub fn step_of(&self, send_us: u64) -> Option<usize> {
        let s = self.params.step.as_ref()?;
        let start = self.send_start()?;
        let t = send_us.saturating_sub(start) as f64 / 1e6;
        let period = s.period_s();
        let i = (t / period) as usize;
        (i < s.max_steps && t - i as f64 * period < s.step_time_s).then_some(i)
    }

    /// When the first step after `us` starts, if one does.
    pub fn next_step_start(&self, us: u64) -> Option<u64> {
        let s = self.params.step.as_ref()?;
        let start = self.send_start()?;
        let period = s.period_s();
        let i = (us.saturating_sub(start) as f64 / 1e6 / period) as usize + 1;
        (i < s.max_steps).then(|| start + (i as f64 * period * 1e6) as u64)
    }

    /// A sender's rate at a send time: constant, or growing every step.
    pub fn rate_at(&self, send_us: u64) -> f64 {
        match (self.step_of(send_us), &self.params.step) {
            (Some(i), Some(s)) => s.rate(self.params.msg_rate, i),
            (None, Some(_)) => 0.0,
            _ => self.params.msg_rate,
        }
    }

    pub fn add_tally(&self, t: &Tally) {
        let mut g = match self.tally.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        g.add(t);
    }

    pub fn record_into(h: &Mutex<Histogram<u64>>, us: u64) {
        let mut g = match h.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        metrics::record(&mut g, us);
    }
}

/// Deliveries per goose sample at `msg_rate` per sender: about 500 goose samples a second,
/// enough for its percentiles and cheap to aggregate.
fn sample_every(params: &Params, msg_rate: f64) -> u64 {
    let per_room = params.users as f64 / params.rooms as f64;
    let offered = params.senders as f64 * msg_rate * (per_room - 1.0).max(0.0);
    (offered / 500.0).ceil().max(1.0) as u64
}

/// Senders of room `r` when `senders` are dealt round-robin over `rooms`.
pub fn senders_in_room(senders: usize, rooms: usize, r: usize) -> usize {
    senders / rooms + usize::from(r < senders % rooms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn steps_pause_between() {
        let cli = crate::Cli::try_parse_from([
            "loadtest",
            "--scenario",
            "step",
            "--step-time",
            "2s",
            "--max-steps",
            "3",
        ])
        .unwrap();
        let params = cli.options.plan(&cli.goose).map(|p| p.params).unwrap();
        let run = Run::new(params, vec!["ws://127.0.0.1:9/ws".into()]);
        run.start_sending();
        let s0 = run.send_start().unwrap();
        // 2 s steps, judged 1 s after their end, the next 0.2 s later: period 3.2 s.
        let at = |secs: f64| s0 + (secs * 1e6) as u64;
        assert_eq!(run.step_of(at(0.0)), Some(0));
        assert_eq!(run.step_of(at(1.99)), Some(0));
        assert_eq!(run.step_of(at(2.5)), None);
        assert_eq!(run.rate_at(at(2.5)), 0.0);
        assert_eq!(run.next_step_start(at(2.5)), Some(at(3.2)));
        assert_eq!(run.step_of(at(3.3)), Some(1));
        assert_eq!(run.rate_at(at(3.3)), 10.0);
        assert_eq!(run.step_of(at(6.5)), Some(2));
        assert_eq!(run.next_step_start(at(6.5)), None);
        assert_eq!(run.step_of(at(9.7)), None);
    }
}
