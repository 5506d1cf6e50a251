//! Protocol v1's server frames that carry room events: `message`, `presence`, and the
//! `joined` / `history` replies that carry pages of messages.
//!
//! Each room event is rendered once per node, when the hub delivers it ([`super::Wire`]), and
//! shared as bytes by every receiver. A `joined` or `history` frame is its head serialized by
//! serde with the rendered messages spliced in ([`joined_frame`], [`history_frame`]).

use std::sync::Arc;

use serde::Serialize;

use super::to_text;
use crate::hub::record::Publication;
use crate::hub::{HistoryPage, Joined};

/// The `message` frame of a publication.
pub fn message(p: &Publication) -> String {
    to_text(&MessageFrame {
        room: &p.room,
        id: p.pos.offset,
        from: &p.from,
        text: &p.text,
        ts: p.ts,
        reference: p.reference.as_deref(),
    })
}

/// The `presence` frame of someone joining or leaving `room`.
pub fn presence(room: &str, name: &str, joined: bool) -> String {
    to_text(&PresenceFrame {
        room,
        name,
        event: if joined { "joined" } else { "left" },
    })
}

/// The `presence_batch` frame of several changes in `room` (see `hub::presence_batch`):
/// `member_count` is the room's count after them, where the broker knows it.
pub fn presence_batch(
    room: &str,
    joined: Vec<&str>,
    left: Vec<&str>,
    member_count: Option<usize>,
) -> String {
    to_text(&PresenceBatchFrame {
        room,
        joined,
        left,
        member_count,
    })
}

/// The `joined` frame of a join.
pub fn joined(j: &Joined) -> String {
    let head = JoinedHead {
        room: &j.room,
        name: &j.name,
        epoch: j.state.epoch.0,
        token: &j.token,
        members: &j.members,
        member_count: j.member_count,
        recovered: j.recovered,
        last_id: j.state.last,
        more: j.more,
    };
    let rendered: Vec<String> = j.history.iter().map(|p| message(p)).collect();
    joined_frame(&head, rendered.iter().map(String::as_str))
}

/// The `history` frame of a page.
pub fn history(page: &HistoryPage) -> String {
    let head = HistoryHead {
        room: &page.room,
        more: page.more,
    };
    let rendered: Vec<String> = page.messages.iter().map(|p| message(p)).collect();
    history_frame(&head, rendered.iter().map(String::as_str))
}

/// Reply to `join`, without its `history`, which [`joined_frame`] appends. `history` holds
/// `message` frames: those after `since` when it was given (oldest first), else the most recent
/// ones; at most the page caps. `recovered` is true when `since` was given, the epoch matched and
/// every message after `since` is still kept. `more` is true when the caps cut `history`: the rest
/// is fetched with `history` requests (`since` = the last id for a resume, else `before` = the
/// first id). `token` takes the name back on resume.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "joined")]
pub struct JoinedHead<'a> {
    pub room: &'a str,
    pub name: &'a str,
    pub epoch: u64,
    pub token: &'a str,
    /// Names in the room (at most the configured presence cap).
    pub members: &'a [Arc<str>],
    /// Number of members, which may exceed `members.len()` in very large rooms.
    pub member_count: usize,
    pub recovered: bool,
    /// Id of the newest message in the room at join time (0 when none).
    pub last_id: u64,
    pub more: bool,
}

/// Reply to `history`, without its `messages`, which [`history_frame`] appends. `more` is true
/// when the caps cut the page: continue in the same direction from its last (`since`) or first
/// (`before`) id.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "history")]
pub struct HistoryHead<'a> {
    pub room: &'a str,
    pub more: bool,
}

/// The `joined` frame: `head` with `"history":[...]` spliced in from already-serialized messages.
pub fn joined_frame<'m>(
    head: &JoinedHead<'_>,
    history: impl Iterator<Item = &'m str> + Clone,
) -> String {
    splice(to_text(head), "history", history)
}

/// The `history` frame: `head` with `"messages":[...]` spliced in.
pub fn history_frame<'m>(
    head: &HistoryHead<'_>,
    messages: impl Iterator<Item = &'m str> + Clone,
) -> String {
    splice(to_text(head), "messages", messages)
}

/// Appends `"key":[items]` to the serialized object `head`. Each item is valid JSON (a frame
/// serialized by this module), so the result is too.
fn splice<'m>(mut head: String, key: &str, items: impl Iterator<Item = &'m str> + Clone) -> String {
    let (count, bytes) = items.clone().fold((0, 0), |(n, b), i| (n + 1, b + i.len()));
    head.reserve(key.len() + 6 + bytes + count);
    // The head is a serde-serialized struct with at least its tag, so it ends in `}`.
    debug_assert!(head.ends_with('}'));
    head.pop();
    head.push_str(",\"");
    head.push_str(key);
    head.push_str("\":[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            head.push(',');
        }
        head.push_str(item);
    }
    head.push_str("]}");
    head
}

/// A chat message as it goes to every member of a room.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "message")]
pub struct MessageFrame<'a> {
    pub room: &'a str,
    pub id: u64,
    pub from: &'a str,
    pub text: &'a str,
    /// Server time in milliseconds since the Unix epoch.
    pub ts: u64,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a str>,
}

/// Someone joined or left a room.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "presence")]
pub struct PresenceFrame<'a> {
    pub room: &'a str,
    pub name: &'a str,
    /// `joined` or `left`.
    pub event: &'a str,
}

/// Several people joined or left a room within one presence window. Applying it is idempotent:
/// a name in `joined` is in the room, one in `left` is not, whatever the client had.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename = "presence_batch")]
pub struct PresenceBatchFrame<'a> {
    pub room: &'a str,
    pub joined: Vec<&'a str>,
    pub left: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member_count: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn message(id: u64, text: &str) -> String {
        to_text(&MessageFrame {
            room: "r",
            id,
            from: "bob",
            text,
            ts: 1_700_000_000_000 + id,
            reference: (id == 2).then_some("x\"y"),
        })
    }

    /// The spliced frames are valid JSON, equal to what serde renders for the whole frame.
    #[test]
    fn spliced_frames_equal_a_full_serde_rendering() {
        let messages = [
            message(1, "hi"),
            message(2, "a \"quote\"\n"),
            message(3, "ü\u{1}"),
        ];
        let members: Vec<Arc<str>> = vec!["bob".into(), "Zoë".into()];
        let head = JoinedHead {
            room: "r",
            name: "Zoë",
            epoch: 7,
            token: "t0",
            members: &members,
            member_count: 2,
            recovered: true,
            last_id: 3,
            more: false,
        };
        for n in 0..=messages.len() {
            let history = &messages[..n];
            let ours: Value =
                serde_json::from_str(&joined_frame(&head, history.iter().map(|m| m.as_str())))
                    .unwrap();
            let parsed: Vec<Value> = history
                .iter()
                .map(|m| serde_json::from_str(m).unwrap())
                .collect();
            let mut full = serde_json::to_value(&head).unwrap();
            full["history"] = Value::Array(parsed.clone());
            assert_eq!(ours, full);
            assert_eq!(ours["type"], "joined");

            let page = HistoryHead {
                room: "r",
                more: true,
            };
            let ours: Value =
                serde_json::from_str(&history_frame(&page, history.iter().map(|m| m.as_str())))
                    .unwrap();
            assert_eq!(
                ours,
                json!({"type": "history", "room": "r", "more": true, "messages": parsed})
            );
        }
    }
}
