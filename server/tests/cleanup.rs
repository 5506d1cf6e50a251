//! Closed connections leave no trace: members, receivers and connection slots are released on
//! every kind of disconnect.

mod common;

use common::*;

#[async_std::test]
async fn two_hundred_clients_connect_and_drop() {
    // 200 websockets from one address, faster than the per-address caps allow.
    let defaults = tidechat::Config::default();
    let s = TestServer::start(tidechat::Config {
        per_ip: tidechat::per_ip::PerIpLimits {
            websockets: 200,
            burst: 200,
            ..defaults.per_ip
        },
        ..defaults
    })
    .await;
    let mut clients = Vec::new();
    for i in 0..200 {
        let (mut c, _) = s.join(&format!("room{}", i % 4), &format!("user{i}")).await;
        if i % 10 == 0 {
            c.say(&format!("room{}", i % 4), "hello").await;
        }
        clients.push(c);
    }
    s.wait_stats("all joined", |st| {
        st.hub.members == 200 && st.hub.receivers == 200
    })
    .await;
    for (i, mut c) in clients.into_iter().enumerate() {
        match i % 3 {
            0 => c.ws.close(None).await.unwrap(),
            1 => reset(c),
            _ => drop(c),
        }
    }
    s.wait_stats("nothing left", |st| {
        st.connections == 0 && st.hub.members == 0 && st.hub.receivers == 0
    })
    .await;
    s.stop().await;
}
