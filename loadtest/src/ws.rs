//! A minimal websocket client (RFC 6455) for the simulated clients: the upgrade, masked text
//! frames out, and frames in through one fixed buffer that never grows.
//!
//! Why not tokio-tungstenite (used before): its read buffer grows to the largest frame seen and
//! never shrinks, and a client's largest frame is the `joined` reply, which lists up to 1,000
//! member names in a big room (~9 KiB), so every client kept that much for the whole run, and
//! it offers no way to drop it. Measured on this 2-core machine, release build, generator
//! resident memory per connected client (goose's own per-user state, ~9 KiB, included):
//!
//! | `storm`: 10,000 clients in rooms of 1,000 | KiB per client |
//! |-------------------------------------------------------------|------|
//! | tokio-tungstenite, 2 KiB read buffer (6,274 connected then) | 26.8 |
//! | the same, `--presence-cap 5` (a `joined` frame of ~100 B)   | 18.1 |
//! | this client, 1 KiB buffer                                   | 14.0 |
//! | and goose transaction metrics off, `malloc_trim` after connecting | 11.1 (10.7 anonymous) |
//!
//! (`chat`, 1,000 clients: 23.3 KiB with tokio-tungstenite, 19.3 now, of which ~4 KiB are file
//! pages of the executable: 15.4 KiB anonymous.) A frame larger than the buffer is handed over
//! truncated to what the buffer holds and the rest is discarded as it arrives: the load test
//! only reads a frame's beginning (its type, and the stamp at the start of a message's text).
//! Receiving allocates nothing per frame (no copy, no UTF-8 check either).
//!
//! Not supported, because tidechat and the seed server never use them: extensions (no
//! `permessage-deflate`), TLS (`wss://`). Continuation frames are passed up as such (their
//! message's first frame carries the type and stamp).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Close code sent when the client ends the connection.
pub const CLOSE_NORMAL: u16 = 1000;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A frame received.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text frame (a whole message, or the first frame of a fragmented one): its payload,
    /// or as much of its beginning as the buffer holds when `complete` is false.
    Text { payload: &'a [u8], complete: bool },
    /// A binary or continuation frame (ignored by the load test).
    Other,
    /// The server closed the connection with this code (1005: none given).
    Close(u16),
}

/// One client connection.
pub struct WsClient {
    tcp: TcpStream,
    /// Received bytes not yet parsed are `buf[start..end]`.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Payload bytes of the current (oversized) frame still to discard.
    skip: u64,
    /// Control frames to send (pongs), written after the frames in the buffer are handled.
    control: Vec<u8>,
    /// Outgoing frame being built (reused).
    out: Vec<u8>,
    /// xorshift32 state for the masking keys.
    rng: u32,
}

