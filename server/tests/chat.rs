//! Rooms, messages, presence, history and resume through a real server and real sockets.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;
use tidechat::Config;

#[async_std::test]
async fn say_reaches_everyone_in_order() {
    let s = TestServer::default().await;
    let (mut a, _) = s.join("lobby", "alice").await;
    let (mut b, joined_b) = s.join("lobby", "bob").await;
    let (mut c, joined_c) = s.join("lobby", "carol").await;
    assert_eq!(joined_b["member_count"], 2);
    assert_eq!(joined_c["member_count"], 3);
    let mut members: Vec<String> = serde_json::from_value(joined_c["members"].clone()).unwrap();
    members.sort();
    assert_eq!(members, ["alice", "bob", "carol"]);
    // bob and carol joined within one presence window: one frame or two.
    assert!(common::presence::next_change_of(&mut a, "bob").await);
    // Two senders interleave; everyone sees one order, ids 1..=10 without gaps.
    for i in 0..5 {
        a.say("lobby", &format!("a{i}")).await;
        b.say("lobby", &format!("b{i}")).await;
    }
    let mut seen = Vec::new();
    for client in [&mut a, &mut b, &mut c] {
        let mut texts = Vec::new();
        for id in 1..=10 {
            let m = client.recv_type("message").await;
            assert_eq!(m["id"], id, "{m}");
            assert_eq!(m["room"], "lobby");
            assert!(m["ts"].as_u64().unwrap() > 0);
            texts.push(m["text"].as_str().unwrap().to_string());
        }
        seen.push(texts);
    }
    assert!(seen.iter().all(|t| *t == seen[0]));
    for who in ["a", "b"] {
        let mine: Vec<_> = seen[0]
            .iter()
            .filter(|t| t.starts_with(who))
            .cloned()
            .collect();
        assert_eq!(
            mine,
            (0..5).map(|i| format!("{who}{i}")).collect::<Vec<_>>()
        );
    }
    s.stop().await;
}

#[async_std::test]
async fn sender_ref_is_echoed_as_acknowledgement() {
    let s = TestServer::default().await;
    let (mut a, _) = s.join("r1", "alice").await;
    a.send(json!({"type": "say", "room": "r1", "text": "hi", "ref": "c-1"}))
        .await;
    let m = a.recv_type("message").await;
    assert_eq!(
        (m["ref"].as_str(), m["id"].as_u64(), m["from"].as_str()),
        (Some("c-1"), Some(1), Some("alice"))
    );
    s.stop().await;
}

#[async_std::test]
async fn rooms_are_isolated() {
    let s = TestServer::default().await;
    let (mut a, _) = s.join("red", "alice").await;
    let (mut b, _) = s.join("blue", "bob").await;
    a.say("red", "in red").await;
    b.say("blue", "in blue").await;
    let ma = a.recv_type("message").await;
    let mb = b.recv_type("message").await;
    assert_eq!(
        (ma["text"].as_str(), ma["room"].as_str()),
        (Some("in red"), Some("red"))
    );
    assert_eq!(
        (mb["text"].as_str(), mb["room"].as_str()),
        (Some("in blue"), Some("blue"))
    );
    // Each room numbers its own messages, and nothing crossed: a ping round trip proves both
    // connections have nothing else queued before the pong.
    assert_eq!((ma["id"].as_u64(), mb["id"].as_u64()), (Some(1), Some(1)));
    for c in [&mut a, &mut b] {
        c.send(json!({"type": "ping", "ref": "p"})).await;
        assert_eq!(c.recv().await, json!({"type": "pong", "ref": "p"}));
    }
    s.stop().await;
}

