//! Group commit: which appends are durable, and the thread that makes them so.
//!
//! Each append to a durable store takes a ticket (a global sequence number) *after* the store
//! has handed it to the OS. The committer thread loops: read the newest ticket, sync the store
//! once, publish that ticket as durable. Whatever was appended during one sync is the next batch,
//! so a busy server does one sync per batch and an idle one waits for nothing. A sender's own
//! echo waits for its ticket ([`Commits::wait`]); nobody else's delivery does.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use event_listener::{Event, Listener};

use super::HistoryStore;

/// Most appends that may wait for a sync at once: a publisher waits ([`Commits::room`]) beyond
/// it. It bounds what a power loss can take, and so how far ids must jump after one
/// ([`super::durable::LOST_JUMP`]).
pub const MAX_UNSYNCED: u64 = 1 << 16;

/// Tickets handed out and made durable.
#[derive(Debug, Default)]
pub struct Commits {
    appended: AtomicU64,
    durable: AtomicU64,
    /// Set when a sync failed: nothing new becomes durable until the store works again.
    failed: AtomicBool,
    /// Syncs that failed since start.
    failures: AtomicU64,
    stop: AtomicBool,
    /// Wakes the committer (new appends, stop) and the waiters (new durable tickets).
    work: Event,
    done: Event,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Commits {
    /// The ticket of an append the store has just taken.
    pub fn appended(&self) -> u64 {
        let t = self.appended.fetch_add(1, Ordering::AcqRel) + 1;
        self.work.notify(1);
        t
    }

    /// The newest ticket handed out (durable once everything appended so far is).
    pub fn latest(&self) -> u64 {
        self.appended.load(Ordering::Acquire)
    }

    /// Whether the append with ticket `t` is durable (0: nothing to wait for).
    pub fn is_durable(&self, t: u64) -> bool {
        t <= self.durable.load(Ordering::Acquire)
    }

    /// Waits until ticket `t` is durable.
    pub async fn wait(&self, t: u64) {
        while !self.is_durable(t) {
            let listener = self.done.listen();
            if self.is_durable(t) {
                return;
            }
            listener.await;
        }
    }

    /// Waits while [`MAX_UNSYNCED`] appends wait for a sync (a disk that stalls holds senders
    /// back instead of letting unsynced messages pile up).
    pub async fn room(&self) {
        let behind = || {
            self.appended.load(Ordering::Acquire) - self.durable.load(Ordering::Acquire)
                >= MAX_UNSYNCED
        };
        while behind() {
            let listener = self.done.listen();
            if !behind() {
                return;
            }
            listener.await;
        }
    }

    /// Syncs that failed since start.
    pub fn sync_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Whether the last sync failed.
    pub fn failing(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Starts the committer thread for `store` (only a durable store needs one).
    pub fn start(self: &Arc<Self>, store: Arc<dyn HistoryStore>) {
        let me = self.clone();
        let handle = std::thread::Builder::new()
            .name("tidechat-commit".into())
            .spawn(move || me.run(&*store))
            // unwrap: a thread that cannot start at boot leaves nothing to serve.
            .expect("start the committer thread");
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    fn run(&self, store: &dyn HistoryStore) {
        let mut backoff = Duration::from_millis(10);
        loop {
            let target = self.appended.load(Ordering::Acquire);
            if target <= self.durable.load(Ordering::Acquire) {
                if self.stop.load(Ordering::Acquire) {
                    return;
                }
                let listener = self.work.listen();
                if self.appended.load(Ordering::Acquire) == target
                    && !self.stop.load(Ordering::Acquire)
                {
                    listener.wait();
                }
                continue;
            }
            match store.sync() {
                Ok(()) => {
                    if self.failed.swap(false, Ordering::AcqRel) {
                        log::warn!("history store syncs again");
                    }
                    backoff = Duration::from_millis(10);
                    self.durable.store(target, Ordering::Release);
                    self.done.notify(usize::MAX);
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    if !self.failed.swap(true, Ordering::AcqRel) {
                        log::error!("{e}; senders get no acknowledgement until it works again");
                    }
                    if self.stop.load(Ordering::Acquire) {
                        return;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Makes every append so far durable (when the store works) and stops the committer.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.work.notify(usize::MAX);
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}
