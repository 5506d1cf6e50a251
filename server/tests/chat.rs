//! Rooms, messages, presence, history and resume through a real server and real sockets.

mod common;

use common::*;
use serde_json::json;

#[async_std::test]
async fn say_reaches_everyone_in_order() {
    let s = TestServer::default().await;
    let (mut a, _) = s.join("lobby", "alice").await;
    let (mut b, joined_b) = s.join("lobby", "bob").await;
    assert_eq!(joined_b["member_count"], 2);
    assert_eq!(
        a.recv().await,
        json!({"type": "presence", "room": "lobby", "name": "bob", "event": "joined"})
    );
    for i in 0..5 {
        a.say("lobby", &format!("m{i}")).await;
    }
    for c in [&mut a, &mut b] {
        for i in 0..5 {
            let m = c.recv_type("message").await;
            assert_eq!(m["text"], format!("m{i}"));
            assert_eq!(m["from"], "alice");
            assert_eq!(m["id"], i + 1);
        }
    }
    s.stop().await;
}
