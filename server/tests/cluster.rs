//! Several real `tidechat` nodes over one real Redis (issue 11, README "Running several nodes"):
//! the binaries as an operator runs them (`--redis unix://...`, history in Redis, no data
//! directory), real websocket clients on each node, and a `redis-server` of the test's own that
//! the tests kill, stop, restart and squeeze.
//!
//! What is checked: one conversation per room across nodes (same messages, order and ids), a
//! resume on another node, presence and names across nodes, a node's SIGKILL, Redis going away
//! and coming back with and without its data, and Redis cutting a slow subscriber. The
//! invariant throughout is "no silent loss": a client either has every message, or was closed
//! with 4009 and told `recovered: false` when it joined again with `since`.
//!
//! Every test runs against Redis, and again against Valkey when `TIDECHAT_TEST_VALKEY=1`
//! (`scripts/test` sets it where Debian ships `valkey-server`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_std::task;
use async_tungstenite::tungstenite::Message;
use common::msg::*;
use common::node::Tidechat;
use common::redis::{Kind, RedisServer};
use common::*;
use futures::{FutureExt, SinkExt, StreamExt};
use serde_json::{json, Value};

/// `--presence-ttl` of every node here: a dead node's members leave within this + 1 s.
const TTL: Duration = Duration::from_secs(3);
/// `--name-grace` of every node here.
const GRACE: Duration = Duration::from_secs(2);
/// The close code that asks a client to join again with `since` (the node lost its live feed of
/// the room and cannot prove it filled the gap).
const RESYNC: u16 = 4009;
/// How far ids skip when Redis comes back with data that may lack its last writes.
const LOST_JUMP: u64 = 1 << 20;
/// Longest a follower waits for a frame: it sits through outages and reconnect backoff (up to
/// 5 s), longer than `PATIENCE` allows for one frame.
const FOLLOW_PATIENCE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Nodes, members, followers.

/// A node over `redis` with the options every test here uses and `extra`; waits until it
/// serves joins (its Redis connection is up).
async fn node(label: &str, redis: &RedisServer, extra: &[&str]) -> Tidechat {
    let url = redis.url();
    let (ttl, grace) = (
        format!("{}s", TTL.as_secs()),
        format!("{}s", GRACE.as_secs()),
    );
    let mut args = vec!["--data-dir", "none", "--redis", &url];
    args.extend(["--presence-ttl", &ttl, "--name-grace", &grace]);
    args.extend(extra);
    let node = Tidechat::start(label, &args);
    let mut probe = connect_at(node.addr).await;
    let join = json!({"type": "join", "room": "ready", "name": format!("probe {label}")});
    let deadline = Instant::now() + PATIENCE;
    loop {
        let v = join_reply(&mut probe, join.clone()).await;
        if v["type"] == "joined" {
            break;
        }
        assert_eq!(v["code"], "unavailable", "{label}: probe join refused: {v}");
        assert!(Instant::now() < deadline, "{label} never served a join");
        task::sleep(Duration::from_millis(50)).await;
    }
    probe.send(json!({"type": "leave", "room": "ready"})).await;
    probe.recv_type("left").await;
    node
}

/// The suite runs once per kind of server under test.
async fn each_kind<F, Fut>(test: F)
where
    F: Fn(Kind) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for kind in Kind::under_test() {
        eprintln!("=== against {kind:?}");
        test(kind).await;
    }
}

/// A task of the test's own (a client reading while the test goes on).
struct Task<T>(task::JoinHandle<std::thread::Result<T>>);

/// Spawns `f`; awaiting the [`Task`] gives its value, or fails the test with its panic (a
/// panic in a spawned task alone would leave its handle waiting forever).
fn spawn<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> Task<T> {
    Task(task::spawn(std::panic::AssertUnwindSafe(f).catch_unwind()))
}

impl<T> Task<T> {
    async fn join(self) -> T {
        self.0
            .await
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// A frame as these tests read it: JSON, or the end of the connection with its close code.
#[derive(Debug)]
enum Frame {
    Json(Value),
    End(Option<u16>),
}

/// The next text frame or the end, within `wait` (websocket pings, which the server sends
/// every 30 s, do not count as frames nor extend the wait).
async fn frame_within(c: &mut Client, wait: Duration) -> Frame {
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = async_std::future::timeout(left, c.ws.next())
            .await
            .expect("timed out waiting for a frame");
        match next {
            Some(Ok(Message::Text(t))) => {
                return Frame::Json(serde_json::from_str(t.as_str()).unwrap())
            }
            Some(Ok(Message::Close(f))) => {
                let _ = c.ws.flush().await;
                return Frame::End(f.map(|f| u16::from(f.code)));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Frame::End(None),
        }
    }
}

async fn frame(c: &mut Client) -> Frame {
    frame_within(c, PATIENCE).await
}

/// Sends a `join` frame and returns its reply: the `joined` frame or the `error`.
async fn join_reply(c: &mut Client, join: Value) -> Value {
    c.send(join).await;
    loop {
        let v = c.recv().await;
        if v["type"] == "joined" || v["type"] == "error" {
            return v;
        }
    }
}

fn str_of<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field}: {v}"))
}

/// A client in one room, with what it needs to join again with `since`.
struct Member {
    name: String,
    room: String,
    addr: SocketAddr,
    c: Client,
    epoch: u64,
    token: String,
    /// The last id this client has seen (its `since` for a resume).
    last: u64,
}

impl Member {
    async fn join(addr: SocketAddr, room: &str, name: &str) -> Self {
        let (c, j) = joined_at(addr, room, name, None).await;
        Member {
            name: name.into(),
            room: room.into(),
            addr,
            c,
            epoch: u64_of(&j, "epoch"),
            token: str_of(&j, "token").into(),
            last: u64_of(&j, "last_id"),
        }
    }

