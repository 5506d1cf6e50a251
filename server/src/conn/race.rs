//! Two futures in one task, each polled only when its own waker fired.
//!
//! `futures::future::select` polls both futures on every wake-up. A connection's writer is woken
//! for every broadcast event, and polling the reader with it costs a `recv` syscall that finds
//! nothing each time; here each side gets a waker of its own that marks it ready.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::Either;
use futures::task::{waker_ref, ArcWake, AtomicWaker};

/// Marks one side as woken and wakes the task.
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

impl Flag {
    fn new() -> Arc<Self> {
        // Both sides start out ready: each must be polled once to register its interest.
        Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        })
    }

    fn poll_side<F: Future>(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        fut: Pin<&mut F>,
    ) -> Poll<F::Output> {
        self.task.register(cx.waker());
        if !self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = waker_ref(self);
        fut.poll(&mut Context::from_waker(&waker))
    }
}

/// Resolves with the output of whichever future finishes first; the other stays with the caller.
pub fn race<'p, A: Future, B: Future>(a: Pin<&'p mut A>, b: Pin<&'p mut B>) -> Race<'p, A, B> {
    Race {
        a,
        b,
        fa: Flag::new(),
        fb: Flag::new(),
    }
}

/// See [`race`]. A struct rather than an async fn, which kept its arguments twice (88 B against
/// 32 B, in every connection's future).
pub struct Race<'p, A, B> {
    a: Pin<&'p mut A>,
    b: Pin<&'p mut B>,
    fa: Arc<Flag>,
    fb: Arc<Flag>,
}

impl<A: Future, B: Future> Future for Race<'_, A, B> {
    type Output = Either<A::Output, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(out) = this.fa.poll_side(cx, this.a.as_mut()) {
            return Poll::Ready(Either::Left(out));
        }
        if let Poll::Ready(out) = this.fb.poll_side(cx, this.b.as_mut()) {
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

    #[async_std::test]
    async fn a_side_that_is_not_woken_is_not_polled_again() {
        let (busy, idle) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let a = Counted {
            polls: &busy,
            ready_after: 50,
            wake_self: true,
        };
        let b = Counted {
            polls: &idle,
            ready_after: usize::MAX,
            wake_self: false,
        };
        futures::pin_mut!(a, b);
        match race(a, b).await {
            Either::Left(n) => assert_eq!(n, 50),
            Either::Right(_) => panic!("the idle side cannot finish"),
        }
        assert_eq!(
            idle.load(Ordering::Relaxed),
            1,
            "polled once to register, never again"
        );
    }
}
