//! Two futures in one task; the first is polled only when its own waker fired.
//!
//! `futures::future::select` polls both futures on every wake-up. A connection's writer is woken
//! for every broadcast event, and polling the reader with it costs a `recv` syscall that finds
//! nothing each time; here the reader gets a waker of its own that marks it ready. The writer
//! is polled at every wake-up of the task: the reader's wake-ups (a frame from the client) are
//! few, and a flag of its own was one more allocation (48 B) per connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use futures::task::{waker_ref, ArcWake, AtomicWaker};

/// Marks the first side as woken and wakes the task.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl ArcWake for Flag {
    fn wake_by_ref(flag: &Arc<Self>) {
        flag.woken.store(true, Ordering::Release);
        flag.task.wake();
    }
}

/// Resolves with the output of whichever future finishes first; the other stays with the caller.
/// `a` is polled only when its own waker fired (and once at the start), `b` whenever the task
/// is polled.
pub fn race<'p, A: Future, B: Future>(a: Pin<&'p mut A>, b: Pin<&'p mut B>) -> Race<'p, A, B> {
    Race {
        a,
        b,
        // Ready at first: `a` must be polled once to register its interest.
        flag: Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }),
    }
}

/// See [`race`]. A struct rather than an async fn, which kept its arguments twice (88 B against
/// 32 B, in every connection's future).
pub struct Race<'p, A, B> {
    a: Pin<&'p mut A>,
    b: Pin<&'p mut B>,
    flag: Arc<Flag>,
}

impl<A: Future, B: Future> Future for Race<'_, A, B> {
    type Output = Either<A::Output, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.flag.task.register(cx.waker());
        if this.flag.woken.swap(false, Ordering::AcqRel) {
            let waker = waker_ref(&this.flag);
            let mut own = Context::from_waker(&waker);
            if let Poll::Ready(out) = this.a.as_mut().poll(&mut own) {
                return Poll::Ready(Either::Left(out));
            }
        }
        if let Poll::Ready(out) = this.b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(out));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready after `ready_after` of them, waking itself each time.
    struct Counted<'a> {
        polls: &'a AtomicUsize,
        ready_after: usize,
        wake_self: bool,
    }

    impl Future for Counted<'_> {
        type Output = usize;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<usize> {
            let n = self.polls.fetch_add(1, Ordering::Relaxed) + 1;
            if n >= self.ready_after {
                return Poll::Ready(n);
            }
            if self.wake_self {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        }
    }

    /// A side ready at its 50th poll that wakes itself each time, and one that never is nor
    /// wakes, counting into `busy` and `idle`.
    fn busy_and_idle<'a>(busy: &'a AtomicUsize, idle: &'a AtomicUsize) -> [Counted<'a>; 2] {
        [
            Counted {
                polls: busy,
                ready_after: 50,
                wake_self: true,
            },
            Counted {
                polls: idle,
                ready_after: usize::MAX,
                wake_self: false,
            },
        ]
    }

    #[async_std::test]
    async fn the_first_side_is_not_polled_again_until_its_own_waker_fires() {
        let (busy, idle) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let [a, b] = busy_and_idle(&busy, &idle);
        futures::pin_mut!(a, b);
        // The idle side first: only that one has a waker of its own.
        match race(b, a).await {
            Either::Right(n) => assert_eq!(n, 50),
            Either::Left(_) => panic!("the idle side cannot finish"),
        }
        assert_eq!(
            idle.load(Ordering::Relaxed),
            1,
            "polled once to register, never again"
        );
    }

    #[async_std::test]
    async fn the_first_side_is_polled_when_its_own_waker_fires() {
        let (busy, idle) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let [a, b] = busy_and_idle(&busy, &idle);
        futures::pin_mut!(a, b);
        match race(a, b).await {
            Either::Left(n) => assert_eq!(n, 50),
            Either::Right(_) => panic!("the idle side cannot finish"),
        }
    }
}
