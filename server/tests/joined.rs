//! What a join (or a `history` request) may cost the server: pages capped by count and bytes,
//! loss-free resume across a gap longer than a page, joins that cost more rate tokens than a
//! `say`, replies bounded by bytes for a client that does not read, and text bounded by its
//! serialized size. Real server, real sockets; bystanders are counted, never timed.

mod common;

use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::Message;
use common::*;
use futures::SinkExt;
use serde_json::{json, Value};
use tidechat::limits::JOIN_COST;
use tidechat::Config;

fn ids(frame: &Value, key: &str) -> Vec<u64> {
    frame[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {frame}"))
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

/// Says `n` messages of `text` (suffixed with their number) and reads their echoes, so all
/// are published when it returns.
async fn say_n(c: &mut Client, room: &str, n: usize, text: &str) {
    for i in 0..n {
        c.say(room, &format!("{text}{i}")).await;
    }
    for _ in 0..n {
        c.recv_type("message").await;
    }
}

fn unlimited_rate() -> Config {
    Config {
        rate: 1e9,
        burst: u32::MAX,
        ..Config::default()
    }
}

#[async_std::test]
async fn a_join_returns_at_most_the_page_caps() {
    let config = Config {
        join_history: 5,
        ..unlimited_rate()
    };
    let s = TestServer::start(config).await;
    let (mut a, _) = s.join("r", "alice").await;
    say_n(&mut a, "r", 12, "m").await;
    let (_b, joined) = s.join("r", "bob").await;
    assert_eq!(ids(&joined, "history"), (8..=12).collect::<Vec<_>>());
    assert_eq!(
        (joined["more"].clone(), joined["last_id"].clone()),
        (json!(true), json!(12))
    );
    // Everything fits: no more.
    let (_c, joined) = s.join("small", "carol").await;
    assert_eq!(joined["more"], false);
    s.stop().await;

    // By bytes: messages of ~1 KiB against a 3.5 KiB cap give 3 a page.
    let config = Config {
        join_history_bytes: 3584,
        ..unlimited_rate()
    };
    let s = TestServer::start(config).await;
    let (mut a, _) = s.join("r", "alice").await;
    say_n(&mut a, "r", 10, &"x".repeat(1000)).await;
    let (mut b, joined) = s.join("r", "bob").await;
    assert_eq!(ids(&joined, "history"), vec![8, 9, 10]);
    assert_eq!(joined["more"], true);
    // A message larger than the cap still goes out, alone, so paging always moves on.
    a.say("r", &"y".repeat(5000)).await;
    b.recv_type("message").await;
    b.send(json!({"type": "history", "room": "r", "before": 12}))
        .await;
    assert_eq!(ids(&b.recv_type("history").await, "messages"), vec![11]);
    b.send(json!({"type": "history", "room": "r", "since": 10}))
        .await;
    let page = b.recv_type("history").await;
    assert_eq!(
        (ids(&page, "messages"), page["more"].clone()),
        (vec![11], json!(false))
    );
    s.stop().await;
}

/// Sends a `history` request and returns its answer (a `history` or `error` frame).
async fn page(c: &mut Client, req: Value) -> Value {
    c.send(req).await;
    let f = c.recv().await;
    assert!(
        matches!(f["type"].as_str(), Some("history" | "error")),
        "{f}"
    );
    f
}

#[async_std::test]
async fn history_pages_before_and_since() {
    let config = Config {
        join_history: 4,
        ..unlimited_rate()
    };
    let s = TestServer::start(config).await;
    let (mut a, _) = s.join("r", "alice").await;
    say_n(&mut a, "r", 10, "m").await;
    let f = page(&mut a, json!({"type": "history", "room": "r", "before": 7})).await;
    assert_eq!(
        (ids(&f, "messages"), f["more"].clone()),
        (vec![3, 4, 5, 6], json!(true))
    );
    assert_eq!(f["room"], "r");
    let f = page(&mut a, json!({"type": "history", "room": "r", "before": 3})).await;
    assert_eq!(
        (ids(&f, "messages"), f["more"].clone()),
        (vec![1, 2], json!(false))
    );
    let f = page(
        &mut a,
        json!({"type": "history", "room": "r", "since": 2, "limit": 3}),
    )
    .await;
    assert_eq!(
        (ids(&f, "messages"), f["more"].clone()),
        (vec![3, 4, 5], json!(true))
    );
    // A limit above the cap gets the cap.
    let f = page(
        &mut a,
        json!({"type": "history", "room": "r", "since": 0, "limit": 1000}),
    )
    .await;
    assert_eq!(ids(&f, "messages"), vec![1, 2, 3, 4]);
    let f = page(&mut a, json!({"type": "history", "room": "r", "since": 8})).await;
    assert_eq!(
        (ids(&f, "messages"), f["more"].clone()),
        (vec![9, 10], json!(false))
    );
    let f = page(&mut a, json!({"type": "history", "room": "r", "since": 10})).await;
    assert_eq!(
        (ids(&f, "messages"), f["more"].clone()),
        (vec![], json!(false))
    );

    for (req, code) in [
        (json!({"type": "history", "room": "r"}), "bad_request"),
        (
            json!({"type": "history", "room": "r", "since": 1, "before": 5}),
            "bad_request",
        ),
        (
            json!({"type": "history", "room": "r", "since": 1, "limit": 0}),
            "bad_request",
        ),
        (
            json!({"type": "history", "room": "elsewhere", "since": 0}),
            "not_in_room",
        ),
    ] {
        let f = page(&mut a, req.clone()).await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some(code)),
            "{req}"
        );
    }
    // Someone who is not in the room cannot read it.
    let mut outsider = s.connect().await;
    outsider
        .send(json!({"type": "history", "room": "r", "since": 0}))
        .await;
    assert_eq!(outsider.recv().await["code"], "not_in_room");
    s.stop().await;
}

