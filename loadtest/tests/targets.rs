//! Where deliveries go: several targets at once (a room's members spread over them), the raw
//! broadcast protocol, and messages delivered to the wrong room.

mod common;

use common::{faulty_server, load, roomless_v1_server, Faults};
use loadtest::embedded::Embedded;

fn tidechat() -> Embedded {
    Embedded::start_thread(&[]).unwrap()
}

/// 20 clients in one room dealt over targets `a` and `b`, 4 senders x 10 msg/s for 2 s.
async fn two_targets(a: &str, b: &str) -> loadtest::Report {
    load(&[
        "--host",
        a,
        "--host",
        b,
        "--users",
        "20",
        "--increase-rate",
        "1000",
        "--run-time",
        "2",
        "--senders",
        "4",
        "--msg-rate",
        "10",
    ])
    .await
}

/// One tidechat given twice: its clients are dealt to both "targets", which are one server, so
/// every member of the room gets every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_given_twice_loses_nothing() {
    let server = tidechat();
    let url = server.http_url();
    let r = two_targets(&url, &url).await;
    assert_eq!(r.targets.len(), 2);
    assert_eq!(r.targets[0].url, r.targets[1].url);
    let t = &r.deliveries.tally;
    assert_eq!(r.connections.joined, 20);
    assert!(r.sends.messages > 0);
    assert_eq!(t.expected, r.sends.messages * 19, "{t:?}");
    assert_eq!((t.lost, t.foreign, t.duplicates), (0, 0, 0), "{t:?}");
}

/// Two tidechat servers that do not share rooms: the room is split between them, so each member
/// only gets the messages of the senders on its own server. That is loss, and the report says
/// so, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_split_over_two_independent_servers_is_lossy() {
    let (a, b) = (tidechat(), tidechat());
    let r = two_targets(&a.http_url(), &b.http_url()).await;
    let t = &r.deliveries.tally;
    assert_eq!(r.connections.joined, 20);
    // Users alternate between the servers, senders too (0 and 2 on a, 1 and 3 on b): a member
    // gets its own server's 9 (or 10) other members' share, not the other server's 10.
    assert_eq!(t.expected, r.sends.messages * 19, "{t:?}");
    assert_eq!(t.received + t.lost, t.expected, "{t:?}");
    let half = r.sends.messages * 10;
    assert_eq!(t.lost, half, "{t:?}");
    assert_eq!(t.foreign, 0, "{t:?}");
    assert!(
        r.warnings.iter().any(|w| w.contains("deliveries lost")),
        "{:?}",
        r.warnings
    );
}

/// `--protocol raw` against a plain broadcast server (text in, the same text to everyone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_protocol_counts_every_delivery() {
    let server = faulty_server(Faults {
        raw: true,
        ..Faults::default()
    })
    .await;
    let r = load(&[
        "--host",
        &server.url,
        "--protocol",
        "raw",
        "--users",
        "12",
        "--increase-rate",
        "1000",
        "--run-time",
        "2",
        "--senders",
        "3",
        "--msg-rate",
        "10",
    ])
    .await;
    let t = &r.deliveries.tally;
    assert_eq!(r.params.rooms, 1);
    assert!(r.targets[0].url.ends_with("/ws"));
    assert!(r.sends.messages > 0);
    assert_eq!(t.expected, r.sends.messages * 11, "{t:?}");
    assert_eq!((t.lost, t.foreign, t.unrecognized), (0, 0, 0), "{t:?}");
    assert_eq!(t.acks, r.sends.messages);
}

/// A server that delivers every message to every room: what arrives in the wrong room is
/// foreign (the stamp names the room it was sent to), not a delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_in_the_wrong_room_are_foreign() {
    let url = roomless_v1_server().await;
    let r = load(&[
        "--host",
        &url,
        "--users",
        "10",
        "--rooms",
        "2",
        "--increase-rate",
        "1000",
        "--run-time",
        "2",
        "--senders",
        "2",
        "--msg-rate",
        "10",
    ])
    .await;
    let t = &r.deliveries.tally;
    assert!(r.sends.messages > 0);
    // Each message reaches the 4 other members of its room (counted) and the 5 of the other
    // room (foreign).
    assert_eq!(t.expected, r.sends.messages * 4, "{t:?}");
    assert_eq!(t.lost, 0, "{t:?}");
    assert!(t.foreign > 0 && t.foreign <= r.sends.messages * 5, "{t:?}");
    assert!(
        r.warnings.iter().any(|w| w.contains("wrong room")),
        "{:?}",
        r.warnings
    );
}
