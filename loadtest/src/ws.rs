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
//! # What RFC 6455 asks of a client, and what this one does
//!
//! - **Handshake**: the response must be `101`, with `Upgrade: websocket` and a `Connection`
//!   header listing `upgrade` (both case-insensitive) and the right `Sec-WebSocket-Accept`. No
//!   extension or subprotocol is requested, so a response choosing one
//!   (`Sec-WebSocket-Extensions`, `Sec-WebSocket-Protocol`) is refused.
//! - **Masking**: every frame sent is masked with a key from the OS CSPRNG (`getrandom`),
//!   drawn from a per-client buffer of 16 keys refilled when used up (one syscall per 16
//!   frames, not per frame).
//! - **Fragmentation**: a fragmented text message (a first frame without FIN, continuation
//!   frames, control frames allowed in between) is handed over once, as one [`Frame::Text`]:
//!   its beginning, up to the buffer's size, with `complete` telling whether that is all of it;
//!   the rest is discarded as it arrives. Its fragments are copied into a prefix buffer
//!   allocated for that message only and freed on the next [`WsClient::next_frame`] (servers
//!   in practice send whole messages as single frames, so the common path stays copy-free). A
//!   fragmented binary message is one [`Frame::Other`].
//! - **Checks**, each a protocol error: RSV bits set (no extension was negotiated), unknown
//!   opcodes, masked frames from the server, control frames fragmented or over 125 bytes, a
//!   continuation without a message in progress or a new message during one, a 64-bit length
//!   with its top bit set, a close frame with a 1-byte payload, a close code not allowed on
//!   the wire, or a close reason not UTF-8.
//! - **Closing**: the closing handshake is always completed. When the server closes first,
//!   [`WsClient::next_frame`] queues the reply (its code echoed) and returns [`Frame::Close`];
//!   on a protocol error it queues a close 1002 (1007 for a bad close reason) and returns the
//!   error. In both cases, and when the client closes on its own, the caller sends what is due
//!   with [`WsClient::close`] (or [`WsClient::reply_close`], the same thing when a close was
//!   already queued) under a timeout before dropping the client: it sends the close frame,
//!   waits for the server's if one is still owed, then for the server to end the TCP stream
//!   (the server closes first, so it, not each simulated client, holds `TIME_WAIT`, RFC 6455
//!   §7.1.1). Once a close is queued, no data frame (nor pong) is sent any more.
//!
//! Not supported, because tidechat and the seed server never use them: extensions (no
//! `permessage-deflate`), subprotocols, TLS (`wss://`), sending fragmented messages, binary
//! messages' payloads. Not checked, because it would cost a pass over every byte received and
//! the load test reads only a message's beginning (possibly cut in the middle of a character):
//! that text payloads are UTF-8 (RFC 6455 §8.1 asks a client to fail the connection, 1007).

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Close code sent when the client ends the connection.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code sent after a protocol error.
pub const CLOSE_PROTOCOL_ERROR: u16 = 1002;
/// Close code sent after a close frame whose reason is not UTF-8.
const CLOSE_INVALID_DATA: u16 = 1007;
/// What [`Frame::Close`] reports for a close frame without a code.
pub const CLOSE_NO_STATUS: u16 = 1005;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Random bytes kept per client for masking keys: 16 keys per `getrandom` call.
const KEY_BYTES: usize = 64;

/// A frame received.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text message (one frame, or the fragments of one reassembled): its payload, or as
    /// much of its beginning as the buffer holds when `complete` is false.
    Text { payload: &'a [u8], complete: bool },
    /// A binary message (ignored by the load test).
    Other,
    /// The server closed the connection with this code ([`CLOSE_NO_STATUS`]: none given). The
    /// reply is queued: call [`WsClient::close`] (under a timeout) before dropping the client.
    Close(u16),
}

/// How the payload of the frame being read piecewise (`WsClient::rest` bytes still to come)
/// is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partial {
    /// No frame is being read piecewise.
    None,
    /// The rest of an unfragmented frame larger than the buffer, whose beginning was handed
    /// over: discarded.
    Skip,
    /// A fragment of the message in progress (`fin`: its last).
    Fragment { fin: bool },
}

