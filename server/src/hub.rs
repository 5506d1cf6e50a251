//! Rooms: name -> `Room` (broadcast channel, history ring, members, next id).
//!
//! The hub knows nothing about sockets or the async runtime: connections call [`Hub::join`],
//! [`Hub::say`] and [`Hub::leave`], and receive [`Event`]s from the `async_broadcast` receiver that
//! `join` hands them. Each message is serialized once, here, and shared by every receiver.
//! `join` and `history` hand back pages of those shared events (capped by count and bytes) and
//! the connection renders the frame, outside every hub lock.
//!
//! Lock order: the room map, then one room's state; never the other way round. Publishing holds
//! a room's lock only to assign the id, append to history and `try_broadcast`, which never waits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_broadcast::{InactiveReceiver, Receiver};
use async_tungstenite::tungstenite::Utf8Bytes;
use serde::Serialize;

use crate::channel::RoomChannel;
pub use crate::channel::{Event, EventRef};
use crate::protocol::{self, MessageFrame, PresenceFrame};

/// The room `/chatSocket` (seed protocol) users live in.
pub const SEED_ROOM: &str = "lobby";

/// How the hub tells a connection that a resume took its place in a room.
pub trait Evict: Send + Sync + std::fmt::Debug {
    fn evict(&self, room: Arc<str>);
}

/// What a connection gives the hub with each join.
pub type Evictor = Arc<dyn Evict>;

/// Sizes the hub works within (from [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_rooms: usize,
    pub history: usize,
    pub history_bytes: usize,
    pub room_buffer: usize,
    pub room_buffer_bytes: usize,
    pub presence_cap: usize,
    /// Most messages one `joined` or `history` page holds.
    pub page_messages: usize,
    /// Most bytes of messages one page holds (a single larger message still goes alone).
    pub page_bytes: usize,
}

/// A `join` request, already checked for syntax.
#[derive(Debug)]
pub struct JoinRequest<'a> {
    pub room: &'a str,
    pub name: &'a str,
    pub since: Option<u64>,
    pub epoch: Option<u64>,
    pub token: Option<&'a str>,
    /// Id of the joining connection.
    pub conn: u64,
    pub evictor: Evictor,
    /// Whether the joiner wants members and history (a seed connection shows neither).
    pub snapshot: bool,
}

/// A successful join: the receiver for live events, and what the `joined` frame sent before any
/// of them says (every live message has an id above `last_id`). The connection renders the
/// frame ([`protocol::joined_frame`]); the hub holds the room lock only to copy these out.
#[derive(Debug)]
pub struct Joined {
    pub room: Arc<str>,
    pub rx: Receiver<EventRef>,
    pub name: Arc<str>,
    pub epoch: u64,
    pub token: String,
    /// At most the presence cap; empty without a snapshot.
    pub members: Vec<Arc<str>>,
    pub member_count: usize,
    /// Message events, oldest first, within the page caps; empty without a snapshot.
    pub history: Vec<EventRef>,
    pub recovered: bool,
    pub last_id: u64,
    /// The caps cut `history`.
    pub more: bool,
}

impl Joined {
    /// The `joined` frame for this join.
    pub fn frame(&self) -> String {
        let head = protocol::JoinedHead {
            room: &self.room,
            name: &self.name,
            epoch: self.epoch,
            token: &self.token,
            members: &self.members,
            member_count: self.member_count,
            recovered: self.recovered,
            last_id: self.last_id,
            more: self.more,
        };
        protocol::joined_frame(&head, self.history.iter().map(|e| e.json.as_str()))
    }

    /// About the size of [`Self::frame`], without building it.
    pub fn frame_bytes(&self) -> usize {
        let names: usize = self.members.iter().map(|n| n.len() + 3).sum();
        let history: usize = self.history.iter().map(|e| e.json.len() + 1).sum();
        256 + self.room.len() + self.name.len() + names + history
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The messages after this id, oldest first.
    Since(u64),
    /// The messages just before this id (the newest of them).
    Before(u64),
}

/// A page of history, oldest first; `more` when the caps cut it.
#[derive(Debug)]
pub struct HistoryPage {
    pub room: Arc<str>,
    pub messages: Vec<EventRef>,
    pub more: bool,
}

impl HistoryPage {
    /// The `history` frame for this page.
    pub fn frame(&self) -> String {
        let head = protocol::HistoryHead {
            room: &self.room,
            more: self.more,
        };
        protocol::history_frame(&head, self.messages.iter().map(|e| e.json.as_str()))
    }