#[async_std::test]
async fn one_connection_in_several_rooms() {
    let s = TestServer::default().await;
    let mut a = s.connect().await;
    a.join("one", "alice").await;
    a.join("two", "alice").await;
    let (mut b, _) = s.join("two", "bob").await;
    b.say("two", "to two").await;
    let m = a.recv_type("message").await;
    assert_eq!(
        (m["room"].as_str(), m["text"].as_str()),
        (Some("two"), Some("to two"))
    );
    a.send(json!({"type": "leave", "room": "two"})).await;
    assert_eq!(
        a.recv_type("left").await,
        json!({"type": "left", "room": "two", "reason": "left"})
    );
    assert!(!common::presence::next_change_of(&mut b, "alice").await);
    b.say("two", "after leave").await;
    b.recv_type("message").await;
    a.say("two", "not a member").await;
    assert_eq!(a.recv_type("error").await["code"], "not_in_room");
    s.stop().await;
}

#[async_std::test]
async fn presence_on_clean_close_and_on_reset() {
    // A dropped name is held for its token for the grace; `left` comes when it ends.
    let s = TestServer::start(Config {
        name_grace: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let (mut watcher, _) = s.join("lobby", "watcher").await;
    let (mut clean, _) = s.join("lobby", "clean").await;
    assert_eq!(watcher.recv().await["name"], "clean");
    clean.ws.close(None).await.unwrap();
    let (_marker, _) = s.join("lobby", "marker").await;
    assert_eq!(
        watcher.recv().await["name"],
        "marker",
        "no left during the grace"
    );
    let left = watcher.recv().await;
    assert_eq!(
        left,
        json!({"type": "presence", "room": "lobby", "name": "clean", "event": "left"})
    );

    let (rude, _) = s.join("lobby", "rude").await;
    assert_eq!(watcher.recv().await["name"], "rude");
    reset(rude);
    let left = watcher.recv().await;
    assert_eq!(
        left,
        json!({"type": "presence", "room": "lobby", "name": "rude", "event": "left"})
    );
    s.wait_stats("only the watcher and the marker left", |st| {
        st.hub.members == 2 && st.connections == 2
    })
    .await;
    s.stop().await;
}

#[async_std::test]
async fn join_replays_recent_history() {
    let s = TestServer::default().await;
    let (mut a, _) = s.join("lobby", "alice").await;
    for i in 0..3 {
        a.say("lobby", &format!("old {i}")).await;
        a.recv_type("message").await;
    }
    let (_b, joined) = s.join("lobby", "bob").await;
    let history = joined["history"].as_array().unwrap();
    let texts: Vec<_> = history
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["old 0", "old 1", "old 2"]);
    assert_eq!(history[2]["id"], 3);
    assert_eq!(joined["last_id"], 3);
    assert_eq!(joined["recovered"], false);
    s.stop().await;
}

#[async_std::test]
async fn resume_with_since_is_loss_free() {
    let s = TestServer::default().await;
    let (mut a, _) = s.join("lobby", "alice").await;
    let (mut b, joined) = s.join("lobby", "bob").await;
    let (epoch, token) = (joined["epoch"].clone(), joined["token"].clone());
    a.say("lobby", "seen").await;
    let seen = b.recv_type("message").await["id"].as_u64().unwrap();
    // bob's connection dies without a close; messages keep coming meanwhile.
    reset(b);
    for i in 0..5 {
        a.say("lobby", &format!("missed {i}")).await;
    }
    // alice's own copies ("seen" and the five) say all are published before bob comes back.
    for _ in 0..6 {
        a.recv_type("message").await;
    }
    let mut b = s.connect().await;
    b.send(json!({"type": "join", "room": "lobby", "name": "bob", "since": seen, "epoch": epoch, "token": token}))
        .await;
    let joined = b.recv_type("joined").await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let texts: Vec<_> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        texts,
        (0..5).map(|i| format!("missed {i}")).collect::<Vec<_>>()
    );
    // Live messages continue right after the replay, no gap, no duplicate.
    a.say("lobby", "live").await;
    let live = b.recv_type("message").await;
    assert_eq!(
        (live["text"].as_str(), live["id"].as_u64()),
        (Some("live"), Some(seen + 6))
    );
    s.stop().await;
}

