//! Wire types of protocol v1: JSON text frames on `/ws`, and the close codes both endpoints share.
//!
//! Client frames are parsed once per frame; server frames that go to many receivers (messages,
//! presence) are serialized once at publish by the hub and shared as bytes. Frames that carry
//! such messages (`joined`, `history`) are built by splicing those bytes into the rest of the
//! frame ([`joined_frame`], [`history_frame`]): no message is parsed or serialized again.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Close codes the server uses. 1xxx are RFC 6455; 4xxx are tidechat's own.
pub mod close {
    /// Normal closure (the client asked to close).
    pub const NORMAL: u16 = 1000;
    /// Server shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the websocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Binary frames are not part of the protocol.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client kept exceeding its message rate after being warned.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than the configured maximum.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Nothing (not even a pong) arrived within the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection fell behind its room buffer or its socket accepted no writes within the
    /// write timeout. Reconnect and join with `since` to recover what was missed.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// A frame from a client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Enter a room under a name. `since` (the last message id the client saw) asks for a replay of
    /// what it missed; `epoch` is the room epoch it saw then; `token` is the resume token from an
    /// earlier `joined`, which lets the client take its own name back from a stale connection.
    Join {
        room: String,
        name: String,
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        epoch: Option<u64>,
        #[serde(default)]
        token: Option<String>,
    },
    /// Leave a room.
    Leave { room: String },
    /// Send `text` to everyone in `room` (the sender included: its copy is the acknowledgement).
    /// `ref` is an optional client nonce echoed in the message and in any error about it.
    Say {
        room: String,
        text: String,
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
    /// A page of a room's history (this connection must be in the room): the messages after
    /// `since`, oldest first, or the ones just before `before`; at most `limit` (and never more
    /// than a join returns). Answered with a `history` frame.
    History {
        room: String,
        #[serde(default)]
        since: Option<u64>,
        #[serde(default)]
        before: Option<u64>,
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Liveness check; answered with `pong`.
    Ping {
        #[serde(default, rename = "ref")]
        reference: Option<String>,
    },
}

/// Limits announced to clients in `hello`, so they can refuse bad input before sending.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Largest websocket message accepted, in bytes (close 1009 beyond).
    pub max_message_bytes: usize,
    /// Largest `text` in `say`, in bytes as serialized in a JSON string (escapes count).
    pub max_text_bytes: usize,
    /// Longest name, in characters.
    pub max_name_chars: usize,
    /// Longest room name, in characters.
    pub max_room_chars: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// Sustained frames per second allowed per connection.
    pub rate_per_sec: f64,
    /// Burst of frames allowed above the sustained rate.
    pub rate_burst: u32,
    /// Rate tokens a `join` or `history` request costs (every other frame costs one).
    pub join_cost: u32,
    /// Most messages a `joined` or `history` frame holds.
    pub page_messages: usize,
    /// Most bytes of messages a `joined` or `history` frame holds (a single larger message
    /// still goes out alone).
    pub page_bytes: usize,
}

/// A frame from the server that is built for one connection (fan-out frames are pre-serialized
/// by the hub and never pass through this type).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame on every `/ws` connection.
    Hello { protocol: u32, limits: &'a Limits },
    /// Reply to `leave`, and notice that the server removed this connection from a room.
    Left { room: &'a str, reason: &'a str },
    /// Something the client sent was refused; the connection stays open.
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
    /// Reply to `ping`.
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a str>,
    },
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

/// Bytes `s` takes inside a JSON string as serde_json writes it (without the quotes): `"` and
/// `\` and the control characters with a short escape take 2, other control characters 6
/// (`\u00XX`), everything else its UTF-8 bytes. `--max-text-bytes` bounds this, so a message is
/// never bigger where it is stored and sent than the limit says.
pub fn json_str_len(s: &str) -> usize {
    s.len()
        + s.bytes()
            .map(|b| match b {
                b'"' | b'\\' | b'\x08' | b'\t' | b'\n' | b'\x0c' | b'\r' => 1,
                0..=0x1f => 5,
                _ => 0,
            })
            .sum::<usize>()
}

/// A chat message as it goes to every member of a room (and into history).
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

/// Machine-readable error codes of `error` frames.
pub mod error_code {
    /// Not JSON, or not a known frame (or a `history` request without exactly one of
    /// `since`/`before`, or with `limit` 0).
    pub const BAD_REQUEST: &str = "bad_request";
    /// A room or name that breaks the syntax rules.
    pub const INVALID_NAME: &str = "invalid_name";
    pub const INVALID_ROOM: &str = "invalid_room";
    /// Another connection holds this name in the room.
    pub const NAME_TAKEN: &str = "name_taken";
    /// The connection is already in the maximum number of rooms.
    pub const TOO_MANY_ROOMS: &str = "too_many_rooms";
    /// The server holds its maximum number of rooms and none is empty.
    pub const SERVER_FULL: &str = "server_full";
    /// `say`, `leave` or `history` for a room this connection has not joined.
    pub const NOT_IN_ROOM: &str = "not_in_room";
    /// Already in this room.
    pub const ALREADY_JOINED: &str = "already_joined";
    /// `text` longer than `max_text_bytes` as serialized in JSON (see [`super::json_str_len`]),
    /// or empty.
    pub const TEXT_TOO_LONG: &str = "text_too_long";
    pub const EMPTY_TEXT: &str = "empty_text";
    /// Frames arrive faster than the rate limit; this one was dropped.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Another connection resumed this name with its token.
    pub const REPLACED: &str = "replaced";
}

/// Serializes a frame built on this side. Serialization of these types cannot fail: they hold
/// only strings and numbers.
pub fn to_text<T: Serialize>(frame: &T) -> String {
    // unwrap: serde_json only fails on non-string map keys or failing Serialize impls; none here.
    serde_json::to_string(frame).unwrap()
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

    /// What [`json_str_len`] counts is what serde_json writes, for every ASCII character and
    /// some that are not.
    #[test]
    fn json_str_len_is_the_serialized_length() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples
            .extend(["ü", "€", "😀", "\u{2028}", "\u{7f}", "a\u{0}b\"\\\n\t\r"].map(String::from));
        samples.push("\u{1}".repeat(5000));
        for s in samples {
            let serialized = serde_json::to_string(&s).unwrap().len() - 2;
            assert_eq!(json_str_len(&s), serialized, "{s:?}");
        }
    }
}