/// Bob misses three pages' worth of messages; his resume says `recovered` and `more`, he pages
/// with `since` up to the join's `last_id`, and with the live messages that arrived meanwhile
/// he has every id exactly once.
#[async_std::test]
async fn resume_across_a_gap_of_three_pages_is_loss_free() {
    const CAP: usize = 10;
    let config = Config {
        join_history: CAP,
        ..unlimited_rate()
    };
    let s = TestServer::start(config).await;
    let (mut a, _) = s.join("r", "alice").await;
    let (mut b, joined) = s.join("r", "bob").await;
    let (epoch, token) = (joined["epoch"].clone(), joined["token"].clone());
    say_n(&mut a, "r", 1, "seen").await;
    let seen = b.recv_type("message").await["id"].as_u64().unwrap();
    reset(b);
    say_n(&mut a, "r", 3 * CAP, "missed").await;

    let mut b = s.connect().await;
    b.send(json!({"type": "join", "room": "r", "name": "bob", "since": seen, "epoch": epoch, "token": token}))
        .await;
    let joined = b.recv_type("joined").await;
    assert_eq!(
        (joined["recovered"].clone(), joined["more"].clone()),
        (json!(true), json!(true))
    );
    let last_id = joined["last_id"].as_u64().unwrap();
    assert_eq!(last_id, seen + 3 * CAP as u64);
    let mut got = ids(&joined, "history");
    assert_eq!(got.len(), CAP);
    // Live messages keep coming while bob pages.
    say_n(&mut a, "r", 5, "live").await;
    let mut live = Vec::new();
    while *got.last().unwrap() < last_id {
        b.send(json!({"type": "history", "room": "r", "since": got.last()}))
            .await;
        loop {
            let f = b.recv().await;
            match f["type"].as_str() {
                Some("history") => {
                    got.extend(ids(&f, "messages"));
                    break;
                }
                Some("message") => live.push(f["id"].as_u64().unwrap()),
                _ => panic!("unexpected {f}"),
            }
        }
    }
    while live.len() < 5 {
        live.push(b.recv_type("message").await["id"].as_u64().unwrap());
    }
    // The pages end where the live messages start; merged, every id once, in order.
    assert_eq!(live, (last_id + 1..=last_id + 5).collect::<Vec<_>>());
    let mut all: Vec<u64> = got.into_iter().filter(|id| *id <= last_id).collect();
    all.extend(live);
    assert_eq!(all, (seen + 1..=last_id + 5).collect::<Vec<_>>());
    s.stop().await;
}