    /// About the size of [`Self::frame`].
    pub fn frame_bytes(&self) -> usize {
        64 + self.room.len()
            + self
                .messages
                .iter()
                .map(|e| e.json.len() + 1)
                .sum::<usize>()
    }
}

/// Why a join or say was refused (each maps to an `error` frame code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("that name is taken in this room")]
    NameTaken,
    #[error("you are already in this room")]
    AlreadyJoined,
    #[error("the server holds its maximum number of rooms")]
    ServerFull,
    #[error("you are not in this room")]
    NotInRoom,
}

impl HubError {
    pub fn code(self) -> &'static str {
        use protocol::error_code::*;
        match self {
            HubError::NameTaken => NAME_TAKEN,
            HubError::AlreadyJoined => ALREADY_JOINED,
            HubError::ServerFull => SERVER_FULL,
            HubError::NotInRoom => NOT_IN_ROOM,
        }
    }
}

/// Counts for `/stats` and for tests that check nothing leaks.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct HubStats {
    pub rooms: usize,
    pub members: usize,
    /// Active broadcast receivers across all rooms; equals `members` when nothing leaks.
    pub receivers: usize,
    /// Messages published since start.
    pub messages: u64,
}

/// All rooms of this node.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
}

#[derive(Debug)]
struct Room {
    name: Arc<str>,
    /// Changes whenever a room is created anew, so ids from an earlier life are not trusted.
    epoch: u64,
    tx: RoomChannel,
    /// Keeps the channel open while no member is in the room.
    _keep_open: InactiveReceiver<EventRef>,
    state: Mutex<RoomState>,
}

#[derive(Debug)]
struct RoomState {
    next_id: u64,
    history: VecDeque<EventRef>,
    history_bytes: usize,
    members: HashMap<Arc<str>, Member>,
    /// When the last member left; the room that has been empty longest is evicted first.
    empty_since: Option<Instant>,
    published: u64,
}

impl RoomState {
    /// Whether connection `conn` holds `name` here.
    fn held_by(&self, name: &str, conn: u64) -> bool {
        matches!(self.members.get(name), Some(m) if m.conn == conn)
    }
}

#[derive(Debug)]
struct Member {
    conn: u64,
    token: String,
    evictor: Evictor,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a hub lock leaves consistent data (every update is a single step
    // after its checks), so poisoning is not a reason to take the server down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    pub fn new(config: HubConfig) -> Self {
        Self {
            config,
            rooms: Mutex::new(HashMap::new()),
        }
    }

    /// Enters `req.name` into `req.room`, creating the room if needed.
    pub fn join(&self, req: JoinRequest<'_>) -> Result<Joined, HubError> {
        let room = self.room_for_join(req.room)?;
        let mut st = lock(&room.state);
        let token = match st.members.get(req.name) {
            Some(m) if m.conn == req.conn => return Err(HubError::AlreadyJoined),
            Some(m) if req.token.is_some_and(|t| same_token(t, &m.token)) => {
                // A resume: the old connection is probably half dead. It loses the room quietly
                // (no presence: the person never left) and is told so if it is still there.
                let old = st.members.remove(req.name).expect("checked above");
                old.evictor.evict(room.name.clone());
                new_token()
            }
            Some(_) => return Err(HubError::NameTaken),
            None => {
                if st.members.len() < self.config.presence_cap {
                    let frame = PresenceFrame {
                        room: &room.name,
                        name: req.name,
                        event: "joined",
                    };
                    broadcast(&room.tx, 0, protocol::to_text(&frame), None);
                }
                new_token()
            }
        };
        let name: Arc<str> = req.name.into();
        st.members.insert(
            name.clone(),
            Member {
                conn: req.conn,
                token: token.clone(),
                evictor: req.evictor,
            },
        );
        st.empty_since = None;
        let rx = room.tx.new_receiver();

        let last_id = st.next_id - 1;
        let oldest = st.history.front().map_or(st.next_id, |e| e.id);
        let max = self.config.page_messages;
        let (history, recovered, more, members) = if !req.snapshot {
            (Vec::new(), false, false, Vec::new())
        } else {
            let (page, recovered) = match req.since {
                Some(since) if req.epoch == Some(room.epoch) && since <= last_id => {
                    (Page::Since(since), since + 1 >= oldest)
                }
                _ => (Page::Before(u64::MAX), false),
            };
            let (history, more) = page_of(&st.history, page, max, self.config.page_bytes);
            let members: Vec<Arc<str>> = st
                .members
                .keys()
                .take(self.config.presence_cap)
                .cloned()
                .collect();
            (history, recovered, more, members)
        };
        let member_count = st.members.len();
        drop(st);
        Ok(Joined {
            room: room.name.clone(),
            rx,
            name,
            epoch: room.epoch,
            token,
            members,
            member_count,
            history,
            recovered,
            last_id,
            more,
        })
    }

