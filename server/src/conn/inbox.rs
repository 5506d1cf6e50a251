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
            evicted: Vec::new(),
        }
    }
}

/// What an inbox item must offer so the hub can queue an eviction.
pub trait FromEviction {
    fn eviction(room: Arc<str>) -> Self;
}

impl<T> Inbox<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item`, waiting while the queue is full.
    pub async fn send(&self, item: T) {
        let mut item = Some(item);
        futures::future::poll_fn(|cx| {
            let mut st = self.lock();
            if st.queue.len() >= CAPACITY {
                self.reader.register(cx.waker());
                if st.queue.len() >= CAPACITY {
                    return Poll::Pending;
                }
            }
            // unwrap: the item is taken only here, once, and then Ready is returned.
            st.queue.push_back(item.take().unwrap());
            drop(st);
            self.writer.wake();
            Poll::Ready(())
        })
        .await
    }

    /// Queues `item` at once, past the capacity (for a bounded number of items).
    pub fn push(&self, item: T) {
        self.lock().queue.push_back(item);
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
        let full = st.queue.len() >= CAPACITY;
        let item = st.queue.pop_front();
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

    /// Rooms lost to a resume since the last call.
    pub fn take_evicted(&self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.lock().evicted)
    }
}

impl<T: FromEviction + Send + std::fmt::Debug> Evict for Inbox<T> {
    fn evict(&self, room: Arc<str>) {
        let mut st = self.lock();
        st.evicted.push(room.clone());
        st.queue.push_back(T::eviction(room));
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
        Evicted(Arc<str>),
    }

    impl FromEviction for Item {
        fn eviction(room: Arc<str>) -> Self {
            Item::Evicted(room)
        }
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