/// One client joins and leaves as fast as it can: it gets no more `joined` frames than its
/// tokens pay for at JOIN_COST each, and a bystander in the same room gets every message.
#[async_std::test]
async fn a_join_leave_flood_gets_only_the_joins_its_tokens_pay_for() {
    const RATE: f64 = 10.0;
    const BURST: u32 = 20;
    const PAIRS: usize = 200;
    const MESSAGES: usize = 10;
    let config = Config {
        rate: RATE,
        burst: BURST,
        rate_strikes: 100_000,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut sender, _) = s.join("r", "sender").await;
    let (mut bystander, _) = s.join("r", "bystander").await;

    let started = Instant::now();
    let mut flood = s.connect_raw("/ws").await;
    let hello = flood.recv().await;
    assert_eq!(hello["limits"]["join_cost"], JOIN_COST, "{hello}");
    for _ in 0..PAIRS {
        for f in [
            json!({"type": "join", "room": "r", "name": "flood"}),
            json!({"type": "leave", "room": "r"}),
        ] {
            flood
                .ws
                .feed(Message::Text(f.to_string().into()))
                .await
                .unwrap();
        }
    }
    flood.ws.flush().await.unwrap();
    for i in 0..MESSAGES {
        sender.say("r", &format!("m{i}")).await;
    }

    // Every request gets exactly one reply (joined, left or error); room traffic is skipped.
    let (mut joined, mut rate_limited) = (0, 0);
    let mut replies = 0;
    while replies < 2 * PAIRS {
        let f = flood.recv().await;
        match f["type"].as_str() {
            Some("message" | "presence") => continue,
            Some("joined") => joined += 1,
            Some("error") if f["code"] == "rate_limited" => rate_limited += 1,
            _ => {}
        }
        replies += 1;
    }
    let tokens = f64::from(BURST) + RATE * started.elapsed().as_secs_f64();
    // A join costs 5 tokens (a `say` one): join/leave pairs at 1 each would get tokens / 2.
    assert_eq!(JOIN_COST, 5);
    assert!(
        joined as f64 <= tokens / 5.0,
        "{joined} joins from {tokens:.0} tokens"
    );
    assert!(joined >= 1 && rate_limited > 0, "{joined} {rate_limited}");

    let mut texts = Vec::new();
    while texts.len() < MESSAGES {
        texts.push(bystander.recv_type("message").await["text"].clone());
    }
    assert_eq!(
        texts,
        (0..MESSAGES)
            .map(|i| json!(format!("m{i}")))
            .collect::<Vec<_>>()
    );
    s.stop().await;
}

/// A client that asks for big pages and never reads: its reader stops taking requests once
/// about [`tidechat::conn::inbox::MAX_BYTES`] of replies wait for its writer (plus what the
/// writer and the kernel hold). Each request is followed by a `say`, so the messages it
/// published say how many requests the server took. Everyone else is served meanwhile.
#[async_std::test]
async fn a_client_that_does_not_read_holds_a_bounded_reply_queue() {
    const REQUESTS: usize = 100;
    const MESSAGES: usize = 20;
    let s = TestServer::start(unlimited_rate()).await;
    let (mut sender, _) = s.join("r", "sender").await;
    // 50 messages of ~5 KiB: each page is ~250 KiB.
    say_n(&mut sender, "r", 50, &"h".repeat(5000)).await;
    let (mut bystander, _) = s.join("r", "bystander").await;

    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&s.addr.into()).unwrap();
    let std: std::net::TcpStream = socket.into();
    let raw = std.try_clone().unwrap();
    let (ws, _) =
        async_tungstenite::client_async(s.url("/ws"), async_std::net::TcpStream::from(std))
            .await
            .unwrap();
    let mut hog = Client { ws, raw };
    let mut frames = vec![json!({"type": "join", "room": "r", "name": "hog"})];
    for i in 0..REQUESTS {
        frames.push(json!({"type": "history", "room": "r", "since": 0}));
        frames.push(json!({"type": "say", "room": "r", "text": format!("hog {i}")}));
    }
    // The server stops reading, so the hog's own writes block: they go from a task.
    let writer = async_std::task::spawn(async move {
        for f in frames {
            if hog
                .ws
                .feed(Message::Text(f.to_string().into()))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = hog.ws.flush().await;
        hog
    });
    // Give the hog time to get stuck; a slower machine only makes it take fewer requests.
    async_std::task::sleep(Duration::from_secs(1)).await;

    for i in 0..MESSAGES {
        sender.say("r", &format!("m{i}")).await;
    }
    let (mut texts, mut taken) = (Vec::new(), 0);
    while texts.len() < MESSAGES {
        let m = bystander.recv_type("message").await;
        match m["text"].as_str().unwrap() {
            t if t.starts_with("hog ") => taken += 1,
            t => texts.push(t.to_string()),
        }
    }
    assert_eq!(
        texts,
        (0..MESSAGES).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    // What may be held: the kernel's send buffer (at most tcp_wmem's maximum), the writer's
    // batch and the inbox (each up to MAX_BYTES plus the page that crossed it), and the page
    // being built. With only the inbox's count bound (16 items) this machine took 31.
    let page = 50 * (5000 + 80);
    let wmem_max = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
        .unwrap_or(4 << 20);
    let bound = (wmem_max + 2 * tidechat::conn::inbox::MAX_BYTES + 3 * page) / page;
    eprintln!("requests taken while the hog did not read: {taken} (bound {bound})");
    assert!(
        taken <= bound,
        "{taken} pages taken from a client that does not read, bound {bound}"
    );
    drop(writer);
    s.stop().await;
}

#[async_std::test]
async fn text_is_bounded_by_its_serialized_size() {
    let s = TestServer::default().await;
    let (mut a, _) = s.join("r", "alice").await;
    let (mut b, _) = s.join("r", "bob").await;
    // 5,000 control characters: 5,000 bytes decoded, 30,000 as JSON (`\u0001` each).
    let controls = "\u{1}".repeat(5000);
    assert!(controls.len() < tidechat::config::DEFAULT_MAX_TEXT_BYTES);
    a.send(json!({"type": "say", "room": "r", "text": controls, "ref": "c"}))
        .await;
    let e = a.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("text_too_long"), Some("c"))
    );
    // Line breaks count 2: "x" and 8,191 of them are one byte under the limit, one more is over.
    let max = tidechat::config::DEFAULT_MAX_TEXT_BYTES;
    let newlines = |n: usize| format!("x{}", "\n".repeat(n));
    a.send(json!({"type": "say", "room": "r", "text": newlines(max / 2), "ref": "n"}))
        .await;
    assert_eq!(a.recv_type("error").await["code"], "text_too_long");
    a.say("r", &newlines(max / 2 - 1)).await;
    let m = b.recv_type("message").await;
    assert_eq!(m["text"].as_str().unwrap().len(), max / 2);
    // Bob got exactly that one, not the refused ones.
    a.say("r", "after").await;
    assert_eq!(b.recv_type("message").await["text"], "after");
    s.stop().await;
}

