//! Names across reconnects (`--name-grace`): a dropped connection's names stay reserved for its
//! token, a resume within the grace shows the others nothing, and `left` goes out once, when the
//! grace ends unresumed. Real server, real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tidechat::Config;

const GRACE: Duration = Duration::from_millis(600);

async fn server() -> TestServer {
    TestServer::start(Config {
        name_grace: GRACE,
        ..Config::default()
    })
    .await
}

/// Joins `room` as `name` presenting `token`; returns the client and its `joined` (or error).
async fn join_with_token(s: &TestServer, room: &str, name: &str, token: &str) -> (Client, Value) {
    let mut c = s.connect().await;
    c.send(json!({"type": "join", "room": room, "name": name, "token": token}))
        .await;
    let reply = c.recv().await;
    (c, reply)
}

/// The watcher's next frame, which must be `marker` joining: nothing came before it.
async fn nothing_before_marker(s: &TestServer, watcher: &mut Client, marker: &str) -> Client {
    let (m, _) = s.join("r", marker).await;
    let next = watcher.recv().await;
    assert_eq!(
        next,
        json!({"type": "presence", "room": "r", "name": marker, "event": "joined"}),
        "the watcher saw something else first"
    );
    m
}

#[async_std::test]
async fn a_resume_within_the_grace_shows_the_others_nothing() {
    let s = server().await;
    let (mut watcher, _) = s.join("r", "watcher").await;
    let (alice, joined) = s.join("r", "alice").await;
    assert_eq!(watcher.recv().await["name"], "alice");
    let token = joined["token"].as_str().unwrap().to_owned();
    reset(alice);
    s.wait_stats("alice's connection gone", |st| st.connections == 1)
        .await;
    let (mut back, reply) = join_with_token(&s, "r", "alice", &token).await;
    assert_eq!(reply["type"], "joined", "{reply}");
    let _m = nothing_before_marker(&s, &mut watcher, "m1").await;
    // Past the old grace: the resumed name has no grace running out.
    async_std::task::sleep(GRACE * 2).await;
    back.say("r", "still here").await;
    let next = watcher.recv().await;
    assert_eq!(
        (next["type"].as_str(), next["from"].as_str()),
        (Some("message"), Some("alice")),
        "{next}"
    );
    s.stop().await;
}

#[async_std::test]
async fn a_stranger_cannot_take_a_name_in_its_grace() {
    let s = server().await;
    let (mut alice, _) = s.join("r", "alice").await;
    alice.ws.close(None).await.ok();
    s.wait_stats("alice's connection gone", |st| st.connections == 0)
        .await;
    let mut stranger = s.connect().await;
    stranger
        .send(json!({"type": "join", "room": "r", "name": "alice"}))
        .await;
    let reply = stranger.recv().await;
    assert_eq!(reply["code"], "name_taken", "{reply}");
    let (_c, reply) = join_with_token(&s, "r", "alice", &"0".repeat(32)).await;
    assert_eq!(reply["code"], "name_taken", "a made-up token: {reply}");
    s.stop().await;
}

#[async_std::test]
async fn an_unresumed_grace_ends_with_one_left() {
    let s = server().await;
    let (mut watcher, _) = s.join("r", "watcher").await;
    let (alice, _) = s.join("r", "alice").await;
    assert_eq!(watcher.recv().await["name"], "alice");
    let dropped = Instant::now();
    reset(alice);
    let left = watcher.recv().await;
    let waited = dropped.elapsed();
    assert_eq!(
        left,
        json!({"type": "presence", "room": "r", "name": "alice", "event": "left"})
    );
    assert!(
        waited >= GRACE,
        "left after {waited:?}, before the grace ended"
    );
    // Exactly once: the next thing the watcher sees is the marker.
    let _m = nothing_before_marker(&s, &mut watcher, "m1").await;
    // And the name is free again.
    let (_a2, joined) = s.join("r", "alice").await;
    assert_eq!(joined["type"], "joined");
    s.stop().await;
}

#[async_std::test]
async fn an_explicit_leave_frees_the_name_at_once() {
    // A grace far longer than the test's patience: `left` arriving at all shows it did not wait.
    let s = TestServer::start(Config {
        name_grace: Duration::from_secs(3600),
        ..Config::default()
    })
    .await;
    let (mut watcher, _) = s.join("r", "watcher").await;
    let (mut alice, _) = s.join("r", "alice").await;
    assert_eq!(watcher.recv().await["name"], "alice");
    alice.send(json!({"type": "leave", "room": "r"})).await;
    assert_eq!(watcher.recv().await["event"], "left");
    let (_a2, joined) = s.join("r", "alice").await;
    assert_eq!(joined["type"], "joined");
    s.stop().await;
}