    /// Joins again on the same node with `since`, `epoch` and `token` (as a client closed with
    /// 4009 does), retrying while the node answers `unavailable`; returns the `joined` frame and
    /// every message after `since` (paged to the end).
    async fn rejoin(&mut self) -> (Value, Vec<Msg>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut c = connect_at(self.addr).await;
            let join = json!({
                "type": "join", "room": self.room, "name": self.name,
                "since": self.last, "epoch": self.epoch, "token": self.token,
            });
            let j = join_reply(&mut c, join).await;
            if j["type"] == "joined" {
                let page = page_all(&mut c, &self.room, &j).await;
                self.c = c;
                self.epoch = u64_of(&j, "epoch");
                self.token = str_of(&j, "token").into();
                self.last = page.last().map_or(u64_of(&j, "last_id"), |m| m.id);
                return (j, page);
            }
            assert_eq!(
                j["code"], "unavailable",
                "{}: rejoin refused: {j}",
                self.name
            );
            assert!(Instant::now() < deadline, "{}: no rejoin", self.name);
            task::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn say(&mut self, text: &str, reference: &str) {
        let say = json!({"type": "say", "room": self.room, "text": text, "ref": reference});
        self.c.send(say).await;
    }

    /// Says `text` and waits for the echo.
    async fn say_acked(&mut self, text: &str) -> Msg {
        let m = say_acked(&mut self.c, &self.room, text, text).await;
        self.last = m.id;
        m
    }

    /// Says `text` (with an attempt number) until the node accepts it: refused with
    /// `unavailable` while Redis is away, joined again after a 4009. Returns the echo; the
    /// refused attempts have texts of their own, so a refused one that was published anyway
    /// shows in the history.
    async fn say_until_accepted(&mut self, text: &str) -> Msg {
        let deadline = Instant::now() + PATIENCE;
        for attempt in 0.. {
            assert!(
                Instant::now() < deadline,
                "{}: {text} never accepted",
                self.name
            );
            let reference = format!("{text} #{attempt}");
            self.say(&reference, &reference).await;
            loop {
                match frame(&mut self.c).await {
                    Frame::Json(v) if v["type"] == "message" => {
                        let m = Msg::of(&v);
                        self.last = m.id;
                        if v["ref"] == reference.as_str() {
                            return m;
                        }
                    }
                    Frame::Json(v) if v["type"] == "error" => {
                        assert_eq!(v["code"], "unavailable", "{}: {v}", self.name);
                        assert_eq!(v["ref"], reference.as_str(), "{v}");
                        task::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                    Frame::Json(_) => {}
                    Frame::End(Some(RESYNC)) => {
                        eprintln!("{} (sender): closed with {RESYNC}, joins again", self.name);
                        self.rejoin().await;
                        break;
                    }
                    Frame::End(code) => panic!("{}: closed with {code:?}", self.name),
                }
            }
        }
        unreachable!()
    }

    /// Sends a ping and waits for its pong (the connection is open and served).
    async fn pong(&mut self) {
        self.c.send(json!({"type": "ping", "ref": "p"})).await;
        loop {
            match frame(&mut self.c).await {
                Frame::Json(v) if v["type"] == "pong" => return,
                Frame::Json(_) => {}
                Frame::End(code) => panic!("{}: closed with {code:?}", self.name),
            }
        }
    }
}

/// One connection of a follower: the epoch it joined in, the `joined` frame when it was a
/// resume after 4009, the messages it got (the resume's page first), how it ended.
struct Session {
    epoch: u64,
    /// The last id seen before this connection: its `since`, for a resume.
    since: u64,
    resumed: Option<Value>,
    msgs: Vec<Msg>,
    ended: Option<Instant>,
}

/// Reads `m`'s room until a message whose text starts with `marker`, joining again with `since` whenever
/// it is closed with 4009; every other close fails the test.
async fn follow(mut m: Member, marker: String) -> (Member, Vec<Session>) {
    let mut sessions = vec![Session {
        epoch: m.epoch,
        since: m.last,
        resumed: None,
        msgs: Vec::new(),
        ended: None,
    }];
    // Bounded: a frame within FOLLOW_PATIENCE each, and a few resumes at most.
    for _ in 0..1_000_000 {
        match frame_within(&mut m.c, FOLLOW_PATIENCE).await {
            Frame::Json(v) if v["type"] == "message" => {
                let msg = Msg::of(&v);
                m.last = msg.id;
                let done = msg.text.starts_with(&marker);
                sessions.last_mut().unwrap().msgs.push(msg);
                if done {
                    return (m, sessions);
                }
            }
            Frame::Json(v) if v["type"] == "error" => panic!("{}: {v}", m.name),
            Frame::Json(_) => {}
            Frame::End(Some(RESYNC)) => {
                sessions.last_mut().unwrap().ended = Some(Instant::now());
                assert!(
                    sessions.len() < 10,
                    "{}: closed with 4009 ten times",
                    m.name
                );
                let since = m.last;
                let (j, page) = m.rejoin().await;
                let done = page.iter().any(|p| p.text.starts_with(&marker));
                sessions.push(Session {
                    epoch: m.epoch,
                    since,
                    resumed: Some(j),
                    msgs: page,
                    ended: None,
                });
                if done {
                    return (m, sessions);
                }
            }
            Frame::End(code) => panic!("{}: closed with {code:?}", m.name),
        }
    }
    panic!("{}: no marker", m.name)
}

/// The position of each message of `history` by id.
fn positions(history: &[Msg]) -> BTreeMap<u64, usize> {
    history.iter().enumerate().map(|(i, m)| (m.id, i)).collect()
}

/// "No silent loss" for one follower, against the room's final history (in `final_epoch`):
/// on each connection ids only go up; a resume that says `recovered: true` continues exactly
/// where the connection before it ended, in the same epoch; and the last connection, the one
/// that saw the marker, is in the final epoch and holds the final history without a gap from
/// its first message to the end. A client that stayed connected while its room's ids
/// restarted, or lost messages without a 4009, fails one of these. Returns what happened, in
/// words.
fn check_follower(name: &str, sessions: &[Session], final_epoch: u64, history: &[Msg]) -> String {
    let at = positions(history);
    let mut story = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        let ids = ids(&s.msgs);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "{name}, connection {i}: ids not increasing: {ids:?}"
        );
        if let Some(j) = &s.resumed {
            let prev = &sessions[i - 1];
            let recovered = j["recovered"] == true;
            story.push(format!(
                "closed with 4009 after id {}, joined again: recovered {recovered}, {} in its page",
                s.since,
                s.msgs.len()
            ));
            if recovered {
                assert_eq!(
                    s.epoch, prev.epoch,
                    "{name}: recovered into another epoch: {j}"
                );
                if let Some(first) = s.msgs.first() {
                    let next = match s.since {
                        0 => Some(0),
                        since => at.get(&since).map(|i| i + 1),
                    };
                    assert_eq!(
                        at.get(&first.id).copied(),
                        next,
                        "{name}: recovered: true, but {} does not follow {}",
                        first.id,
                        s.since
                    );
                }
            }
        }
    }
    let last = sessions.last().unwrap();
    assert_eq!(
        last.epoch, final_epoch,
        "{name} got the room's new messages on a connection of epoch {}, never told that the \
         room started over",
        last.epoch
    );
    let first = last.msgs.first().expect("the marker at least");
    let from = *at
        .get(&first.id)
        .unwrap_or_else(|| panic!("{name}: {first:?} is not in the final history"));
    assert_eq!(
        last.msgs,
        history[from..].to_vec(),
        "{name}: its last connection does not hold the history from id {} to the end",
        first.id
    );
    if story.is_empty() {
        story.push("stayed connected and got every message".into());
    }
    format!("{name}: {}", story.join("; "))
}