#[async_std::test]
async fn seed_text_is_bounded_by_its_serialized_size() {
    let config = Config {
        max_text_bytes: 100,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut v1, _) = s.join("lobby", "alice").await;
    let mut seed = s.connect_raw("/chatSocket").await;
    // 60 quotes: 60 bytes, 120 as JSON: dropped. Then one that fits.
    seed.send_text(&"\"".repeat(60)).await;
    seed.send_text("fits").await;
    let m = v1.recv_type("message").await;
    assert_eq!(m["text"], "fits");
    let _ = seed.ws.close(None).await;
    s.stop().await;
}

/// A page or a join refused for the rate limit names its room (so a client can retry it),
/// whether its frame found no token at all or not the extra ones a page costs.
#[async_std::test]
async fn a_rate_limited_page_or_join_names_its_room() {
    let config = Config {
        rate: 0.01,
        burst: JOIN_COST + 1,
        ..Config::default()
    };
    let s = TestServer::start(config).await;
    let (mut a, _) = s.join("r", "alice").await;
    let requests = [
        json!({"type": "history", "room": "r", "since": 0}),
        json!({"type": "history", "room": "r", "since": 0}),
        json!({"type": "join", "room": "s", "name": "alice"}),
    ];
    for (request, room) in requests.into_iter().zip(["r", "r", "s"]) {
        a.send(request).await;
        let e = a.recv().await;
        assert_eq!(
            (e["code"].as_str(), e["room"].as_str()),
            (Some("rate_limited"), Some(room)),
            "{e}"
        );
    }
    s.stop().await;
}

/// `--history-bytes` bounds the stored record of each message (rendered frames are not kept),
/// the same in the lobby, whose messages also go out as `/chatSocket` lines, as anywhere.
#[async_std::test]
async fn history_bytes_bound_the_stored_records_of_every_room() {
    let config = Config {
        // ~1,075 B a record: three fit, four do not.
        history_bytes: 4000,
        ..unlimited_rate()
    };
    let s = TestServer::start(config).await;
    let text = "x".repeat(1000);
    for room in ["lobby", "other"] {
        let (mut a, _) = s.join(room, "alice").await;
        say_n(&mut a, room, 5, &text).await;
    }
    let (_b, lobby) = s.join("lobby", "bob").await;
    let (_c, other) = s.join("other", "bob").await;
    assert_eq!(ids(&lobby, "history"), vec![3, 4, 5]);
    assert_eq!(ids(&other, "history"), vec![3, 4, 5]);
    s.stop().await;
}
