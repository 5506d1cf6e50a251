//! This node's rooms: local members and fan-out to their connections.
//!
//! Connections call [`Hub::join`], [`Hub::say`], [`Hub::history`], [`Hub::leave`] and
//! [`Hub::disconnect`]. Names, positions and history belong to the [`broker::Broker`] below;
//! the hub keeps, per room this node has members in, the broadcast channel and which local
//! connection holds which name. Every publication comes back from the broker through
//! [`broker::Deliver`], is rendered once ([`crate::protocol::Wire`]) and queued for every local
//! receiver without waiting.
//!
//! Lock order: the room map, then one room's members; the hub calls the broker holding neither
//! (except `unsubscribe` at eviction and `idle`, which never call back or wait).
//! A room is *pinned* while a join is under way and *idle* when it has neither members nor
//! pins; idle rooms are kept in the order they went idle, so eviction at `--max-rooms` takes
//! the longest-idle one in O(log n), and a pinned room is never evicted under a joiner.

pub mod broker;
pub mod channel;
pub mod heat;
pub mod position;
pub mod presence_batch;
pub mod record;
pub mod redis;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use async_broadcast::{InactiveReceiver, Receiver};
use serde::Serialize;

use self::broker::{Broker, BrokerError, Deliver, Delivery, NewMessage};
use self::channel::RoomChannel;
pub use self::channel::{Event, EventRef};
use self::position::{Epoch, StreamPosition, StreamState};
use self::record::{Publication, RoomEvent};
use crate::metrics::PassTally;
use crate::protocol::Wire;

/// How the hub tells a connection that a resume took its place in a room.
pub trait Evict: Send + Sync + std::fmt::Debug {
    fn evict(&self, room: Arc<str>);
}

/// Members a direct-write pass task takes at least (see [`Room::push`]).
const PASS_CHUNK: usize = 512;

/// What a connection gives the hub with each join.
pub type Evictor = Arc<dyn Evict>;

/// How the hub hands a room's new events to a member right after queueing them: a connection
/// whose writer is idle writes them to its socket there and then (`conn::direct`), so a
/// delivery does not wait for (or cost) a wake-up of the connection's task.
pub trait Push: Send + Sync + std::fmt::Debug {
    /// `pass` sums what the writes add to the metrics, for the whole pass.
    fn push(&self, room: &str, commits: &store::Commits, pass: &mut PassTally);
    /// Loads what [`Push::push`] will read into the cache, with plain loads only (see
    /// [`push_all`]).
    fn warm(&self) {}
}

/// A member's [`Push`], if it takes direct writes.
pub type Pusher = Arc<dyn Push>;

/// Sizes the hub works within (from [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub max_rooms: usize,
    pub room_buffer: usize,
    pub room_buffer_bytes: usize,
    pub presence_cap: usize,
    /// Most messages one `joined` or `history` page holds.
    pub page_messages: usize,
    /// Most bytes of messages one page holds (a single larger message still goes alone).
    pub page_bytes: usize,
    /// How long a name stays reserved for its token after its connection went away.
    pub name_grace: Duration,
    /// Stamp each event with the time it is rendered (for the fan-out histogram).
    pub timestamps: bool,
    /// How long a room's direct writes wait for more events to send with them (0: none).
    pub write_delay: Duration,
    /// How long a hot room's direct writes wait (see [`heat`]; 0: no longer than others').
    pub hot_write_delay: Duration,
    /// Tasks a big room's direct-write pass is split over: the executor's threads.
    pub pass_tasks: usize,
    /// Presence changes of a room within this long go out together (0: each at once); see
    /// [`presence_batch`]. Whoever runs the hub calls [`Hub::flush_presence`] this often.
    pub presence_window: Duration,
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
    pub pusher: Option<Pusher>,
    /// Whether the joiner wants members and history (a seed connection shows neither).
    pub snapshot: bool,
}

/// A successful join: the receiver for live events, and what the `joined` frame sent before any
/// of them says. The receiver was made before the history was read, so a live message may also
/// be in `history`: the connection drops live messages at or below `state.last`.
#[derive(Debug)]
pub struct Joined {
    pub room: Arc<str>,
    pub rx: Receiver<EventRef>,
    pub name: Arc<str>,
    pub state: StreamState,
    pub token: String,
    /// At most the presence cap; empty without a snapshot.
    pub members: Vec<Arc<str>>,
    /// The presence sequence number `members` was read at: later changes are live.
    pub presence_version: u64,
    pub member_count: usize,
    /// Messages, oldest first, within the page caps; empty without a snapshot.
    pub history: Vec<Arc<Publication>>,
    pub recovered: bool,
    /// The caps cut `history`.
    pub more: bool,
    /// The newest commit ticket when the history was read: the frame waits until it is durable.
    pub ticket: u64,
}