    /// A page of `room`'s history for `name` (held by `conn`), at most `limit` messages and
    /// never more than the page caps.
    pub fn history(
        &self,
        room: &str,
        name: &str,
        conn: u64,
        page: Page,
        limit: usize,
    ) -> Result<HistoryPage, HubError> {
        let room = self.room(room).ok_or(HubError::NotInRoom)?;
        let st = lock(&room.state);
        if !st.held_by(name, conn) {
            return Err(HubError::NotInRoom);
        }
        let max = limit.min(self.config.page_messages);
        let (messages, more) = page_of(&st.history, page, max, self.config.page_bytes);
        drop(st);
        Ok(HistoryPage {
            room: room.name.clone(),
            messages,
            more,
        })
    }

    fn room(&self, name: &str) -> Option<Arc<Room>> {
        lock(&self.rooms).get(name).cloned()
    }

    /// Removes `name` from `room` if connection `conn` holds it. Idempotent.
    pub fn leave(&self, room: &str, name: &str, conn: u64) {
        let Some(room) = self.room(room) else {
            return;
        };
        let mut st = lock(&room.state);
        if !st.held_by(name, conn) {
            return;
        }
        st.members.remove(name);
        if st.members.is_empty() {
            st.empty_since = Some(Instant::now());
        }
        if st.members.len() < self.config.presence_cap {
            let frame = PresenceFrame {
                room: &room.name,
                name,
                event: "left",
            };
            broadcast(&room.tx, 0, protocol::to_text(&frame), None);
        }
    }

    /// Publishes a message from `name` (held by `conn`) to everyone in `room`; returns its id.
    pub fn say(
        &self,
        room: &str,
        name: &str,
        conn: u64,
        text: &str,
        reference: Option<&str>,
    ) -> Result<u64, HubError> {
        let room = self.room(room).ok_or(HubError::NotInRoom)?;
        let mut st = lock(&room.state);
        if !st.held_by(name, conn) {
            return Err(HubError::NotInRoom);
        }
        let id = st.next_id;
        st.next_id += 1;
        st.published += 1;
        let json = protocol::to_text(&MessageFrame {
            room: &room.name,
            id,
            from: name,
            text,
            ts: unix_millis(),
            reference,
        });
        let seed = (&*room.name == SEED_ROOM).then(|| Utf8Bytes::from(format!("{name}: {text}")));
        let event = broadcast(&room.tx, id, json, seed);
        st.history_bytes += event.bytes();
        st.history.push_back(event);
        while st.history.len() > self.config.history
            || (st.history_bytes > self.config.history_bytes && st.history.len() > 1)
        {
            // unwrap: the loop condition says history is not empty.
            let old = st.history.pop_front().unwrap();
            st.history_bytes -= old.bytes();
        }
        Ok(id)
    }

    /// Counts rooms, members and receivers.
    pub fn stats(&self) -> HubStats {
        let rooms: Vec<Arc<Room>> = lock(&self.rooms).values().cloned().collect();
        let mut stats = HubStats {
            rooms: rooms.len(),
            ..HubStats::default()
        };
        for room in rooms {
            let st = lock(&room.state);
            stats.members += st.members.len();
            stats.messages += st.published;
            stats.receivers += room.tx.receiver_count();
        }
        stats
    }

