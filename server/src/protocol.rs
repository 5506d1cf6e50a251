//! Wire types of protocol v1: JSON text frames on `/ws`, and the close codes both endpoints share.
//!
//! Client frames are parsed once per frame; server frames that go to many receivers (messages,
//! presence) are serialized once at publish by the hub and shared as bytes.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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
    /// Largest `text` in `say`, in bytes.
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
}

/// A frame from the server that is built for one connection (fan-out frames are pre-serialized
/// by the hub and never pass through this type).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// First frame on every `/ws` connection.
    Hello { protocol: u32, limits: &'a Limits },
    /// Reply to `join`. `history` holds `message` frames: those after `since` when it was given,
    /// else the most recent ones. `recovered` is true when `since` was given, the epoch matched
    /// and every message after `since` is in `history`. `token` takes the name back on resume.
    Joined {
        room: &'a str,
        name: &'a str,
        epoch: u64,
        token: &'a str,
        /// Names in the room (at most the configured presence cap).
        members: &'a [String],
        /// Number of members, which may exceed `members.len()` in very large rooms.
        member_count: usize,
        history: Vec<&'a RawValue>,
        recovered: bool,
        /// Id of the newest message in the room at join time (0 when none).
        last_id: u64,
    },
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
    /// Not JSON, or not a known frame.
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
    /// `say` or `leave` for a room this connection has not joined.
    pub const NOT_IN_ROOM: &str = "not_in_room";
    /// Already in this room.
    pub const ALREADY_JOINED: &str = "already_joined";
    /// `text` longer than `max_text_bytes`, or empty.
    pub const TEXT_TOO_LONG: &str = "text_too_long";
    pub const EMPTY_TEXT: &str = "empty_text";
    /// Frames arrive faster than the rate limit; this one was dropped.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// Another connection resumed this name with its token.
    pub const REPLACED: &str = "replaced";
}

/// Serializes a frame built on this side. Serialization of these types cannot fail: they hold
/// only strings, numbers and already-valid raw JSON.
pub fn to_text<T: Serialize>(frame: &T) -> String {
    // unwrap: serde_json only fails on non-string map keys or failing Serialize impls; none here.
    serde_json::to_string(frame).unwrap()
}
