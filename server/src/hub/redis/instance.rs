//! One Redis instance as a node sees it: its command connection, its pub/sub connection, the
//! rooms whose live feed this node takes from it, and the loop that keeps all three alive.
//!
//! Each connection is bound to one run of one Redis process: the run id is read on it when it
//! opens, and every script call carries it, so a script can tell that Redis restarted since a
//! room was last used (see `scripts::OPEN`). That is why this module manages its connections
//! itself instead of using the crate's `ConnectionManager`, which reconnects behind the
//! caller's back and so cannot say which run of Redis a command reached.
//!
//! The session loop: connect both, re-subscribe every wanted room, fill each room's gap from its
//! stream (or reset the room when the gap cannot be proven filled), then read the feed and PING
//! every second; any failure ends the session, and the loop reconnects with backoff.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, Client, Msg, Value};

use super::scripts;
use super::{Shared, Unreachable};
use crate::hub::broker::Delivery;
use crate::hub::position::Epoch;
use crate::hub::record::{Publication, RoomEvent};

/// How often an idle session checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Reconnect backoff.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most missed messages a node fills in from the stream for one room before it gives up and
/// resets the room's connections instead.
const MAX_FILL: u64 = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command connection to one run of Redis.
#[derive(Clone)]
pub struct Link {
    pub conn: MultiplexedConnection,
    pub run_id: Arc<str>,
    /// `appendonly yes` with `appendfsync always`: Redis cannot lose an acknowledged write.
    pub lossless: bool,
}

/// How far this node has delivered a room's feed.
#[derive(Debug, Clone, Copy)]
pub struct Feed {
    pub epoch: Epoch,
    pub last: u64,
}

pub struct Instance {
    pub index: usize,
    /// The URL without its password, for logs.
    pub name: String,
    client: Client,
    timeout: Duration,
    shared: Arc<Shared>,
    link: Mutex<Option<Link>>,
    /// The pub/sub connection's command side; its lock also orders (un)subscribes.
    sink: async_std::sync::Mutex<Option<PubSubSink>>,
    /// Rooms this node takes live events of (it has members there), once subscribed.
    feeds: Mutex<HashMap<Arc<str>, Feed>>,
    up: AtomicBool,
    stopped: OnceLock<()>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Redacts the password of a Redis URL (also a `?pass=` one).
fn display_name(url: &str) -> String {
    crate::config::redact_url(url)
}

impl Instance {
    pub fn new(
        index: usize,
        url: &str,
        ca: Option<&[u8]>,
        timeout: Duration,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Self> {
        let client = match ca {
            Some(pem) if url.starts_with("rediss://") => Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                },
            ),
            _ => Client::open(url),
        }
        .map_err(|e| anyhow::anyhow!("--redis {}: {e}", display_name(url)))?;
        Ok(Self {
            index,
            name: display_name(url),
            client,
            timeout,
            shared,
            link: Mutex::new(None),
            sink: async_std::sync::Mutex::new(None),
            feeds: Mutex::default(),
            up: AtomicBool::new(false),
            stopped: OnceLock::new(),
        })
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> Unreachable {
        Unreachable(format!("redis {}: {e}", self.name))
    }

    /// The command connection, when Redis is reachable.
    pub fn link(&self) -> Result<Link, Unreachable> {
        lock(&self.link)
            .clone()
            .ok_or_else(|| self.unreachable("not connected"))
    }

