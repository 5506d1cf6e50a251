//! Fan-out without a wake-up per delivery.
//!
//! While a connection's writer has nothing to do it *parks*: it hands its room subscriptions to
//! the connection's [`Direct`] handle and waits only for its inbox, its ping tick, the shutdown
//! and an unpark. Whoever publishes into one of its rooms then takes the new events from the
//! subscription and writes them straight to the socket without blocking, the way uWebSockets'
//! `publish` does, so a delivery costs one `send` and no task wake-up, poll or listener.
//!
//! Whatever that write cannot finish, or whatever needs the writer, unparks it: a socket that
//! would block (the cut frame goes back first), the sender's own message waiting for the disk,
//! an overflow (4008), a resync (4009), a closed room. The writer then takes the subscriptions
//! back and goes on as before.
//!
//! One writer at a time per socket: a publisher writes only while the writer is parked, under
//! the handle's lock, and the writer writes only after it has unparked under the same lock.

use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Context;
use std::time::Duration;

use async_broadcast::{Receiver, RecvError, TryRecvError};
use async_std::net::TcpStream;

use smallvec::SmallVec;

use super::frame::{busy, frame_for, rendering, tally_sent, Frame, Sent};
use super::inbox::Inbox;
use super::{Mode, Out};
use crate::hub::store::Commits;
use crate::hub::{Event, EventRef, Evict, Push};
use crate::metrics::{Metrics, PassTally};
use crate::protocol::TextFrame;

/// Events a publisher writes in one go before it leaves the rest to the writer (the writer's
/// batches are as big).
const MAX_DIRECT: usize = 256;

/// A connection's subscriptions. The first is inline, in the handle next to its lock, not in
/// an allocation of its own: one allocation less per connection, and one line less that a pass
/// may have to wait for per member.
pub(super) type Subs = SmallVec<[Sub; 1]>;

/// A room this connection receives.
#[derive(Debug)]
pub(super) struct Sub {
    pub room: Arc<str>,
    pub rx: Receiver<EventRef>,
    /// The `joined` frame covered messages up to here; live copies of them are dropped.
    pub after: u64,
    /// Its member list covered presence changes up to here (numbered ones; see `Delivery`).
    pub presence_after: u64,
}

impl Sub {
    /// Whether `ev` is news to this connection (the `joined` frame did not have it).
    pub fn wants(&self, ev: &Event) -> bool {
        let seen = (ev.offset != 0 && ev.offset <= self.after)
            || (ev.presence != 0 && ev.presence <= self.presence_after);
        !(ev.reset || seen)
    }
}

/// What a subscription gave that only the writer may handle: its input, as the writer's own
/// `try_recv` would have returned it (`None`: the room's channel closed).
pub(super) type Handoff = (usize, Option<Result<EventRef, RecvError>>);

/// A connection's handle for the hub (held with the member): its inbox, and for publishers
/// (with `--direct-write on`) its socket. One allocation for both, and the inbox's writer
/// waker is the one that unparks.
///
/// `repr(C)`, in this order: what a publisher's pass touches for each member (the state's lock
/// and subscriptions, the socket, the counters) comes first, within the allocation's first two
/// cache lines, and the inbox, which a pass never touches, last. The compiler had put the
/// inbox between them: `chat` then cost 12% more server CPU per delivery than with a handle
/// of its own (`scripts/bench`, medians of 5 vs 5: 4.23 vs 3.78 s per M), and in this order
/// 0.9% less (4.03 vs 4.06).
#[derive(Debug)]
#[repr(C)]
pub struct Direct {
    state: Mutex<State>,
    sock: TcpStream,
    conn: u64,
    metrics: Option<Arc<Metrics>>,
    /// `--test-work-per-delivery` in ns (at most ~4 s; 8 B less than a `Duration` here).
    work_ns: u32,
    mode: Mode,
    pub inbox: Inbox<Out>,
}

#[derive(Debug, Default)]
struct State {
    /// The writer is parked: publishers write, and `subs` are here.
    parked: bool,
    subs: Subs,
    /// A direct write the socket did not take whole: its frames and the bytes written.
    /// Boxed: rare, and every connection's handle holds the slot.
    rest: Option<Box<(Vec<Frame>, usize)>>,
    handoff: Vec<Handoff>,
}

/// What the writer gets back when it unparks.
pub(super) struct Unparked {
    pub subs: Subs,
    pub rest: Option<Box<(Vec<Frame>, usize)>>,
    pub handoff: Vec<Handoff>,
}

