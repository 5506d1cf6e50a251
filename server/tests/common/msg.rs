//! What tests read from and say to a room, at the level of messages: a message as a client saw
//! it ([`Msg`]), joins with a resume position, sending with acknowledgement (the sender's echo),
//! and paging through history the way the README tells a client to.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde_json::{json, Value};

use super::{connect_at, Client};

/// Joins `room` as `name`, resuming from `(since, epoch)` if given; returns the `joined` frame.
pub async fn join(c: &mut Client, room: &str, name: &str, resume: Option<(u64, u64)>) -> Value {
    let mut frame = json!({"type": "join", "room": room, "name": name});
    if let Some((since, epoch)) = resume {
        frame["since"] = since.into();
        frame["epoch"] = epoch.into();
    }
    c.send(frame).await;
    loop {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("joined") => return v,
            Some("error") => panic!("join refused: {v}"),
            _ => {}
        }
    }
}

/// Connects to `addr` and joins.
pub async fn joined_at(
    addr: SocketAddr,
    room: &str,
    name: &str,
    resume: Option<(u64, u64)>,
) -> (Client, Value) {
    let mut c = connect_at(addr).await;
    let j = join(&mut c, room, name, resume).await;
    (c, j)
}

/// A chat message as a client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub id: u64,
    pub from: String,
    pub text: String,
    /// Server time: stored with the message, so it comes back the same after a restart.
    pub ts: u64,
}

impl Msg {
    pub fn of(v: &Value) -> Self {
        assert_eq!(v["type"], "message", "{v}");
        Msg {
            id: v["id"].as_u64().unwrap(),
            from: v["from"].as_str().unwrap().to_owned(),
            text: v["text"].as_str().unwrap().to_owned(),
            ts: v["ts"].as_u64().unwrap(),
        }
    }
}

pub fn ids(msgs: &[Msg]) -> Vec<u64> {
    msgs.iter().map(|m| m.id).collect()
}

pub fn u64_of(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field}: {v}"))
}

/// Every message after the `joined` frame's page too: `history` requests with `since` = the
/// last id received, until `more` is false (the way the README tells a client to page).
pub async fn page_all(c: &mut Client, room: &str, joined: &Value) -> Vec<Msg> {
    let mut all: Vec<Msg> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(Msg::of)
        .collect();
    let mut more = joined["more"].as_bool().unwrap();
    // Bounded: a page holds at least one message, and no test keeps more than 10,000.
    for _ in 0..10_000 {
        if !more {
            return all;
        }
        let since = all.last().map_or(0, |m| m.id);
        c.send(json!({"type": "history", "room": room, "since": since}))
            .await;
        let page = loop {
            let v = c.recv().await;
            match v["type"].as_str() {
                Some("history") => break v,
                Some("error") => panic!("history refused: {v}"),
                _ => {}
            }
        };
        let messages = page["messages"].as_array().unwrap();
        assert!(!messages.is_empty() || page["more"] == false, "{page}");
        all.extend(messages.iter().map(Msg::of));
        more = page["more"].as_bool().unwrap();
    }
    panic!("history paging did not end");
}

/// Says `text` with `reference` and waits for the echo (reading whatever comes first).
pub async fn say_acked(c: &mut Client, room: &str, text: &str, reference: &str) -> Msg {
    c.send(json!({"type": "say", "room": room, "text": text, "ref": reference}))
        .await;
    loop {
        let v = c.recv().await;
        match v["type"].as_str() {
            Some("message") if v["ref"] == reference => return Msg::of(&v),
            Some("error") => panic!("say refused: {v}"),
            _ => {}
        }
    }
}

/// `n` messages from `name`, each sent only after the previous one's echo; the echoes.
pub async fn send_acked(mut c: Client, room: String, name: String, n: usize) -> (Client, Vec<Msg>) {
    let mut acked = Vec::with_capacity(n);
    for i in 0..n {
        let m = say_acked(
            &mut c,
            &room,
            &format!("{name} says {i}"),
            &format!("{name}-{i}"),
        )
        .await;
        assert_eq!(m.from, name);
        acked.push(m);
    }
    (c, acked)
}

/// Messages by id; two different messages under one id fail the test.
pub fn by_id(msgs: impl IntoIterator<Item = Msg>) -> BTreeMap<u64, Msg> {
    let mut map = BTreeMap::new();
    for m in msgs {
        if let Some(old) = map.insert(m.id, m.clone()) {
            assert_eq!(old, m, "two messages under one id");
        }
    }
    map
}

pub fn history_of(joined: &Value) -> Vec<Msg> {
    joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(Msg::of)
        .collect()
}
