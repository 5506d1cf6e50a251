//! The frames a connection's writer sends: a header and a shared payload (a room event's is its
//! [`TextFrame`]'s, so no payload is copied), and the metrics of what reached the socket, which
//! publishers writing to a parked writer's socket ([`super::direct`]) count too. Those send a
//! room event's `TextFrame` as it is, and hand the writer `Frame`s only for a write the socket
//! cut.

use std::io::Cursor;
use std::time::{Duration, Instant};

use async_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::{Bytes, Utf8Bytes};

use super::Mode;
use crate::hub::EventRef;
use crate::metrics::{Metrics, Tally};
use crate::protocol::TextFrame;

/// A frame ready to go: header bytes and the (shared) payload.
#[derive(Debug)]
pub(super) struct Frame {
    pub header: [u8; 10],
    pub header_len: u8,
    pub payload: Bytes,
    /// When its room event was rendered (for the fan-out histogram).
    pub published: Option<Instant>,
}

impl Frame {
    pub fn new(opcode: OpCode, payload: Bytes) -> Self {
        let mut header = [0u8; 10];
        let mut cursor = Cursor::new(&mut header[..]);
        let head = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        // unwrap: an unmasked header is at most 10 bytes, which the cursor holds.
        head.format(payload.len() as u64, &mut cursor).unwrap();
        let header_len = cursor.position() as u8;
        Frame {
            header,
            header_len,
            payload,
            published: None,
        }
    }

    pub fn head(&self) -> &[u8] {
        &self.header[..self.header_len as usize]
    }

    /// Its bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.header_len as usize + self.payload.len()
    }

    /// Its close code, if it is a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.is_close() && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn is_close(&self) -> bool {
        self.header[0] & 0x0f == 0x8
    }

    pub fn text(text: Utf8Bytes) -> Self {
        Self::new(OpCode::Data(Data::Text), text.into())
    }

    /// A rendered frame's header and (shared) payload.
    pub fn rendered(t: &TextFrame) -> Self {
        let mut header = [0u8; 10];
        let head = t.head();
        header[..head.len()].copy_from_slice(head);
        Frame {
            header,
            header_len: head.len() as u8,
            payload: t.payload(),
            published: None,
        }
    }

    /// What [`account`] counts of it.
    pub fn sent(&self) -> Sent {
        Sent {
            len: self.wire_len(),
            close: self.close_code(),
            published: self.published,
        }
    }

    pub fn close(code: u16, reason: &str) -> Self {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        Self::new(OpCode::Control(Control::Close), payload.into())
    }
}

/// The rendering of a room event a connection sends (seed clients see only messages).
pub(super) fn rendering(mode: Mode, ev: &EventRef) -> Option<&TextFrame> {
    match mode {
        Mode::V1 => Some(&ev.wire.v1),
        Mode::Seed => ev.wire.seed.as_ref(),
    }
}

/// The frame a room event becomes on a connection (seed clients see only messages).
pub(super) fn frame_for(mode: Mode, ev: &EventRef) -> Option<Frame> {
    let mut frame = Frame::rendered(rendering(mode, ev)?);
    frame.published = ev.published;
    Some(frame)
}

/// What the metrics count of a frame written.
pub(super) struct Sent {
    pub len: usize,
    pub close: Option<u16>,
    /// When its room event was rendered.
    pub published: Option<Instant>,
}

/// Adds to the metrics what reached the socket: bytes `from..to` of `frames` (in order), and
/// the frames that ended in that range (a frame cut by one write and finished by the next is
/// counted once, by the second). Once per write.
pub(super) fn account<'f>(
    m: Option<&Metrics>,
    frames: impl IntoIterator<Item = &'f Frame>,
    from: usize,
    to: usize,
) {
    account_sent(m, frames.into_iter().map(Frame::sent), from, to);
}

/// [`account`], for frames described by what it counts of them.
pub(super) fn account_sent(
    m: Option<&Metrics>,
    frames: impl IntoIterator<Item = Sent>,
    from: usize,
    to: usize,
) {
    let Some(m) = m else { return };
    let mut t = Tally::new(Instant::now());
    tally_sent(&mut t, frames, from, to);
    m.record(&t);
}

/// Adds to `t` what [`account_sent`] would add to the metrics.
pub(super) fn tally_sent(
    t: &mut Tally,
    frames: impl IntoIterator<Item = Sent>,
    from: usize,
    to: usize,
) {
    t.bytes(to - from);
    let mut end = 0;
    for f in frames {
        end += f.len;
        if end > to {
            break;
        }
        if end <= from {
            continue;
        }
        match f.close {
            Some(code) => t.close(code),
            None => t.frame(f.published),
        }
    }
}

/// Spins for `d` (`--test-work-per-delivery`: a measurably costlier server for the benchmark
/// gate's own tests).
pub(super) fn busy(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::frame::Frame as TFrame;

    /// Our frames are byte for byte what tungstenite writes for a server, at every length form.
    #[test]
    fn frames_match_tungstenite() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 100_000] {
            let text = "a".repeat(len);
            let ours = Frame::text(text.clone().into());
            let mut bytes = ours.head().to_vec();
            bytes.extend_from_slice(&ours.payload);
            let mut theirs = Vec::new();
            TFrame::message(text, OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(bytes, theirs, "length {len}");
        }
        let ours = Frame::close(4008, "slow consumer");
        let mut bytes = ours.head().to_vec();
        bytes.extend_from_slice(&ours.payload);
        assert_eq!(bytes[..4], [0x88, 15, 0x0f, 0xa8]);
        assert_eq!(&bytes[4..], b"slow consumer");
    }
}
