//! The broker: the one path every publication takes, and the authority on names in a room.
//!
//! [`Hub`](super::Hub) asks its broker to publish, to read history and to claim and release
//! names; the broker assigns each publication its [`StreamPosition`], keeps it, and hands it back
//! through [`Deliver`] for delivery to this node's members. Presence changes come back the same
//! way. So a broker that spans nodes (Redis, issue 11) changes nothing above this seam.
//! [`MemoryBroker`] is the single-node broker, over a [`HistoryStore`].
//!
//! Lock order: the hub never holds one of its locks while it calls the broker; the broker may
//! call [`Deliver::deliver`] while it holds its own (that is how a room's order is kept).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Instant;

use super::position::{StreamPosition, StreamState};
use super::record::{unix_millis, Publication, RoomEvent};
use super::store::{Commits, HistoryStore, Read, StoreError};
use super::Page;

/// Where a broker hands publications and presence changes for local delivery.
pub trait Deliver: Send + Sync {
    fn deliver(&self, d: Delivery);

    /// This node cannot prove that its members of `room` got every message (a broker that
    /// spans nodes lost its feed and the stream cannot fill the gap): they are to resume.
    fn reset(&self, room: &Arc<str>);

    /// A resume elsewhere took `name` in `room` from local connection `conn`.
    fn replaced(&self, room: &Arc<str>, name: &str, conn: u64);
}

/// One event for this node's members of a room.
#[derive(Debug)]
pub struct Delivery {
    pub event: RoomEvent,
    /// The commit ticket the sender's echo waits for (0: nothing to wait for).
    pub ticket: u64,
    /// The connection that caused it (0 for none).
    pub origin: u64,
    /// A presence change's place in the room's presence sequence (0: unnumbered). A joiner
    /// skips changes at or below the [`Names::version`] its member list was read at (the hub
    /// holds changes back for a presence window, so a joiner's receiver may get changes from
    /// before its list).
    pub presence: u64,
}

/// A message to publish.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    pub room: &'a Arc<str>,
    pub from: &'a Arc<str>,
    pub text: &'a str,
    pub reference: Option<&'a str>,
    /// The sending connection.
    pub origin: u64,
}

/// A name claimed in a room.
#[derive(Debug)]
pub struct Claim {
    pub token: String,
    /// The connection that held the name until this resume took it (it is to be told so).
    pub replaced: Option<u64>,
}

/// A history read with the stream's state at that moment.
#[derive(Debug)]
pub struct HistoryRead {
    pub state: StreamState,
    pub read: Read,
}

/// Why the broker refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("that name is taken in this room")]
    NameTaken,
    #[error("you are already in this room")]
    AlreadyJoined,
    /// The store cannot take or give messages now.
    #[error("{0}")]
    Unavailable(#[from] StoreError),
    /// The broker's Redis did not answer; the message names it.
    #[error("{0}")]
    Unreachable(String),
}

/// Names in a room, at most `max`, and how many there are.
#[derive(Debug, Default)]
pub struct Names {
    pub names: Vec<Arc<str>>,
    pub count: usize,
    /// The room's presence sequence number this list was read at (0: unnumbered).
    pub version: u64,
}

#[async_trait::async_trait]
pub trait Broker: Send + Sync + fmt::Debug {
    /// Where deliveries go from now on.
    fn attach(&self, sink: Weak<dyn Deliver>);

    /// This node has members in `room` (again); deliveries for it start.
    async fn subscribe(&self, room: &Arc<str>) -> Result<(), BrokerError>;

    /// This node let go of `room` (evicted at `--max-rooms`).
    fn unsubscribe(&self, room: &str);

    /// This node has no members left in `room` (it stays in memory until evicted). A broker
    /// that spans nodes stops taking the room's live events; a later join subscribes again.
    fn idle(&self, _room: &str) {}

