//! A room's broadcast channel, bounded by bytes as well as by count.
//!
//! `async_broadcast` bounds a channel by its number of events only; an event stays queued until
//! every receiver has read it, so one lagging receiver pins up to `--room-buffer` events of up to
//! a serialized message each. [`RoomChannel`] keeps the sizes of the events still queued and,
//! when they hold more than `--room-buffer-bytes`, shrinks the channel's capacity to what fits
//! and restores it: `Sender::set_capacity` drops the oldest events and advances the channel's
//! head, so the receivers that had not read them see `Overflowed` (and are closed with 4008),
//! exactly as when the count overflows. The publisher never waits.
//!
//! `async_broadcast` allocates a channel's whole capacity up front (16 B a slot: 16 KiB a room
//! at the default 1,024, ~330 B per member in rooms of 50), so a room starts at
//! [`FIRST_CAPACITY`] and doubles only when a publish finds it full: a room whose members keep
//! up never grows past what they actually leave queued.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use async_broadcast::{InactiveReceiver, Receiver, Sender, TrySendError};

use crate::protocol::Wire;

/// One thing that happened in a room, rendered once for every receiver on this node.
#[derive(Debug)]
pub struct Event {
    /// The message's offset, or 0 for presence events.
    pub offset: u64,
    pub wire: Wire,
    /// The commit ticket the origin connection's copy waits for (0: none).
    pub ticket: u64,
    /// The connection that caused it (0: none).
    pub origin: u64,
    /// A presence change's sequence number (0: unnumbered); see [`super::broker::Delivery`].
    pub presence: u64,
    /// Not an event: the room's feed broke, and its members are to resume (close 4009).
    pub reset: bool,
    /// When the hub rendered it, for the fan-out histogram (`None` with `--metrics off`).
    pub published: Option<Instant>,
}

impl Event {
    /// What queueing this event costs.
    pub fn bytes(&self) -> usize {
        self.wire.bytes()
    }
}

/// Events as they travel through a room channel.
pub type EventRef = Arc<Event>;

/// The capacity a room's channel starts with (at most `--room-buffer`).
const FIRST_CAPACITY: usize = 16;

