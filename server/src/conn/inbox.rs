//! A connection's inbox: what its reader (replies, subscriptions, close) and the hub (evictions)
//! hand to its writer.
//!
//! Reader and writer are two futures in one task, so a mutex-protected queue and the task's waker
//! are all that is needed. Two `async_channel`s per connection did the same for ~2.8 KiB more
//! memory each (their slots are allocated up front and their queues are cache-padded; measured
//! with valgrind massif at 1,000 idle connections).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;

use crate::hub::Evict;

/// Replies the reader may queue before it waits for the writer, so a client that floods
/// requests but does not read is held back instead of growing memory.
const CAPACITY: usize = 16;
/// Bytes of replies the reader may queue before it waits: a `joined` or `history` frame can be
/// ~300 KiB, so the count alone would let a non-reading client park ~5 MiB here. One item is
/// always accepted into an empty queue, however big.
pub const MAX_BYTES: usize = 1024 * 1024;

/// Shared by the reader, the writer and (through [`Evict`]) the hub.
#[derive(Debug)]
pub struct Inbox<T> {
    state: Mutex<State<T>>,
    /// Woken when something is queued.
    writer: AtomicWaker,
    /// Woken when the queue has room again.
    reader: AtomicWaker,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<T>,
    /// Sum of the queued items' [`Cost`].
    bytes: usize,
    /// Rooms this connection lost to a resume, for the reader to forget.
    evicted: Vec<Arc<str>>,
}

impl<T> Default for Inbox<T> {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            writer: AtomicWaker::new(),
            reader: AtomicWaker::new(),
        }
    }
}

impl<T> Default for State<T> {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            evicted: Vec::new(),
        }
    }
}

/// What an inbox item must offer so the hub can queue an eviction.
pub trait FromEviction {
    fn eviction(room: Arc<str>) -> Self;
}

/// The bytes an inbox item will cost to send, for [`MAX_BYTES`].
pub trait Cost {
    fn cost(&self) -> usize;
}

impl<T> State<T> {
    fn full(&self) -> bool {
        self.queue.len() >= CAPACITY || (self.bytes >= MAX_BYTES && !self.queue.is_empty())
    }
}

impl<T: Cost> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, waiting while the queue is full (by count or by bytes).
    pub async fn send(&self, item: T) {
        let mut item = Some(item);
        futures::future::poll_fn(|cx| {
            let mut st = self.lock();
            if st.full() {
                self.reader.register(cx.waker());
                if st.full() {
                    return Poll::Pending;
                }
            }
            // unwrap: the item is taken only here, once, and then Ready is returned.
            let item = item.take().unwrap();
            st.bytes += item.cost();
            st.queue.push_back(item);
            drop(st);
            self.writer.wake();
            Poll::Ready(())
        })
        .await
    }

    /// Queues `item` at once, past the capacity (for a bounded number of items).
    pub fn push(&self, item: T) {
        let mut st = self.lock();
        st.bytes += item.cost();
        st.queue.push_back(item);
        drop(st);
        self.writer.wake();
    }

    /// Takes the next item, registering the writer's waker when there is none.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<T> {
        if let Some(item) = self.try_next() {
            return Poll::Ready(item);
        }
        self.writer.register(cx.waker());
        match self.try_next() {
            Some(item) => Poll::Ready(item),
            None => Poll::Pending,
        }
    }

    /// Takes the next item, if any.
    pub fn try_next(&self) -> Option<T> {
        let mut st = self.lock();
        let full = st.full();
        let item = st.queue.pop_front();
        if let Some(item) = &item {
            st.bytes -= item.cost();
        }
        if st.queue.is_empty() && st.queue.capacity() > 0 {
            // Replies are rare; an idle connection keeps no queue memory (~700 B each).
            st.queue = VecDeque::new();
        }
        drop(st);
        if full && item.is_some() {
            self.reader.wake();
        }
        item
    }

    /// Registers the writer's waker (as [`Inbox::poll_next`] does when it finds nothing).
    pub fn register_writer(&self, waker: &std::task::Waker) {
        self.writer.register(waker);
    }

    /// Wakes the writer, for something that is not in the queue.
    pub fn wake_writer(&self) {
        self.writer.wake();
    }

    /// Rooms lost to a resume since the last call.
    pub fn take_evicted(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.lock().evicted)
    }
}

impl<T: FromEviction + Cost + Send + std::fmt::Debug> Evict for Inbox<T> {
    fn evict(&self, room: Arc<str>) {
        let mut st = self.lock();
        st.evicted.push(room.clone());
        let item = T::eviction(room);
        st.bytes += item.cost();
        st.queue.push_back(item);
        drop(st);
        self.writer.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[derive(Debug, PartialEq)]
    enum Item {
        N(usize),
        /// An item of this many bytes.
        Big(usize),
        Evicted(Arc<str>),
    }

    impl FromEviction for Item {
        fn eviction(room: Arc<str>) -> Self {
            Item::Evicted(room)
        }
    }

    impl Cost for Item {
        fn cost(&self) -> usize {
            match self {
                Item::Big(n) => *n,
                _ => 1,
            }
        }
    }

    #[test]
    fn send_waits_while_the_bytes_are_over_the_bound() {
        let inbox = Inbox::<Item>::default();
        // One item always fits into an empty queue, however big.
        assert!(inbox
            .send(Item::Big(2 * MAX_BYTES))
            .now_or_never()
            .is_some());
        let mut blocked = Box::pin(inbox.send(Item::Big(10)));
        assert!((&mut blocked).now_or_never().is_none());
        assert_eq!(inbox.try_next(), Some(Item::Big(2 * MAX_BYTES)));
        assert!(blocked.now_or_never().is_some());
        // Below the bound, items queue until their bytes reach it.
        let third = MAX_BYTES / 3 + 1;
        for _ in 0..3 {
            assert!(inbox.send(Item::Big(third)).now_or_never().is_some());
        }
        assert!(inbox.send(Item::Big(1)).now_or_never().is_none());
        assert_eq!(inbox.try_next(), Some(Item::Big(10)));
        assert_eq!(inbox.try_next(), Some(Item::Big(third)));
        assert!(inbox.send(Item::Big(1)).now_or_never().is_some());
    }

    #[test]
    fn send_waits_when_full_and_resumes_after_a_take() {
        let inbox = Inbox::<Item>::default();
        for i in 0..CAPACITY {
            assert!(inbox.send(Item::N(i)).now_or_never().is_some());
        }
        let mut blocked = Box::pin(inbox.send(Item::N(99)));
        assert!((&mut blocked).now_or_never().is_none());
        assert_eq!(inbox.try_next(), Some(Item::N(0)));
        assert!(blocked.now_or_never().is_some());
        let rest: Vec<_> = std::iter::from_fn(|| inbox.try_next()).collect();
        assert_eq!(rest.len(), CAPACITY);
        assert_eq!(rest.last(), Some(&Item::N(99)));
    }

    #[test]
    fn evictions_reach_writer_and_reader() {
        let inbox = Inbox::<Item>::default();
        inbox.evict("lobby".into());
        assert_eq!(inbox.try_next(), Some(Item::Evicted("lobby".into())));
        assert_eq!(inbox.take_evicted(), vec![Arc::<str>::from("lobby")]);
        assert!(inbox.take_evicted().is_empty());
    }
}