/// A fresh client's view of the room on `addr`: its epoch and its whole history.
async fn fresh_history(addr: SocketAddr, room: &str, name: &str) -> (u64, Vec<Msg>) {
    let (mut c, j) = joined_at(addr, room, name, None).await;
    let all = page_all(&mut c, room, &json!({"history": [], "more": true})).await;
    (u64_of(&j, "epoch"), all)
}

/// The final history, the same through every node; the epoch and the messages.
async fn agreed_history(nodes: &[&Tidechat], room: &str) -> (u64, Vec<Msg>) {
    let mut seen: Option<(u64, Vec<Msg>)> = None;
    for (i, n) in nodes.iter().enumerate() {
        let view = fresh_history(n.addr, room, &format!("auditor{i}")).await;
        if let Some(first) = &seen {
            assert_eq!(&view, first, "node {i} shows another history than node 0");
        }
        seen = Some(view);
    }
    seen.unwrap()
}

fn contiguous(ids: &[u64]) -> bool {
    ids.windows(2).all(|w| w[1] == w[0] + 1)
}

// ---------------------------------------------------------------------------------------------
// a. One conversation across nodes.

/// Says `n` messages as `name` with up to `WINDOW` unacknowledged, reading everything, until
/// it has its `n` echoes and `total` messages in all; what it received, in order.
async fn chatter(mut c: Client, name: String, n: usize, total: usize) -> Vec<Msg> {
    const WINDOW: usize = 4;
    let (mut sent, mut acked) = (0, 0);
    let mut got = Vec::with_capacity(total);
    // Bounded: one frame (within PATIENCE) per turn, a few presence frames besides messages.
    for _ in 0..(total + 100) {
        if acked == n && got.len() == total {
            return got;
        }
        while sent < n && sent - acked < WINDOW {
            let text = format!("{name} says {sent}");
            c.send(json!({"type": "say", "room": "r", "text": text, "ref": text}))
                .await;
            sent += 1;
        }
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("message") => {
                let m = Msg::of(&v);
                if m.from == name {
                    assert_eq!(
                        m.text,
                        format!("{name} says {acked}"),
                        "echoes out of order"
                    );
                    assert_eq!(v["ref"], m.text.as_str());
                    acked += 1;
                }
                got.push(m);
            }
            Some("error") => panic!("{name}: {v}"),
            _ => {}
        }
    }
    panic!("{name}: {acked} echoes and {} messages", got.len());
}

async fn one_conversation_on(kind: Kind) {
    const EACH: usize = 50;
    const CLIENTS: usize = 6;
    let total = EACH * CLIENTS;
    let redis = RedisServer::of(kind, &[]);
    let a = node("a", &redis, &[]).await;
    let b = node("b", &redis, &[]).await;
    let mut clients = Vec::new();
    let mut epochs = HashSet::new();
    for i in 0..CLIENTS {
        // Alternating: c0, c2, c4 on A; c1, c3, c5 on B.
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let (c, j) = joined_at(addr, "r", &format!("c{i}"), None).await;
        assert_eq!(j["member_count"], i + 1, "{j}");
        epochs.insert(u64_of(&j, "epoch"));
        clients.push(c);
    }
    assert_eq!(epochs.len(), 1, "one room, one epoch: {epochs:?}");
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| spawn(chatter(c, format!("c{i}"), EACH, total)))
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.join().await);
    }
    let expected: Vec<u64> = (1..=total as u64).collect();
    for (i, got) in seen.iter().enumerate() {
        assert_eq!(ids(got), expected, "c{i}: not ids 1..={total} in order");
        assert_eq!(
            got, &seen[0],
            "c{i} and c0 differ (from, text or ts under an id)"
        );
    }
    let texts: HashSet<(&str, &str)> = seen[0]
        .iter()
        .map(|m| (m.from.as_str(), m.text.as_str()))
        .collect();
    assert_eq!(
        texts.len(),
        total,
        "a message delivered twice under two ids"
    );
    let (epoch, history) = agreed_history(&[&a, &b], "r").await;
    assert!(epochs.contains(&epoch));
    assert_eq!(history, seen[0], "the history is not what was delivered");
}

