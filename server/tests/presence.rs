//! Presence coalescing (issue 13): a room's presence changes within `--presence-window` go out
//! as one frame per member, and every member's set stays exact (README, Protocol v1).
//!
//! Most tests here give the server a window of an hour, so its own timer never flushes, and
//! flush by hand (`Hub::flush_presence`): which changes share a batch is then the test's
//! choice, not the scheduler's. The first change after a quiet window goes out at once.

mod common;

use std::time::{Duration, Instant};

use common::presence::Members;
use common::*;
use serde_json::{json, Value};
use tidechat::Config;

const HOUR: Duration = Duration::from_secs(3600);

/// The defaults with `window`, and handshakes per address enough for a storm from one address.
fn config(window: Duration) -> Config {
    let mut config = Config {
        presence_window: window,
        ..Config::default()
    };
    config.per_ip.rate = 1_000.0;
    config.per_ip.burst = 1_000;
    config
}

async fn server(window: Duration) -> TestServer {
    TestServer::start(config(window)).await
}

fn flush(s: &TestServer) {
    s.state.hub.flush_presence(Instant::now());
}

/// Says `marker` in `room` from `c`; everything `c` got before its echo.
async fn until_echo(c: &mut Client, room: &str, marker: &str) -> Vec<Value> {
    c.say(room, marker).await;
    until_message(c, marker).await
}

/// The frames before the message `text`.
async fn until_message(c: &mut Client, text: &str) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let v = c.recv().await;
        if v["type"] == "message" && v["text"] == text {
            return before;
        }
        before.push(v);
    }
}

/// 40 joins held in one window: each member gets one frame for all of them (not one per
/// join, 780 in all), and each ends with the exact set although every member's own list was
/// read in the middle of the batch (it straddles the list's version: set semantics).
#[async_std::test]
async fn a_join_storm_is_one_frame_per_member_and_every_set_is_exact() {
    const N: usize = 40;
    let s = server(HOUR).await;
    let names: Vec<String> = (0..N).map(|i| format!("u{i:02}")).collect();
    let mut clients = Vec::new();
    let mut views = Vec::new();
    for name in &names {
        let (c, joined) = s.join("storm", name).await;
        clients.push(c);
        views.push(Members::of(&joined));
    }
    flush(&s);
    clients[0].say("storm", "end").await;
    let mut frames = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        for v in until_message(c, "end").await {
            assert!(views[i].apply(&v), "{}: not presence: {v}", names[i]);
        }
        assert_eq!(views[i].sorted(), names, "{}'s members", names[i]);
        assert_eq!(views[i].count, N as u64, "{}'s count", names[i]);
        // The last joiner's list already has everyone: its batch is wholly at or below it.
        let want = usize::from(i + 1 < N);
        assert_eq!(views[i].frames, want, "{}'s presence frames", names[i]);
        frames += views[i].frames;
    }
    assert_eq!(frames, N - 1);
    s.stop().await;
}

/// Leaving and coming back within a window: a name's last change wins, a join then a leave
/// is sent as `left` (a member whose list was read between them shows the name), and the
/// count is the room's after the batch.
#[async_std::test]
async fn leave_and_rejoin_within_a_window() {
    let s = server(HOUR).await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    flush(&s);
    assert_eq!(
        alice.recv().await,
        json!({"type": "presence", "room": "r", "name": "bob", "event": "joined"})
    );
    // Within one window: carol comes, dave comes (his list shows carol), carol goes, bob goes
    // and comes back on another connection.
    let (mut carol, _) = s.join("r", "carol").await;
    let (mut dave, dave_joined) = s.join("r", "dave").await;
    let mut dave_view = Members::of(&dave_joined);
    assert!(dave_view.names.contains("carol"), "{dave_joined}");
    carol.send(json!({"type": "leave", "room": "r"})).await;
    carol.recv_type("left").await;
    bob.send(json!({"type": "leave", "room": "r"})).await;
    bob.recv_type("left").await;
    let (mut bob2, bob2_joined) = s.join("r", "bob").await;
    flush(&s);
    let frames = until_echo(&mut alice, "r", "a").await;
    assert_eq!(
        frames,
        [
            json!({"type": "presence_batch", "room": "r", "joined": ["dave", "bob"],
                "left": ["carol"], "member_count": 3})
        ]
    );
    for v in until_message(&mut dave, "a").await {
        assert!(dave_view.apply(&v), "{v}");
    }
    assert_eq!(dave_view.sorted(), ["alice", "bob", "dave"]);
    assert_eq!(dave_view.count, 3);
    // bob's new list was read after every change of the batch: it gets none of it.
    let before = until_message(&mut bob2, "a").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(Members::of(&bob2_joined).sorted(), ["alice", "bob", "dave"]);
    s.stop().await;
}

