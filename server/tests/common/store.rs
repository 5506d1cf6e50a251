//! A history store for tests: the real memory store inside, reporting itself durable, whose
//! syncs a test can hold shut or make fail and whose appends it can make fail. So the server's
//! behaviour around the disk (acknowledgements, readiness, error counts) is seen on real
//! sockets without a disk to break.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tidechat::hub::position::StreamState;
use tidechat::hub::record::Publication;
use tidechat::hub::store::memory::MemoryStore;
use tidechat::hub::store::{HistoryStore, Read, Retention, StoreError};
use tidechat::hub::Page;

#[derive(Debug)]
pub struct TestStore {
    inner: MemoryStore,
    /// Syncs wait while this is false.
    open: Mutex<bool>,
    changed: Condvar,
    syncs_fail: AtomicBool,
    appends_fail: AtomicBool,
}

impl TestStore {
    pub fn new(retention: Retention) -> Arc<Self> {
        Arc::new(Self {
            inner: MemoryStore::new(retention),
            open: Mutex::new(true),
            changed: Condvar::new(),
            syncs_fail: AtomicBool::new(false),
            appends_fail: AtomicBool::new(false),
        })
    }

    /// Opens (`true`) or shuts (`false`) the gate that syncs wait at.
    pub fn gate(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.changed.notify_all();
    }

    /// Makes every sync fail (`true`) or work again.
    pub fn fail_syncs(&self, fail: bool) {
        self.syncs_fail.store(fail, Ordering::SeqCst);
    }

    /// Makes every append fail (`true`) or work again.
    pub fn fail_appends(&self, fail: bool) {
        self.appends_fail.store(fail, Ordering::SeqCst);
    }
}

impl HistoryStore for TestStore {
    fn open(&self, room: &Arc<str>) -> Result<StreamState, StoreError> {
        self.inner.open(room)
    }
    fn append(&self, p: &Arc<Publication>) -> Result<(), StoreError> {
        if self.appends_fail.load(Ordering::SeqCst) {
            return Err(StoreError::Failed("test: appends fail".into()));
        }
        self.inner.append(p)
    }
    fn read(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        bytes: usize,
    ) -> Result<Read, StoreError> {
        self.inner.read(room, page, max, bytes)
    }
    fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        self.inner.expire(now_ms)
    }
    fn forget(&self, room: &str) {
        self.inner.forget(room)
    }
    fn durable(&self) -> bool {
        true
    }
    fn sync(&self) -> Result<(), StoreError> {
        let open = self.open.lock().unwrap();
        drop(self.changed.wait_while(open, |open| !*open).unwrap());
        if self.syncs_fail.load(Ordering::SeqCst) {
            return Err(StoreError::Failed("test: syncs fail".into()));
        }
        Ok(())
    }
    fn close(&self) -> Result<(), StoreError> {
        self.gate(true);
        Ok(())
    }
    fn messages(&self) -> Option<u64> {
        self.inner.messages()
    }
}
