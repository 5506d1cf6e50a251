//! The graceful-shutdown signal: set once, seen by every connection's writer (which then closes
//! with 1001) and by the upgrade route (which then refuses new websockets).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};

use event_listener::Event;

/// Starts once; never resets.
#[derive(Debug, Default)]
pub struct Shutdown {
    started: AtomicBool,
    event: Event,
}

impl Shutdown {
    /// Starts the shutdown and wakes everyone waiting in [`Shutdown::wait`].
    pub fn begin(&self) {
        self.started.store(true, Ordering::Release);
        self.event.notify(usize::MAX);
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::Acquire)
    }

    /// Resolves once the shutdown has started (at once if it has). Boxed so that a connection
    /// can keep it across polls without naming its type.
    pub fn wait(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            loop {
                if self.started() {
                    return;
                }
                let listener = self.event.listen();
                if self.started() {
                    return;
                }
                listener.await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn waiters_see_the_start_whenever_they_began_waiting() {
        let s = Shutdown::default();
        let mut early = s.wait();
        assert!((&mut early).now_or_never().is_none());
        s.begin();
        assert!(early.now_or_never().is_some());
        assert!(s.wait().now_or_never().is_some(), "a late waiter too");
    }
}