#[async_std::test]
async fn clients_on_two_nodes_see_one_conversation() {
    each_kind(one_conversation_on).await;
}

// ---------------------------------------------------------------------------------------------
// b. A resume on another node; names across nodes.

/// Says `text` (its own ref) and reads up to the echo: the echo, and every frame before it
/// besides messages.
async fn say_collecting(c: &mut Client, room: &str, text: &str) -> (Msg, Vec<Value>) {
    c.send(json!({"type": "say", "room": room, "text": text, "ref": text}))
        .await;
    let mut others = Vec::new();
    loop {
        let v = c.recv().await;
        if v["type"] == "message" && v["ref"] == text {
            return (Msg::of(&v), others);
        }
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] != "message" {
            others.push(v);
        }
    }
}

/// `watcher` says `marker`: every frame before its echo, besides messages.
async fn frames_until_echo(watcher: &mut Client, room: &str, marker: &str) -> Vec<Value> {
    say_collecting(watcher, room, marker).await.1
}

async fn a_stranger_is(addr: SocketAddr, room: &str, name: &str) -> Value {
    let mut c = connect_at(addr).await;
    join_reply(&mut c, json!({"type": "join", "room": room, "name": name})).await
}

async fn resume_on_another_node_on(kind: Kind) {
    let redis = RedisServer::of(kind, &[]);
    let a = node("a", &redis, &[]).await;
    let b = node("b", &redis, &[]).await;
    let (mut alice, j) = joined_at(a.addr, "r", "alice", None).await;
    let epoch = u64_of(&j, "epoch");
    let token = str_of(&j, "token").to_owned();
    let (bob, _) = joined_at(b.addr, "r", "bob", None).await;
    let (mut bob, before) = send_acked(bob, "r".into(), "bob".into(), 10).await;
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let v = alice.recv_type("message").await;
        seen.push(Msg::of(&v));
    }
    assert_eq!(
        seen, before,
        "alice on A did not get bob's messages from B as sent"
    );
    let k = seen.last().unwrap().id;

    drop(alice);
    let dropped = Instant::now();
    for (node, addr) in [("B", b.addr), ("A", a.addr)] {
        let v = a_stranger_is(addr, "r", "alice").await;
        assert_eq!(
            v["code"], "name_taken",
            "a stranger on {node} took alice's name: {v}"
        );
    }
    // Everything but messages that bob gets from here on: alice's move must not show.
    let mut bob_saw = Vec::new();
    let mut missed = Vec::new();
    for i in 0..10 {
        let (m, others) = say_collecting(&mut bob, "r", &format!("while alice is away {i}")).await;
        missed.push(m);
        bob_saw.extend(others);
    }

    let resume = json!({
        "type": "join", "room": "r", "name": "alice",
        "since": k, "epoch": epoch, "token": token,
    });
    assert!(
        dropped.elapsed() < GRACE,
        "too slow to resume within the grace ({:?}): the test cannot tell the token's work",
        dropped.elapsed()
    );
    let mut alice = connect_at(b.addr).await;
    let j = join_reply(&mut alice, resume).await;
    assert_eq!(
        j["type"], "joined",
        "the token did not take alice's name back on B: {j}"
    );
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(u64_of(&j, "epoch"), epoch);
    let page = page_all(&mut alice, "r", &j).await;
    assert_eq!(
        page, missed,
        "alice's resume on B is not exactly what she missed"
    );

    // Past the grace A had for alice's dropped connection: bob saw her neither go nor come,
    // and she still holds her name.
    task::sleep(GRACE + Duration::from_millis(500)).await;
    bob_saw.extend(frames_until_echo(&mut bob, "r", "marker").await);
    assert!(
        !bob_saw.iter().any(|v| v["name"] == "alice"),
        "bob saw alice's move from A to B: {bob_saw:?}"
    );
    let v = a_stranger_is(b.addr, "r", "alice").await;
    assert_eq!(v["code"], "name_taken", "{v}");
    let v = Msg::of(&alice.recv_type("message").await);
    assert_eq!(
        (v.id, v.text.as_str()),
        (missed.last().unwrap().id + 1, "marker"),
        "alice's live messages on B do not follow her resume"
    );
}

#[async_std::test]
async fn a_client_resumes_on_another_node_and_takes_its_name_back() {
    each_kind(resume_on_another_node_on).await;
}

// ---------------------------------------------------------------------------------------------
// c. Presence across nodes.

fn presence(room: &str, name: &str, event: &str) -> Value {
    json!({"type": "presence", "room": room, "name": name, "event": event})
}

fn members(joined: &Value) -> Vec<String> {
    let mut names: Vec<String> = serde_json::from_value(joined["members"].clone()).unwrap();
    names.sort();
    names
}

/// A member that watches presence, keeping aside the frames about itself: a single node never
/// sends a joiner its own `presence`, and [`Watcher::got_none_of_its_own`] says whether the
/// cluster did. (Set aside rather than failed at once, so that a test still checks the rest.)
struct Watcher {
    c: Client,
    me: String,
    own: Vec<Value>,
}

