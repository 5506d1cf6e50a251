//! Exact measurements kept outside goose: sharded HDR histograms of fan-out latency, delivery
//! counters, and the per-receiver bookkeeping that turns received sequence numbers into loss,
//! duplicate and out-of-order counts.
//!
//! Recording a delivery takes one uncontended lock of the calling thread's shard: each thread
//! (tokio worker) is given its own shard index on first use, so two workers never share one in
//! practice. Shards are merged when the run ends (and once a second for the timeline).

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use hdrhistogram::Histogram;

/// Largest latency a histogram holds, in microseconds (larger values are clamped to it).
pub const MAX_LATENCY_US: u64 = 120_000_000;
/// Significant digits kept by every histogram (0.1% relative error).
const SIGFIG: u8 = 3;
/// Most shards; each recording thread uses one (threads beyond this share). There are as many
/// as CPUs up to this (the generator's runtime has a worker per CPU): each shard's three
/// histograms take ~0.4 MiB, which at 1,000 clients was 3 KiB a client with 8 shards.
const MAX_SHARDS: usize = 8;

/// A latency histogram in microseconds with the crate's bounds.
pub fn new_histogram() -> Histogram<u64> {
    // unwrap: the bounds are constants that hdrhistogram accepts (low >= 1, high >= 2*low).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG).unwrap()
}

/// Significant digits of the per-step histograms of `step` (1% relative error, enough to hold
/// a step against its p99 bound): one takes 21 KiB instead of 147 KiB, and there are two per
/// step and shard, which at 3 digits cost ~3 KiB per client of 1,000.
const STEP_SIGFIG: u8 = 2;

/// A latency histogram for one step of `step`, microseconds, see [`STEP_SIGFIG`].
pub fn new_step_histogram() -> Histogram<u64> {
    // unwrap: constant bounds hdrhistogram accepts, as above.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, STEP_SIGFIG).unwrap()
}

/// Records `us` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, us: u64) {
    // saturating_record clamps to the highest trackable value instead of failing.
    h.saturating_record(us.max(1));
}

/// What one shard has seen.
pub struct Shard {
    /// Fan-out latency of every delivery to a receiver other than the sender, whole run.
    pub fanout: Histogram<u64>,
    /// The same, since the timeline last took it (reset every second).
    pub fanout_interval: Histogram<u64>,
    /// Sender's own copy: time from send to the sender receiving it back (its acknowledgement).
    pub ack: Histogram<u64>,
    /// Fan-out deliveries per step of the `step` scenario.
    pub by_step: Vec<Histogram<u64>>,
}

impl Shard {
    fn new() -> Self {
        Self {
            fanout: new_histogram(),
            fanout_interval: new_histogram(),
            ack: new_histogram(),
            by_step: Vec::new(),
        }
    }
}

/// Histograms sharded by recording thread.
pub struct Shards {
    shards: Vec<Mutex<Shard>>,
}

impl Default for Shards {
    fn default() -> Self {
        let n = crate::sys::cpus().clamp(1, MAX_SHARDS);
        Self {
            shards: (0..n).map(|_| Mutex::new(Shard::new())).collect(),
        }
    }
}

/// Gives each thread its own shard index.
static NEXT_THREAD_SLOT: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static THREAD_SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn thread_slot() -> usize {
    THREAD_SLOT.with(|slot| {
        let mut s = slot.get();
        if s == usize::MAX {
            s = NEXT_THREAD_SLOT.fetch_add(1, Ordering::Relaxed);
            slot.set(s);
        }
        s
    })
}

impl Shards {
    /// Runs `f` on this thread's shard.
    pub fn with<R>(&self, f: impl FnOnce(&mut Shard) -> R) -> R {
        // A poisoned shard only means another thread panicked while recording; the counts are
        // still usable.
        let mut shard = match self.shards[thread_slot() % self.shards.len()].lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut shard)
    }

    /// Merges every shard with `f` picking which histogram; `reset` empties it afterwards.
    pub fn merged(
        &self,
        reset: bool,
        f: impl Fn(&mut Shard) -> &mut Histogram<u64>,
    ) -> Histogram<u64> {
        let mut total = new_histogram();
        for shard in &self.shards {
            let mut shard = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let h = f(&mut shard);
            // unwrap: every histogram here has the same bounds, so adding cannot overflow them.
            total.add(&*h).unwrap();
            if reset {
                h.reset();
            }
        }
        total
    }

    /// Merged per-step histograms.
    pub fn merged_steps(&self) -> Vec<Histogram<u64>> {
        let mut out: Vec<Histogram<u64>> = Vec::new();
        for shard in &self.shards {
            let shard = match shard.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for (i, h) in shard.by_step.iter().enumerate() {
                while out.len() <= i {
                    out.push(new_step_histogram());
                }
                // unwrap: same bounds, as above.
                out[i].add(h).unwrap();
            }
        }
        out
    }
}

/// Sequence bookkeeping of one receiver for one sender: every sequence number received is
/// remembered, so a duplicate is found however late it comes.
///
/// A server that loses nothing and keeps order delivers one contiguous run of sequence numbers:
/// that run is two integers, and extending it is the whole cost of a delivery. Earlier runs
/// (before a gap) go to a range set, which stays empty on a sound server.
#[derive(Debug, Clone, Default)]
pub struct Track {
    /// The sender's count of messages sent when this receiver became a member: messages with a
    /// lower sequence number were not owed to it.
    pub start: u64,
    /// The latest contiguous run of received sequence numbers: `run_start..next`.
    run_start: u64,
    next: u64,
    /// Sequence numbers received before the latest run.
    older: rangemap::RangeSet<u64>,
    /// Distinct messages received with sequence >= start.
    pub in_window: u64,
    /// Distinct messages received with sequence < start (sent while the join was in flight).
    pub early: u64,
    pub duplicates: u64,
    /// Messages received after a later message of the same sender.
    pub out_of_order: u64,
}

