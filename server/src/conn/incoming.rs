//! What the client sends: RFC 6455 frames read and checked (server role), assembled into
//! tungstenite's [`Message`]s, with tungstenite's error values so that the reader maps them to
//! close codes as before.
//!
//! Our own and not tungstenite's `WebSocketStream` because of what an idle connection holds.
//! tungstenite keeps a read buffer per connection (256 B here) that grows to the largest frame
//! and never shrinks (68 KiB per connection after one 64 KiB message), its codec state, and
//! async-tungstenite two waker proxies: ~0.75 KB of heap per idle connection, measured. Here a
//! read goes to a buffer on the thread's stack; only the bytes of a frame not complete yet, or
//! of frames that came in the same read as an earlier message, are kept, and that `Vec` is
//! freed once it is empty. An idle connection holds this struct and nothing on the heap.
//!
//! The reader also needs to know when a message has begun and not ended (`--message-timeout`):
//! [`Incoming::incomplete_since`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use async_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use async_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use async_tungstenite::tungstenite::protocol::frame::FrameHeader;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use async_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};
use futures::{AsyncRead, Stream};

/// Bytes asked of the socket per read. On the stack, so an idle connection pays nothing for it;
/// the size of a chat message or several, and a 64 KiB one takes 16 reads.
const READ_CHUNK: usize = 4096;

/// The client's frames, as a stream of messages. It ends (`None`) after a close frame or an
/// error, which it reports once.
#[derive(Debug)]
pub struct Incoming<S> {
    io: S,
    /// Bytes read and not yet made into frames; unallocated when empty.
    pending: Vec<u8>,
    /// A fragmented data message so far: whether it is text, and its payload.
    /// Boxed: a rare state, and every connection holds the slot.
    partial: Option<Box<(bool, Vec<u8>)>>,
    /// `--max-message-bytes`: a frame or a whole message, checked from each frame's header.
    max_message: usize,
    /// When the bytes of a message still unfinished began to arrive (`None` between messages).
    since: Option<Instant>,
    /// Frame headers read and bytes read since [`Incoming::take_counts`] last took them.
    frames: u32,
    bytes: u32,
    /// A close frame or an error was returned: nothing more is read.
    done: bool,
}

/// A frame header, checked.
struct Head {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    header_len: usize,
    payload_len: usize,
}

impl<S> Incoming<S> {
    pub fn new(io: S, max_message: usize) -> Self {
        Self {
            io,
            pending: Vec::new(),
            partial: None,
            max_message,
            since: None,
            frames: 0,
            bytes: 0,
            done: false,
        }
    }

    /// Frames begun and bytes read since the last call (for the received counters: the reader
    /// adds them to the shared atomics once per message, not per read).
    pub fn take_counts(&mut self) -> (u64, u64) {
        (
            u64::from(std::mem::take(&mut self.frames)),
            u64::from(std::mem::take(&mut self.bytes)),
        )
    }

    /// When the bytes of a message still unfinished began to arrive (`None` between messages).
    pub fn incomplete_since(&self) -> Option<Instant> {
        self.since
    }

    /// Follows whether the stream is between messages, after bytes were read or taken.
    fn mark(&mut self) {
        if self.pending.is_empty() && self.partial.is_none() {
            self.since = None;
        } else if self.since.is_none() {
            // Only here, off the common path of whole messages in one read, is the clock read.
            self.since = Some(Instant::now());
        }
    }

    /// Takes whole frames from the front of `bytes` until one completes a message. Returns the
    /// bytes used and the message, if one completed.
    fn frames_from(&mut self, bytes: &[u8]) -> Result<(usize, Option<Message>), WsError> {
        let mut used = 0;
        loop {
            let rest = &bytes[used..];
            let Some(head) = self.head(rest)? else {
                return Ok((used, None));
            };
            let end = head.header_len + head.payload_len;
            if rest.len() < end {
                return Ok((used, None));
            }
            self.frames = self.frames.saturating_add(1);
            used += end;
            let payload = unmask(&rest[head.header_len..end], head.mask);
            if let Some(msg) = self.message(&head, payload)? {
                return Ok((used, Some(msg)));
            }
        }
    }