impl Joined {
    /// About the size of its `joined` frame, without building it.
    pub fn frame_bytes(&self) -> usize {
        let names: usize = self.members.iter().map(|n| n.len() + 3).sum();
        let history: usize = self.history.iter().map(|p| p.bytes() + 1).sum();
        256 + self.room.len() + self.name.len() + names + history
    }
}

/// Where a history page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The messages after this offset, oldest first.
    Since(u64),
    /// The messages just before this offset (the newest of them).
    Before(u64),
}

/// A page of history, oldest first; `more` when the caps cut it.
#[derive(Debug)]
pub struct HistoryPage {
    pub room: Arc<str>,
    pub messages: Vec<Arc<Publication>>,
    pub more: bool,
    /// The newest commit ticket when it was read: the frame waits until it is durable.
    pub ticket: u64,
}

impl HistoryPage {
    /// About the size of its `history` frame.
    pub fn frame_bytes(&self) -> usize {
        64 + self.room.len() + self.messages.iter().map(|p| p.bytes() + 1).sum::<usize>()
    }
}

/// Why a join, say or history request was refused (each maps to an `error` frame code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error("that name is taken in this room")]
    NameTaken,
    #[error("you are already in this room")]
    AlreadyJoined,
    #[error("the server holds its maximum number of rooms")]
    ServerFull,
    #[error("you are not in this room")]
    NotInRoom,
    /// History cannot be kept or read right now; nothing was published.
    #[error("the message store is unavailable; try again later")]
    Unavailable(String),
}

impl From<BrokerError> for HubError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::NameTaken => HubError::NameTaken,
            BrokerError::AlreadyJoined => HubError::AlreadyJoined,
            BrokerError::Unavailable(e) => {
                log::warn!("{e}");
                HubError::Unavailable(e.to_string())
            }
            BrokerError::Unreachable(e) => {
                log::debug!("{e}");
                HubError::Unavailable(e)
            }
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

/// This node's rooms.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    broker: Arc<dyn Broker>,
    rooms: Mutex<Rooms>,
    published: AtomicU64,
    presence: presence_batch::PresenceBatches,
}

#[derive(Debug, Default)]
struct Rooms {
    map: HashMap<Arc<str>, Arc<Room>>,
    /// Idle rooms by when they went idle (a sequence number).
    idle: BTreeMap<u64, Arc<str>>,
    seq: u64,
}

#[derive(Debug)]
struct Room {
    name: Arc<str>,
    tx: RoomChannel,
    /// Keeps the channel open while no member is in the room.
    _keep_open: InactiveReceiver<EventRef>,
    /// Changed only under the room map's lock (so pin, idle and evict agree).
    slot: Mutex<Slot>,
    members: Mutex<HashMap<Arc<str>, Member>>,
    /// A [`Room::push`] is scheduled and has not started.
    push_scheduled: AtomicBool,
    /// The room may have a presence batch held back (set under the batches' lock): a message
    /// sends it first, so no one reads a message before the join of the one who sent it.
    presence_held: AtomicBool,
    /// See [`Room::pushers`]. Lock order: `members`, then this.
    pushers: Mutex<Option<Arc<[Pusher]>>>,
    /// Its message rate, for `--hot-write-delay`.
    heat: Mutex<heat::Heat>,
}

#[derive(Debug, Default)]
struct Slot {
    /// Joins under way.
    pins: usize,
    /// Its key in `Rooms::idle`, when idle.
    idle: Option<u64>,
}