impl WsClient {
    /// Performs the upgrade on `tcp` for `ws://{host}{path}`; `buffer` is the read buffer's
    /// size (at least 256 bytes), `seed` seeds the masking keys.
    pub async fn handshake(
        mut tcp: TcpStream,
        host: &str,
        path: &str,
        buffer: usize,
        seed: u32,
    ) -> Result<Self, String> {
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The response head is read into the client's buffer (it must fit); what follows it
        // (frames already sent, e.g. `hello`) stays there.
        let mut head = vec![0u8; buffer.max(256)].into_boxed_slice();
        let mut len = 0;
        let head_end = loop {
            if let Some(i) = memchr::memmem::find(&head[..len], b"\r\n\r\n") {
                break i + 4;
            }
            if len == head.len() {
                return Err("handshake: response head too large".into());
            }
            let n = tcp
                .read(&mut head[len..])
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            if n == 0 {
                return Err("handshake: connection closed".into());
            }
            len += n;
        };
        let text = String::from_utf8_lossy(&head[..head_end]);
        let mut lines = text.split("\r\n");
        let status = lines.next().unwrap_or_default();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(format!("handshake: {status}"));
        }
        let accept = derive_accept_key(key.as_bytes());
        let accepted = lines.any(|l| {
            l.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
            })
        });
        if !accepted {
            return Err("handshake: missing or wrong Sec-WebSocket-Accept".into());
        }
        Ok(Self {
            tcp,
            buf: head,
            start: head_end,
            end: len,
            skip: 0,
            control: Vec::new(),
            out: Vec::new(),
            rng: seed | 1,
        })
    }

    /// Reads what the socket has into the buffer; `Ok(0)` at the end of the stream.
    /// Cancel-safe: when the future is dropped before completing, nothing was read.
    pub async fn read(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buf.len() {
            // `next_frame` empties a full buffer, so this means it was not called.
            return Err(io::Error::other("read buffer full: call next_frame first"));
        }
        let n = self.tcp.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }

    /// The next frame in the buffer, or `None` until more is read. Pings are answered (the
    /// pongs are queued for [`WsClient::flush_control`]), pongs skipped.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, String> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min((self.end - self.start) as u64);
                self.start += n as usize;
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(None);
                }
            }
            let avail = &self.buf[self.start..self.end];
            if avail.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (avail[0], avail[1]);
            if b1 & 0x80 != 0 {
                return Err("masked frame from the server".into());
            }
            let opcode = b0 & 0x0f;
            let (header, len) = match b1 & 0x7f {
                126 if avail.len() >= 4 => (4, u64::from(u16::from_be_bytes([avail[2], avail[3]]))),
                127 if avail.len() >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&avail[2..10]);
                    (10, u64::from_be_bytes(b))
                }
                126 | 127 => return Ok(None),
                n => (2, u64::from(n)),
            };
            if opcode >= OP_CLOSE && len > 125 {
                return Err("control frame over 125 bytes".into());
            }
            let have = (avail.len() - header) as u64;
            let payload_at = self.start + header;
            if have >= len {
                let payload = payload_at..payload_at + len as usize;
                self.start = payload.end;
                match opcode {
                    OP_TEXT => {
                        return Ok(Some(Frame::Text {
                            payload: &self.buf[payload],
                            complete: true,
                        }))
                    }
                    OP_BINARY | OP_CONTINUATION => return Ok(Some(Frame::Other)),
                    OP_CLOSE => {
                        let p = &self.buf[payload];
                        let code = if p.len() >= 2 {
                            u16::from_be_bytes([p[0], p[1]])
                        } else {
                            1005
                        };
                        return Ok(Some(Frame::Close(code)));
                    }
                    OP_PING => {
                        let ping = self.buf[payload].to_vec();
                        let key = self.next_key();
                        frame_into(&mut self.control, OP_PONG, &ping, key);
                    }
                    OP_PONG => {}
                    other => return Err(format!("unknown opcode {other}")),
                }
            } else if self.start == 0 && self.end == self.buf.len() && opcode < OP_CLOSE {
                // Larger than the buffer: hand over its beginning, discard the rest.
                self.skip = len - have;
                self.start = self.end;
                return Ok(Some(match opcode {
                    OP_TEXT => Frame::Text {
                        payload: &self.buf[payload_at..],
                        complete: false,
                    },
                    _ => Frame::Other,
                }));
            } else {
                return Ok(None);
            }
        }
    }

    /// True when control frames wait to be sent.
    pub fn has_control(&self) -> bool {
        !self.control.is_empty()
    }

    /// Sends the queued control frames.
    pub async fn flush_control(&mut self) -> io::Result<()> {
        self.tcp.write_all(&self.control).await?;
        self.control.clear();
        Ok(())
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        let key = self.next_key();
        frame_into(&mut self.out, OP_TEXT, text, key);
        let r = self.tcp.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Sends a close frame and waits for the server's (or the end of the stream).
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        let key = self.next_key();
        frame_into(&mut self.out, OP_CLOSE, &code.to_be_bytes(), key);
        let r = self.tcp.write_all(&self.out).await;
        self.out.clear();
        r?;
        loop {
            loop {
                match self.next_frame() {
                    Ok(Some(Frame::Close(_))) | Err(_) => return Ok(()),
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            if self.read().await? == 0 {
                return Ok(());
            }
        }
    }

    fn next_key(&mut self) -> [u8; 4] {
        // xorshift32: masking keys need not be secret for a load test against our own server.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        x.to_ne_bytes()
    }
}

/// Appends a masked client frame (FIN set) to `out`.
fn frame_into(out: &mut Vec<u8>, opcode: u8, payload: &[u8], key: [u8; 4]) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    /// Against tungstenite's server: small and oversized frames in order, pings answered,
    /// masked text understood, close codes seen.
    #[tokio::test]
    async fn talks_to_tungstenite() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.send(Message::text("hello")).await.unwrap();
            ws.send(Message::text(format!("big{}", "x".repeat(5000))))
                .await
                .unwrap();
            ws.send(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
            ws.send(Message::text("after")).await.unwrap();
            // The pong and the client's text (in either order).
            let mut got = Vec::new();
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Pong(p) => got.push(format!("pong {:?}", p.as_ref())),
                    Message::Text(t) => got.push(t.to_string()),
                    _ => {}
                }
                if got.len() == 2 {
                    break;
                }
            }
            got.sort();
            ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4008),
                reason: "slow".into(),
            })))
            .await
            .unwrap();
            got
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut ws = WsClient::handshake(tcp, &addr.to_string(), "/ws", 1024, 7)
            .await
            .unwrap();
        let mut seen = Vec::new();
        'outer: loop {
            loop {
                match ws.next_frame().unwrap() {
                    Some(Frame::Text { payload, complete }) => {
                        seen.push(format!(
                            "{} {} {complete}",
                            String::from_utf8_lossy(&payload[..payload.len().min(5)]),
                            payload.len()
                        ));
                        if payload == b"after" {
                            ws.send_text("{\"hi\":1}".as_bytes()).await.unwrap();
                        }
                    }
                    Some(Frame::Close(code)) => {
                        seen.push(format!("close {code}"));
                        break 'outer;
                    }
                    Some(Frame::Other) => seen.push("other".into()),
                    None => break,
                }
            }
            if ws.has_control() {
                ws.flush_control().await.unwrap();
            }
            assert!(ws.read().await.unwrap() > 0, "{seen:?}");
        }
        assert_eq!(
            seen,
            [
                "hello 5 true",
                "bigxx 1020 false",
                "after 5 true",
                "close 4008"
            ]
        );
        assert_eq!(server.await.unwrap(), ["pong [1, 2, 3]", "{\"hi\":1}"]);
    }

    #[test]
    fn frames_are_masked() {
        let mut out = Vec::new();
        frame_into(&mut out, OP_TEXT, b"abc", [1, 2, 3, 4]);
        assert_eq!(out, [0x81, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3]);
        out.clear();
        frame_into(&mut out, OP_TEXT, &[0; 300], [0; 4]);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 1, 44]);
    }
}
