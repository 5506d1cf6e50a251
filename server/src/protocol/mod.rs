//! The wire: protocol v1 (JSON text frames on `/ws`) and the seed protocol (`/chatSocket`), and
//! the close codes both endpoints share.
//!
//! Client frames are parsed once per frame. Room events (messages, presence) reach this node as
//! domain records ([`crate::hub::record`]) and are rendered once, on delivery, into a [`Wire`]
//! that every local receiver shares; [`v1`] renders JSON frames, [`seed`] the demo's lines.

pub mod seed;
pub mod text_frame;
pub mod v1;

use serde::{Deserialize, Serialize};

use crate::hub::record::RoomEvent;
pub use text_frame::TextFrame;

pub use v1::{history_frame, joined_frame, HistoryHead, JoinedHead};

/// A room event as this node's connections send it: rendered once, shared by every receiver.
#[derive(Debug, Default)]
pub struct Wire {
    /// The protocol v1 frame.
    pub v1: TextFrame,
    /// The seed protocol's line, for messages in [`seed::ROOM`] only.
    pub seed: Option<TextFrame>,
}

impl Wire {
    pub fn render(event: &RoomEvent) -> Self {
        match event {
            RoomEvent::Message(p) => Wire {
                v1: v1::message(p).into(),
                seed: (&*p.room == seed::ROOM).then(|| seed::line(p).into()),
            },
            RoomEvent::Presence {
                room, name, joined, ..
            } => Wire {
                v1: v1::presence(room, name, *joined).into(),
                seed: None,
            },
        }
    }

    /// What queueing this event costs: both of its renderings.
    pub fn bytes(&self) -> usize {
        self.v1.text_len() + self.seed.as_ref().map_or(0, TextFrame::text_len)
    }
}

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
    /// This node lost its live feed of a room (its Redis connection broke) and cannot prove
    /// that nothing was missed. Reconnect and join with `since`; `recovered` says the rest.
    pub const RESYNC: u16 = 4009;
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
    /// The message store cannot take messages now (a failing disk); nothing was published.
    pub const UNAVAILABLE: &str = "unavailable";
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
