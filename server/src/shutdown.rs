//! The two signals every connection's writer waits for besides its inputs: the graceful
//! shutdown (set once; the writer then closes with 1001, and the upgrade route refuses new
//! websockets) and the pulse of the pings (the writer then pings and checks for silence).
//!
//! One clock for the whole server, not a timer per connection: a timer was 56 B in every
//! connection's future and ~80 B in the reactor's table, and a shutdown listener 16 B more and
//! a box. The connections are split into [`SHARDS`] by number, and the pulse wakes one shard
//! per `--ping-interval / SHARDS`, so each connection is pinged once per interval and the pings
//! of 10,000 connections are spread over the interval rather than sent at once. A connection
//! waits for both with one listener.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use event_listener::{Event, EventListener};
use futures::StreamExt;

/// Groups of connections the pulse wakes in turn.
pub const SHARDS: usize = 16;

/// What a connection's listener fired for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Its shard's turn: ping, check for silence.
    Tick,
    /// The shutdown has started.
    Shutdown,
}

/// Starts once; never resets.
#[derive(Debug)]
pub struct Shutdown {
    started: AtomicBool,
    shards: Box<[Event]>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            started: AtomicBool::new(false),
            shards: (0..SHARDS).map(|_| Event::new()).collect(),
        }
    }
}

impl Shutdown {
    /// Starts the shutdown and wakes every connection's listener.
    pub fn begin(&self) {
        self.started.store(true, Ordering::Release);
        for shard in &*self.shards {
            shard.notify(usize::MAX);
        }
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Wakes each shard in turn, one per `interval / SHARDS`, until the shutdown starts.
    pub async fn pulse(&self, interval: Duration) {
        let mut ticks = async_io::Timer::interval(interval / SHARDS as u32);
        for i in (0..SHARDS).cycle() {
            ticks.next().await;
            if self.started() {
                return;
            }
            self.wake(i);
        }
    }

    /// Shard `i`'s turn: each of its connections ticks once.
    fn wake(&self, i: usize) {
        self.shards[i].notify(usize::MAX);
    }

    /// Polls connection `conn`'s wait (`listener`, kept by the connection between polls):
    /// ready with [`Beat::Shutdown`] once the shutdown has started (at every poll from then
    /// on), or with [`Beat::Tick`] once the pulse came to its shard since the last tick.
    pub fn poll_beat(
        &self,
        conn: u64,
        listener: &mut Option<EventListener>,
        cx: &mut Context<'_>,
    ) -> Poll<Beat> {
        // Listening before the check: a `begin` after the check wakes this listener.
        let waiting = listener.get_or_insert_with(|| self.shards[shard(conn)].listen());
        if self.started() {
            return Poll::Ready(Beat::Shutdown);
        }
        match Pin::new(waiting).poll(cx) {
            Poll::Ready(()) => {
                *listener = None;
                Poll::Ready(match self.started() {
                    true => Beat::Shutdown,
                    false => Beat::Tick,
                })
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn shard(conn: u64) -> usize {
    (conn % SHARDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll(s: &Shutdown, conn: u64, l: &mut Option<EventListener>) -> Poll<Beat> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        s.poll_beat(conn, l, &mut cx)
    }

    #[test]
    fn waiters_see_the_start_whenever_they_began_waiting() {
        let s = Shutdown::default();
        let mut early = None;
        assert!(poll(&s, 1, &mut early).is_pending());
        s.begin();
        assert_eq!(poll(&s, 1, &mut early), Poll::Ready(Beat::Shutdown));
        assert_eq!(
            poll(&s, 1, &mut early),
            Poll::Ready(Beat::Shutdown),
            "and stays so"
        );
        assert_eq!(
            poll(&s, 2, &mut None),
            Poll::Ready(Beat::Shutdown),
            "a late waiter too"
        );
    }

    #[test]
    fn a_shards_turn_ticks_each_of_its_connections_once() {
        let s = Shutdown::default();
        // Two connections in every shard.
        let mut listeners: Vec<Option<EventListener>> = (0..2 * SHARDS).map(|_| None).collect();
        let ticks = |s: &Shutdown, listeners: &mut [Option<EventListener>]| {
            let mut ticked = Vec::new();
            for (c, l) in listeners.iter_mut().enumerate() {
                match poll(s, c as u64, l) {
                    Poll::Ready(Beat::Tick) => ticked.push(c),
                    Poll::Ready(Beat::Shutdown) => panic!("not shutting down"),
                    Poll::Pending => {}
                }
            }
            ticked
        };
        assert!(
            ticks(&s, &mut listeners).is_empty(),
            "nothing before a turn"
        );
        s.wake(3);
        assert_eq!(ticks(&s, &mut listeners), [3, 3 + SHARDS]);
        assert!(ticks(&s, &mut listeners).is_empty(), "once per turn");
        s.wake(3);
        s.wake(SHARDS - 1);
        assert_eq!(
            ticks(&s, &mut listeners),
            [3, SHARDS - 1, 3 + SHARDS, 2 * SHARDS - 1]
        );
        s.begin();
        for (c, l) in listeners.iter_mut().enumerate() {
            assert_eq!(poll(&s, c as u64, l), Poll::Ready(Beat::Shutdown));
        }
    }

    #[async_std::test]
    async fn the_pulse_ends_with_the_shutdown() {
        let s = Shutdown::default();
        s.begin();
        // Returns at its first step (10 ms / SHARDS) instead of running forever.
        s.pulse(Duration::from_millis(10)).await;
    }
}