#[derive(Debug)]
struct Member {
    conn: u64,
    evictor: Evictor,
    pusher: Option<Pusher>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a hub lock leaves consistent data (every update is a single step
    // after its checks), so poisoning is not a reason to take the server down.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Room {
    /// Has [`Room::push`] run soon (after `--write-delay`, or `--hot-write-delay` when `hot`),
    /// once for however many events come before it runs: like uWebSockets' drain at the end of
    /// its loop iteration, the events published meanwhile (by other senders, or while the last
    /// pass was writing) go to each socket in one write.
    fn schedule_push(self: &Arc<Self>, broker: &Arc<dyn Broker>, config: &HubConfig, hot: bool) {
        if self.push_scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (room, broker) = (self.clone(), broker.clone());
        let delay = if hot {
            config.write_delay.max(config.hot_write_delay)
        } else {
            config.write_delay
        };
        let tasks = config.pass_tasks;
        async_std::task::spawn(async move {
            if !delay.is_zero() {
                async_io::Timer::after(delay).await;
            }
            // Cleared before the pass: an event queued during it schedules the next one.
            room.push_scheduled.store(false, Ordering::Release);
            room.push(&broker, tasks);
        });
    }

    /// The members that take direct writes, kept between passes until the members change (a
    /// pass then costs one reference count, not one per member).
    fn pushers(&self) -> Arc<[Pusher]> {
        // Under the members lock, so that no change slips between the read and the cache.
        let members = lock(&self.members);
        let mut cached = lock(&self.pushers);
        if let Some(p) = &*cached {
            return p.clone();
        }
        let fresh: Arc<[Pusher]> = members.values().filter_map(|m| m.pusher.clone()).collect();
        *cached = Some(fresh.clone());
        fresh
    }

    /// The member list changed (its lock is held): the next pass reads it again.
    fn members_changed(&self) {
        *lock(&self.pushers) = None;
    }

    /// Hands the room's newest events to the members that take direct writes, split over up to
    /// `tasks` tasks of at least [`PASS_CHUNK`] members, so that a big room's writes use every
    /// executor thread. The member list is copied out first: writing to sockets under the
    /// members lock would hold up joins.
    fn push(&self, broker: &Arc<dyn Broker>, tasks: usize) {
        let pushers = self.pushers();
        let parts = (pushers.len() / PASS_CHUNK).clamp(1, tasks.max(1));
        let size = pushers.len().div_ceil(parts);
        for k in 1..parts {
            let (pushers, broker, name) = (pushers.clone(), broker.clone(), self.name.clone());
            async_std::task::spawn(async move {
                let end = pushers.len().min((k + 1) * size);
                push_all(&pushers[k * size..end], &name, broker.commits());
            });
        }
        push_all(
            &pushers[..size.min(pushers.len())],
            &self.name,
            broker.commits(),
        );
    }
}

/// Pushes to each of `pushers`, [`WARM`] at a time, each group's handles loaded into the cache
/// together first: each member's state is its own allocation, and loading it one member after
/// another was a cache miss per delivery (the lock's compare-and-swap took half of
/// `Direct::push`'s samples). Plain loads with no locked instruction between them are in flight
/// at once; a lock or a send between them would wait for each.
fn push_all(pushers: &[Pusher], room: &str, commits: &store::Commits) {
    let mut pass = PassTally::default();
    for group in pushers.chunks(WARM) {
        for p in group {
            p.warm();
        }
        pass.next_group();
        for p in group {
            p.push(room, commits, &mut pass);
        }
    }
    pass.finish();
}

/// Members whose handles are loaded together (see [`push_all`]).
const WARM: usize = 16;

impl Rooms {
    /// Marks `room` idle if it has neither members nor pins (`members` is its locked list);
    /// true when it went idle just now.
    fn maybe_idle(&mut self, room: &Room, members: &HashMap<Arc<str>, Member>) -> bool {
        let mut slot = lock(&room.slot);
        if slot.pins == 0 && members.is_empty() && slot.idle.is_none() {
            self.seq += 1;
            slot.idle = Some(self.seq);
            self.idle.insert(self.seq, room.name.clone());
            return true;
        }
        false
    }
}

/// How a member goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// On purpose: the name is free at once.
    Leave,
    /// Its connection went away: the name waits out the grace for its token.
    Gone,
}

