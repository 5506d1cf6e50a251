//! A text message rendered once as a whole websocket frame, header and payload in one buffer
//! (unmasked, as a server sends it). A room event is rendered so once per node; a fan-out write
//! of one event then sends these shared bytes as they are, with no header to format and no
//! buffer to build per delivery.

use async_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::Bytes;

/// The longest header of an unmasked frame.
const MAX_HEAD: usize = 10;

/// A whole text frame (see the module's doc).
#[derive(Debug, Clone)]
pub struct TextFrame {
    bytes: Bytes,
    head: u8,
}

impl TextFrame {
    pub fn new(text: &str) -> Self {
        let mut bytes = Vec::with_capacity(MAX_HEAD + text.len());
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        // unwrap: formatting into a Vec cannot fail.
        header.format(text.len() as u64, &mut bytes).unwrap();
        let head = bytes.len() as u8;
        bytes.extend_from_slice(text.as_bytes());
        Self {
            bytes: bytes.into(),
            head,
        }
    }

    /// The frame as it goes on the wire.
    pub fn wire(&self) -> &[u8] {
        &self.bytes
    }

    /// Its header.
    pub fn head(&self) -> &[u8] {
        &self.bytes[..usize::from(self.head)]
    }

    /// Its payload, shared with this frame.
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(usize::from(self.head)..)
    }

    /// Its payload's length.
    pub fn text_len(&self) -> usize {
        self.bytes.len() - usize::from(self.head)
    }

    /// Its text.
    pub fn text(&self) -> &str {
        // Built from a `&str`, so this always holds.
        std::str::from_utf8(&self.bytes[usize::from(self.head)..]).unwrap_or_default()
    }
}

impl Default for TextFrame {
    fn default() -> Self {
        Self::new("")
    }
}

impl From<String> for TextFrame {
    fn from(text: String) -> Self {
        Self::new(&text)
    }
}

impl From<&str> for TextFrame {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::frame::Frame;

    /// Byte for byte what tungstenite writes for a server, at every length form.
    #[test]
    fn matches_tungstenite() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 100_000] {
            let text = "é".repeat(len / 2) + &"a".repeat(len % 2);
            let ours = TextFrame::new(&text);
            let mut theirs = Vec::new();
            Frame::message(text.clone(), OpCode::Data(Data::Text), true)
                .format(&mut theirs)
                .unwrap();
            assert_eq!(ours.wire(), &theirs[..], "{len}");
            assert_eq!(ours.text(), text);
            assert_eq!(&ours.payload()[..], text.as_bytes());
            assert_eq!(ours.head().len() + text.len(), ours.wire().len());
            assert_eq!(ours.text_len(), text.len());
        }
        assert_eq!(TextFrame::default().wire(), [0x81, 0]);
    }
}