/// Seed clients (`/chatSocket`) see no presence, batched or not; `/ws` members see their
/// joins like anyone's.
#[async_std::test]
async fn seed_clients_see_no_presence() {
    let s = server(HOUR).await;
    let (mut alice, _) = s.join("lobby", "alice").await;
    let mut seed = s.connect_raw("/chatSocket").await;
    let mut others = Vec::new();
    for name in ["bob", "carol"] {
        others.push(s.join("lobby", name).await.0);
    }
    s.wait_stats("the seed user in", |st| st.hub.members == 4)
        .await;
    flush(&s);
    alice.say("lobby", "hi").await;
    match seed.next().await {
        Some(async_tungstenite::tungstenite::Message::Text(t)) => {
            assert_eq!(t.as_str(), "alice: hi")
        }
        other => panic!("seed got {other:?}"),
    }
    let frames = until_message(&mut alice, "hi").await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    let changes = common::presence::changes(&frames[0]).unwrap();
    assert_eq!(changes.len(), 3, "{frames:?}");
    assert!(changes.iter().all(|(_, joined)| *joined), "{frames:?}");
    drop(others);
    s.stop().await;
}

/// With the default window the server's own timer flushes: a storm of concurrent joins ends
/// with every member's exact set.
#[async_std::test]
async fn the_default_window_flushes_by_itself() {
    const N: usize = 30;
    let default = Config::default().presence_window;
    assert_eq!(default, Duration::from_millis(250));
    let s = server(default).await;
    let names: Vec<String> = (0..N).map(|i| format!("m{i:02}")).collect();
    let joins = names.iter().map(|n| s.join("storm", n));
    let joined: Vec<(Client, Value)> = futures::future::join_all(joins).await;
    let deadline = Instant::now() + PATIENCE;
    for (mut c, j) in joined {
        let mut view = Members::of(&j);
        while view.sorted() != names || view.count != N as u64 {
            assert!(Instant::now() < deadline, "never exact: {view:?}");
            let v = c.recv().await;
            assert!(view.apply(&v), "{v}");
        }
    }
    s.stop().await;
}

/// A message never overtakes the presence changes before it: the room's held batch goes out
/// first, so a member reads bob's join before bob's first message, however long the window.
#[async_std::test]
async fn a_message_sends_its_rooms_held_presence_first() {
    let s = server(HOUR).await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    let (_carol, _) = s.join("r", "carol").await;
    let batch = json!({"type": "presence_batch", "room": "r", "joined": ["bob", "carol"],
        "left": [], "member_count": 3});
    // bob's own list was read inside the batch: he gets it too, and applies it as a set.
    assert_eq!(
        until_echo(&mut bob, "r", "hi").await,
        std::slice::from_ref(&batch)
    );
    assert_eq!(until_message(&mut alice, "hi").await, [batch]);
    // The batch is gone: the next flush sends nothing, and the next message comes alone.
    flush(&s);
    assert!(until_echo(&mut alice, "r", "again").await.is_empty());
    s.stop().await;
}