    /// The header at the start of `b`, once it is all there (parsed by tungstenite's
    /// `FrameHeader`), checked against the protocol and the size limit before any of its payload
    /// is kept.
    fn head(&self, b: &[u8]) -> Result<Option<Head>, WsError> {
        let mut cursor = io::Cursor::new(b);
        let Some((h, len)) = FrameHeader::parse(&mut cursor)? else {
            return Ok(None);
        };
        if h.rsv1 || h.rsv2 || h.rsv3 {
            return Err(WsError::Protocol(ProtocolError::NonZeroReservedBits));
        }
        let Some(mask) = h.mask else {
            return Err(WsError::Protocol(ProtocolError::UnmaskedFrameFromClient));
        };
        match (h.opcode, &self.partial) {
            (OpCode::Control(_), _) if !h.is_final => {
                return Err(WsError::Protocol(ProtocolError::FragmentedControlFrame))
            }
            (OpCode::Control(_), _) if len > 125 => {
                return Err(WsError::Protocol(ProtocolError::ControlFrameTooBig))
            }
            (OpCode::Control(_), _) => {}
            (OpCode::Data(Data::Continue), None) => {
                return Err(WsError::Protocol(ProtocolError::UnexpectedContinueFrame))
            }
            (OpCode::Data(data @ (Data::Text | Data::Binary)), Some(_)) => {
                return Err(WsError::Protocol(ProtocolError::ExpectedFragment(data)))
            }
            (OpCode::Data(_), partial) => {
                let so_far = partial.as_ref().map_or(0, |p| p.1.len() as u64);
                let size = so_far.saturating_add(len);
                if size > self.max_message as u64 {
                    return Err(WsError::Capacity(CapacityError::MessageTooLong {
                        size: usize::try_from(size).unwrap_or(usize::MAX),
                        max_size: self.max_message,
                    }));
                }
            }
        }
        Ok(Some(Head {
            fin: h.is_final,
            opcode: h.opcode,
            mask,
            header_len: cursor.position() as usize,
            // Fits: at most `max_message` or 125, checked above.
            payload_len: len as usize,
        }))
    }

    /// What a whole frame makes: a message, or part of one (`None`).
    fn message(&mut self, head: &Head, payload: Vec<u8>) -> Result<Option<Message>, WsError> {
        let data = match head.opcode {
            OpCode::Control(Control::Close) => {
                self.done = true;
                return close_frame(payload).map(|c| Some(Message::Close(c)));
            }
            OpCode::Control(Control::Ping) => return Ok(Some(Message::Ping(Bytes::from(payload)))),
            OpCode::Control(Control::Pong) => return Ok(Some(Message::Pong(Bytes::from(payload)))),
            OpCode::Data(Data::Continue) => {
                // `head` allowed a continuation only with a message open.
                let Some(mut open) = self.partial.take() else {
                    return Err(WsError::Protocol(ProtocolError::UnexpectedContinueFrame));
                };
                open.1.extend_from_slice(&payload);
                if !head.fin {
                    self.partial = Some(open);
                    return Ok(None);
                }
                *open
            }
            // Reserved opcodes are refused by `FrameHeader::parse`.
            op => {
                let data = (op == OpCode::Data(Data::Text), payload);
                if !head.fin {
                    self.partial = Some(Box::new(data));
                    return Ok(None);
                }
                data
            }
        };
        let (text, payload) = data;
        Ok(Some(if text {
            Message::Text(Utf8Bytes::try_from(payload)?)
        } else {
            Message::Binary(Bytes::from(payload))
        }))
    }

    /// Frames from the bytes kept and then `read`: the message they complete, if any. What
    /// is left is kept, with room for the rest of a long frame reserved at once.
    fn take(&mut self, read: &[u8]) -> Result<Option<Message>, WsError> {
        let msg = if self.pending.is_empty() {
            // The common case: whole frames in this read, parsed where they are.
            let (used, msg) = self.frames_from(read)?;
            self.pending.extend_from_slice(&read[used..]);
            msg
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(read);
            let (used, msg) = self.frames_from(&pending)?;
            self.pending = keep(pending, used);
            msg
        };
        if msg.is_none() {
            if let Some(head) = self.head(&self.pending)? {
                let want = head.header_len + head.payload_len;
                self.pending
                    .reserve(want.saturating_sub(self.pending.len()));
            }
        }
        Ok(msg)
    }
}

/// A close frame's payload: none, or a code and a UTF-8 reason.
fn close_frame(payload: Vec<u8>) -> Result<Option<CloseFrame>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol(ProtocolError::InvalidCloseSequence)),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]).into();
            let reason = Utf8Bytes::try_from(payload[2..].to_vec())?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

fn unmask(masked: &[u8], mask: [u8; 4]) -> Vec<u8> {
    masked
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ mask[i & 3])
        .collect()
}