#[async_std::test]
async fn resume_reports_incomplete_recovery() {
    let config = tidechat::Config {
        history: 3,
        ..tidechat::Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut a, joined) = s.join("lobby", "alice").await;
    let epoch = joined["epoch"].clone();
    for i in 0..6 {
        a.say("lobby", &format!("m{i}")).await;
        a.recv_type("message").await;
    }
    // Asking from id 1 when history starts at 4: gap lost.
    let mut b = s.connect().await;
    b.send(json!({"type": "join", "room": "lobby", "name": "bob", "since": 1, "epoch": epoch}))
        .await;
    let joined = b.recv_type("joined").await;
    assert_eq!(joined["recovered"], false);
    assert_eq!(joined["history"].as_array().unwrap().len(), 3);
    // A wrong epoch (the room was recreated) is never "recovered".
    let mut c = s.connect().await;
    c.send(json!({"type": "join", "room": "lobby", "name": "carol", "since": 5, "epoch": 12345}))
        .await;
    assert_eq!(c.recv_type("joined").await["recovered"], false);
    s.stop().await;
}

#[async_std::test]
async fn names_are_unique_and_a_token_takes_a_name_back() {
    let s = TestServer::default().await;
    let (mut old, joined) = s.join("lobby", "alice").await;
    let mut thief = s.connect().await;
    thief
        .send(json!({"type": "join", "room": "lobby", "name": "alice"}))
        .await;
    assert_eq!(thief.recv_type("error").await["code"], "name_taken");
    thief
        .send(json!({"type": "join", "room": "lobby", "name": "alice", "token": "0000"}))
        .await;
    assert_eq!(thief.recv_type("error").await["code"], "name_taken");
    // A wrong token of the right length, one character off: the same answer as no token, the
    // same error frame word for word (nothing says how close it was).
    let token = joined["token"].as_str().unwrap().to_string();
    assert_eq!(token.len(), 32, "128 bits, hex: {token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let last = if token.ends_with('0') { "1" } else { "0" };
    let near = format!("{}{last}", &token[..31]);
    thief
        .send(json!({"type": "join", "room": "lobby", "name": "alice"}))
        .await;
    let plain = thief.recv_type("error").await;
    thief
        .send(json!({"type": "join", "room": "lobby", "name": "alice", "token": near}))
        .await;
    assert_eq!(thief.recv_type("error").await, plain);
    // Every join gets a fresh token.
    let (_bob, bob) = s.join("lobby", "bob").await;
    assert_ne!(bob["token"], joined["token"]);

    let mut again = s.connect().await;
    again
        .send(json!({"type": "join", "room": "lobby", "name": "alice", "token": joined["token"]}))
        .await;
    assert_eq!(again.recv_type("joined").await["name"], "alice");
    assert_eq!(
        old.recv_type("left").await,
        json!({"type": "left", "room": "lobby", "reason": "replaced"})
    );
    old.say("lobby", "from the stale connection").await;
    assert_eq!(old.recv_type("error").await["code"], "not_in_room");
    s.wait_stats("one alice (and bob)", |st| st.hub.members == 2)
        .await;
    s.stop().await;
}

#[async_std::test]
async fn client_pings_get_pongs_and_a_close_gets_its_reply() {
    use async_tungstenite::tungstenite::Message;
    let s = TestServer::default().await;
    let mut c = s.connect().await;
    c.ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    match c.next().await {
        Some(Message::Pong(data)) => assert_eq!(&data[..], b"are you there"),
        other => panic!("expected a pong, got {other:?}"),
    }
    c.ws.close(None).await.unwrap();
    // The server answers the close handshake, then the stream ends.
    assert_eq!(c.closed().await, Some(1000));
    s.wait_stats("the connection to be released", |st| st.connections == 0)
        .await;
    s.stop().await;
}