/// One client connection.
pub struct WsClient {
    tcp: TcpStream,
    /// Received bytes not yet parsed are `buf[start..end]`.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The frame being read piecewise, and how many of its payload bytes are still to come.
    partial: Partial,
    rest: u64,
    /// Opcode of the fragmented message in progress (`OP_CONTINUATION`: none).
    msg_op: u8,
    /// Whether its beginning was handed over already (the rest is then discarded).
    msg_delivered: bool,
    /// Its beginning (text only, up to `buf.len()` bytes); allocated only while needed.
    prefix: Vec<u8>,
    /// Control frames to send (pongs, close), written after the frames in the buffer are handled.
    control: Vec<u8>,
    /// Outgoing frame being built (reused).
    out: Vec<u8>,
    /// Random bytes for masking keys; `keys[key_at..]` are unused.
    keys: [u8; KEY_BYTES],
    key_at: usize,
    /// A close frame was queued or sent: nothing more is sent after it.
    close_sent: bool,
    /// The server's close frame was received: nothing more is parsed after it.
    close_received: bool,
    /// The protocol error that failed the connection (reported again on every call).
    failed: Option<String>,
}

impl WsClient {
    /// Performs the upgrade on `tcp` for `ws://{host}{path}`; `buffer` is the read buffer's
    /// size (at least 256 bytes). `_seed` is ignored (masking keys come from the OS CSPRNG);
    /// it is kept so that callers need not change.
    pub async fn handshake(
        mut tcp: TcpStream,
        host: &str,
        path: &str,
        buffer: usize,
        _seed: u32,
    ) -> Result<Self, String> {
        let mut keys = [0u8; KEY_BYTES];
        getrandom::fill(&mut keys).map_err(|e| format!("handshake: getrandom: {e}"))?;
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
        check_response(&head[..head_end], &derive_accept_key(key.as_bytes()))?;
        Ok(Self {
            tcp,
            buf: head,
            start: head_end,
            end: len,
            partial: Partial::None,
            rest: 0,
            msg_op: OP_CONTINUATION,
            msg_delivered: false,
            prefix: Vec::new(),
            control: Vec::new(),
            out: Vec::new(),
            keys,
            key_at: 0,
            close_sent: false,
            close_received: false,
            failed: None,
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

    /// The next message in the buffer, or `None` until more is read (and always after the
    /// server's close). Pings are answered (the pongs are queued for
    /// [`WsClient::flush_control`]), pongs skipped.
    ///
    /// On [`Frame::Close`] the reply is queued, and on an error (a protocol error: the same
    /// error is returned on every later call) a close 1002 is: either way the caller should
    /// send it with [`WsClient::close`] or [`WsClient::reply_close`], under a timeout.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, String> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.close_received {
            return Ok(None);
        }
        if (self.msg_op == OP_CONTINUATION || self.msg_delivered) && self.prefix.capacity() > 0 {
            // The prefix handed over by the last call is no longer borrowed.
            self.prefix = Vec::new();
        }
        loop {
            let avail = self.end - self.start;
            match self.partial {
                Partial::None => {}
                Partial::Skip => {
                    let n = self.rest.min(avail as u64) as usize;
                    self.start += n;
                    self.rest -= n as u64;
                    if self.rest > 0 {
                        return Ok(None);
                    }
                    self.partial = Partial::None;
                    // What is left in the buffer changed: look again.
                    continue;
                }
                Partial::Fragment { fin } => {
                    let n = self.rest.min(avail as u64) as usize;
                    let chunk = self.start..self.start + n;
                    self.start += n;
                    self.rest -= n as u64;
                    let done = self.rest == 0;
                    if done {
                        self.partial = Partial::None;
                    }
                    // Text is kept up to the buffer's size; once a byte does not fit, the
                    // beginning is handed over (incomplete) and the rest discarded.
                    let mut cut = false;
                    if self.msg_op == OP_TEXT && !self.msg_delivered {
                        let room = self.buf.len() - self.prefix.len();
                        let keep = n.min(room);
                        self.prefix
                            .extend_from_slice(&self.buf[chunk.start..chunk.start + keep]);
                        cut = n > room;
                    }
                    let ended = done && fin;
                    let op = self.msg_op;
                    if ended {
                        self.msg_op = OP_CONTINUATION;
                    }
                    if cut {
                        self.msg_delivered = true;
                        return Ok(Some(Frame::Text {
                            payload: &self.prefix,
                            complete: false,
                        }));
                    }
                    if ended {
                        if op == OP_BINARY {
                            return Ok(Some(Frame::Other));
                        }
                        if !self.msg_delivered {
                            self.msg_delivered = true;
                            return Ok(Some(Frame::Text {
                                payload: &self.prefix,
                                complete: true,
                            }));
                        }
                    }
                    if !done {
                        return Ok(None);
                    }
                    continue;
                }
            }
            if avail < 2 {
                return Ok(None);
            }
            let (b0, b1) = (self.buf[self.start], self.buf[self.start + 1]);
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            if b0 & 0x70 != 0 {
                return self.fail(
                    CLOSE_PROTOCOL_ERROR,
                    format!(
                        "RSV bits set ({:#04x}) but no extension negotiated",
                        b0 & 0x70
                    ),
                );
            }
            if b1 & 0x80 != 0 {
                return self.fail(CLOSE_PROTOCOL_ERROR, "masked frame from the server".into());
            }
            if !matches!(
                opcode,
                OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
            ) {
                return self.fail(CLOSE_PROTOCOL_ERROR, format!("unknown opcode {opcode:#x}"));
            }
            let control = opcode >= OP_CLOSE;
            if control && !fin {
                return self.fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame".into());
            }
            let at = self.start;
            let (header, len) = match b1 & 0x7f {
                126 if avail >= 4 => (
                    4,
                    u64::from(u16::from_be_bytes([self.buf[at + 2], self.buf[at + 3]])),
                ),
                127 if avail >= 10 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[at + 2..at + 10]);
                    (10, u64::from_be_bytes(b))
                }
                126 | 127 => return Ok(None),
                n => (2, u64::from(n)),
            };
            if len >> 63 != 0 {
                return self.fail(CLOSE_PROTOCOL_ERROR, "frame length's top bit set".into());
            }
            if control && len > 125 {
                return self.fail(CLOSE_PROTOCOL_ERROR, "control frame over 125 bytes".into());
            }
            if opcode == OP_CONTINUATION && self.msg_op == OP_CONTINUATION {
                return self.fail(
                    CLOSE_PROTOCOL_ERROR,
                    "continuation frame without a message in progress".into(),
                );
            }
            if matches!(opcode, OP_TEXT | OP_BINARY) && self.msg_op != OP_CONTINUATION {
                return self.fail(
                    CLOSE_PROTOCOL_ERROR,
                    "new message while a fragmented one is in progress".into(),
                );
            }
            if opcode == OP_CONTINUATION || (!control && !fin) {
                // A fragment: its payload is read piecewise as it arrives.
                if opcode != OP_CONTINUATION {
                    self.msg_op = opcode;
                    self.msg_delivered = false;
                    if opcode == OP_TEXT {
                        self.prefix = Vec::with_capacity(self.buf.len());
                    }
                }
                self.start += header;
                self.rest = len;
                self.partial = Partial::Fragment { fin };
                continue;
            }
            let have = (avail - header) as u64;
            let payload_at = at + header;
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
                    OP_BINARY => return Ok(Some(Frame::Other)),
                    OP_CLOSE => {
                        let p = &self.buf[payload.clone()];
                        let code = match p.len() {
                            0 => CLOSE_NO_STATUS,
                            1 => {
                                return self.fail(
                                    CLOSE_PROTOCOL_ERROR,
                                    "close frame with a 1-byte payload".into(),
                                )
                            }
                            _ => u16::from_be_bytes([p[0], p[1]]),
                        };
                        let reason_ok = p.len() <= 2 || std::str::from_utf8(&p[2..]).is_ok();
                        if p.len() >= 2 && !close_code_allowed(code) {
                            return self.fail(
                                CLOSE_PROTOCOL_ERROR,
                                format!("close code {code} not allowed on the wire"),
                            );
                        }
                        if !reason_ok {
                            return self.fail(CLOSE_INVALID_DATA, "close reason not UTF-8".into());
                        }
                        self.close_received = true;
                        if !self.close_sent {
                            // Echo the code (none when the server gave none).
                            let key = self.next_key().map_err(|e| e.to_string())?;
                            let echo = payload.start..payload.start + payload.len().min(2);
                            frame_into(&mut self.control, OP_CLOSE, &self.buf[echo], key);
                            self.close_sent = true;
                        }
                        return Ok(Some(Frame::Close(code)));
                    }
                    // No pong once a close is queued.
                    OP_PING if !self.close_sent => {
                        let key = self.next_key().map_err(|e| e.to_string())?;
                        frame_into(&mut self.control, OP_PONG, &self.buf[payload], key);
                    }
                    // Pongs, and pings after a close (opcodes were checked above).
                    _ => {}
                }
            } else if self.start == 0 && self.end == self.buf.len() {
                // An unfragmented message larger than the buffer (control frames fit):
                // hand over its beginning, discard the rest.
                self.rest = len - have;
                self.partial = Partial::Skip;
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

    /// Sends the queued control frames (pongs, and a close frame once one is due).
    pub async fn flush_control(&mut self) -> io::Result<()> {
        self.tcp.write_all(&self.control).await?;
        self.control.clear();
        Ok(())
    }

    /// Sends one text frame; an error once a close frame was queued or sent (RFC 6455 §5.5.1:
    /// no data frame after a close).
    pub async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        if self.close_sent {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "websocket closing: no data frame after a close",
            ));
        }
        let key = self.next_key()?;
        frame_into(&mut self.out, OP_TEXT, text, key);
        let r = self.tcp.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Ends the connection: sends a close frame with `code` (or, when one is queued already,
    /// that one: the reply to the server's close, or the 1002 after a protocol error), waits
    /// for the server's close frame if it is still owed, then for the end of the stream.
    /// Wrap it in a timeout: a server may never answer.
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        if !self.close_sent {
            let key = self.next_key()?;
            frame_into(&mut self.control, OP_CLOSE, &code.to_be_bytes(), key);
            self.close_sent = true;
        }
        self.flush_control().await?;
        if !self.close_received && self.failed.is_none() {
            loop {
                loop {
                    match self.next_frame() {
                        Ok(Some(Frame::Close(_))) | Err(_) => return self.until_eof().await,
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                    }
                }
                if self.read().await? == 0 {
                    return Ok(());
                }
            }
        }
        self.until_eof().await
    }

    /// Answers the server's close ([`Frame::Close`]) or a protocol error (a close 1002) with
    /// the close frame [`WsClient::next_frame`] queued, then waits for the end of the stream;
    /// the same as [`WsClient::close`] in those states. Wrap it in a timeout.
    pub async fn reply_close(&mut self) -> io::Result<()> {
        self.close(CLOSE_NORMAL).await
    }

    /// True once a close frame was queued or sent (no data frames are sent after it).
    pub fn is_closing(&self) -> bool {
        self.close_sent
    }

    /// Discards what arrives until the server ends the stream.
    async fn until_eof(&mut self) -> io::Result<()> {
        loop {
            (self.start, self.end) = (0, 0);
            if self.read().await? == 0 {
                return Ok(());
            }
        }
    }

    /// Fails the connection: queues a close with `code` (unless one was already) and reports
    /// `why` now and on every later call of `next_frame`.
    fn fail(&mut self, code: u16, why: String) -> Result<Option<Frame<'static>>, String> {
        let why = format!("protocol error: {why}");
        if !self.close_sent {
            // A masking key cannot fail but once per 16 frames; without one, no close is sent.
            if let Ok(key) = self.next_key() {
                frame_into(&mut self.control, OP_CLOSE, &code.to_be_bytes(), key);
            }
            self.close_sent = true;
        }
        self.failed = Some(why.clone());
        Err(why)
    }

    /// The next masking key, from the buffer of random bytes (refilled when used up).
    fn next_key(&mut self) -> io::Result<[u8; 4]> {
        if self.key_at == KEY_BYTES {
            getrandom::fill(&mut self.keys)
                .map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
            self.key_at = 0;
        }
        let mut key = [0u8; 4];
        key.copy_from_slice(&self.keys[self.key_at..self.key_at + 4]);
        self.key_at += 4;
        Ok(key)
    }
}

