//! The load test run in-process, small, against (a) a real tidechat on a loopback port and (b) a
//! tiny seed-protocol server written here that drops every 10th message or delays one client:
//! the report must count exactly what happened.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{faulty_server, load, test_server, Faults};
use loadtest::Report;

/// What every clean run must show: every expected delivery counted, nothing lost or repeated.
fn assert_clean(r: &Report, users: usize) {
    let t = &r.deliveries.tally;
    assert_eq!(r.connections.joined, users, "{:?}", r.connections);
    assert!(r.sends.messages > 0);
    // Every member joined before the first message, so each message is owed to all but its sender.
    assert_eq!(t.expected, r.sends.messages * (users as u64 - 1), "{t:?}");
    assert_eq!(t.received, t.expected, "{t:?}");
    assert_eq!((t.lost, t.duplicates, t.out_of_order), (0, 0, 0), "{t:?}");
    assert_eq!(
        t.acks, r.sends.messages,
        "every sender got its own copy back"
    );
    assert_eq!(r.latency.count, t.received);
    assert!(r.latency.min_ms > 0.0, "{:?}", r.latency);
    assert!(
        r.latency.max_ms < r.params.run_time_s * 1000.0,
        "{:?}",
        r.latency
    );
    assert!(
        r.connections.disconnects.is_empty(),
        "{:?}",
        r.connections.disconnects
    );
    assert!(!r.timeline.is_empty());
    assert!(r.cost.generator_cpu_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidechat_v1_every_delivery_counted() {
    let r = load(&[
        "--server-mode",
        "thread",
        "--users",
        "30",
        "--increase-rate",
        "1000",
        "--run-time",
        "3",
        "--senders",
        "3",
        "--msg-rate",
        "20",
        "--message-size",
        "200",
    ])
    .await;
    assert_clean(&r, 30);
    assert_eq!(r.targets[0].server, "thread");
    assert!(r.cost.server_cpu_s.unwrap_or(0.0) > 0.0, "{:?}", r.cost);
    // About 3 s of 3 senders x 20 msg/s (the window ends when goose stops the users).
    assert!(r.sends.messages >= 120, "{:?}", r.sends);
    let html = r.html();
    assert!(html.contains("<svg") && html.contains("Fan-out latency by percentile"));
    let json = serde_json::to_string(&r).unwrap();
    let back: Report = serde_json::from_str(&json).unwrap();
    // (serde_json's float parsing may differ in the last bit, so compare what is exact.)
    assert_eq!(back.deliveries.tally, r.deliveries.tally);
    assert_eq!(back.params, r.params);
    let table = loadtest::compare::compare(&r, &back);
    assert!(
        table.contains("deliveries/s") && table.contains("1.00"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidechat_several_rooms() {
    let r = load(&[
        "--server-mode",
        "thread",
        "--users",
        "40",
        "--increase-rate",
        "1000",
        "--run-time",
        "2",
        "--rooms",
        "4",
        "--senders",
        "4",
        "--msg-rate",
        "10",
    ])
    .await;
    let t = &r.deliveries.tally;
    // One sender per room of 10: each message is owed to the 9 others.
    assert_eq!(t.expected, r.sends.messages * 9, "{t:?}");
    assert_eq!((t.received, t.lost), (t.expected, 0), "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tidechat_seed_protocol() {
    let r = load(&[
        "--server-mode",
        "thread",
        "--protocol",
        "seed",
        "--users",
        "20",
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
    assert_clean(&r, 20);
    assert!(r.targets[0].url.ends_with("/chatSocket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_server_loss_is_counted_exactly() {
    let server = test_server(10, Duration::ZERO).await;
    let users = 20u64;
    let r = load(&[
        "--host",
        &server.url,
        "--protocol",
        "seed",
        "--users",
        "20",
        "--increase-rate",
        "1000",
        "--run-time",
        "3",
        "--senders",
        "4",
        "--msg-rate",
        "10",
    ])
    .await;
    let t = &r.deliveries.tally;
    let received = server.received.load(Ordering::SeqCst);
    let dropped = server.dropped.load(Ordering::SeqCst);
    assert_eq!(
        received, r.sends.messages,
        "the server got every message sent"
    );
    assert!(dropped >= 10, "{dropped}");
    assert_eq!(t.expected, r.sends.messages * (users - 1), "{t:?}");
    assert_eq!(t.lost, dropped * (users - 1), "{t:?}");
    assert_eq!(
        t.received,
        (r.sends.messages - dropped) * (users - 1),
        "{t:?}"
    );
    assert_eq!(t.acks, r.sends.messages - dropped);
    assert!(
        (r.deliveries.loss_ratio - 0.1).abs() < 0.02,
        "{}",
        r.deliveries.loss_ratio
    );
    assert_eq!(t.duplicates, 0);
    assert!(
        r.warnings.iter().any(|w| w.contains("lost")),
        "{:?}",
        r.warnings
    );
}

/// A sender's own copy (its acknowledgement) may come well after everyone else's: tidechat's
/// durable store holds it until the message is on disk. The sender's drain waits for it instead
/// of counting it missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_echo_is_waited_for() {
    let server = faulty_server(Faults {
        delay_echo: Duration::from_millis(400),
        ..Faults::default()
    })
    .await;
    let r = load(&[
        "--host",
        &server.url,
        "--protocol",
        "seed",
        "--users",
        "5",
        "--increase-rate",
        "1000",
        "--run-time",
        "2",
        "--senders",
        "1",
        "--msg-rate",
        "20",
    ])
    .await;
    let t = &r.deliveries.tally;
    assert_eq!((t.lost, t.received), (0, t.expected), "{t:?}");
    assert!(r.sends.messages >= 20, "{:?}", r.sends);
    assert_eq!(t.acks, r.sends.messages, "every echo counted");
    assert!(r.ack_latency.min_ms >= 400.0, "{:?}", r.ack_latency);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_shows_in_the_latency() {
    let delay = Duration::from_millis(150);
    let server = test_server(0, delay).await;
    let r = load(&[
        "--host",
        &server.url,
        "--protocol",
        "seed",
        "--users",
        "20",
        "--increase-rate",
        "1000",
        "--run-time",
        "3",
        "--senders",
        "2",
        "--msg-rate",
        "10",
    ])
    .await;
    let t = &r.deliveries.tally;
    assert_eq!((t.lost, t.received), (0, t.expected), "{t:?}");
    // One receiver of 19 (5%) gets everything 150 ms late: p90 stays low, p99 and max do not.
    assert!(r.latency.p90_ms < 100.0, "{:?}", r.latency);
    assert!(r.latency.p99_ms >= 150.0, "{:?}", r.latency);
    assert!(
        r.latency.max_ms >= 150.0 && r.latency.max_ms < 1000.0,
        "{:?}",
        r.latency
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_failures_are_reported() {
    // A port nothing listens on: bind one, then close it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let host = format!("ws://{addr}");
    let cli = loadtest::config::parse([
        "loadtest",
        "--quiet",
        "--no-print-metrics",
        "--host",
        &host,
        "--users",
        "5",
        "--increase-rate",
        "100",
        "--run-time",
        "1",
        "--senders",
        "1",
    ])
    .unwrap();
    let outcome = loadtest::execute(&cli.options, cli.goose, None, &[])
        .await
        .unwrap();
    let r = outcome.report;
    assert_eq!((r.connections.failed, r.connections.joined), (5, 0));
    assert_eq!(
        r.connections.failures.values().sum::<u64>(),
        5,
        "{:?}",
        r.connections.failures
    );
    assert!(r.warnings.iter().any(|w| w.contains("failed to connect")));
}

/// Beyond ~28,000 connections one source address runs out of ports, so clients spread over
/// 127.0.0.x; with a few clients and `--source-addrs 3` the server sees three sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_source_addresses() {
    let server = test_server(0, Duration::ZERO).await;
    let r = load(&[
        "--host",
        &server.url,
        "--protocol",
        "seed",
        "--users",
        "12",
        "--increase-rate",
        "1000",
        "--run-time",
        "2",
        "--senders",
        "2",
        "--msg-rate",
        "5",
        "--source-addrs",
        "3",
    ])
    .await;
    assert_eq!(r.connections.failed, 0);
    assert_eq!(r.deliveries.tally.lost, 0, "{:?}", r.deliveries.tally);
    let sources: Vec<String> = server
        .sources
        .lock()
        .unwrap()
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(sources, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
}