impl Hub {
    /// A hub over `broker`, which delivers to it from now on.
    pub fn new(config: HubConfig, broker: Arc<dyn Broker>) -> Arc<Self> {
        let hub = Arc::new(Self {
            presence: presence_batch::PresenceBatches::new(config.presence_window),
            config,
            broker,
            rooms: Mutex::default(),
            published: AtomicU64::new(0),
        });
        let weak: Weak<Hub> = Arc::downgrade(&hub);
        hub.broker.attach(weak);
        hub
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Enters `req.name` into `req.room`, creating the room here if needed.
    pub async fn join(&self, req: JoinRequest<'_>) -> Result<Joined, HubError> {
        let room = self.pin(req.room)?;
        let joined = self.join_pinned(&room, req).await;
        let mut rooms = lock(&self.rooms);
        lock(&room.slot).pins -= 1;
        if rooms.maybe_idle(&room, &lock(&room.members)) {
            self.broker.idle(&room.name);
        }
        joined
    }

    async fn join_pinned(
        &self,
        room: &Arc<Room>,
        req: JoinRequest<'_>,
    ) -> Result<Joined, HubError> {
        self.broker.subscribe(&room.name).await?;
        let name: Arc<str> = req.name.into();
        let claim = self
            .broker
            .presence_add(&room.name, &name, req.conn, req.token)
            .await?;
        let rx = {
            let mut members = lock(&room.members);
            if let Some(old) = members
                .get(&name)
                .filter(|m| Some(m.conn) == claim.replaced)
            {
                // A resume: the old connection is probably half dead. It loses the room quietly
                // (no presence: the person never left) and is told so if it is still there.
                old.evictor.evict(room.name.clone());
            }
            room.members_changed();
            members.insert(
                name.clone(),
                Member {
                    conn: req.conn,
                    evictor: req.evictor.clone(),
                    pusher: req.pusher.clone(),
                },
            );
            room.tx.new_receiver()
        };
        // After the receiver exists: every message is in the history read or in `rx`.
        match self.snapshot(room, &req).await {
            // Read after the history: it covers every message in it.
            Ok((state, read, recovered, members)) => Ok(Joined {
                room: room.name.clone(),
                rx,
                name,
                state,
                token: claim.token,
                member_count: members.count,
                presence_version: members.version,
                members: members.names,
                history: read.messages,
                recovered,
                more: read.more,
                ticket: self.broker.commits().latest(),
            }),
            Err(e) => {
                self.depart(&room.name, &name, req.conn, Departure::Leave)
                    .await;
                Err(e)
            }
        }
    }

    /// What a join shows: the stream's state, the history page, whether it recovers the
    /// client's gap, and the members.
    async fn snapshot(
        &self,
        room: &Room,
        req: &JoinRequest<'_>,
    ) -> Result<(StreamState, store::Read, bool, broker::Names), HubError> {
        let (max, max_bytes) = if req.snapshot {
            (self.config.page_messages, self.config.page_bytes)
        } else {
            (0, 0)
        };
        let latest = Page::Before(u64::MAX);
        let first = self
            .broker
            .history(
                &room.name,
                req.since.map_or(latest, Page::Since),
                max,
                max_bytes,
            )
            .await?;
        let (state, read, recovered) = match (req.since, req.epoch) {
            (Some(since), Some(epoch)) if first.state.epoch == Epoch(epoch) => {
                let next = first.read.messages.first().map(|p| p.pos.offset);
                let recovered = first.state.recovers(since, Epoch(epoch), next);
                if since <= first.state.last {
                    (first.state, first.read, recovered)
                } else {
                    let again = self
                        .broker
                        .history(&room.name, latest, max, max_bytes)
                        .await?;
                    (again.state, again.read, false)
                }
            }
            (None, _) => (first.state, first.read, false),
            // Another life of the room (or no epoch given): the ids mean nothing here.
            _ => {
                let again = self
                    .broker
                    .history(&room.name, latest, max, max_bytes)
                    .await?;
                (again.state, again.read, false)
            }
        };
        let members = if req.snapshot {
            self.broker
                .presence_list(&room.name, self.config.presence_cap)
                .await
        } else {
            broker::Names::default()
        };
        let read = if req.snapshot {
            read
        } else {
            store::Read::default()
        };
        Ok((state, read, recovered, members))
    }

    /// The room `name`, created when this node has none, pinned against eviction.
    fn pin(&self, name: &str) -> Result<Arc<Room>, HubError> {
        let mut rooms = lock(&self.rooms);
        let room = match rooms.map.get(name) {
            Some(room) => room.clone(),
            None => {
                if rooms.map.len() >= self.config.max_rooms {
                    let (_, victim) = rooms.idle.pop_first().ok_or(HubError::ServerFull)?;
                    if let Some(old) = rooms.map.remove(&victim) {
                        lock(&old.slot).idle = None;
                    }
                    // Under the map lock, so that no new life of the room can start before the
                    // broker has let go of the old one.
                    self.broker.unsubscribe(&victim);
                }
                let room = Arc::new(self.new_room(name.into()));
                rooms.map.insert(room.name.clone(), room.clone());
                room
            }
        };
        let mut slot = lock(&room.slot);
        slot.pins += 1;
        if let Some(seq) = slot.idle.take() {
            rooms.idle.remove(&seq);
        }
        drop(slot);
        Ok(room)
    }

    fn new_room(&self, name: Arc<str>) -> Room {
        // A receiver that falls behind loses the oldest events (and is then closed as a slow
        // consumer) instead of making the publisher wait.
        let (tx, keep_open) =
            RoomChannel::new(self.config.room_buffer, self.config.room_buffer_bytes);
        Room {
            name,
            tx,
            _keep_open: keep_open,
            slot: Mutex::default(),
            members: Mutex::default(),
            push_scheduled: AtomicBool::new(false),
            presence_held: AtomicBool::new(false),
            pushers: Mutex::default(),
            heat: Mutex::default(),
        }
    }

    /// A page of `room`'s history for `name` (held by `conn`), at most `limit` messages and
    /// never more than the page caps.
    pub async fn history(
        &self,
        room: &str,
        name: &str,
        conn: u64,
        page: Page,
        limit: usize,
    ) -> Result<HistoryPage, HubError> {
        let room = self.held(room, name, conn)?.0;
        let max = limit.min(self.config.page_messages);
        let read = self
            .broker
            .history(&room.name, page, max, self.config.page_bytes)
            .await?
            .read;
        Ok(HistoryPage {
            room: room.name.clone(),
            messages: read.messages,
            more: read.more,
            // Read after the history: it covers every message in it.
            ticket: self.broker.commits().latest(),
        })
    }

    /// The room, and the member's name as the room keeps it, if `conn` holds `name` there.
    fn held(&self, room: &str, name: &str, conn: u64) -> Result<(Arc<Room>, Arc<str>), HubError> {
        let room = lock(&self.rooms)
            .map
            .get(room)
            .cloned()
            .ok_or(HubError::NotInRoom)?;
        let members = lock(&room.members);
        match members.get_key_value(name) {
            Some((name, m)) if m.conn == conn => {
                let name = name.clone();
                drop(members);
                Ok((room, name))
            }
            _ => Err(HubError::NotInRoom),
        }
    }

    /// `conn` leaves `room` on purpose; `left` goes out at once. Idempotent.
    pub async fn leave(&self, room: &str, name: &str, conn: u64) {
        self.depart(room, name, conn, Departure::Leave).await;
    }

    /// `conn` went away while in `room`: the name stays reserved for its token for the grace,
    /// and `left` goes out only if nobody resumes it. Idempotent.
    pub async fn disconnect(&self, room: &str, name: &str, conn: u64) {
        self.depart(room, name, conn, Departure::Gone).await;
    }

    async fn depart(&self, room: &str, name: &str, conn: u64, how: Departure) {
        let room = {
            let mut rooms = lock(&self.rooms);
            let Some(room) = rooms.map.get(room).cloned() else {
                return;
            };
            let mut members = lock(&room.members);
            if members.get(name).is_none_or(|m| m.conn != conn) {
                return;
            }
            members.remove(name);
            room.members_changed();
            if rooms.maybe_idle(&room, &members) {
                self.broker.idle(&room.name);
            }
            drop(members);
            room
        };
        match how {
            Departure::Gone if !self.config.name_grace.is_zero() => {
                let until = Instant::now() + self.config.name_grace;
                self.broker
                    .presence_detach(&room.name, name, conn, until)
                    .await;
            }
            _ => self.broker.presence_remove(&room.name, name, conn).await,
        }
    }

    /// Publishes a message from `name` (held by `conn`) to everyone in `room`.
    pub async fn say(
        &self,
        room: &str,
        name: &str,
        conn: u64,
        text: &str,
        reference: Option<&str>,
    ) -> Result<StreamPosition, HubError> {
        let (room, from) = self.held(room, name, conn)?;
        // Counted first: a direct write can put the message on its members' sockets (the
        // sender's echo too) before `publish` returns here.
        self.published.fetch_add(1, Ordering::Relaxed);
        let published = self
            .broker
            .publish(NewMessage {
                room: &room.name,
                from: &from,
                text,
                reference,
                origin: conn,
            })
            .await;
        if published.is_err() {
            self.published.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(published?)
    }

    /// Housekeeping, called a few times a second: ends name graces that ran out.
    pub async fn tick(&self, now: Instant) {
        self.broker.expire(now).await;
    }

    /// Sends the presence changes held back since the last flush, one event per room.
    pub fn flush_presence(&self, now: Instant) {
        let mut batches = self.presence.lock();
        for (room, batch) in batches.take(now) {
            self.send_presence(&room, batch);
        }
    }

    /// How often [`Self::flush_presence`] is to run (zero: never needed).
    pub fn presence_window(&self) -> Duration {
        self.presence.window()
    }

    fn send_presence(&self, name: &Arc<str>, batch: presence_batch::Batch) {
        let Some(room) = lock(&self.rooms).map.get(name).cloned() else {
            return;
        };
        room.tx.try_broadcast(Arc::new(Event {
            offset: 0,
            wire: batch.render(name),
            ticket: 0,
            origin: 0,
            presence: batch.number,
            reset: false,
            published: self.config.timestamps.then(Instant::now),
        }));
        room.schedule_push(&self.broker, &self.config, false);
    }

    /// Counts rooms, members and receivers.
    pub fn stats(&self) -> HubStats {
        let rooms: Vec<Arc<Room>> = lock(&self.rooms).map.values().cloned().collect();
        let mut stats = HubStats {
            rooms: rooms.len(),
            messages: self.published.load(Ordering::Relaxed),
            ..HubStats::default()
        };
        for room in rooms {
            stats.members += lock(&room.members).len();
            stats.receivers += room.tx.receiver_count();
        }
        stats
    }
}

impl Deliver for Hub {
    fn deliver(&self, d: Delivery) {
        if let RoomEvent::Presence {
            room,
            name,
            joined,
            count,
        } = &d.event
        {
            // Held for the room's presence batch; broadcast under its lock to keep the order.
            let mut batches = self.presence.lock();
            let now = Instant::now();
            match batches.add(room, name, *joined, d.presence, *count, now) {
                presence_batch::Added::Now(b) => self.send_presence(room, b),
                presence_batch::Added::Held => {
                    if let Some(r) = lock(&self.rooms).map.get(room) {
                        r.presence_held.store(true, Ordering::Release);
                    }
                }
            }
            return;
        }
        let (name, offset) = match &d.event {
            RoomEvent::Message(p) => (&p.room, p.pos.offset),
            RoomEvent::Presence { room, .. } => (room, 0),
        };
        let Some(room) = lock(&self.rooms).map.get(name).cloned() else {
            return;
        };
        // Only a room with a held batch takes the hub-wide batches' lock here.
        if room.presence_held.swap(false, Ordering::AcqRel) {
            let mut batches = self.presence.lock();
            if let Some(b) = batches.take_room(name, Instant::now()) {
                self.send_presence(name, b);
            }
        }
        let now = Instant::now();
        let event = Arc::new(Event {
            offset,
            wire: Wire::render(&d.event),
            ticket: d.ticket,
            origin: d.origin,
            presence: d.presence,
            reset: false,
            published: self.config.timestamps.then_some(now),
        });
        room.tx.try_broadcast(event);
        let hot = !self.config.hot_write_delay.is_zero() && lock(&room.heat).event(now);
        room.schedule_push(&self.broker, &self.config, hot);
    }

    fn reset(&self, name: &Arc<str>) {
        let Some(room) = lock(&self.rooms).map.get(name).cloned() else {
            return;
        };
        room.tx.try_broadcast(Arc::new(Event {
            offset: 0,
            // Never shown: the writer closes on it.
            wire: Wire::default(),
            ticket: 0,
            origin: 0,
            presence: 0,
            reset: true,
            published: None,
        }));
        room.schedule_push(&self.broker, &self.config, false);
    }

    fn replaced(&self, name: &Arc<str>, member: &str, conn: u64) {
        let mut rooms = lock(&self.rooms);
        let Some(room) = rooms.map.get(name).cloned() else {
            return;
        };
        let mut members = lock(&room.members);
        if let Some(m) = members.get(member).filter(|m| m.conn == conn) {
            m.evictor.evict(room.name.clone());
            members.remove(member);
            room.members_changed();
            if rooms.maybe_idle(&room, &members) {
                self.broker.idle(&room.name);
            }
        }
    }
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
pub(crate) fn new_token() -> String {
    hex(&random::<16>())
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // unwrap: writing into a String cannot fail.
        std::fmt::Write::write_fmt(&mut s, format_args!("{b:02x}")).unwrap();
    }
    s
}

/// Compares a presented token with the holder's in constant time (no early exit that would let
/// a client learn a token byte by byte from response times).
pub(crate) fn same_token(given: &str, held: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    given.len() == held.len() && bool::from(given.as_bytes().ct_eq(held.as_bytes()))
}

#[cfg(test)]
mod broker_contract;
#[cfg(test)]
mod tests;