impl<S: AsyncRead + Unpin> Stream for Incoming<S> {
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let fail = |this: &mut Self, e| {
            this.done = true;
            this.pending = Vec::new();
            this.partial = None;
            this.since = None;
            Poll::Ready(Some(Err(e)))
        };
        // Frames that came with an earlier message first.
        if !this.pending.is_empty() {
            match this.take(&[]) {
                Err(e) => return fail(this, e),
                Ok(Some(msg)) => {
                    this.mark();
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
            }
        }
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            let n = match Pin::new(&mut this.io).poll_read(cx, &mut chunk) {
                Poll::Pending => {
                    this.mark();
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => {
                    return fail(
                        this,
                        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                    )
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Poll::Ready(Err(e)) => return fail(this, WsError::Io(e)),
            };
            // n <= READ_CHUNK; saturating, though the reader takes the counts after each message.
            this.bytes = this.bytes.saturating_add(n as u32);
            match this.take(&chunk[..n]) {
                Err(e) => return fail(this, e),
                Ok(Some(msg)) => {
                    this.mark();
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
            }
        }
    }
}

/// `buf` without its first `used` bytes; freed when nothing is left.
fn keep(mut buf: Vec<u8>, used: usize) -> Vec<u8> {
    if used >= buf.len() {
        return Vec::new();
    }
    buf.drain(..used);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use futures::StreamExt;

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
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    /// Gives its bytes in reads of at most `step`, then reports the end of the stream (or
    /// stays pending, with `hold`).
    struct Trickle {
        bytes: Vec<u8>,
        at: usize,
        step: usize,
        hold: bool,
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let n = self.step.min(buf.len()).min(self.bytes.len() - self.at);
            if n == 0 && self.hold {
                return Poll::Pending;
            }
            let at = self.at;
            buf[..n].copy_from_slice(&self.bytes[at..at + n]);
            self.at += n;
            Poll::Ready(Ok(n))
        }
    }

    fn incoming(bytes: Vec<u8>, step: usize) -> Incoming<Trickle> {
        let io = Trickle {
            bytes,
            at: 0,
            step,
            hold: false,
        };
        Incoming::new(io, 1000)
    }

    /// Everything the stream yields, as (message or error text) in order.
    fn all(bytes: Vec<u8>, step: usize) -> Vec<Result<Message, String>> {
        let mut inc = incoming(bytes, step);
        futures::executor::block_on(async {
            let mut out = Vec::new();
            while let Some(item) = inc.next().await {
                out.push(item.map_err(|e| e.to_string()));
            }
            out
        })
    }

    fn text(s: &str) -> Result<Message, String> {
        Ok(Message::Text(s.into()))
    }

    fn reset() -> Result<Message, String> {
        Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake).to_string())
    }

    fn protocol(e: ProtocolError) -> Vec<Result<Message, String>> {
        vec![Err(WsError::Protocol(e).to_string())]
    }

    #[test]
    fn messages_whole_split_and_fragmented_in_reads_of_any_size() {
        let mut bytes = frame(0x81, b"hello");
        bytes.extend(frame(0x81, &[b'a'; 300]));
        bytes.extend(frame(0x89, b"pi"));
        bytes.extend(frame(0x01, "fr\u{e9}".as_bytes()));
        // A control frame between fragments, and an empty final fragment.
        bytes.extend(frame(0x8a, b""));
        bytes.extend(frame(0x00, "gm\u{e9}nt".as_bytes()));
        bytes.extend(frame(0x80, b""));
        bytes.extend(frame(0x82, &[0, 1, 2]));
        bytes.extend(frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e']));
        bytes.extend(frame(0x81, b"after the close: never read"));
        let want = vec![
            text("hello"),
            text(&"a".repeat(300)),
            Ok(Message::Ping(Bytes::from_static(b"pi"))),
            Ok(Message::Pong(Bytes::new())),
            text("fr\u{e9}gm\u{e9}nt"),
            Ok(Message::Binary(Bytes::from_static(&[0, 1, 2]))),
            Ok(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))),
        ];
        // One byte at a time (every header and the multi-byte UTF-8 split), 7, and all at once.
        for step in [1, 7, 4096] {
            assert_eq!(all(bytes.clone(), step), want, "reads of {step}");
        }
    }

    #[test]
    fn the_end_of_the_stream_without_a_close_is_a_reset_reported_once() {
        assert_eq!(all(frame(0x81, b"hi"), 4096), vec![text("hi"), reset()]);
        // Inside a frame.
        assert_eq!(all(frame(0x81, b"hi")[..4].to_vec(), 4096), vec![reset()]);
        assert_eq!(all(Vec::new(), 4096), vec![reset()]);
    }

    #[test]
    fn protocol_violations_end_the_stream() {
        use ProtocolError::*;
        let mut unmasked = frame(0x81, b"x");
        unmasked[1] &= 0x7f;
        assert_eq!(all(unmasked, 4096), protocol(UnmaskedFrameFromClient));
        assert_eq!(all(frame(0xc1, b"x"), 4096), protocol(NonZeroReservedBits));
        assert_eq!(
            all(frame(0x09, b""), 4096),
            protocol(FragmentedControlFrame)
        );
        assert_eq!(
            all(frame(0x89, &[0; 126]), 4096),
            protocol(ControlFrameTooBig)
        );
        assert_eq!(all(frame(0x8b, b""), 4096), protocol(InvalidOpcode(0xb)));
        assert_eq!(all(frame(0x83, b""), 4096), protocol(InvalidOpcode(3)));
        assert_eq!(
            all(frame(0x80, b"x"), 4096),
            protocol(UnexpectedContinueFrame)
        );
        let mut two_starts = frame(0x01, b"a");
        two_starts.extend(frame(0x81, b"b"));
        assert_eq!(
            all(two_starts, 4096),
            protocol(ExpectedFragment(Data::Text))
        );
        assert_eq!(all(frame(0x88, &[3]), 4096), protocol(InvalidCloseSequence));
    }

    #[test]
    fn invalid_utf8_is_refused_in_text_and_close_reasons() {
        for bytes in [frame(0x81, &[0xff]), frame(0x88, &[0x03, 0xe8, 0xc3])] {
            let got = all(bytes, 4096);
            assert_eq!(got.len(), 1);
            assert!(got[0].as_ref().unwrap_err().contains("UTF-8"), "{got:?}");
        }
        // Split between fragments, a character is fine.
        let mut split = frame(0x01, &"\u{e9}".as_bytes()[..1]);
        split.extend(frame(0x80, &"\u{e9}".as_bytes()[1..]));
        assert_eq!(all(split, 4096)[0], text("\u{e9}"));
    }

    #[test]
    fn sizes_are_checked_from_the_header_before_the_payload_comes() {
        let too_long = |size| {
            vec![Err(WsError::Capacity(CapacityError::MessageTooLong {
                size,
                max_size: 1000,
            })
            .to_string())]
        };
        assert_eq!(
            all(frame(0x81, &[b'a'; 1000]), 4096)[0],
            text(&"a".repeat(1000))
        );
        // Only the header of a frame of 1,001 (or 2^63) bytes is there.
        assert_eq!(
            all(frame(0x81, &[b'a'; 1001])[..8].to_vec(), 4096),
            too_long(1001)
        );
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&(1u64 << 63).to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(all(huge, 4096), too_long(1 << 63));
        // Fragments add up.
        let mut parts = frame(0x01, &[b'a'; 600]);
        parts.extend(frame(0x00, &[b'a'; 400]));
        parts.extend(frame(0x80, &[b'a'; 1]));
        assert_eq!(all(parts, 4096), too_long(1001));
    }

    /// What an idle connection holds: nothing queued, the clock only inside a message; and
    /// the counts of frames and bytes.
    #[test]
    fn knows_when_a_message_is_unfinished_and_frees_what_it_read() {
        let cx = &mut Context::from_waker(futures::task::noop_waker_ref());
        let mut bytes = frame(0x01, b"hel");
        bytes.extend(frame(0x89, b""));
        bytes.extend(frame(0x80, b"lo"));
        let whole = frame(0x81, &[b'x'; 900]);
        bytes.extend(&whole);
        let mut inc = Incoming::new(
            Trickle {
                bytes: bytes.clone(),
                at: 0,
                step: 5,
                hold: true,
            },
            1000,
        );
        fn next(inc: &mut Incoming<Trickle>, cx: &mut Context<'_>) -> Option<Message> {
            match inc.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(m))) => Some(m),
                Poll::Pending => None,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(next(&mut inc, cx), Some(Message::Ping(Bytes::new())));
        let began = inc
            .incomplete_since()
            .expect("inside the fragmented message");
        assert_eq!(next(&mut inc, cx), Some(Message::Text("hello".into())));
        assert_eq!(
            inc.incomplete_since(),
            Some(began),
            "the clock is not restarted"
        );
        assert_eq!(
            next(&mut inc, cx),
            Some(Message::Text("x".repeat(900).into()))
        );
        assert_eq!(next(&mut inc, cx), None);
        assert!(inc.incomplete_since().is_none());
        assert_eq!(inc.pending.capacity(), 0, "nothing kept between messages");
        assert!(inc.partial.is_none());
        assert_eq!(inc.take_counts(), (4, bytes.len() as u64));
        assert_eq!(inc.take_counts(), (0, 0));
    }
}