impl Watcher {
    async fn join(addr: SocketAddr, room: &str, name: &str) -> (Self, Value) {
        let (c, j) = joined_at(addr, room, name, None).await;
        let me = name.to_owned();
        (
            Watcher {
                c,
                me,
                own: Vec::new(),
            },
            j,
        )
    }

    fn is_own(&self, v: &Value) -> bool {
        v["type"] == "presence" && v["name"] == self.me.as_str()
    }

    /// The next frame that is not about this member itself.
    async fn next(&mut self) -> Value {
        loop {
            let v = self.c.recv().await;
            if !self.is_own(&v) {
                return v;
            }
            self.own.push(v);
        }
    }

    /// Says `marker`: every frame before its echo, besides messages and its own presence.
    async fn until_echo(&mut self, room: &str, marker: &str) -> Vec<Value> {
        let all = frames_until_echo(&mut self.c, room, marker).await;
        let (own, others): (Vec<Value>, Vec<Value>) = all.into_iter().partition(|v| self.is_own(v));
        self.own.extend(own);
        others
    }

    fn got_none_of_its_own(&self) {
        assert!(
            self.own.is_empty(),
            "{} got presence of itself (a single node never sends it): {:?}",
            self.me,
            self.own
        );
    }
}

async fn presence_across_nodes_on(kind: Kind) {
    let redis = RedisServer::of(kind, &[]);
    let a = node("a", &redis, &[]).await;
    let b = node("b", &redis, &[]).await;
    let (mut dave, _) = Watcher::join(a.addr, "p", "dave").await;
    let (mut erin, j) = Watcher::join(b.addr, "p", "erin").await;
    assert_eq!(members(&j), ["dave", "erin"], "{j}");
    assert_eq!(j["member_count"], 2);
    assert_eq!(dave.next().await, presence("p", "erin", "joined"));

    let (mut frank, j) = Watcher::join(a.addr, "p", "frank").await;
    assert_eq!(members(&j), ["dave", "erin", "frank"], "{j}");
    assert_eq!(erin.next().await, presence("p", "frank", "joined"));
    assert_eq!(dave.next().await, presence("p", "frank", "joined"));

    frank.c.send(json!({"type": "leave", "room": "p"})).await;
    assert_eq!(frank.next().await["type"], "left");
    assert_eq!(erin.next().await, presence("p", "frank", "left"));
    assert_eq!(dave.next().await, presence("p", "frank", "left"));
    let (mut gina, j) = Watcher::join(b.addr, "p", "gina").await;
    assert_eq!(members(&j), ["dave", "erin", "gina"], "{j}");
    assert_eq!(dave.next().await, presence("p", "gina", "joined"));
    assert_eq!(erin.next().await, presence("p", "gina", "joined"));

    // A drop without leave: after the grace, one `left` on each node.
    let erin_own = std::mem::take(&mut erin.own);
    drop(erin);
    let dropped = Instant::now();
    assert_eq!(dave.next().await, presence("p", "erin", "left"));
    assert_eq!(gina.next().await, presence("p", "erin", "left"));
    assert!(dropped.elapsed() >= GRACE - Duration::from_millis(100));
    for w in [&mut dave, &mut gina] {
        let others = w.until_echo("p", &format!("marker {}", w.me)).await;
        assert!(others.is_empty(), "more than one left: {others:?}");
    }
    for w in [&dave, &frank, &gina] {
        w.got_none_of_its_own();
    }
    assert!(
        erin_own.is_empty(),
        "erin got presence of herself: {erin_own:?}"
    );
}

#[async_std::test]
async fn presence_and_member_lists_span_the_nodes() {
    each_kind(presence_across_nodes_on).await;
}

// ---------------------------------------------------------------------------------------------
// d. A node dies.

async fn node_killed_on(kind: Kind) {
    let redis = RedisServer::of(kind, &[]);
    let a = node("a", &redis, &[]).await;
    let b = node("b", &redis, &[]).await;
    // A third node: `left` goes out once, by someone, not once by each survivor.
    let c = node("c", &redis, &[]).await;
    let gone = ["a1", "a2", "a3"];
    let mut on_a = Vec::new();
    for name in gone {
        on_a.push(joined_at(a.addr, "k", name, None).await.0);
    }
    let (mut wb, j) = Watcher::join(b.addr, "k", "wb").await;
    assert_eq!(members(&j), ["a1", "a2", "a3", "wb"], "{j}");
    let (wc, _) = Watcher::join(c.addr, "k", "wc").await;
    assert_eq!(wb.next().await, presence("k", "wc", "joined"));

    let killed = Instant::now();
    a.kill();
    let bound = (TTL + Duration::from_secs(1)) * 3;
    // Both watchers read at once, so that each one's times are its own.
    let watch = |watcher: &'static str, mut w: Watcher| {
        spawn(async move {
            let mut left = Vec::new();
            while left.len() < gone.len() {
                let v = w.next().await;
                let took = killed.elapsed();
                // One sweep removes them together: one `presence_batch`, or single frames.
                let changes = common::presence::changes(&v);
                let changes = changes.unwrap_or_else(|| panic!("{watcher}: {v}"));
                for (name, joined) in changes {
                    assert!(!joined, "{watcher}: {v}");
                    assert!(gone.contains(&name.as_str()), "{watcher}: {v}");
                    assert!(!left.contains(&name), "{watcher}: {name} left twice");
                    eprintln!("{watcher}: {name} left {took:?} after the SIGKILL of node A");
                    assert!(took < bound, "{watcher}: {name} left after {took:?}");
                    left.push(name);
                }
            }
            w
        })
    };
    let (wb, wc) = (watch("wb", wb), watch("wc", wc));
    let (mut wb, mut wc) = (wb.join().await, wc.join().await);
    // Long enough for a second `left` by another survivor, or by the same one again.
    task::sleep(TTL).await;
    for w in [&mut wb, &mut wc] {
        let others = w.until_echo("k", &format!("marker {}", w.me)).await;
        assert!(
            others.is_empty(),
            "{}: more after the lefts: {others:?}",
            w.me
        );
    }
    for name in gone {
        let v = a_stranger_is(b.addr, "k", name).await;
        assert_eq!(v["type"], "joined", "{name} is still taken: {v}");
    }
    drop(on_a);
    wb.got_none_of_its_own();
    wc.got_none_of_its_own();
}