    /// Publishes `msg` and returns its position. The memory broker has handed it to [`Deliver`]
    /// by then; a broker that spans nodes hands it over when it comes back from the network.
    async fn publish(&self, msg: NewMessage<'_>) -> Result<StreamPosition, BrokerError>;

    /// A page of `room`'s history and the stream's state when it was read.
    async fn history(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        max_bytes: usize,
    ) -> Result<HistoryRead, BrokerError>;

    /// Claims `name` in `room` for connection `conn`: a free name, or one whose `token` is
    /// presented (a resume, which takes it from the connection holding it, or ends its grace).
    async fn presence_add(
        &self,
        room: &Arc<str>,
        name: &Arc<str>,
        conn: u64,
        token: Option<&str>,
    ) -> Result<Claim, BrokerError>;

    /// `conn` left `room` on purpose: the name is free at once (`left` goes out).
    async fn presence_remove(&self, room: &Arc<str>, name: &str, conn: u64);

    /// `conn` went away without leaving: the name stays reserved for its token until `until`,
    /// and `left` goes out only if nobody resumed it by then.
    async fn presence_detach(&self, room: &Arc<str>, name: &str, conn: u64, until: Instant);

    /// The names in `room`.
    async fn presence_list(&self, room: &str, max: usize) -> Names;

    /// Ends the graces that ran out by `now`.
    async fn expire(&self, now: Instant);

    /// Commit tickets (what a sender's echo waits for).
    fn commits(&self) -> &Commits;

    /// A clean stop: everything durable, nothing more accepted.
    async fn close(&self) -> Result<(), BrokerError>;

    /// Whether the broker can take messages now (its store syncs, its Redis answers).
    fn ready(&self) -> bool {
        true
    }

    /// Messages its history store keeps, where the broker knows (for `/metrics`).
    fn history_messages(&self) -> Option<u64> {
        None
    }

    /// History store operations that failed since start (for `/metrics`).
    fn store_errors(&self) -> u64 {
        0
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below is a single step after its checks, so poisoning leaves consistent data.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The single-node broker: positions from the store, delivery straight to the local hub.
pub struct MemoryBroker {
    store: Arc<dyn HistoryStore>,
    commits: Arc<Commits>,
    /// Rooms with more members than this send no presence events.
    presence_cap: usize,
    sink: OnceLock<Weak<dyn Deliver>>,
    /// Each subscribed room's stream, behind the lock that orders its publications.
    streams: Mutex<HashMap<Arc<str>, Arc<Mutex<StreamState>>>>,
    presence: Mutex<Presence>,
    /// When the store's age retention is applied next.
    next_expiry: Mutex<Instant>,
    /// Store operations that failed (syncs are counted by `commits`).
    store_errors: AtomicU64,
}

/// How often the store's `--history-age` is applied to the rooms in memory.
const STORE_EXPIRY: std::time::Duration = std::time::Duration::from_secs(1);

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Presence {
    rooms: HashMap<Arc<str>, HashMap<Arc<str>, Holder>>,
    /// Graces by deadline: (until, room, name) -> the connection whose grace it is.
    graces: BTreeMap<(Instant, Arc<str>, Arc<str>), u64>,
    /// The number of the last presence change announced, in any room (one sequence for all
    /// rooms, so a room that empties and fills again never reuses a number).
    number: u64,
}

#[derive(Debug)]
struct Holder {
    conn: u64,
    token: String,
    /// In its grace until then (the connection is gone).
    detached: Option<Instant>,
}

impl MemoryBroker {
    pub fn new(store: Arc<dyn HistoryStore>, presence_cap: usize) -> Self {
        let commits = Arc::new(Commits::default());
        if store.durable() {
            commits.start(store.clone());
        }
        Self {
            store,
            commits,
            presence_cap,
            sink: OnceLock::new(),
            streams: Mutex::default(),
            presence: Mutex::default(),
            next_expiry: Mutex::new(Instant::now()),
            store_errors: AtomicU64::new(0),
        }
    }

    /// Counts a store operation's failure.
    fn counted<T>(&self, r: Result<T, StoreError>) -> Result<T, StoreError> {
        if r.is_err() {
            self.store_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    fn deliver(&self, d: Delivery) {
        if let Some(sink) = self.sink.get().and_then(Weak::upgrade) {
            sink.deliver(d);
        }
    }

    /// The room's stream, opened from the store on first use.
    fn stream(&self, room: &Arc<str>) -> Result<Arc<Mutex<StreamState>>, StoreError> {
        if let Some(s) = lock(&self.streams).get(room) {
            return Ok(s.clone());
        }
        // Opened outside the map lock: a durable store may read the disk.
        let state = self.counted(self.store.open(room))?;
        Ok(lock(&self.streams)
            .entry(room.clone())
            .or_insert_with(|| Arc::new(Mutex::new(state)))
            .clone())
    }

    /// Announces a change, under the presence lock (`number`, its sequence, is in the
    /// guarded state): the hub gets a room's changes in the order of their numbers. `before`
    /// is the room's member count without the name.
    fn presence_event(
        &self,
        number: &mut u64,
        room: &Arc<str>,
        name: &Arc<str>,
        joined: bool,
        before: usize,
    ) {
        if before < self.presence_cap {
            *number += 1;
            self.deliver(Delivery {
                event: RoomEvent::Presence {
                    room: room.clone(),
                    name: name.clone(),
                    joined,
                    count: Some(before + usize::from(joined)),
                },
                ticket: 0,
                origin: 0,
                presence: *number,
            });
        }
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        // The committer holds the store: let it finish what is appended, then go.
        self.commits.stop();
    }
}

#[async_trait::async_trait]
impl Broker for MemoryBroker {
    fn attach(&self, sink: Weak<dyn Deliver>) {
        let _ = self.sink.set(sink);
    }

    async fn subscribe(&self, room: &Arc<str>) -> Result<(), BrokerError> {
        self.stream(room)?;
        Ok(())
    }

    fn unsubscribe(&self, room: &str) {
        lock(&self.streams).remove(room);
        self.store.forget(room);
    }

    async fn publish(&self, msg: NewMessage<'_>) -> Result<StreamPosition, BrokerError> {
        if self.commits.failing() {
            // After a failed fsync the OS may have dropped the unsynced pages: nothing new is
            // accepted (and acknowledged as durable) until a sync works again.
            return Err(StoreError::Failed("the disk does not sync".into()).into());
        }
        let stream = self.stream(msg.room)?;
        let mut state = lock(&stream);
        let pos = StreamPosition::new(state.last + 1, state.epoch);
        let p = Arc::new(Publication {
            room: msg.room.clone(),
            pos,
            from: msg.from.clone(),
            text: msg.text.into(),
            ts: unix_millis(),
            reference: msg.reference.map(Into::into),
        });
        self.counted(self.store.append(&p))?;
        state.last = pos.offset;
        let ticket = if self.store.durable() {
            self.commits.appended()
        } else {
            0
        };
        // Still under the stream lock: local members get the room's messages in offset order.
        self.deliver(Delivery {
            event: RoomEvent::Message(p),
            ticket,
            origin: msg.origin,
            presence: 0,
        });
        Ok(pos)
    }

    async fn history(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        max_bytes: usize,
    ) -> Result<HistoryRead, BrokerError> {
        let stream = self.stream(room)?;
        let state = lock(&stream);
        let read = self.counted(self.store.read(room, page, max, max_bytes))?;
        Ok(HistoryRead {
            state: *state,
            read,
        })
    }

    async fn presence_add(
        &self,
        room: &Arc<str>,
        name: &Arc<str>,
        conn: u64,
        token: Option<&str>,
    ) -> Result<Claim, BrokerError> {
        let mut guard = lock(&self.presence);
        let Presence {
            rooms,
            graces,
            number,
        } = &mut *guard;
        let names = rooms.entry(room.clone()).or_default();
        let fresh = super::new_token();
        match names.get_mut(name) {
            Some(h) if h.conn == conn && h.detached.is_none() => Err(BrokerError::AlreadyJoined),
            Some(h) if token.is_some_and(|t| super::same_token(t, &h.token)) => {
                // A resume: no presence change for the others (the person never left).
                let replaced = match h.detached.take() {
                    Some(until) => {
                        graces.remove(&(until, room.clone(), name.clone()));
                        None
                    }
                    None => Some(h.conn),
                };
                h.conn = conn;
                h.token = fresh.clone();
                Ok(Claim {
                    token: fresh,
                    replaced,
                })
            }
            Some(_) => Err(BrokerError::NameTaken),
            None => {
                names.insert(
                    name.clone(),
                    Holder {
                        conn,
                        token: fresh.clone(),
                        detached: None,
                    },
                );
                let count = names.len() - 1;
                self.presence_event(number, room, name, true, count);
                Ok(Claim {
                    token: fresh,
                    replaced: None,
                })
            }
        }
    }

    async fn presence_remove(&self, room: &Arc<str>, name: &str, conn: u64) {
        let mut guard = lock(&self.presence);
        let Some(names) = guard.rooms.get_mut(room) else {
            return;
        };
        if names.get(name).is_none_or(|h| h.conn != conn) {
            return;
        }
        let Some((name, h)) = names.remove_entry(name) else {
            return;
        };
        let count = names.len();
        if count == 0 {
            guard.rooms.remove(room);
        }
        if let Some(until) = h.detached {
            guard.graces.remove(&(until, room.clone(), name.clone()));
        }
        self.presence_event(&mut guard.number, room, &name, false, count);
    }

    async fn presence_detach(&self, room: &Arc<str>, name: &str, conn: u64, until: Instant) {
        let mut guard = lock(&self.presence);
        let Presence { rooms, graces, .. } = &mut *guard;
        let Some(names) = rooms.get_mut(room) else {
            return;
        };
        let Some(key) = names.get_key_value(name).map(|(k, _)| k.clone()) else {
            return;
        };
        // unwrap: found just above, under the same lock.
        let h = names.get_mut(name).unwrap();
        if h.conn == conn && h.detached.is_none() {
            h.detached = Some(until);
            graces.insert((until, room.clone(), key), conn);
        }
    }

    async fn presence_list(&self, room: &str, max: usize) -> Names {
        let guard = lock(&self.presence);
        let Some(names) = guard.rooms.get(room) else {
            return Names {
                version: guard.number,
                ..Names::default()
            };
        };
        Names {
            names: names.keys().take(max).cloned().collect(),
            count: names.len(),
            version: guard.number,
        }
    }

    async fn expire(&self, now: Instant) {
        {
            let mut next = lock(&self.next_expiry);
            if now >= *next {
                *next = now + STORE_EXPIRY;
                if let Err(e) = self.counted(self.store.expire(unix_millis())) {
                    log::warn!("history retention: {e}");
                }
            }
        }
        loop {
            let mut guard = lock(&self.presence);
            let Some(((until, room, name), conn)) = guard.graces.first_key_value() else {
                return;
            };
            if *until > now {
                return;
            }
            let (room, name, conn) = (room.clone(), name.clone(), *conn);
            let until = *until;
            guard.graces.remove(&(until, room.clone(), name.clone()));
            let Some(names) = guard.rooms.get_mut(&room) else {
                continue;
            };
            if !names
                .get(&name)
                .is_some_and(|h| h.conn == conn && h.detached == Some(until))
            {
                continue;
            }
            names.remove(&name);
            let count = names.len();
            if count == 0 {
                guard.rooms.remove(&room);
            }
            self.presence_event(&mut guard.number, &room, &name, false, count);
        }
    }

    fn commits(&self) -> &Commits {
        &self.commits
    }

    /// Not while the store's syncs fail: `say` is refused with `unavailable` then.
    fn ready(&self) -> bool {
        !self.commits.failing()
    }

    async fn close(&self) -> Result<(), BrokerError> {
        self.commits.stop();
        self.store.close()?;
        Ok(())
    }

    fn history_messages(&self) -> Option<u64> {
        self.store.messages()
    }

    fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed) + self.commits.sync_failures()
    }
}
