//! Shared by the integration tests: running the load test in-process, and a tiny seed-protocol
//! server (`N: text` to everyone) that misbehaves on purpose.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use loadtest::Report;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// Runs the load test with these command-line arguments (goose's and ours).
pub async fn load(args: &[&str]) -> Report {
    let mut argv = vec!["loadtest", "--quiet", "--no-print-metrics", "--drain", "2s"];
    argv.extend_from_slice(args);
    let cli = loadtest::config::parse(argv).expect("valid arguments");
    let outcome = loadtest::execute(&cli.options, cli.goose, None, &[])
        .await
        .expect("load test runs");
    assert!(outcome.goose_error.is_none(), "{:?}", outcome.goose_error);
    outcome.report
}

/// How the test server misbehaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Drop every n-th message instead of broadcasting it (0: none).
    pub drop_every: u64,
    /// Delay everything sent to the first connection by this much.
    pub delay_first: Duration,
    /// Delay everything sent to every connection by this much.
    pub delay_all: Duration,
    /// Delay a sender's own copy of its message by this much (as tidechat's durable store does
    /// until the message is on disk), and so what follows it to that sender.
    pub delay_echo: Duration,
    /// Drop every message that arrives while more than this many messages per second (over the
    /// last [`RATE_WINDOW`]) are coming in.
    pub lossy_above: Option<f64>,
    /// Speak the raw protocol (the text as it came, to everyone) instead of the seed's
    /// `N: text`.
    pub raw: bool,
}

/// The window over which the server measures its incoming message rate.
pub const RATE_WINDOW: Duration = Duration::from_millis(250);

pub struct TestServer {
    pub url: String,
    /// Messages it received, and those it dropped instead of broadcasting.
    pub received: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    /// Source addresses of the connections it accepted.
    pub sources: Arc<Mutex<std::collections::BTreeSet<std::net::IpAddr>>>,
}

/// Starts the server: it drops every `drop_every`-th message (0: none), and delays everything
/// it sends to its first connection by `delay_first`.
pub async fn test_server(drop_every: u64, delay_first: Duration) -> TestServer {
    faulty_server(Faults {
        drop_every,
        delay_first,
        ..Faults::default()
    })
    .await
}

/// Starts a server with these faults.
pub async fn faulty_server(faults: Faults) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let path = if faults.raw { "ws" } else { "chatSocket" };
    let url = format!("ws://{}/{path}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicU64::new(0));
    type Peers = Arc<Mutex<Vec<(u64, tokio::sync::mpsc::UnboundedSender<(Instant, String)>)>>>;
    let peers: Peers = Arc::default();
    let arrivals: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let (rx_count, drop_count) = (received.clone(), dropped.clone());
    let sources: Arc<Mutex<std::collections::BTreeSet<std::net::IpAddr>>> = Arc::default();
    let seen = sources.clone();
    tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok((tcp, peer)) = listener.accept().await {
            seen.lock().unwrap().insert(peer.ip());
            n += 1;
            let conn = n;
            let delay = faults.delay_all
                + if conn == 1 {
                    faults.delay_first
                } else {
                    Duration::ZERO
                };
            let (peers, rx_count, drop_count, arrivals) = (
                peers.clone(),
                rx_count.clone(),
                drop_count.clone(),
                arrivals.clone(),
            );
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut out) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
                peers.lock().unwrap().push((conn, tx));
                tokio::spawn(async move {
                    // Every frame waits until its time: a constant delay keeps the order.
                    while let Some((at, text)) = out.recv().await {
                        tokio::time::sleep_until((at + delay).into()).await;
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let now = Instant::now();
                    let k = rx_count.fetch_add(1, Ordering::SeqCst) + 1;
                    let too_fast = faults.lossy_above.is_some_and(|limit| {
                        let mut a = arrivals.lock().unwrap();
                        a.push_back(now);
                        while a.front().is_some_and(|t| now - *t > RATE_WINDOW) {
                            a.pop_front();
                        }
                        a.len() as f64 > limit * RATE_WINDOW.as_secs_f64()
                    });
                    if too_fast || (faults.drop_every > 0 && k % faults.drop_every == 0) {
                        drop_count.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let line = if faults.raw {
                        text.to_string()
                    } else {
                        format!("{conn}: {}", text.as_str())
                    };
                    for (to, p) in peers.lock().unwrap().iter() {
                        let at = if *to == conn {
                            now + faults.delay_echo
                        } else {
                            now
                        };
                        let _ = p.send((at, line.clone()));
                    }
                }
            });
        }
    });
    TestServer {
        url,
        received,
        dropped,
        sources,
    }
}

/// A protocol-v1 server that ignores rooms: every `say` goes to every connection as a
/// `message` of the sender's room. Returns its `ws://` URL.
pub async fn roomless_v1_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    type Peers = Arc<Mutex<Vec<tokio::sync::mpsc::UnboundedSender<String>>>>;
    let peers: Peers = Arc::default();
    let ids = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (peers, ids) = (peers.clone(), ids.clone());
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut sink, mut stream) = ws.split();
                let (tx, mut out) = tokio::sync::mpsc::unbounded_channel::<String>();
                let _ = tx.send(r#"{"type":"hello","protocol":1,"limits":{}}"#.into());
                peers.lock().unwrap().push(tx.clone());
                tokio::spawn(async move {
                    while let Some(text) = out.recv().await {
                        if sink.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                });
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let v: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                    let room = v["room"].as_str().unwrap_or_default().to_string();
                    match v["type"].as_str() {
                        Some("join") => {
                            // Written by hand: serde_json would sort the keys, and clients read
                            // `type` first, as servers send it.
                            let _ = tx.send(format!(
                                r#"{{"type":"joined","room":"{room}","members":[]}}"#
                            ));
                        }
                        Some("say") => {
                            let id = ids.fetch_add(1, Ordering::SeqCst) + 1;
                            let m = format!(
                                r#"{{"type":"message","room":"{room}","id":{id},"from":"x","text":{},"ts":0}}"#,
                                v["text"]
                            );
                            for p in peers.lock().unwrap().iter() {
                                let _ = p.send(m.clone());
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    url
}
