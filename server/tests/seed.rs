//! `/chatSocket` speaks the original demo's plain text, and talks with `/ws` users in `lobby`.

mod common;

use async_tungstenite::tungstenite::Message;
use common::*;

async fn seed_line(c: &mut Client) -> String {
    loop {
        match c.next().await {
            Some(Message::Text(t)) => return t.to_string(),
            Some(Message::Ping(_)) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

#[async_std::test]
async fn seed_and_v1_clients_chat_both_ways() {
    let s = TestServer::default().await;
    let mut seed_a = s.connect_raw("/chatSocket").await;
    let mut seed_b = s.connect_raw("/chatSocket").await;
    let (mut alice, _) = s.join("lobby", "alice").await;
    s.wait_stats("both seed users in the lobby", |st| st.hub.members == 3)
        .await;

    seed_a
        .ws
        .send(Message::Text("hello <b>".into()))
        .await
        .unwrap();
    let line = seed_line(&mut seed_b).await;
    let (n, text) = line.split_once(": ").unwrap();
    assert!(n.parse::<u64>().is_ok(), "{line}");
    assert_eq!(text, "hello <b>");
    // As in the demo, the sender gets its own line too.
    assert_eq!(seed_line(&mut seed_a).await, line);
    let m = alice.recv_type("message").await;
    assert_eq!(
        (m["from"].as_str(), m["text"].as_str()),
        (Some(n), Some("hello <b>"))
    );

    alice.say("lobby", "hi seeds").await;
    assert_eq!(seed_line(&mut seed_a).await, "alice: hi seeds");
    assert_eq!(seed_line(&mut seed_b).await, "alice: hi seeds");
    alice.recv_type("message").await;
    // Messages in other rooms do not reach the seed page.
    alice.join("elsewhere", "alice").await;
    alice.say("elsewhere", "not for seeds").await;
    alice.say("lobby", "for seeds").await;
    assert_eq!(seed_line(&mut seed_a).await, "alice: for seeds");
    s.stop().await;
}

#[async_std::test]
async fn seed_users_leave_no_trace() {
    let s = TestServer::default().await;
    let a = s.connect_raw("/chatSocket").await;
    let b = s.connect_raw("/chatSocket").await;
    s.wait_stats("two in lobby", |st| st.hub.members == 2).await;
    drop(a);
    reset(b);
    s.wait_stats("none left", |st| {
        st.hub.members == 0 && st.connections == 0 && st.hub.receivers == 0
    })
    .await;
    s.stop().await;
}