#[async_std::test]
async fn a_killed_nodes_members_leave_once_within_the_bound() {
    each_kind(node_killed_on).await;
}

// ---------------------------------------------------------------------------------------------
// e., f., g. Redis goes away, comes back, or cuts a node off.

/// The text of the last message of a conversation; followers read until it (with whatever
/// attempt number it was accepted at).
const MARKER: &str = "the end";

/// Two senders (one on each node) and four followers (two on each node) in room `e`, after
/// `before` acknowledged messages that every one of them saw.
struct Conversation {
    senders: [Member; 2],
    followers: Vec<Task<(Member, Vec<Session>)>>,
    before: Vec<Msg>,
    epoch: u64,
}

async fn conversation(a: &Tidechat, b: &Tidechat, before: usize) -> Conversation {
    let mut senders = [
        Member::join(a.addr, "e", "sender a").await,
        Member::join(b.addr, "e", "sender b").await,
    ];
    let mut followers = Vec::new();
    for (i, addr) in [a.addr, b.addr, a.addr, b.addr].into_iter().enumerate() {
        followers.push(Member::join(addr, "e", &format!("f{i}")).await);
    }
    let epoch = senders[0].epoch;
    let mut said = Vec::new();
    for i in 0..before {
        said.push(senders[i % 2].say_acked(&format!("before {i}")).await);
    }
    for f in &mut followers {
        assert_eq!(f.epoch, epoch, "{}", f.name);
        for m in &said {
            let v = Msg::of(&f.c.recv_type("message").await);
            assert_eq!(&v, m, "{}", f.name);
            f.last = v.id;
        }
    }
    Conversation {
        senders,
        followers: followers
            .into_iter()
            .map(|f| spawn(follow(f, MARKER.into())))
            .collect(),
        before: said,
        epoch,
    }
}

/// What the followers saw, and what the senders had acknowledged, at the end.
struct Outcome {
    sessions: Vec<(String, Vec<Session>)>,
    acked: Vec<Msg>,
}

impl Conversation {
    /// Both senders get a message accepted (their nodes have recovered), then say `n` more
    /// each, then the marker; waits for the followers.
    async fn finish(mut self, n: usize) -> Outcome {
        let mut acked = Vec::new();
        for s in &mut self.senders {
            let text = format!("after, first of {}", s.name);
            acked.push(s.say_until_accepted(&text).await);
        }
        for i in 0..n {
            for s in &mut self.senders {
                let text = format!("after {i} {}", s.name);
                acked.push(s.say_until_accepted(&text).await);
            }
        }
        acked.push(self.senders[1].say_until_accepted(MARKER).await);
        let mut sessions = Vec::new();
        for f in self.followers {
            let (m, s) = f.join().await;
            sessions.push((m.name, s));
        }
        Outcome { sessions, acked }
    }
}

fn by_text(msgs: &[Msg]) -> BTreeMap<String, Msg> {
    msgs.iter().map(|m| (m.text.clone(), m.clone())).collect()
}

/// Checks every follower against the final history and prints what happened to each; the
/// resumes' `recovered` values.
fn check_followers(out: &Outcome, epoch: u64, history: &[Msg]) -> Vec<bool> {
    let mut recovered = Vec::new();
    for (name, sessions) in &out.sessions {
        eprintln!("{}", check_follower(name, sessions, epoch, history));
        for s in &sessions[1..] {
            recovered.push(s.resumed.as_ref().unwrap()["recovered"] == true);
        }
    }
    recovered
}