    /// Finds or creates a room, evicting the longest-empty room when the hub is full.
    fn room_for_join(&self, name: &str) -> Result<Arc<Room>, HubError> {
        let mut rooms = lock(&self.rooms);
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        if rooms.len() >= self.config.max_rooms {
            let victim = rooms
                .iter()
                .filter_map(|(k, r)| lock(&r.state).empty_since.map(|t| (t, k.clone())))
                .min()
                .map(|(_, k)| k)
                .ok_or(HubError::ServerFull)?;
            rooms.remove(&victim);
        }
        // A receiver that falls behind loses the oldest events (and is then closed as a slow
        // consumer) instead of making the publisher wait.
        let (tx, keep_open) =
            RoomChannel::new(self.config.room_buffer, self.config.room_buffer_bytes);
        let name: Arc<str> = name.into();
        let room = Arc::new(Room {
            name: name.clone(),
            epoch: random_epoch(),
            tx,
            _keep_open: keep_open,
            state: Mutex::new(RoomState {
                next_id: 1,
                history: VecDeque::new(),
                history_bytes: 0,
                members: HashMap::new(),
                empty_since: Some(Instant::now()),
                published: 0,
            }),
        });
        rooms.insert(name, room.clone());
        Ok(room)
    }
}

/// Up to `max` messages of `history` (and `max_bytes` of their JSON, though always one when
/// there is one, so that paging makes progress) from where `page` says, oldest first; and
/// whether the caps left out messages in that direction.
fn page_of(
    history: &VecDeque<EventRef>,
    page: Page,
    max: usize,
    max_bytes: usize,
) -> (Vec<EventRef>, bool) {
    // Takes from `events` (in the page's direction) while the caps allow.
    let take = |events: &mut dyn Iterator<Item = &EventRef>| {
        let (mut taken, mut bytes) = (Vec::<EventRef>::new(), 0);
        for e in events {
            if taken.len() >= max || (!taken.is_empty() && bytes + e.json.len() > max_bytes) {
                return (taken, true);
            }
            bytes += e.json.len();
            taken.push(e.clone());
        }
        (taken, false)
    };
    match page {
        Page::Since(since) => {
            let from = history.partition_point(|e| e.id <= since);
            take(&mut history.range(from..))
        }
        Page::Before(before) => {
            let to = history.partition_point(|e| e.id < before);
            let (mut taken, more) = take(&mut history.range(..to).rev());
            taken.reverse();
            (taken, more)
        }
    }
}

/// Sends an event to every receiver without waiting; returns it for history.
fn broadcast(tx: &RoomChannel, id: u64, json: String, seed: Option<Utf8Bytes>) -> EventRef {
    let event = Arc::new(Event {
        id,
        json: json.into(),
        seed,
    });
    tx.try_broadcast(event.clone());
    event
}

/// `N` bytes from the OS CSPRNG.
fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // unwrap: getrandom fails only where the OS has no CSPRNG (or before Linux seeds it at
    // boot, which it waits out); there is no safe token without one.
    getrandom::fill(&mut b).expect("the OS random number generator");
    b
}

/// A resume token: 128 bits from the OS CSPRNG, hex. Whoever holds it can take the name back,
/// so it must not be predictable from other tokens or from the room epochs clients see.
fn new_token() -> String {
    let mut s = String::with_capacity(32);
    for b in random::<16>() {
        // unwrap: writing into a String cannot fail.
        std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}")).unwrap();
    }
    s
}

/// A room epoch: random, so that a room created again after eviction does not look like its
/// old self to a resuming client; below 2^53 so that JavaScript reads it exactly.
fn random_epoch() -> u64 {
    (u64::from_le_bytes(random::<8>()) >> 11).max(1)
}

/// Compares a presented token with the member's in constant time (no early exit that would let
/// a client learn a token byte by byte from response times).
fn same_token(given: &str, held: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    given.len() == held.len() && bool::from(given.as_bytes().ct_eq(held.as_bytes()))
}