impl Direct {
    pub fn new(
        sock: TcpStream,
        mode: Mode,
        conn: u64,
        metrics: Option<Arc<Metrics>>,
        work: Duration,
    ) -> Self {
        Self {
            inbox: Inbox::default(),
            state: Mutex::default(),
            sock,
            mode,
            conn,
            metrics,
            work_ns: u32::try_from(work.as_nanos()).unwrap_or(u32::MAX),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer parks with `subs`; `cx` wakes it to unpark. Returns `Err(subs)` when it must
    /// not wait: something arrived since it last looked (taken care of as a publisher would) and
    /// needs the writer.
    pub(super) fn park(
        &self,
        subs: Subs,
        commits: &Commits,
        cx: &mut Context<'_>,
    ) -> Result<(), Unparked> {
        self.inbox.register_writer(cx.waker());
        let mut st = self.lock();
        debug_assert!(!st.parked && st.subs.is_empty());
        st.parked = true;
        st.subs = subs;
        // Events published after the writer's last look found it unparked and were left in the
        // subscriptions: send them now.
        let mut pass = PassTally::default();
        for i in 0..st.subs.len() {
            if !st.parked {
                break;
            }
            self.drain(&mut st, i, commits, &mut pass);
        }
        pass.finish();
        if st.parked {
            return Ok(());
        }
        Err(take(&mut st))
    }

    /// The writer unparks (it was woken, for an unpark or for any other input): what it left
    /// here, and whatever publishers handed it.
    pub(super) fn unpark(&self) -> Unparked {
        take(&mut self.lock())
    }

    /// The connection is over: nothing more is written, and its subscriptions go.
    pub(super) fn retire(&self) {
        let mut st = self.lock();
        st.parked = false;
        st.subs.clear();
        st.rest = None;
        st.handoff.clear();
    }

    /// Sends what subscription `i` holds to the socket, or hands it to the writer.
    fn drain(&self, st: &mut State, i: usize, commits: &Commits, pass: &mut PassTally) {
        let mut evs: SmallVec<[EventRef; 4]> = SmallVec::new();
        let mut unpark = false;
        while evs.len() < MAX_DIRECT {
            let sub = &mut st.subs[i];
            let input = match sub.rx.try_recv() {
                Ok(ev) => {
                    let waits = ev.origin == self.conn && !commits.is_durable(ev.ticket);
                    if !(ev.reset || waits) {
                        if sub.wants(&ev) && rendering(self.mode, &ev).is_some() {
                            evs.push(ev);
                        }
                        continue;
                    }
                    Some(Ok(ev))
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Overflowed(n)) => Some(Err(RecvError::Overflowed(n))),
                Err(TryRecvError::Closed) => None,
            };
            st.handoff.push((i, input));
            unpark = true;
            break;
        }
        if evs.len() == MAX_DIRECT {
            // More may be queued: the writer takes it from here, in batches.
            unpark = true;
        }
        if !evs.is_empty() {
            if self.work_ns != 0 {
                busy(Duration::from_nanos(u64::from(self.work_ns)) * evs.len() as u32);
            }
            let wire = |ev| wire(self.mode, ev);
            let total: usize = evs.iter().map(|ev| wire(ev).len()).sum();
            let written = write_now(&self.sock, evs.iter().map(wire), total);
            let sent = evs.iter().map(|ev| Sent {
                len: wire(ev).len(),
                close: None,
                published: ev.published,
            });
            if let Some(m) = &self.metrics {
                tally_sent(pass.tally(m), sent, 0, written);
            }
            if written < total {
                // Would block, or failed: the writer finishes (or finds the error) from here.
                let frames = evs
                    .iter()
                    .filter_map(|ev| frame_for(self.mode, ev))
                    .collect();
                st.rest = Some(Box::new((frames, written)));
                unpark = true;
            }
        }
        if unpark {
            st.parked = false;
            self.inbox.wake_writer();
        }
    }
}

fn take(st: &mut State) -> Unparked {
    st.parked = false;
    Unparked {
        subs: std::mem::take(&mut st.subs),
        rest: st.rest.take(),
        handoff: std::mem::take(&mut st.handoff),
    }
}

impl Evict for Direct {
    fn evict(&self, room: Arc<str>) {
        self.inbox.evict(room);
    }
}

impl Push for Direct {
    fn warm(&self) {
        // The lock's cache line (through its poison flag, an atomic load), and the socket's:
        // `as_raw_fd` goes through the stream's own allocation, a second miss.
        std::hint::black_box((self.state.is_poisoned(), self.sock.as_raw_fd()));
    }

    fn push(&self, room: &str, commits: &Commits, pass: &mut PassTally) {
        let mut st = self.lock();
        if !st.parked {
            // The writer has the subscriptions (and is listening, or about to park and look).
            return;
        }
        // Not yet subscribed (the `joined` frame is still in the inbox): the writer takes the
        // room's events when it subscribes.
        if let Some(i) = st.subs.iter().position(|s| &*s.room == room) {
            self.drain(&mut st, i, commits, pass);
        }
    }
}

/// The bytes of `ev` on a connection in `mode` (every event of a direct write has them).
fn wire(mode: Mode, ev: &EventRef) -> &[u8] {
    rendering(mode, ev).map_or(&[], TextFrame::wire)
}

/// Up to this many bytes, several frames are copied into one buffer on the stack and go in a
/// plain `send`: copying a few hundred bytes costs less than the kernel's import of an iovec per
/// frame. A single frame goes as it is.
const CONTIGUOUS: usize = 2048;

/// Writes `frames` (whole frames, `total` bytes) as far as the socket takes them now; returns the
/// bytes written (an error counts as a stop: the writer meets it again on its own write).
fn write_now<'f>(
    sock: &TcpStream,
    frames: impl Iterator<Item = &'f [u8]> + Clone,
    total: usize,
) -> usize {
    let sock = socket2::SockRef::from(sock);
    let mut two = frames.clone();
    if let (Some(one), None) = (two.next(), two.next()) {
        return send_now(&sock, one);
    }
    if total <= CONTIGUOUS {
        let mut buf = [0u8; CONTIGUOUS];
        let mut len = 0;
        for f in frames {
            buf[len..len + f.len()].copy_from_slice(f);
            len += f.len();
        }
        return send_now(&sock, &buf[..len]);
    }
    let mut slices: Vec<IoSlice<'_>> = frames.map(IoSlice::new).collect();
    let mut bufs = &mut slices[..];
    let mut written = 0;
    while !bufs.is_empty() {
        match sock.send_vectored(bufs) {
            Ok(n) if n > 0 => {
                written += n;
                IoSlice::advance_slices(&mut bufs, n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    written
}

/// Sends `bytes` as far as the socket takes them now; the bytes written.
fn send_now(sock: &socket2::SockRef<'_>, bytes: &[u8]) -> usize {
    let mut written = 0;
    while written < bytes.len() {
        match sock.send(&bytes[written..]) {
            Ok(n) if n > 0 => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            _ => break,
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Wire;
    use async_broadcast::Sender;
    use futures::task::ArcWake;
    use std::io::Read;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(w: &Arc<Self>) {
            w.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn event(offset: u64, text: &str, origin: u64, ticket: u64) -> EventRef {
        Arc::new(Event {
            offset,
            wire: Wire {
                v1: text.into(),
                seed: None,
            },
            ticket,
            origin,
            presence: 0,
            reset: false,
            published: None,
        })
    }

    /// A real loopback connection: the server side (for `Direct`) and the client side.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (TcpStream::from(server), client)
    }

    /// A direct handle parked on one room (`lobby`), with the waker that counts unparks.
    fn parked(sock: TcpStream, capacity: usize) -> (Direct, Sender<EventRef>, Arc<Wakes>) {
        let (mut tx, rx) = async_broadcast::broadcast(capacity);
        tx.set_overflow(true);
        let direct = Direct::new(sock, Mode::V1, 7, None, Duration::ZERO);
        let wakes = Arc::new(Wakes::default());
        let waker = futures::task::waker(wakes.clone());
        let sub = Sub {
            room: "lobby".into(),
            rx,
            after: 0,
            presence_after: 0,
        };
        let parked = direct.park(
            smallvec::smallvec![sub],
            &Commits::default(),
            &mut Context::from_waker(&waker),
        );
        assert!(parked.is_ok(), "nothing queued: it parks");
        (direct, tx, wakes)
    }

    fn unpark(direct: &Direct) -> Unparked {
        direct.unpark()
    }

    /// An event published into a parked connection's room goes to its socket from the
    /// publisher, byte for byte its frame, and the connection's task is not woken.
    #[test]
    fn a_parked_writers_events_are_written_by_the_publisher_without_a_wake_up() {
        let (sock, mut client) = pair();
        let (direct, tx, wakes) = parked(sock, 16);
        for (offset, text) in [(1, "one"), (2, "two")] {
            tx.try_broadcast(event(offset, text, 0, 0)).unwrap();
            direct.push("lobby", &Commits::default(), &mut PassTally::default());
        }
        let mut got = [0u8; 10];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x81\x03one\x81\x03two");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0, "no wake-up per delivery");
        assert!(direct.lock().parked);
        // Another room's push leaves this one alone.
        tx.try_broadcast(event(3, "three", 0, 0)).unwrap();
        direct.push("elsewhere", &Commits::default(), &mut PassTally::default());
        let back = unpark(&direct);
        assert!(back.rest.is_none() && back.handoff.is_empty());
        let mut subs = back.subs;
        assert_eq!(subs[0].rx.try_recv().unwrap().offset, 3);
    }

    /// A socket that takes only part of the events: the writer is woken with the unwritten
    /// rest (the cut frame included), and no publisher writes after that. Big frames go in a
    /// vectored send; small ones, copied into one buffer, in a plain send.
    #[test]
    fn a_cut_direct_write_goes_back_to_the_writer() {
        // Far more than loopback buffers hold while the client reads nothing.
        cut_write(60_000, None);
        const { assert!(4 + 1_000 <= CONTIGUOUS) };
        cut_write(1_000, Some(4096));
    }

    /// Pushes `len`-byte events until the socket (with `buffers` bytes of send and receive
    /// buffer, if given) is full, and checks what reached the client and what went back.
    fn cut_write(len: usize, buffers: Option<usize>) {
        let (sock, mut client) = pair();
        if let Some(b) = buffers {
            socket2::SockRef::from(&sock)
                .set_send_buffer_size(b)
                .unwrap();
            socket2::SockRef::from(&client)
                .set_recv_buffer_size(b)
                .unwrap();
        }
        let (direct, tx, wakes) = parked(sock, 1024);
        let big = "x".repeat(len);
        let mut sent = 0;
        while direct.lock().parked {
            sent += 1;
            assert!(sent < 1_000, "the socket never filled");
            tx.try_broadcast(event(sent, &big, 0, 0)).unwrap();
            direct.push("lobby", &Commits::default(), &mut PassTally::default());
        }
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1, "woken once, to unpark");
        tx.try_broadcast(event(sent + 1, "late", 0, 0)).unwrap();
        direct.push("lobby", &Commits::default(), &mut PassTally::default());
        let back = unpark(&direct);
        let (frames, written) = *back.rest.expect("the cut write's rest");
        let total: usize = frames.iter().map(Frame::wire_len).sum();
        assert!(written < total);
        // What reached the client is exactly the first `written` bytes of those frames after
        // the earlier whole ones: read it all and check the stream is frame by frame intact.
        drop(direct);
        let mut stream = Vec::new();
        client
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            stream.extend_from_slice(&buf[..n]);
        }
        let frame_len = 4 + big.len();
        let whole = (sent as usize - frames.len()) * frame_len;
        assert_eq!(stream.len(), whole + written);
        // The late event was not written by the publisher: it is still queued for the writer.
        let mut subs = back.subs;
        assert_eq!(subs[0].rx.try_recv().unwrap().offset, sent + 1);
    }

    /// The sender's own message waiting for the disk, and an overflow, are the writer's.
    #[test]
    fn what_needs_the_writer_is_handed_to_it_in_order() {
        let (sock, mut client) = pair();
        let (direct, tx, wakes) = parked(sock, 16);
        tx.try_broadcast(event(1, "before", 0, 0)).unwrap();
        // Connection 7's own message, ticket 5, not yet durable.
        tx.try_broadcast(event(2, "mine", 7, 5)).unwrap();
        tx.try_broadcast(event(3, "after", 0, 0)).unwrap();
        direct.push("lobby", &Commits::default(), &mut PassTally::default());
        let mut got = [0u8; 8];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x81\x06before");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        let mut back = unpark(&direct);
        match back.handoff.as_slice() {
            [(0, Some(Ok(ev)))] => assert_eq!(ev.offset, 2),
            other => panic!("expected the own message, got {other:?}"),
        }
        assert_eq!(back.subs[0].rx.try_recv().unwrap().offset, 3);

        // Overflowed: the writer closes with 4008.
        let (sock, _client) = pair();
        let (direct, tx, _) = parked(sock, 2);
        for offset in 1..=5 {
            tx.try_broadcast(event(offset, "x", 0, 0)).unwrap();
        }
        direct.push("lobby", &Commits::default(), &mut PassTally::default());
        let back = unpark(&direct);
        assert!(matches!(
            back.handoff.as_slice(),
            [(0, Some(Err(RecvError::Overflowed(3))))]
        ));
    }
}