    /// Opens a command connection and learns which run of Redis it reached.
    pub async fn connect(&self) -> Result<Link, Unreachable> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.unreachable(e))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| self.unreachable(e))?;
        let run_id = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|s| s.trim().into())
            .ok_or_else(|| self.unreachable("INFO server has no run_id"))?;
        // CONFIG may be disabled (managed Redis): then assume the last writes can be lost.
        let config: Result<HashMap<String, String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut conn)
            .await;
        let lossless = config.is_ok_and(|c| {
            c.get("appendonly").is_some_and(|v| v == "yes")
                && c.get("appendfsync").is_some_and(|v| v == "always")
        });
        Ok(Link {
            conn,
            run_id,
            lossless,
        })
    }

    /// Claims this instance's place in the list (`index/count`), or refuses when another node
    /// was started with a different list.
    pub async fn check_place(&self, link: &mut Link, count: usize) -> anyhow::Result<()> {
        let place = format!("{}/{count}", self.index + 1);
        let (_, held): ((), String) = redis::pipe()
            .cmd("SET")
            .arg("tc:shard")
            .arg(&place)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg("tc:shard")
            .query_async(&mut link.conn)
            .await
            .map(|(held,): (String,)| ((), held))
            .map_err(|e| anyhow::anyhow!("redis {}: {e}", self.name))?;
        anyhow::ensure!(
            held == place,
            "redis {} is instance {held} of another node's --redis list, but instance {place} of \
             this one: every node must give the same --redis list in the same order (to start \
             over, DEL tc:shard on each instance)",
            self.name
        );
        Ok(())
    }

    /// Keeps the instance connected until [`Self::stop`].
    pub async fn run(self: Arc<Self>) {
        let mut backoff = BACKOFF_MIN;
        let mut down_since: Option<Instant> = None;
        while self.stopped.get().is_none() {
            let started = Instant::now();
            let ended = self.session(&mut down_since).await;
            self.up.store(false, Ordering::Release);
            *lock(&self.link) = None;
            *self.sink.lock().await = None;
            if self.stopped.get().is_some() {
                return;
            }
            if down_since.is_none() {
                log::warn!(
                    "redis {}: {}; messages to its rooms are refused until it is back",
                    self.name,
                    ended.0
                );
                down_since = Some(Instant::now());
            } else {
                log::debug!("redis {}: {}", self.name, ended.0);
            }
            if started.elapsed() > BACKOFF_MAX {
                backoff = BACKOFF_MIN;
            }
            async_io::Timer::after(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    pub fn stop(&self) {
        let _ = self.stopped.set(());
    }

    async fn session(&self, down_since: &mut Option<Instant>) -> Unreachable {
        let link = match self.connect().await {
            Ok(link) => link,
            Err(e) => return e,
        };
        let pubsub =
            match async_std::future::timeout(self.timeout, self.client.get_async_pubsub()).await {
                Ok(Ok(p)) => p,
                Ok(Err(e)) => return self.unreachable(e),
                Err(_) => return self.unreachable("pub/sub connection timed out"),
            };
        let (mut sink, mut stream) = pubsub.split();
        {
            let mut guard = self.sink.lock().await;
            let rooms: Vec<String> = lock(&self.feeds)
                .keys()
                .map(|r| scripts::channel(r))
                .collect();
            for chunk in rooms.chunks(256) {
                if let Err(e) = sink.subscribe(chunk).await {
                    return self.unreachable(e);
                }
            }
            *guard = Some(sink);
        }
        *lock(&self.link) = Some(link.clone());
        self.up.store(true, Ordering::Release);
        match down_since.take() {
            Some(t) => log::info!(
                "redis {}: back after {} ms (run id {}{})",
                self.name,
                t.elapsed().as_millis(),
                link.run_id,
                if link.lossless {
                    ", appendfsync always"
                } else {
                    ""
                }
            ),
            None => log::info!(
                "redis {}: connected (run id {}{})",
                self.name,
                link.run_id,
                if link.lossless {
                    ", appendfsync always"
                } else {
                    ""
                }
            ),
        }
        // What was published while the feed was down is in the streams.
        let rooms: Vec<Arc<str>> = lock(&self.feeds).keys().cloned().collect();
        for room in rooms {
            if let Err(e) = self.catch_up(&link, &room, None).await {
                return e;
            }
        }
        let mut ticks = async_io::Timer::interval(PING_EVERY);
        loop {
            let next = futures::future::select(stream.next(), ticks.next()).await;
            match next {
                futures::future::Either::Left((Some(msg), _)) => {
                    if let Err(e) = self.on_message(&link, &msg).await {
                        return e;
                    }
                }
                futures::future::Either::Left((None, _)) => {
                    return self.unreachable("the pub/sub connection closed");
                }
                futures::future::Either::Right(_) => {
                    if self.stopped.get().is_some() {
                        return self.unreachable("stopped");
                    }
                    let mut conn = link.conn.clone();
                    let sent = Instant::now();
                    let ping: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
                    if let Err(e) = ping {
                        return self.unreachable(format!("PING: {e}"));
                    }
                    if let Some(h) = &self.shared.roundtrip {
                        h.observe(sent.elapsed());
                    }
                }
            }
        }
    }

    /// Starts the live feed of `room` (waiting until it is subscribed and its position known,
    /// so that a history read after this misses nothing).
    pub async fn subscribe(&self, room: &Arc<str>) -> Result<(), Unreachable> {
        if lock(&self.feeds).contains_key(room) {
            return Ok(());
        }
        let mut guard = self.sink.lock().await;
        if lock(&self.feeds).contains_key(room) {
            return Ok(());
        }
        let sink = guard
            .as_mut()
            .ok_or_else(|| self.unreachable("not connected"))?;
        sink.subscribe(scripts::channel(room))
            .await
            .map_err(|e| self.unreachable(e))?;
        let mut link = self.link()?;
        let state = super::read_history(&mut link, room, None, 0)
            .await
            .map_err(|e| self.unreachable(e))?
            .0;
        lock(&self.feeds).entry(room.clone()).or_insert(Feed {
            epoch: state.epoch,
            last: state.last,
        });
        Ok(())
    }

    /// Ends the live feed of `room` (in the background: this is called under the hub's lock).
    pub fn unsubscribe(self: &Arc<Self>, room: &str) {
        if lock(&self.feeds).remove(room).is_none() {
            return;
        }
        let this = self.clone();
        let room: Box<str> = room.into();
        async_std::task::spawn(async move {
            let mut guard = this.sink.lock().await;
            // A join may have wanted it again meanwhile.
            if lock(&this.feeds).contains_key(&*room) {
                return;
            }
            if let Some(sink) = guard.as_mut() {
                let _ = sink.unsubscribe(scripts::channel(&room)).await;
            }
        });
    }

    /// Rooms with a live feed here.
    pub fn rooms(&self) -> Vec<Arc<str>> {
        lock(&self.feeds).keys().cloned().collect()
    }

    fn deliver(&self, d: Delivery) {
        if let Some(sink) = self.shared.sink() {
            sink.deliver(d);
        }
    }

    fn reset(&self, room: &Arc<str>, why: &str) {
        log::warn!(
            "redis {}: room {room:?}: {why}; its connections here are closed to resume",
            self.name
        );
        if let Some(sink) = self.shared.sink() {
            sink.reset(room);
        }
    }

    async fn on_message(&self, link: &Link, msg: &Msg) -> Result<(), Unreachable> {
        let Some(name) = scripts::room_of(msg.get_channel_name()) else {
            return Ok(());
        };
        let Some(room) = lock(&self.feeds)
            .get_key_value(name)
            .map(|(r, _)| r.clone())
        else {
            return Ok(());
        };
        let payload = msg.get_payload_bytes();
        match payload.first() {
            Some(b'm') => {
                let Some(p) = parse_message(&room, &payload[1..]) else {
                    log::error!("redis {}: a malformed message in {room:?}", self.name);
                    return Ok(());
                };
                let (node, conn, p) = p;
                let origin = if node == self.shared.node.as_bytes() {
                    conn
                } else {
                    0
                };
                self.catch_up(link, &room, Some((p, origin))).await
            }
            Some(kind @ (b'j' | b'l')) => {
                let text = String::from_utf8_lossy(&payload[1..]);
                let Some((head, name)) = text.split_once(':') else {
                    return Ok(());
                };
                // `<number>,<count>`; a node from before counts were sent gives the number only.
                let (number, count) = match head.split_once(',') {
                    Some((n, c)) => (n, c.parse().ok()),
                    None => (head, None),
                };
                self.deliver(Delivery {
                    event: RoomEvent::Presence {
                        room,
                        name: name.into(),
                        joined: *kind == b'j',
                        count,
                    },
                    ticket: 0,
                    origin: 0,
                    presence: number.parse().unwrap_or(0),
                });
                Ok(())
            }
            Some(b't') => {
                let text = String::from_utf8_lossy(&payload[1..]);
                let mut parts = text.splitn(3, '|');
                if let (Some(node), Some(conn), Some(name)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    if node == self.shared.node {
                        if let Ok(conn) = conn.parse() {
                            self.shared.replaced(&room, name, conn);
                        }
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Delivers `next` (a message from the feed) after whatever this node missed before it;
    /// with `None`, only checks for (and fills) a gap up to the stream's end. A gap that the
    /// stream cannot fill, or a new epoch, resets the room.
    async fn catch_up(
        &self,
        link: &Link,
        room: &Arc<str>,
        next: Option<(Publication, u64)>,
    ) -> Result<(), Unreachable> {
        let Some(feed) = lock(&self.feeds).get(room).copied() else {
            return Ok(());
        };
        match next {
            // Already delivered (a duplicate, or the gap fill had it).
            Some((p, _)) if p.pos.epoch == feed.epoch && p.pos.offset <= feed.last => Ok(()),
            Some((p, origin)) if p.pos.epoch == feed.epoch && p.pos.offset == feed.last + 1 => {
                self.advance(room, feed.epoch, p.pos.offset);
                self.deliver_message(p, origin);
                Ok(())
            }
            next => self.fill(link, room, feed, next).await,
        }
    }

    /// Reads what follows `feed.last` from the stream and delivers it up to `next` (or the
    /// stream's end), or resets the room when the stream cannot prove nothing is missing.
    async fn fill(
        &self,
        link: &Link,
        room: &Arc<str>,
        feed: Feed,
        next: Option<(Publication, u64)>,
    ) -> Result<(), Unreachable> {
        // A gap (or a check after a reconnect): read what follows `last` from the stream.
        let mut conn = link.clone();
        let (state, found) = super::read_history(&mut conn, room, Some(feed.last), MAX_FILL)
            .await
            .map_err(|e| self.unreachable(e))?;
        let newest = next.as_ref().map_or(state.last, |(p, _)| p.pos.offset);
        let continuous = state.epoch == feed.epoch
            && state.lost_through <= feed.last
            && found
                .iter()
                .zip(feed.last + 1..)
                .all(|(p, want)| p.pos.offset == want)
            && feed.last + found.len() as u64 >= newest.min(state.last);
        if !continuous {
            let why = if state.epoch != feed.epoch {
                "Redis lost its history (new epoch)".to_string()
            } else {
                format!(
                    "missed messages after id {} that the stream no longer holds",
                    feed.last
                )
            };
            self.advance(room, state.epoch, state.last.max(newest));
            self.reset(room, &why);
            return Ok(());
        }
        let mut last = feed.last;
        for p in found {
            if p.pos.offset > newest {
                break;
            }
            last = p.pos.offset;
            let origin = match &next {
                Some((n, origin)) if n.pos.offset == p.pos.offset => *origin,
                _ => 0,
            };
            self.deliver_message(p, origin);
        }
        self.advance(room, feed.epoch, last);
        Ok(())
    }

    fn advance(&self, room: &Arc<str>, epoch: Epoch, last: u64) {
        if let Some(feed) = lock(&self.feeds).get_mut(room) {
            *feed = Feed { epoch, last };
        }
    }

    fn deliver_message(&self, p: Publication, origin: u64) {
        self.deliver(Delivery {
            event: RoomEvent::Message(Arc::new(p)),
            ticket: 0,
            origin,
            presence: 0,
        });
    }
}

/// `<offset>:<epoch>:<node>:<conn>:<record>` -> (node, conn, publication).
fn parse_message<'a>(room: &Arc<str>, b: &'a [u8]) -> Option<(&'a [u8], u64, Publication)> {
    let mut fields = b.splitn(5, |&c| c == b':');
    let num = |f: Option<&[u8]>| -> Option<u64> { std::str::from_utf8(f?).ok()?.parse().ok() };
    let offset = num(fields.next())?;
    let epoch = Epoch(num(fields.next())?);
    let node = fields.next()?;
    let conn = num(fields.next())?;
    let record = fields.next()?;
    let p = Publication::decode(room.clone(), offset, epoch, record).ok()?;
    Some((node, conn, p))
}

/// Reads a script's reply as an array.
pub fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(items) => Some(items),
        _ => None,
    }
}
