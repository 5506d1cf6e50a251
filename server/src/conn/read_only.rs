//! The read half of an upgraded connection as tungstenite sees it: reads pass through (and their
//! frame headers are followed, for `--message-timeout`), writes are dropped (the connection's
//! writer owns the socket's write side).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::{AsyncRead, AsyncWrite};

/// The upgraded connection as tungstenite sees it: reads pass through, writes are dropped.
/// tungstenite queues pong and close replies and writes them while reading; the connection's
/// writer sends those itself, so tungstenite's copies must not interleave with its frames.
///
/// It also follows the frame headers in what it reads, to know when a message has begun but
/// not ended: tungstenite assembles fragments and trickled frames inside and says nothing until
/// a message is complete, so only the bytes show a client that starts messages and never
/// finishes them (see [`ReadOnly::incomplete_since`]).
#[derive(Debug)]
pub struct ReadOnly<S> {
    inner: S,
    frames: FrameTracker,
    /// Bytes read since [`ReadOnly::take_counts`] last took them.
    bytes: u64,
}

impl<S> ReadOnly<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            frames: FrameTracker::default(),
            bytes: 0,
        }
    }

    /// Frames begun and bytes read since the last call (for the received counters: the reader
    /// adds them to the shared atomics once per message, not per read).
    pub fn take_counts(&mut self) -> (u64, u64) {
        let frames = std::mem::take(&mut self.frames.headers);
        (frames, std::mem::take(&mut self.bytes))
    }

    /// When the bytes of a message still unfinished began to arrive (`None` between messages).
    pub fn incomplete_since(&self) -> Option<Instant> {
        self.frames.since
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadOnly<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read {
            this.frames.feed(&buf[..n]);
            this.bytes += n as u64;
        }
        read
    }
}

/// Where the client's byte stream is relative to message boundaries: in a frame header, in a
/// payload, or inside a fragmented message. Only headers are looked at; payloads are skipped.
#[derive(Debug, Default)]
struct FrameTracker {
    /// The header read so far (at most 2 + 8 length + 4 mask bytes).
    head: [u8; 14],
    head_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
    /// A data frame without FIN was seen and its final fragment was not.
    fragmented: bool,
    /// Set when a read ends inside a message, cleared when one ends at a boundary.
    since: Option<Instant>,
    /// Frame headers completed (frames begun) since the count was last taken.
    headers: u64,
}

impl FrameTracker {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len() as u64);
                self.payload_left -= n;
                bytes = &bytes[n as usize..];
                continue;
            }
            self.head[self.head_len as usize] = bytes[0];
            self.head_len += 1;
            bytes = &bytes[1..];
            if let Some(payload) = self.header_done() {
                let b0 = self.head[0];
                self.head_len = 0;
                self.headers += 1;
                // Control frames may come between fragments and do not end the message.
                let data = b0 & 0x08 == 0;
                if data {
                    self.fragmented = b0 & 0x80 == 0;
                }
                self.payload_left = payload;
            }
        }
        let boundary = self.head_len == 0 && self.payload_left == 0 && !self.fragmented;
        if boundary {
            self.since = None;
        } else if self.since.is_none() {
            // Only here, off the common path of whole messages in one read, is the clock read.
            self.since = Some(Instant::now());
        }
    }

    /// The payload length once the header in `head` is complete.
    fn header_done(&self) -> Option<u64> {
        let h = &self.head[..self.head_len as usize];
        if h.len() < 2 {
            return None;
        }
        let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
        let (ext, short) = match h[1] & 0x7f {
            126 => (2, None),
            127 => (8, None),
            n => (0, Some(u64::from(n))),
        };
        if h.len() < 2 + ext + mask {
            return None;
        }
        Some(short.unwrap_or_else(|| {
            h[2..2 + ext]
                .iter()
                .fold(0u64, |len, b| (len << 8) | u64::from(*b))
        }))
    }
}

impl<S: Unpin> AsyncWrite for ReadOnly<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
#[cfg(test)]
mod tests {
    use super::FrameTracker;

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![b0];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=65_535 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn knows_when_a_message_is_unfinished() {
        let mut t = FrameTracker::default();
        for len in [0, 5, 125, 126, 70_000] {
            t.feed(&frame(0x81, &vec![b'a'; len]));
            assert!(t.since.is_none(), "whole text frame of {len}");
        }
        // Fragments, with a ping between them, then the final fragment.
        t.feed(&frame(0x01, b"hel"));
        let began = t.since.expect("FIN=0 leaves the message open");
        t.feed(&frame(0x89, b""));
        t.feed(&frame(0x00, b"l"));
        assert_eq!(t.since, Some(began), "the clock is not restarted");
        t.feed(&frame(0x80, b"o"));
        assert!(t.since.is_none());
        // One byte at a time: open until the last byte.
        let f = frame(0x81, b"trickled");
        for (i, b) in f.iter().enumerate() {
            t.feed(&[*b]);
            assert_eq!(t.since.is_none(), i == f.len() - 1, "byte {i}");
        }
        // A whole message plus the start of the next in one read.
        let mut two = frame(0x81, b"one");
        two.extend_from_slice(&frame(0x81, b"two")[..3]);
        t.feed(&two);
        assert!(t.since.is_some());
    }
}
