//! A sender's acknowledgement (its own echo) means "on disk"; nobody else's delivery waits for
//! the disk. The server runs over a durable history store whose sync is held shut by the test
//! (the real memory store inside; only the timing of `sync` is the test's), so the order is seen
//! on real sockets.

mod common;

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::*;
use tidechat::hub::position::StreamState;
use tidechat::hub::record::Publication;
use tidechat::hub::store::memory::MemoryStore;
use tidechat::hub::store::{HistoryStore, Read, StoreError};
use tidechat::hub::Page;
use tidechat::{Config, Server};

/// A durable store whose syncs wait until the test opens the gate.
#[derive(Debug)]
struct Gated {
    inner: MemoryStore,
    open: Mutex<bool>,
    changed: Condvar,
}

impl Gated {
    fn set(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.changed.notify_all();
    }
}

impl HistoryStore for Gated {
    fn open(&self, room: &Arc<str>) -> Result<StreamState, StoreError> {
        self.inner.open(room)
    }
    fn append(&self, p: &Arc<Publication>) -> Result<(), StoreError> {
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
        Ok(())
    }
    fn close(&self) -> Result<(), StoreError> {
        self.set(true);
        Ok(())
    }
}

#[async_std::test]
async fn others_get_a_message_before_the_disk_and_the_sender_only_after() {
    let config = Config::default();
    let store = Arc::new(Gated {
        inner: MemoryStore::new(config.retention()),
        open: Mutex::new(true),
        changed: Condvar::new(),
    });
    let s = TestServer::serve(Server::with_store(config, store.clone())).await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    assert_eq!(alice.recv().await["name"], "bob");

    store.set(false);
    alice.say("r", "held").await;
    let got = bob.recv_type("message").await;
    assert_eq!(got["text"], "held", "bob does not wait for the disk");
    // Alice's echo (and anything after it on her connection) waits for the sync.
    let early = async_std::future::timeout(Duration::from_millis(300), alice.next()).await;
    assert!(
        early.is_err(),
        "alice got {early:?} before her message was on disk"
    );
    store.set(true);
    let echo = alice.recv_type("message").await;
    assert_eq!(
        (echo["text"].as_str(), echo["id"].as_u64()),
        (Some("held"), Some(1))
    );

    // A joiner is shown history that holds someone's own message only once it is on disk.
    store.set(false);
    alice.say("r", "second").await;
    assert_eq!(bob.recv_type("message").await["text"], "second");
    let mut carol = s.connect().await;
    carol
        .send(serde_json::json!({"type": "join", "room": "r", "name": "carol"}))
        .await;
    let early = async_std::future::timeout(Duration::from_millis(300), carol.next()).await;
    assert!(
        early.is_err(),
        "carol's joined came before the sync: {early:?}"
    );
    store.set(true);
    let joined = carol.recv_type("joined").await;
    assert_eq!(joined["last_id"], 2);

    // So does a `history` page.
    store.set(false);
    alice.say("r", "third").await;
    assert_eq!(bob.recv_type("message").await["text"], "third");
    bob.send(serde_json::json!({"type": "history", "room": "r", "since": 0}))
        .await;
    let early = async_std::future::timeout(Duration::from_millis(300), bob.next()).await;
    assert!(
        early.is_err(),
        "bob's history page came before the sync: {early:?}"
    );
    store.set(true);
    let page = bob.recv_type("history").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    s.stop().await;
}