/// A room's channel: overflow mode (a lagging receiver loses the oldest events instead of making
/// the publisher wait), at most `capacity` events and about `max_bytes` bytes queued.
#[derive(Debug)]
pub struct RoomChannel {
    /// `--room-buffer`: what the channel may grow to.
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: Sender<EventRef>,
    /// The channel's capacity now: from [`FIRST_CAPACITY`], doubled while full, up to
    /// [`RoomChannel::capacity`].
    grown: usize,
    /// Payload bytes of the events still queued, oldest first (the last `tx.len()` published).
    sizes: VecDeque<usize>,
    bytes: usize,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every update below leaves `sizes` and `bytes` consistent before anything can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RoomChannel {
    /// A channel and the inactive receiver that keeps it open while nobody listens.
    pub fn new(capacity: usize, max_bytes: usize) -> (Self, InactiveReceiver<EventRef>) {
        let grown = capacity.min(FIRST_CAPACITY);
        let (mut tx, rx) = async_broadcast::broadcast(grown);
        tx.set_overflow(true);
        tx.set_await_active(false);
        let chan = RoomChannel {
            capacity,
            max_bytes,
            inner: Mutex::new(Inner {
                tx,
                grown,
                sizes: VecDeque::new(),
                bytes: 0,
            }),
        };
        (chan, rx.deactivate())
    }

    pub fn new_receiver(&self) -> Receiver<EventRef> {
        lock(&self.inner).tx.new_receiver()
    }

    /// The channel's capacity now (it grows from [`FIRST_CAPACITY`] to `--room-buffer`).
    #[cfg(test)]
    pub fn grown(&self) -> usize {
        lock(&self.inner).tx.capacity()
    }

    pub fn receiver_count(&self) -> usize {
        lock(&self.inner).tx.receiver_count()
    }

    /// Queues `ev` for every receiver without waiting, then drops the oldest events while the
    /// queue holds more than `max_bytes` (always keeping the newest).
    pub fn try_broadcast(&self, ev: EventRef) {
        let n = ev.bytes();
        let mut g = lock(&self.inner);
        if g.tx.len() >= g.grown && g.grown < self.capacity {
            // Full, but not yet at `--room-buffer`: make room instead of overflowing anyone.
            g.grown = (g.grown * 2).min(self.capacity);
            let grown = g.grown;
            g.tx.set_capacity(grown);
        }
        match g.tx.try_broadcast(ev) {
            Ok(_) => {
                g.sizes.push_back(n);
                g.bytes += n;
            }
            // Inactive: nobody listens, nothing was queued.
            Err(TrySendError::Inactive(_)) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => log::error!("room channel full despite overflow mode"),
        }
        // Receivers take events from the front (the last reader pops them), and so does the
        // overflow; only this method pushes, under this lock, so the queue is our newest entries.
        let queued = g.tx.len();
        while g.sizes.len() > queued {
            // unwrap: longer than `queued` >= 0, so not empty.
            let old = g.sizes.pop_front().unwrap();
            g.bytes -= old;
        }
        if g.bytes <= self.max_bytes {
            return;
        }
        while g.bytes > self.max_bytes && g.sizes.len() > 1 {
            // unwrap: the loop condition says there are at least two.
            let old = g.sizes.pop_front().unwrap();
            g.bytes -= old;
        }
        let keep = g.sizes.len();
        // A receiver may have popped more since `len()`; then fewer (or no) events are dropped,
        // and the next call counts again.
        let grown = g.grown;
        g.tx.set_capacity(keep);
        g.tx.set_capacity(grown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_broadcast::TryRecvError;
    use std::sync::Arc;

    fn event(id: u64, bytes: usize) -> EventRef {
        Arc::new(Event {
            offset: id,
            wire: Wire {
                v1: "x".repeat(bytes).into(),
                seed: None,
            },
            ticket: 0,
            origin: 0,
            presence: 0,
            reset: false,
            published: None,
        })
    }

    /// A lagging receiver overflows once the queued bytes pass the bound, long before the count
    /// does; a receiver that keeps up loses nothing.
    #[test]
    fn byte_bound_overflows_laggers_only() {
        let (chan, _keep) = RoomChannel::new(1024, 10_000);
        let mut slow = chan.new_receiver();
        let mut fast = chan.new_receiver();
        for id in 1..=25 {
            chan.try_broadcast(event(id, 1_000));
            assert_eq!(fast.try_recv().unwrap().offset, id);
        }
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Overflowed(15))));
        assert_eq!(slow.try_recv().unwrap().offset, 16);
        // Capacity is restored: small events queue up to the count again.
        for id in 26..=100 {
            chan.try_broadcast(event(id, 10));
        }
        let mut n = 0;
        while slow.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 9 + 75);
    }

    /// A room starts small and grows while a receiver lags, losing nothing until the lag passes
    /// `--room-buffer`; then the lagger overflows by exactly the excess.
    #[test]
    fn grows_while_full_and_overflows_only_at_the_room_buffer() {
        let (chan, _keep) = RoomChannel::new(100, usize::MAX);
        let mut slow = chan.new_receiver();
        let mut fast = chan.new_receiver();
        assert_eq!(chan.grown(), FIRST_CAPACITY);
        for id in 1..=FIRST_CAPACITY as u64 {
            chan.try_broadcast(event(id, 10));
            assert_eq!(fast.try_recv().unwrap().offset, id);
        }
        assert_eq!(chan.grown(), FIRST_CAPACITY, "not full before the 17th");
        for id in FIRST_CAPACITY as u64 + 1..=105 {
            chan.try_broadcast(event(id, 10));
            assert_eq!(fast.try_recv().unwrap().offset, id);
        }
        assert_eq!(
            chan.grown(),
            100,
            "16, 32, 64, then capped at the room buffer"
        );
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Overflowed(5))));
        for id in 6..=105 {
            assert_eq!(slow.try_recv().unwrap().offset, id);
        }
        assert!(matches!(slow.try_recv(), Err(TryRecvError::Empty)));
    }

    /// Receivers that keep up never make a room grow.
    #[test]
    fn a_room_that_keeps_up_stays_small() {
        let (chan, _keep) = RoomChannel::new(1024, usize::MAX);
        let mut rx = chan.new_receiver();
        for id in 1..=10_000 {
            chan.try_broadcast(event(id, 10));
            assert_eq!(rx.try_recv().unwrap().offset, id);
        }
        assert_eq!(chan.grown(), FIRST_CAPACITY);
    }

    /// The byte bound's shrink-and-restore keeps a grown channel's size, not the room buffer's.
    #[test]
    fn the_byte_bound_restores_the_grown_capacity() {
        let (chan, _keep) = RoomChannel::new(1024, 10_000);
        let _slow = chan.new_receiver();
        for id in 1..=40 {
            chan.try_broadcast(event(id, 100));
        }
        assert_eq!(chan.grown(), 64);
        chan.try_broadcast(event(41, 9_000));
        assert_eq!(chan.grown(), 64);
    }
}