/// Checks the response head (status line, headers, the blank line) to the upgrade request
/// whose expected `Sec-WebSocket-Accept` is `accept`.
fn check_response(head: &[u8], accept: &str) -> Result<(), String> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.split_ascii_whitespace();
    if parts.next() != Some("HTTP/1.1") || parts.next() != Some("101") {
        return Err(format!("handshake: expected status 101, got `{status}`"));
    }
    let (mut upgrade, mut connection, mut accepted) = (false, false, false);
    for (name, value) in lines.filter_map(|l| l.split_once(':')) {
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accepted |= value == accept;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            return Err(format!(
                "handshake: server chose extensions `{value}`, none were requested"
            ));
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            return Err(format!(
                "handshake: server chose subprotocol `{value}`, none was requested"
            ));
        }
    }
    if !upgrade {
        return Err("handshake: no `Upgrade: websocket` header".into());
    }
    if !connection {
        return Err("handshake: no `Connection` header with `upgrade`".into());
    }
    if !accepted {
        return Err("handshake: missing or wrong Sec-WebSocket-Accept".into());
    }
    Ok(())
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4: 1005, 1006 and 1015 are never sent;
/// 1012-1014 were registered later; 3000-4999 are for libraries and applications).
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
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
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    /// Bounds every exchange of a test (a hang fails the test instead of blocking it).
    const BOUND: std::time::Duration = std::time::Duration::from_secs(20);

    /// A tungstenite server running `serve` on one connection, and a client connected to it
    /// with a `buffer`-byte read buffer.
    async fn with_tungstenite<T, F>(
        buffer: usize,
        serve: impl FnOnce(WebSocketStream<TcpStream>) -> F + Send + 'static,
    ) -> (WsClient, tokio::task::JoinHandle<T>)
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tcp, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let server = tokio::spawn(async move {
            let ws = tokio_tungstenite::accept_async(accepted.unwrap().0)
                .await
                .unwrap();
            serve(ws).await
        });
        let ws = WsClient::handshake(tcp.unwrap(), &addr.to_string(), "/ws", buffer, 0)
            .await
            .unwrap();
        (ws, server)
    }

    /// Receives until the server's close (or the end, or an error), answering pings and
    /// calling `on_text` for each text message; what was seen, one line per frame.
    async fn receive(ws: &mut WsClient, mut on_text: impl FnMut(&[u8]) -> bool) -> Vec<String> {
        let mut seen = Vec::new();
        let work = async {
            for _ in 0..10_000 {
                let mut reply = false;
                loop {
                    match ws.next_frame() {
                        Ok(Some(Frame::Text { payload, complete })) => {
                            seen.push(format!(
                                "text {} {} {complete}",
                                String::from_utf8_lossy(&payload[..payload.len().min(5)]),
                                payload.len()
                            ));
                            reply |= on_text(payload);
                        }
                        Ok(Some(Frame::Other)) => seen.push("other".into()),
                        Ok(Some(Frame::Close(code))) => {
                            seen.push(format!("close {code}"));
                            return;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            seen.push(e);
                            return;
                        }
                    }
                }
                if reply {
                    ws.send_text(b"ok").await.unwrap();
                }
                if ws.has_control() {
                    ws.flush_control().await.unwrap();
                }
                if ws.read().await.unwrap() == 0 {
                    seen.push("eof".into());
                    return;
                }
            }
            seen.push("too many reads".into());
        };
        tokio::time::timeout(BOUND, work).await.unwrap();
        seen
    }

    /// Sends a raw data frame (`fin`: the message's last).
    async fn send_frame(ws: &mut WebSocketStream<TcpStream>, data: &[u8], op: Data, fin: bool) {
        let frame = WireFrame::message(data.to_vec(), OpCode::Data(op), fin);
        ws.send(Message::Frame(frame)).await.unwrap();
    }

    /// What a tungstenite server receives until the end (pongs, texts, close frames).
    async fn server_receives(ws: &mut WebSocketStream<TcpStream>) -> Vec<String> {
        let mut got = Vec::new();
        for _ in 0..100 {
            match ws.next().await {
                Some(Ok(Message::Pong(p))) => got.push(format!("pong {:?}", p.as_ref())),
                Some(Ok(Message::Text(t))) => got.push(format!("text {t}")),
                Some(Ok(Message::Close(c))) => got.push(format!(
                    "close {:?}",
                    c.map(|c| (u16::from(c.code), c.reason.to_string()))
                )),
                Some(Ok(m)) => got.push(format!("{m:?}")),
                Some(Err(e)) => {
                    got.push(format!("error {e}"));
                    break;
                }
                None => break,
            }
        }
        got
    }

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

    /// A fragmented text message with a ping between its fragments is one message; a
    /// fragmented binary one is one `Other`; the client's answers arrive masked (tungstenite's
    /// server refuses unmasked frames) and the close handshake completes on the server's side.
    #[tokio::test]
    async fn fragmented_messages() {
        let (mut ws, server) = with_tungstenite(1024, |mut ws| async move {
            send_frame(&mut ws, b"hel", Data::Text, false).await;
            ws.send(Message::Ping(vec![9].into())).await.unwrap();
            send_frame(&mut ws, b"lo", Data::Continue, false).await;
            send_frame(&mut ws, b" world", Data::Continue, true).await;
            ws.send(Message::text("after")).await.unwrap();
            send_frame(&mut ws, &[1, 2], Data::Binary, false).await;
            send_frame(&mut ws, &[3], Data::Continue, true).await;
            // An empty fragmented message.
            send_frame(&mut ws, b"", Data::Text, false).await;
            send_frame(&mut ws, b"", Data::Continue, true).await;
            ws.send(Message::text("end")).await.unwrap();
            let mut got = Vec::new();
            while got.len() < 2 {
                match ws.next().await {
                    Some(Ok(Message::Pong(p))) => got.push(format!("pong {:?}", p.as_ref())),
                    Some(Ok(Message::Text(t))) => got.push(format!("text {t}")),
                    other => panic!("{other:?}"),
                }
            }
            // The pong and the answer, in either order.
            got.sort();
            ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(4008),
                reason: "slow".into(),
            })))
            .await
            .unwrap();
            got.extend(server_receives(&mut ws).await);
            got
        })
        .await;
        let seen = receive(&mut ws, |text| text == b"end").await;
        assert_eq!(
            seen,
            [
                "text hello 11 true",
                "text after 5 true",
                "other",
                "text  0 true",
                "text end 3 true",
                "close 4008"
            ]
        );
        tokio::time::timeout(BOUND, ws.reply_close())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            server.await.unwrap(),
            ["pong [9]", "text ok", "close Some((4008, \"\"))",]
        );
    }

    /// A fragmented message larger than the buffer is handed over as its first 256 bytes,
    /// whether its fragments are small or larger than the buffer themselves; one of exactly
    /// the buffer's size is complete.
    #[tokio::test]
    async fn fragmented_message_larger_than_the_buffer() {
        let (mut ws, server) = with_tungstenite(256, |mut ws| async move {
            let mut first = b"~".to_vec();
            first.extend([b'a'; 199]);
            send_frame(&mut ws, &first, Data::Text, false).await;
            ws.send(Message::Ping(vec![1].into())).await.unwrap();
            send_frame(&mut ws, &[b'b'; 200], Data::Continue, false).await;
            ws.send(Message::Ping(vec![2].into())).await.unwrap();
            send_frame(&mut ws, &[b'c'; 200], Data::Continue, true).await;
            // Exactly the buffer's size, then an empty last fragment.
            send_frame(&mut ws, &[b'd'; 128], Data::Text, false).await;
            send_frame(&mut ws, &[b'e'; 128], Data::Continue, false).await;
            send_frame(&mut ws, b"", Data::Continue, true).await;
            // The buffer's size, then one byte more.
            send_frame(&mut ws, &[b'f'; 256], Data::Text, false).await;
            send_frame(&mut ws, b"", Data::Continue, false).await;
            send_frame(&mut ws, b"g", Data::Continue, true).await;
            // Fragments larger than the buffer.
            send_frame(&mut ws, &[b'x'; 5000], Data::Text, false).await;
            send_frame(&mut ws, &[b'y'; 3000], Data::Continue, true).await;
            ws.send(Message::text("after")).await.unwrap();
            ws.send(Message::Close(None)).await.unwrap();
            server_receives(&mut ws).await
        })
        .await;
        let mut texts = Vec::new();
        let seen = receive(&mut ws, |text| {
            texts.push(text.to_vec());
            false
        })
        .await;
        assert_eq!(
            seen,
            [
                "text ~aaaa 256 false",
                "text ddddd 256 true",
                "text fffff 256 false",
                "text xxxxx 256 false",
                "text after 5 true",
                "close 1005"
            ]
        );
        let mut expect = b"~".to_vec();
        expect.extend([b'a'; 199]);
        expect.extend([b'b'; 56]);
        assert_eq!(texts[0], expect);
        assert_eq!(texts[1][127..129], *b"de");
        assert!(texts[3].iter().all(|&b| b == b'x'));
        assert!(
            ws.prefix.capacity() == 0,
            "the prefix is freed once handed over"
        );
        tokio::time::timeout(BOUND, ws.reply_close())
            .await
            .unwrap()
            .unwrap();
        // The reply to a close without a code has none either.
        assert_eq!(
            server.await.unwrap(),
            ["pong [1]", "pong [2]", "close None"]
        );
    }

    /// The server's close is answered with its code, and nothing is sent after it.
    #[tokio::test]
    async fn server_close_is_answered() {
        let (mut ws, server) = with_tungstenite(1024, |mut ws| async move {
            ws.send(Message::Close(Some(CloseFrame {
                code: CloseCode::from(1001),
                reason: "going away".into(),
            })))
            .await
            .unwrap();
            server_receives(&mut ws).await
        })
        .await;
        assert_eq!(receive(&mut ws, |_| false).await, ["close 1001"]);
        assert!(ws.is_closing());
        assert!(ws.send_text(b"late").await.is_err());
        assert_eq!(ws.next_frame(), Ok(None));
        tokio::time::timeout(BOUND, ws.reply_close())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(server.await.unwrap(), ["close Some((1001, \"\"))"]);
    }

    /// The client's own close: the server sees it (after the text sent before it) and
    /// answers, and `close` returns once the server ended the stream.
    #[tokio::test]
    async fn client_close_handshake() {
        let (mut ws, server) =
            with_tungstenite(1024, |mut ws| async move { server_receives(&mut ws).await }).await;
        ws.send_text(b"bye").await.unwrap();
        tokio::time::timeout(BOUND, ws.close(CLOSE_NORMAL))
            .await
            .unwrap()
            .unwrap();
        assert!(ws.send_text(b"late").await.is_err());
        assert_eq!(
            server.await.unwrap(),
            ["text bye", "close Some((1000, \"\"))"]
        );
    }

    /// A raw TCP server: answers the upgrade with `response(accept)`, sends `frames`, then
    /// returns the first frame the client sends, unmasked, as (opcode, payload); `None` when the
    /// client ended the stream first.
    async fn raw_server(
        response: impl FnOnce(&str) -> String + Send + 'static,
        frames: Vec<u8>,
    ) -> (
        std::net::SocketAddr,
        tokio::task::JoinHandle<Option<(u8, Vec<u8>)>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = memchr::memmem::find(&got, b"\r\n\r\n") {
                    break i + 4;
                }
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0 && got.len() < 65536, "no request head");
                got.extend_from_slice(&chunk[..n]);
            };
            let head = String::from_utf8(got[..head_end].to_vec()).unwrap();
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let accept = derive_accept_key(key.trim().as_bytes());
            tcp.write_all(response(&accept).as_bytes()).await.unwrap();
            tcp.write_all(&frames).await.unwrap();
            got.drain(..head_end);
            loop {
                if got.len() >= 2 {
                    assert_eq!(got[1] & 0x80, 0x80, "unmasked client frame");
                    let len = usize::from(got[1] & 0x7f);
                    assert!(len < 126);
                    if got.len() >= 6 + len {
                        let key = [got[2], got[3], got[4], got[5]];
                        let payload = got[6..6 + len]
                            .iter()
                            .enumerate()
                            .map(|(i, b)| b ^ key[i % 4])
                            .collect();
                        return Some((got[0], payload));
                    }
                }
                match tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        });
        (addr, server)
    }

    /// An unfragmented server frame (FIN set, unmasked) with `payload`.
    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// After the discarded rest of an oversized frame, the frames behind it in the same read
    /// are parsed from what is really in the buffer (found against tidechat: a stale count of
    /// buffered bytes read payload as a header, "RSV bits set").
    #[tokio::test]
    async fn frames_after_an_oversized_one_in_the_same_read() {
        let mut frames = server_frame(OP_TEXT, &[b'x'; 1500]);
        frames.extend(server_frame(OP_TEXT, &[b'y'; 600]));
        frames.extend(server_frame(OP_TEXT, b"after"));
        let (addr, server) = raw_server(good_response, frames).await;
        let mut ws = connect_raw(addr, 1024).await.unwrap();
        let (seen, got) = tokio::join!(receive(&mut ws, |t| t == b"after"), server);
        assert_eq!(got.unwrap(), Some((0x80 | OP_TEXT, b"ok".to_vec())));
        assert_eq!(
            &seen[..3],
            [
                "text xxxxx 1020 false",
                "text yyyyy 600 true",
                "text after 5 true"
            ],
            "{seen:?}"
        );
    }

    fn good_response(accept: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
    }

    async fn connect_raw(addr: std::net::SocketAddr, buffer: usize) -> Result<WsClient, String> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio::time::timeout(
            BOUND,
            WsClient::handshake(tcp, &addr.to_string(), "/", buffer, 0),
        )
        .await
        .unwrap()
    }

    /// Each wrong answer to the upgrade gives its error; header values and names are
    /// case-insensitive and `Connection` is a list.
    #[tokio::test]
    async fn handshake_checks() {
        /// The response to the upgrade, from the expected accept key.
        type Response = fn(&str) -> String;
        let cases: [(Response, &str); 10] = [
            (good_response, ""),
            (
                |a| {
                    format!(
                        "HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\n\
                         sec-websocket-accept: {a}\r\n\r\n"
                    )
                },
                "",
            ),
            (
                |a| format!("HTTP/1.1 200 OK\r\nSec-WebSocket-Accept: {a}\r\n\r\n"),
                "handshake: expected status 101, got `HTTP/1.1 200 OK`",
            ),
            (
                |a| {
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Accept: {a}\r\n\r\n"
                    )
                },
                "handshake: no `Upgrade: websocket` header",
            ),
            (
                |a| {
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\
                         Sec-WebSocket-Accept: {a}\r\n\r\n"
                    )
                },
                "handshake: no `Upgrade: websocket` header",
            ),
            (
                |a| {
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Connection: keep-alive\r\nSec-WebSocket-Accept: {a}\r\n\r\n"
                    )
                },
                "handshake: no `Connection` header with `upgrade`",
            ),
            (
                |a| {
                    format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                         Sec-WebSocket-Accept: {a}\r\n\r\n"
                    )
                },
                "handshake: no `Connection` header with `upgrade`",
            ),
            (
                |_| good_response("dGhlIHNhbXBsZSBub25jZQ=="),
                "handshake: missing or wrong Sec-WebSocket-Accept",
            ),
            (
                |a| {
                    good_response(a).replace(
                        "\r\n\r\n",
                        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                    )
                },
                "handshake: server chose extensions `permessage-deflate`, none were requested",
            ),
            (
                |a| {
                    good_response(a).replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat\r\n\r\n")
                },
                "handshake: server chose subprotocol `chat`, none was requested",
            ),
        ];
        for (response, expect) in cases {
            let (addr, server) = raw_server(response, Vec::new()).await;
            let result = connect_raw(addr, 1024).await;
            match result {
                Ok(mut ws) => {
                    assert_eq!(expect, "");
                    drop(tokio::time::timeout(BOUND, ws.close(CLOSE_NORMAL)).await);
                    assert_eq!(
                        server.await.unwrap(),
                        Some((0x80 | OP_CLOSE, CLOSE_NORMAL.to_be_bytes().to_vec()))
                    );
                }
                Err(e) => {
                    assert_eq!(e, expect);
                    // The client dropped the connection without sending a frame.
                    assert_eq!(server.await.unwrap(), None);
                }
            }
        }
    }

    /// Each protocol violation by the server gives its error (again on later calls), stops
    /// data frames, and `reply_close` sends the close 1002 (1007 for a bad close reason).
    #[tokio::test]
    async fn protocol_errors_close_with_1002() {
        let mut too_big_ping = vec![0x89, 126, 0, 126];
        too_big_ping.extend([0u8; 126]);
        let cases: Vec<(Vec<u8>, &str, u16)> = vec![
            (vec![0xC1, 1, b'x'], "RSV bits set (0x40)", 1002),
            (vec![0x91, 1, b'x'], "RSV bits set (0x10)", 1002),
            (vec![0x83, 0], "unknown opcode 0x3", 1002),
            (vec![0x8B, 0], "unknown opcode 0xb", 1002),
            (vec![0x09, 0], "fragmented control frame", 1002),
            (vec![0x08, 0], "fragmented control frame", 1002),
            (vec![0x80, 1, b'x'], "continuation frame without", 1002),
            (
                vec![0x01, 1, b'a', 0x81, 1, b'b'],
                "new message while",
                1002,
            ),
            (
                vec![0x01, 1, b'a', 0x02, 1, b'b'],
                "new message while",
                1002,
            ),
            (vec![0x81, 0x81, 1, 2, 3, 4, b'x'], "masked frame", 1002),
            (too_big_ping, "control frame over 125 bytes", 1002),
            (vec![0x88, 1, 3], "close frame with a 1-byte payload", 1002),
            (
                vec![0x88, 2, 0x03, 0xED],
                "close code 1005 not allowed",
                1002,
            ),
            (
                vec![0x88, 2, 0x03, 0xE7],
                "close code 999 not allowed",
                1002,
            ),
            (
                vec![0x88, 4, 0x03, 0xE8, 0xff, 0xfe],
                "close reason not UTF-8",
                1007,
            ),
        ];
        for (frames, expect, code) in cases {
            // A valid text first: errors come after what was fine.
            let mut bytes = vec![0x81, 2, b'h', b'i'];
            bytes.extend(frames);
            let (addr, server) = raw_server(good_response, bytes).await;
            let mut ws = connect_raw(addr, 256).await.unwrap();
            let seen = receive(&mut ws, |_| false).await;
            assert_eq!(seen.len(), 2, "{expect}: {seen:?}");
            assert_eq!(seen[0], "text hi 2 true");
            assert!(
                seen[1].starts_with("protocol error: ") && seen[1].contains(expect),
                "{seen:?}"
            );
            assert_eq!(ws.next_frame(), Err(seen[1].clone()));
            assert!(ws.is_closing());
            assert!(ws.send_text(b"late").await.is_err());
            drop(tokio::time::timeout(BOUND, ws.reply_close()).await);
            assert_eq!(
                server.await.unwrap(),
                Some((0x80 | OP_CLOSE, code.to_be_bytes().to_vec())),
                "{expect}"
            );
        }
    }

    /// A close without a code is reported as 1005 and answered without a code.
    #[tokio::test]
    async fn close_without_code_is_echoed_without_code() {
        let (addr, server) = raw_server(good_response, vec![0x88, 0]).await;
        let mut ws = connect_raw(addr, 256).await.unwrap();
        assert_eq!(receive(&mut ws, |_| false).await, ["close 1005"]);
        drop(tokio::time::timeout(BOUND, ws.reply_close()).await);
        assert_eq!(server.await.unwrap(), Some((0x80 | OP_CLOSE, Vec::new())));
    }

    /// Masking keys come from the random buffer, refilled when used up.
    #[tokio::test]
    async fn masking_keys_are_refilled() {
        let (addr, server) = raw_server(good_response, Vec::new()).await;
        let mut ws = connect_raw(addr, 256).await.unwrap();
        let keys: Vec<[u8; 4]> = (0..3 * KEY_BYTES / 4)
            .map(|_| ws.next_key().unwrap())
            .collect();
        let mut distinct = keys.clone();
        distinct.sort();
        distinct.dedup();
        // 48 random 32-bit keys: a repeat has a probability of about 3e-7.
        assert_eq!(distinct.len(), keys.len());
        assert_eq!(ws.key_at, KEY_BYTES);
        drop(tokio::time::timeout(BOUND, ws.close(CLOSE_NORMAL)).await);
        assert!(server.await.unwrap().is_some());
    }
}