async fn redis_killed_on(kind: Kind) {
    let mut redis = RedisServer::of(kind, &[]);
    let a = node("a", &redis, &[]).await;
    let b = node("b", &redis, &[]).await;
    let mut talk = conversation(&a, &b, 10).await;
    let old_epoch = talk.epoch;

    redis.kill();
    let killed = Instant::now();
    for s in &mut talk.senders {
        let down = "while redis is down";
        s.say(down, down).await;
        let v = loop {
            match frame(&mut s.c).await {
                Frame::Json(v) if v["type"] == "error" => break v,
                Frame::Json(v) if v["type"] == "message" && v["ref"] == down => break v,
                Frame::Json(_) => {}
                Frame::End(code) => panic!("{}: closed with {code:?}", s.name),
            }
        };
        assert_eq!(
            v["type"], "error",
            "{}: said while Redis is down: {v}",
            s.name
        );
        assert_eq!(v["code"], "unavailable", "{v}");
        assert_eq!(v["ref"], "while redis is down", "{v}");
        eprintln!(
            "{}: unavailable {:?} after the kill",
            s.name,
            killed.elapsed()
        );
        s.pong().await;
        let v = a_stranger_is(s.addr, "e", "newcomer").await;
        assert_eq!(v["code"], "unavailable", "a join while Redis is down: {v}");
    }

    let restarting = Instant::now();
    redis.restart();
    let out = talk.finish(5).await;
    eprintln!(
        "both nodes took messages again {:?} after the restart",
        restarting.elapsed()
    );

    // Redis kept nothing: the room starts over, and its history is exactly what was
    // acknowledged after the restart (a refused attempt that was published anyway would show).
    let (epoch, history) = agreed_history(&[&a, &b], "e").await;
    assert_ne!(
        epoch, old_epoch,
        "Redis lost the room, but the epoch is the same"
    );
    assert_eq!(
        ids(&history),
        (1..=history.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(by_text(&history), by_text(&out.acked));
    for (name, sessions) in &out.sessions {
        if let Some(t) = sessions[0].ended {
            assert!(t >= restarting, "{name} was closed while Redis was down");
        }
    }
    // Among the checks: a resume that crossed into the new epoch said `recovered: false`.
    check_followers(&out, epoch, &history);
}

#[async_std::test]
async fn redis_killed_and_restarted_empty_leaves_no_client_silently_stale() {
    each_kind(redis_killed_on).await;
}

/// Redis with `persistence` options is stopped (SIGTERM) and started again on its data during
/// a conversation. `lossless`: it syncs every write (`appendfsync always`), so nothing may be
/// lost and ids continue; otherwise the last second may be gone, so ids skip [`LOST_JUMP`] and
/// resumes from before are not `recovered`.
async fn redis_restarted_on(kind: Kind, persistence: &[&str], lossless: bool) {
    let mut redis = RedisServer::of(kind, persistence);
    let a = node("a", &redis, &[]).await;
    let b = node("b", &redis, &[]).await;
    let (mut carol, j) = joined_at(a.addr, "e", "carol", None).await;
    let carol_token = str_of(&j, "token").to_owned();
    let talk = conversation(&a, &b, 10).await;
    let (old_epoch, before) = (talk.epoch, talk.before.clone());
    for m in &before {
        assert_eq!(&Msg::of(&carol.recv_type("message").await), m);
    }
    drop(carol);

    let status = redis.stop();
    assert!(status.success(), "redis: {status}");
    redis.restart();
    let out = talk.finish(5).await;
    let first = out.acked[0].id;
    let last_before = before.last().unwrap().id;
    let expected = if lossless {
        last_before + 1
    } else {
        last_before + LOST_JUMP + 1
    };
    assert_eq!(first, expected, "the first id after the restart");

    let (epoch, history) = agreed_history(&[&a, &b], "e").await;
    assert_eq!(
        epoch, old_epoch,
        "Redis kept the room, yet the epoch changed"
    );
    let mut all = before.clone();
    let mut after = out.acked.clone();
    after.sort_by_key(|m| m.id);
    assert!(contiguous(&ids(&after)), "{:?}", ids(&after));
    all.extend(after.iter().cloned());
    assert_eq!(history, all, "the history is not everything acknowledged");

    // Resumes from before the restart, on the other node.
    for (name, since, token) in [
        ("carol", last_before, Some(&carol_token)),
        ("dave", 5, None),
    ] {
        let mut c = connect_at(b.addr).await;
        let mut join = json!({
            "type": "join", "room": "e", "name": name, "since": since, "epoch": old_epoch,
        });
        if let Some(t) = token {
            join["token"] = t.as_str().into();
        }
        let j = join_reply(&mut c, join).await;
        assert_eq!(j["type"], "joined", "{j}");
        assert_eq!(j["recovered"], lossless, "{name} from {since}: {j}");
        let page = page_all(&mut c, "e", &j).await;
        let from = history.iter().position(|m| m.id > since).unwrap();
        assert_eq!(page, history[from..].to_vec(), "{name} from {since}");
    }
    let recovered = check_followers(&out, epoch, &history);
    if lossless {
        assert!(
            recovered.iter().all(|r| *r),
            "a resume said recovered: false though nothing was lost"
        );
    }
}

/// [`redis_restarted_on`] with the AOF synced on every write (`lossless`) or every second.
async fn redis_restarted(lossless: bool) {
    let fsync = if lossless { "always" } else { "everysec" };
    let persistence = ["--appendonly", "yes", "--appendfsync", fsync];
    each_kind(|kind| redis_restarted_on(kind, &persistence, lossless)).await;
}

#[async_std::test]
async fn redis_restarted_with_appendfsync_always_loses_nothing() {
    redis_restarted(true).await;
}

#[async_std::test]
async fn redis_restarted_with_appendfsync_everysec_skips_ids_and_says_so() {
    redis_restarted(false).await;
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Redis at `client-output-buffer-limit pubsub 32kb 16kb 1`, and node B stalled (SIGSTOP, as
/// a long pause of the process would) while the other node publishes a burst: Redis cuts B's
/// subscription. B's clients must end up with every message all the same.
async fn output_buffer_on(kind: Kind) {
    const TEXT: usize = 8 * 1024;
    const BURST: usize = 50;
    let redis = RedisServer::of(kind, &[]);
    // Room for every message of the bursts below, so the stream can fill any gap.
    let keep = ["--history", "100000", "--history-bytes", "1073741824"];
    let a = node("a", &redis, &keep).await;
    let b = node("b", &redis, &keep).await;
    let mut alice = Member::join(a.addr, "e", "alice").await;
    let mut followers = Vec::new();
    for (i, addr) in [a.addr, b.addr, a.addr, b.addr].into_iter().enumerate() {
        let f = Member::join(addr, "e", &format!("f{i}")).await;
        followers.push(spawn(follow(f, MARKER.into())));
    }
    redis.cli(&[
        "CONFIG",
        "SET",
        "client-output-buffer-limit",
        "pubsub 32kb 16kb 1",
    ]);
    signal(b.pid(), "STOP");
    let mut acked = Vec::new();
    let mut bursts = 0;
    // More than the socket buffers between Redis and B hold: Redis's own buffer for B grows
    // past 32 kB and it closes the connection. Bounded: a few bursts at most.
    while !redis.log().contains("output buffer limits") {
        assert!(bursts < 10, "Redis never cut node B off:\n{}", redis.log());
        bursts += 1;
        for i in 0..BURST {
            let text = format!("{bursts}.{i} {}", "x".repeat(TEXT));
            alice.say(&text, &format!("{bursts}.{i}")).await;
        }
        for _ in 0..BURST {
            let v = alice.c.recv_type("message").await;
            acked.push(Msg::of(&v));
        }
    }
    signal(b.pid(), "CONT");
    // It was B's feed that Redis cut (not A's, which kept up).
    b.wait_log("pub/sub connection closed");
    eprintln!(
        "Redis cut node B's subscription after {} messages of {TEXT} bytes",
        acked.len()
    );
    acked.push(alice.say_acked(MARKER).await);
    let mut sessions = Vec::new();
    for f in followers {
        let (m, s) = f.join().await;
        sessions.push((m.name, s));
    }
    let out = Outcome { sessions, acked };
    let (epoch, history) = agreed_history(&[&a, &b], "e").await;
    assert_eq!(history, out.acked, "the history is not what alice sent");
    let recovered = check_followers(&out, epoch, &history);
    assert!(
        recovered.iter().all(|r| *r),
        "a resume after the cut was not recovered, though the stream holds every message"
    );
    let all: BTreeSet<u64> = ids(&history).into_iter().collect();
    for (name, s) in &out.sessions {
        let got: BTreeSet<u64> = s.iter().flat_map(|s| ids(&s.msgs)).collect();
        assert_eq!(got, all, "{name} does not have every message");
    }
}

#[async_std::test]
async fn a_subscription_cut_at_the_output_buffer_limit_loses_nothing() {
    each_kind(output_buffer_on).await;
}

// ---------------------------------------------------------------------------------------------
// The fixture itself: what tests e. and f. take for granted about Redis restarts.

#[test]
fn the_redis_fixture_keeps_data_only_when_told() {
    for kind in Kind::under_test() {
        let mut plain = RedisServer::of(kind, &[]);
        assert_eq!(plain.cli(&["SET", "k", "v"]), "OK");
        assert_eq!(plain.dbsize(), 1);
        plain.stop();
        plain.restart();
        assert_eq!(plain.dbsize(), 0, "--save '' and no AOF keep nothing");
        let run_id = |r: &RedisServer| {
            let info = r.cli(&["INFO", "server"]);
            let line = info.lines().find(|l| l.starts_with("run_id:")).unwrap();
            line.trim().to_owned()
        };
        let first = run_id(&plain);
        plain.kill();
        plain.restart();
        assert_ne!(run_id(&plain), first, "a restart is a new run");

        let mut aof = RedisServer::of(kind, &["--appendonly", "yes", "--appendfsync", "always"]);
        assert_eq!(aof.cli(&["SET", "k", "v"]), "OK");
        aof.kill();
        aof.restart();
        assert_eq!(
            aof.cli(&["GET", "k"]),
            "v",
            "appendfsync always survives a SIGKILL"
        );
        assert!(aof.url().starts_with("unix:///"), "{}", aof.url());
    }
}

// ---------------------------------------------------------------------------------------------
// Presence batches over Redis (issue 13).

/// An in-process node over `redis` whose presence window never ends by itself: a message
/// or the test (`Hub::flush_presence`) sends what it holds, so the test decides which changes
/// share a batch.
async fn held_node(redis: &RedisServer) -> TestServer {
    let config = tidechat::Config {
        redis: vec![redis.url()],
        presence_window: Duration::from_secs(3600),
        presence_ttl: TTL,
        ..tidechat::Config::default()
    };
    TestServer::serve(tidechat::Server::open(config).await.expect("node")).await
}

async fn batch_straddles_a_joiners_list_on(kind: Kind) {
    let redis = RedisServer::of(kind, &[]);
    let a = held_node(&redis).await;
    let b = held_node(&redis).await;
    let (mut w, _) = joined_at(b.addr, "s", "w", None).await;
    let (mut carol, _) = joined_at(a.addr, "s", "carol", None).await;
    // dave's list is read between carol's join and her leave, which B holds in one batch.
    let (mut dave, j) = joined_at(b.addr, "s", "dave", None).await;
    assert_eq!(members(&j), ["carol", "dave", "w"], "{j}");
    let mut dave_view = presence::Members::of(&j);
    carol.send(json!({"type": "leave", "room": "s"})).await;
    carol.recv_type("left").await;
    // The feed is in order: B has every change before dave's message, and sends them, held
    // in one batch, just before it.
    let batch = json!({"type": "presence_batch", "room": "s", "joined": ["dave"],
                       "left": ["carol"], "member_count": 2});
    for v in frames_until_echo(&mut dave, "s", "m").await {
        assert_eq!(v, batch);
        dave_view.apply(&v);
    }
    assert_eq!(dave_view.sorted(), ["dave", "w"], "dave keeps carol");
    assert_eq!(dave_view.count, 2);
    let frames: Vec<Value> = frames_until_echo(&mut w, "s", "m").await;
    assert_eq!(frames, [batch]);
    // Nothing is left for the flush.
    b.state.hub.flush_presence(Instant::now());
    assert!(frames_until_echo(&mut w, "s", "end w").await.is_empty());
    drop((w, carol, dave));
    a.stop().await;
    b.stop().await;
}

#[async_std::test]
async fn a_presence_batch_that_straddles_a_joiners_list_leaves_the_exact_set() {
    each_kind(batch_straddles_a_joiners_list_on).await;
}
