//! What the simulated clients say and how they read what comes back: the `join` and `say`
//! frames of protocol v1, and the stamp `~tag.room.slot.seq.micros~` at the start of every
//! message text (which run, which room, which sender, its sequence number, its send time), found
//! in a received frame without parsing the rest of it.
//!
//! Frames are built with `write!` into reused buffers and read by prefix and a byte search
//! (a client reads thousands of frames a second and keeps no allocation per frame); the tests
//! pin both to the server's own types (`tidechat::protocol`).

use std::fmt::Write as _;

use crate::config::Protocol;

/// What the stamp in a message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The run's tag ([`crate::run::Run::tag`]): another run's messages are foreign.
    pub tag: u16,
    /// The room the message was sent to: delivered in another room, it is foreign.
    pub room: u32,
    /// The sender's slot among its room's senders.
    pub slot: u32,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// Send time, microseconds since the run's epoch.
    pub sent_us: u64,
}

/// A received text frame, as far as the load test cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A message of a load test.
    Message(Stamp),
    /// An `error` frame with its code.
    Error(String),
    /// A frame of the protocol that carries no message (`presence`, `pong`, `left`, ...).
    Control,
    /// Anything else: not this protocol's, or a message without a stamp.
    Unrecognized,
}

/// Classifies a received text frame (possibly only its beginning).
pub fn classify(frame: &[u8], protocol: Protocol) -> Received {
    if let Some(stamp) = parse_stamp(frame, protocol) {
        return Received::Message(stamp);
    }
    match protocol {
        Protocol::V1 if frame.starts_with(br#"{"type":"error""#) => {
            Received::Error(error_code(frame))
        }
        Protocol::V1
            if frame.starts_with(br#"{"type":""#)
                && !frame.starts_with(br#"{"type":"message""#) =>
        {
            Received::Control
        }
        _ => Received::Unrecognized,
    }
}

/// Finds and parses the stamp in a received frame: in a v1 `message` at the start of its text,
/// in a seed line after the sender's `N: `, in a raw frame at its very start.
pub fn parse_stamp(frame: &[u8], protocol: Protocol) -> Option<Stamp> {
    const TEXT: &[u8] = br#""text":"~"#;
    let start = match protocol {
        Protocol::V1 => {
            if !frame.starts_with(br#"{"type":"message""#) {
                return None;
            }
            memchr::memmem::find(frame, TEXT)? + TEXT.len()
        }
        Protocol::Seed => {
            let colon = memchr::memchr(b':', frame)?;
            if !frame[..colon].iter().all(u8::is_ascii_digit)
                || frame.get(colon + 1..colon + 3) != Some(b" ~")
            {
                return None;
            }
            colon + 3
        }
        Protocol::Raw => {
            if frame.first() != Some(&b'~') {
                return None;
            }
            1
        }
    };
    const FIELDS: usize = 5;
    let mut nums = [0u64; FIELDS];
    let mut i = start;
    for (k, n) in nums.iter_mut().enumerate() {
        let digits_start = i;
        while i < frame.len() && frame[i].is_ascii_digit() {
            *n = n.checked_mul(10)?.checked_add(u64::from(frame[i] - b'0'))?;
            i += 1;
        }
        if i == digits_start || i >= frame.len() {
            return None;
        }
        let want = if k < FIELDS - 1 { b'.' } else { b'~' };
        if frame[i] != want {
            return None;
        }
        i += 1;
    }
    Some(Stamp {
        tag: u16::try_from(nums[0]).ok()?,
        room: u32::try_from(nums[1]).ok()?,
        slot: u32::try_from(nums[2]).ok()?,
        seq: nums[3],
        sent_us: nums[4],
    })
}

/// The `code` of an `error` frame (read from its beginning, which may be all there is).
pub fn error_code(frame: &[u8]) -> String {
    let key = br#""code":""#;
    memchr::memmem::find(frame, key)
        .and_then(|at| {
            let rest = &frame[at + key.len()..];
            let end = memchr::memchr(b'"', rest)?;
            Some(String::from_utf8_lossy(&rest[..end]).into_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Writes a message text of at least `size` bytes: the stamp, then `x`s.
pub fn message_text(out: &mut String, stamp: Stamp, size: usize) {
    out.clear();
    // unwrap: writing into a String cannot fail.
    write!(
        out,
        "~{}.{}.{}.{}.{}~",
        stamp.tag, stamp.room, stamp.slot, stamp.seq, stamp.sent_us
    )
    .unwrap();
    while out.len() < size {
        out.push('x');
    }
}

/// The v1 `join` frame. Room and user names are the load test's own (`[a-z0-9-]`): nothing to
/// escape.
pub fn join_frame(room: &str, name: &str) -> String {
    format!(r#"{{"type":"join","room":"{room}","name":"{name}"}}"#)
}

/// The frame that sends `text` (a [`message_text`], nothing to escape) to `room`: v1's `say`, or
/// the text itself on the seed and raw protocols.
pub fn say_frame<'a>(
    out: &'a mut String,
    protocol: Protocol,
    room: &str,
    text: &'a str,
) -> &'a str {
    match protocol {
        Protocol::V1 => {
            out.clear();
            // unwrap: writing into a String cannot fail.
            write!(out, r#"{{"type":"say","room":"{room}","text":"{text}"}}"#).unwrap();
            out
        }
        Protocol::Seed | Protocol::Raw => text,
    }
}

/// The first frame a v1 server sends.
pub fn is_hello(frame: &[u8]) -> bool {
    frame.starts_with(br#"{"type":"hello""#)
}

/// What a v1 server answers to `join`: `Some(Ok)` for `joined`, `Some(Err)` for an `error`.
pub fn join_reply(frame: &[u8]) -> Option<Result<(), String>> {
    if frame.starts_with(br#"{"type":"joined""#) {
        Some(Ok(()))
    } else if frame.starts_with(br#"{"type":"error""#) {
        Some(Err(format!(
            "join refused: {}",
            String::from_utf8_lossy(&frame[..frame.len().min(200)])
        )))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidechat::protocol::v1::{MessageFrame, PresenceFrame};
    use tidechat::protocol::{self, ClientFrame, ServerFrame};

    const STAMP: Stamp = Stamp {
        tag: 65535,
        room: 3,
        slot: 2,
        seq: 41,
        sent_us: 123_456,
    };

    fn text() -> String {
        let mut t = String::new();
        message_text(&mut t, STAMP, 64);
        assert_eq!(t.len(), 64);
        t
    }

    /// The stamp is found in the frames the server really sends: a v1 `message` rendered by
    /// `tidechat::protocol`, and the seed line the hub builds (`"{name}: {text}"`).
    #[test]
    fn stamps_are_read_from_the_servers_frames() {
        let text = text();
        let v1 = protocol::to_text(&MessageFrame {
            room: "lt00ff-3",
            id: 7,
            from: "lt3",
            text: &text,
            ts: 1_700_000_000_000,
            reference: Some("r1"),
        });
        assert_eq!(parse_stamp(v1.as_bytes(), Protocol::V1), Some(STAMP));
        assert_eq!(
            classify(v1.as_bytes(), Protocol::V1),
            Received::Message(STAMP)
        );
        let seed = format!("{}: {text}", 12);
        assert_eq!(parse_stamp(seed.as_bytes(), Protocol::Seed), Some(STAMP));
        assert_eq!(parse_stamp(text.as_bytes(), Protocol::Raw), Some(STAMP));
        // A v1 message's beginning is enough (large frames are read only that far).
        assert_eq!(
            parse_stamp(&v1.as_bytes()[..v1.find("xxx").unwrap()], Protocol::V1),
            Some(STAMP)
        );
    }

    #[test]
    fn other_frames_are_told_apart() {
        let presence = protocol::to_text(&PresenceFrame {
            room: "r",
            name: "bob",
            event: "joined",
        });
        assert_eq!(
            classify(presence.as_bytes(), Protocol::V1),
            Received::Control
        );
        let error = protocol::to_text(&ServerFrame::Error {
            code: protocol::error_code::RATE_LIMITED,
            message: "slow down",
            room: Some("r"),
            reference: None,
        });
        assert_eq!(
            classify(error.as_bytes(), Protocol::V1),
            Received::Error("rate_limited".into())
        );
        assert_eq!(join_reply(error.as_bytes()).map(|r| r.is_err()), Some(true));
        let pong = protocol::to_text(&ServerFrame::Pong { reference: None });
        assert_eq!(classify(pong.as_bytes(), Protocol::V1), Received::Control);
        // A message without a stamp, a truncated stamp, a seed line from a non-number.
        let plain = protocol::to_text(&MessageFrame {
            room: "r",
            id: 1,
            from: "bob",
            text: "hello",
            ts: 1,
            reference: None,
        });
        assert_eq!(
            classify(plain.as_bytes(), Protocol::V1),
            Received::Unrecognized
        );
        assert_eq!(parse_stamp(b"12: ~1.2.3~", Protocol::Seed), None);
        assert_eq!(parse_stamp(b"bob: ~1.2.3.4.5~", Protocol::Seed), None);
        assert_eq!(parse_stamp(b"x~1.2.3.4.5~", Protocol::Raw), None);
        assert_eq!(
            parse_stamp(b"~70000.2.3.4.5~", Protocol::Raw),
            None,
            "tag over u16"
        );
        assert_eq!(classify(b"hello", Protocol::Raw), Received::Unrecognized);
    }

    /// The frames the clients build are what the server's parser expects.
    #[test]
    fn client_frames_parse_as_the_servers_types() {
        let join: ClientFrame = serde_json::from_str(&join_frame("lt00ff-3", "lt7")).unwrap();
        assert!(
            matches!(&join, ClientFrame::Join { room, name, since: None, epoch: None, token: None }
                if room == "lt00ff-3" && name == "lt7"),
            "{join:?}"
        );
        let text = text();
        let mut buf = String::new();
        let say: ClientFrame =
            serde_json::from_str(say_frame(&mut buf, Protocol::V1, "lt00ff-3", &text)).unwrap();
        assert!(
            matches!(&say, ClientFrame::Say { room, text: t, reference: None }
                if room == "lt00ff-3" && *t == text),
            "{say:?}"
        );
        assert_eq!(say_frame(&mut buf, Protocol::Raw, "r", &text), text);
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            error_code(br#"{"type":"error","code":"rate_limited","message":"x"}"#),
            "rate_limited"
        );
        assert_eq!(error_code(br#"{"type":"error","code":"trunc"#), "unknown");
    }
}
