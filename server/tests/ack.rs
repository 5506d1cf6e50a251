//! A sender's acknowledgement (its own echo) means "on disk"; nobody else's delivery waits for
//! the disk. The server runs over a durable history store whose sync is held shut by the test
//! (the real memory store inside; only the timing of `sync` is the test's), so the order is seen
//! on real sockets.

mod common;

use std::time::Duration;

use common::store::TestStore;
use common::*;
use tidechat::{Config, Server};

#[async_std::test]
async fn others_get_a_message_before_the_disk_and_the_sender_only_after() {
    let config = Config::default();
    let store = TestStore::new(config.retention());
    let s = TestServer::serve(Server::with_store(config, store.clone())).await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    assert_eq!(alice.recv().await["name"], "bob");

    store.gate(false);
    alice.say("r", "held").await;
    let got = bob.recv_type("message").await;
    assert_eq!(got["text"], "held", "bob does not wait for the disk");
    // Alice's echo (and anything after it on her connection) waits for the sync.
    let early = async_std::future::timeout(Duration::from_millis(300), alice.next()).await;
    assert!(
        early.is_err(),
        "alice got {early:?} before her message was on disk"
    );
    store.gate(true);
    let echo = alice.recv_type("message").await;
    assert_eq!(
        (echo["text"].as_str(), echo["id"].as_u64()),
        (Some("held"), Some(1))
    );

    // A joiner is shown history that holds someone's own message only once it is on disk.
    store.gate(false);
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
    store.gate(true);
    let joined = carol.recv_type("joined").await;
    assert_eq!(joined["last_id"], 2);

    // So does a `history` page.
    store.gate(false);
    alice.say("r", "third").await;
    assert_eq!(bob.recv_type("message").await["text"], "third");
    bob.send(serde_json::json!({"type": "history", "room": "r", "since": 0}))
        .await;
    let early = async_std::future::timeout(Duration::from_millis(300), bob.next()).await;
    assert!(
        early.is_err(),
        "bob's history page came before the sync: {early:?}"
    );
    store.gate(true);
    let page = bob.recv_type("history").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    s.stop().await;
}
