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

/// The pings' pulse coming while a sender's echo waits for the disk: the tick is kept for
/// after the wait, and the echo still comes (a writer once took the kept tick again for ever,
/// and its executor thread spun).
#[async_std::test]
async fn a_ping_tick_during_the_wait_for_the_disk_is_kept_and_the_echo_comes() {
    let config = Config {
        // The pulse steps every 10 ms: each connection's shard comes every 160 ms.
        ping_interval: Duration::from_millis(160),
        idle_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let store = TestStore::new(config.retention());
    let s = TestServer::serve(Server::with_store(config, store.clone())).await;
    let (mut alice, _) = s.join("r", "alice").await;
    store.gate(false);
    alice.say("r", "held").await;
    // Several of alice's ticks while her echo waits.
    async_std::task::sleep(Duration::from_millis(700)).await;
    store.gate(true);
    let echo = async_std::future::timeout(Duration::from_secs(5), alice.recv_type("message"))
        .await
        .expect("the echo after the disk");
    assert_eq!(echo["text"], "held");
    // And the writer pings on: the tick kept for after the wait was not lost for good.
    let ping = async_std::future::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(async_tungstenite::tungstenite::Message::Ping(_)) = alice.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "no ping after the wait");
    s.stop().await;
}