/// What [`Track::receive`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate,
}

impl Track {
    pub fn new(start: u64) -> Self {
        Self {
            start,
            ..Self::default()
        }
    }

    /// Accounts for message `seq` from this sender.
    pub fn receive(&mut self, seq: u64) -> Seen {
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            // A gap: the run so far becomes history.
            if self.run_start < self.next {
                self.older.insert(self.run_start..self.next);
            }
            (self.run_start, self.next) = (seq, seq + 1);
        } else if seq >= self.run_start || self.older.contains(&seq) {
            self.duplicates += 1;
            return Seen::Duplicate;
        } else {
            self.older.insert(seq..seq + 1);
            self.out_of_order += 1;
        }
        if seq >= self.start {
            self.in_window += 1;
        } else {
            self.early += 1;
        }
        Seen::New
    }
}

/// Delivery counts of the whole run (or of one receiver).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Tally {
    /// Deliveries owed: for every message, each member of its room when it was sent (minus the
    /// sender).
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    pub duplicates: u64,
    /// Deliveries that arrived after a later message of the same sender.
    pub out_of_order: u64,
    /// The sender's own copies received (acknowledgements).
    pub acks: u64,
    /// Messages stamped for another room or another run: the server delivered them to the
    /// wrong place.
    pub foreign: u64,
    /// Frames that were neither a stamped message nor a known frame of the protocol.
    #[serde(default)]
    pub unrecognized: u64,
    /// Deliveries received beyond what was owed (a receiver counted more messages of a sender
    /// than it sent while the receiver was a member): an accounting error, never hidden.
    #[serde(default)]
    pub excess: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.expected += o.expected;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.acks += o.acks;
        self.foreign += o.foreign;
        self.unrecognized += o.unrecognized;
        self.excess += o.excess;
    }

    /// Lost deliveries as a fraction of expected ones.
    pub fn loss_ratio(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// Counts of rare events (connect failures, disconnects) by reason.
#[derive(Debug, Default)]
pub struct Events {
    inner: Mutex<BTreeMap<String, u64>>,
}

impl Events {
    pub fn add(&self, what: impl Into<String>) {
        let mut m = match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *m.entry(what.into()).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Percentiles of a histogram, in milliseconds, as reports show them.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// The percentile distribution (for the HTML plot): (percentile, milliseconds) pairs at
/// 1 - 10^-k steps.
pub fn distribution(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for v in h.iter_quantiles(2) {
        let q = v.quantile_iterated_to();
        out.push((q * 100.0, v.value_iterated_to() as f64 / 1000.0));
        if q >= 1.0 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn track_counts_dups_gaps_and_reordering() {
        let mut t = Track::new(2);
        assert_eq!(t.receive(0), Seen::New); // early
        assert_eq!(t.receive(2), Seen::New);
        assert_eq!(t.receive(2), Seen::Duplicate);
        assert_eq!(t.receive(5), Seen::New);
        assert_eq!(t.receive(4), Seen::New); // late
        assert_eq!(t.receive(4), Seen::Duplicate);
        assert_eq!(t.receive(500), Seen::New);
        assert_eq!(t.receive(3), Seen::New); // far back: new, out of order
        assert_eq!(t.receive(3), Seen::Duplicate);
        assert_eq!(t.receive(501), Seen::New);
        assert_eq!((t.early, t.in_window), (1, 6));
        assert_eq!((t.duplicates, t.out_of_order), (3, 2));
    }

    /// A duplicate is found however far back its first copy was.
    #[test]
    fn late_duplicates_are_found() {
        let mut t = Track::new(0);
        for seq in 0..10_000 {
            assert_eq!(t.receive(seq), Seen::New);
        }
        assert_eq!(t.receive(0), Seen::Duplicate);
        assert_eq!(t.receive(9_999), Seen::Duplicate);
        // A gap, then the missing ones late, then all again.
        for seq in (20_000..20_010).chain(10_000..10_005) {
            assert_eq!(t.receive(seq), Seen::New, "{seq}");
        }
        for seq in (0..10_005).step_by(997).chain(20_000..20_010) {
            assert_eq!(t.receive(seq), Seen::Duplicate, "{seq}");
        }
        assert_eq!(t.receive(10_005), Seen::New);
        assert_eq!(t.in_window, 10_016);
        assert_eq!(t.out_of_order, 6);
    }

    #[test]
    fn shards_merge() {
        let s = Shards::default();
        s.with(|sh| record(&mut sh.fanout, 1500));
        std::thread::scope(|sc| {
            sc.spawn(|| s.with(|sh| record(&mut sh.fanout, 2500)));
        });
        let m = s.merged(false, |sh| &mut sh.fanout);
        assert_eq!(m.len(), 2);
        let p = Percentiles::of(&m);
        assert!((p.max_ms - 2.5).abs() < 0.01, "{p:?}");
        assert!(!distribution(&m).is_empty());
    }
}
