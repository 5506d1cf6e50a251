//! The Redis broker (`--redis`): several tidechat nodes share rooms through Redis.
//!
//! Each room lives on one Redis instance, chosen by a consistent hash of its name
//! ([`place`]). A publish is one Lua script ([`scripts`]) that assigns the room's next offset,
//! appends the message to the room's stream (trimmed to the retention) and publishes it on the
//! room's channel, so every node sees one order and one id sequence. A node subscribes to a
//! room's channel while it has members there; live messages come back through that feed (the
//! sender's own too), are delivered in offset order, and duplicates are dropped by offset.
//! Presence is a hash plus an expiry zset per room, refreshed by each node for its own members;
//! the members of a node that stops refreshing are swept (and `left` sent, once) by the others.
//!
//! Redis unreachable: publishes, joins and history reads answer `unavailable`; connections stay;
//! [`instance`] reconnects, re-subscribes and fills each room's gap from its stream, or closes
//! the room's local connections (4009) so that they resume with `since` and are told what they
//! cannot get back.

mod instance;
mod scripts;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use redis::Value;
use sha2::{Digest, Sha256};

use self::instance::{array, Instance, Link};
use self::scripts::RoomKeys;
use super::broker::{Broker, BrokerError, Claim, Deliver, HistoryRead, Names, NewMessage};
use super::position::{Epoch, StreamPosition, StreamState};
use super::record::{unix_millis, Publication};
use super::store::{collect_page, Commits, Read, Retention};
use super::Page;

/// A Redis instance did not answer (or is not connected); the message names it.
#[derive(Debug, Clone)]
pub struct Unreachable(pub String);

impl From<Unreachable> for BrokerError {
    fn from(e: Unreachable) -> Self {
        BrokerError::Unreachable(e.0)
    }
}

/// What the broker is told at start.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub urls: Vec<String>,
    /// PEM CA certificates a `rediss://` server must chain to (`None`: the system's roots).
    pub ca: Option<Vec<u8>>,
    pub retention: Retention,
    pub presence_cap: usize,
    pub presence_ttl: Duration,
    pub timeout: Duration,
    /// Where each instance's PING round trips go (`None`: not timed).
    pub roundtrip: Option<crate::metrics::Histogram>,
}

/// What the instances share with the broker.
pub struct Shared {
    /// This node's id in Redis (random per process).
    node: String,
    sink: OnceLock<Weak<dyn Deliver>>,
    /// This node's members, for the refresh.
    members: Mutex<HashMap<Arc<str>, RoomMembers>>,
    /// See [`RedisSettings::roundtrip`].
    roundtrip: Option<crate::metrics::Histogram>,
}

/// A room's local members: name -> (its connection, its token's hash).
type RoomMembers = HashMap<Arc<str>, (u64, String)>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn sink(&self) -> Option<Arc<dyn Deliver>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    /// A resume on another node took `name` from local connection `conn`.
    fn replaced(&self, room: &Arc<str>, name: &str, conn: u64) {
        let mut members = lock(&self.members);
        if let Some(names) = members.get_mut(room) {
            if names.get(name).is_some_and(|(c, _)| *c == conn) {
                names.remove(name);
            }
        }
        drop(members);
        if let Some(sink) = self.sink() {
            sink.replaced(room, name, conn);
        }
    }
}

pub struct RedisBroker {
    shared: Arc<Shared>,
    instances: Vec<Arc<Instance>>,
    settings: RedisSettings,
    commits: Commits,
    /// When presence is refreshed and swept next.
    next_refresh: Mutex<Instant>,
    next_sweep: Mutex<Instant>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("node", &self.shared.node)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

/// How often a node sweeps the presence of its rooms for names whose time ran out.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Local members per refresh script call.
const REFRESH_CHUNK: usize = 300;
/// Housekeeping scripts in flight at once (a hung Redis then costs one timeout, not one per
/// room).
const IN_FLIGHT: usize = 256;

/// Which of `n` instances holds `room`: jump consistent hash (Lamping and Veach, 2014) of the
/// first 8 bytes of the name's SHA-256, so that adding an instance moves only 1/n of the rooms
/// and every node computes the same answer.
pub fn place(room: &str, n: usize) -> usize {
    let digest = Sha256::digest(room.as_bytes());
    // unwrap: a SHA-256 digest has 32 bytes.
    let mut key = u64::from_le_bytes(digest[..8].try_into().unwrap());
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// A token as Redis keeps it: only its SHA-256, so that a copy of Redis's data cannot take
/// anyone's name.
fn token_hash(token: &str) -> String {
    super::hex(&Sha256::digest(token.as_bytes()))
}

/// Runs the history script: the stream's state and up to `count` messages after `since`
/// (`None`: the newest `count`), oldest first.
async fn read_history(
    link: &mut Link,
    room: &Arc<str>,
    since: Option<u64>,
    count: u64,
) -> redis::RedisResult<(StreamState, Vec<Publication>)> {
    let page = since.map_or(Page::Before(u64::MAX), Page::Since);
    read_page(link, room, page, count).await
}

async fn read_page(
    link: &mut Link,
    room: &Arc<str>,
    page: Page,
    count: u64,
) -> redis::RedisResult<(StreamState, Vec<Publication>)> {
    let keys = RoomKeys::new(room);
    let (dir, start) = match page {
        Page::Since(s) => ("since", format!("{}-0", s.saturating_add(1))),
        Page::Before(u64::MAX) => ("before", "+".to_string()),
        Page::Before(b) => ("before", format!("({b}-0")),
    };
    let v: Value = scripts::HISTORY_SCRIPT
        .key(&keys.meta)
        .key(&keys.stream)
        .arg(&*link.run_id)
        .arg(if link.lossless { "1" } else { "0" })
        .arg(Epoch::random().0)
        .arg(dir)
        .arg(start)
        .arg(count)
        .invoke_async(&mut link.conn)
        .await?;
    let bad = || redis::RedisError::from((redis::ErrorKind::Parse, "history reply"));
    let mut parts = array(v).ok_or_else(bad)?.into_iter();
    let epoch: u64 = redis::from_redis_value(parts.next().ok_or_else(bad)?)?;
    let last: u64 = redis::from_redis_value(parts.next().ok_or_else(bad)?)?;
    let lost_through: u64 = redis::from_redis_value(parts.next().ok_or_else(bad)?)?;
    let epoch = Epoch(epoch);
    let mut messages = Vec::new();
    for entry in array(parts.next().ok_or_else(bad)?).ok_or_else(bad)? {
        let mut entry = array(entry).ok_or_else(bad)?.into_iter();
        let id: String = redis::from_redis_value(entry.next().ok_or_else(bad)?)?;
        let fields = array(entry.next().ok_or_else(bad)?).ok_or_else(bad)?;
        let offset: u64 = id
            .split('-')
            .next()
            .and_then(|o| o.parse().ok())
            .ok_or_else(bad)?;
        let record: Vec<u8> = redis::from_redis_value(fields.get(1).cloned().ok_or_else(bad)?)?;
        let p = Publication::decode(room.clone(), offset, epoch, &record).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::Parse, "record", e.0.into()))
        })?;
        messages.push(p);
    }
    if matches!(page, Page::Before(_)) {
        messages.reverse();
    }
    Ok((
        StreamState {
            epoch,
            last,
            lost_through,
        },
        messages,
    ))
}

impl RedisBroker {
    /// Connects to every instance (each must answer, and hold this node's place in the list)
    /// and starts keeping the connections alive.
    pub async fn connect(settings: RedisSettings) -> anyhow::Result<Arc<Self>> {
        anyhow::ensure!(!settings.urls.is_empty(), "no --redis URL");
        // rediss://: the redis crate asks rustls for the process's provider. Chosen here, since
        // a build whose features enable two providers (a workspace build: another crate brings
        // aws-lc-rs) has no default and rustls would panic. An embedder's earlier choice stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let shared = Arc::new(Shared {
            node: super::hex(&super::random::<8>()),
            sink: OnceLock::new(),
            members: Mutex::default(),
            roundtrip: settings.roundtrip.clone(),
        });
        let mut instances = Vec::new();
        for (i, url) in settings.urls.iter().enumerate() {
            let instance = Instance::new(
                i,
                url,
                settings.ca.as_deref(),
                settings.timeout,
                shared.clone(),
            )?;
            let mut link = instance
                .connect()
                .await
                .map_err(|e| anyhow::anyhow!("cannot reach {}", e.0))?;
            instance.check_place(&mut link, settings.urls.len()).await?;
            instances.push(Arc::new(instance));
        }
        for instance in &instances {
            async_std::task::spawn(instance.clone().run());
        }
        // The first session of each: bounded, so that a start either works or says why.
        let deadline = Instant::now() + settings.timeout * 2 + Duration::from_secs(1);
        while !instances.iter().all(|i| i.is_up()) {
            if Instant::now() > deadline {
                for i in &instances {
                    i.stop();
                }
                anyhow::bail!("Redis did not accept the pub/sub connection in time");
            }
            async_io::Timer::after(Duration::from_millis(10)).await;
        }
        let now = Instant::now();
        Ok(Arc::new(Self {
            shared,
            instances,
            commits: Commits::default(),
            next_refresh: Mutex::new(now + settings.presence_ttl / 3),
            next_sweep: Mutex::new(now + SWEEP_EVERY),
            settings,
        }))
    }

    fn instance(&self, room: &str) -> &Arc<Instance> {
        &self.instances[place(room, self.instances.len())]
    }

    fn link(&self, room: &str) -> Result<Link, BrokerError> {
        Ok(self.instance(room).link()?)
    }

    fn failed(&self, room: &str, e: redis::RedisError) -> BrokerError {
        BrokerError::Unreachable(format!("redis {}: {e}", self.instance(room).name))
    }

    /// Runs a presence script on `room`'s keys.
    async fn presence_script(
        &self,
        script: &redis::Script,
        room: &str,
        args: &[String],
    ) -> Result<Value, BrokerError> {
        let mut link = self.link(room)?;
        let keys = RoomKeys::new(room);
        let mut call = script.key(&keys.presence);
        call.key(&keys.expiry).key(&keys.version);
        for a in args {
            call.arg(a);
        }
        call.invoke_async(&mut link.conn)
            .await
            .map_err(|e| self.failed(room, e))
    }

    fn channel(room: &str) -> String {
        scripts::channel(room)
    }

    /// Extends this node's members in every room they are in (one script per room and chunk,
    /// all in flight together on the pipelined connections).
    async fn refresh(&self) {
        type Names = Vec<(Arc<str>, u64, String)>;
        let rooms: Vec<(Arc<str>, Names)> = lock(&self.shared.members)
            .iter()
            .map(|(room, names)| {
                let names = names
                    .iter()
                    .map(|(n, (c, h))| (n.clone(), *c, h.clone()))
                    .collect();
                (room.clone(), names)
            })
            .collect();
        let ttl = self.settings.presence_ttl.as_millis() as u64;
        let mut calls: Vec<(Arc<str>, Names)> = Vec::new();
        for (room, names) in rooms {
            for chunk in names.chunks(REFRESH_CHUNK) {
                calls.push((room.clone(), chunk.to_vec()));
            }
        }
        futures::StreamExt::for_each_concurrent(
            futures::stream::iter(calls),
            IN_FLIGHT,
            |(room, chunk)| async move {
                let room = &room;
                let mut args: Vec<String> = vec![
                    self.shared.node.clone(),
                    ttl.to_string(),
                    Self::channel(room),
                    self.settings.presence_cap.to_string(),
                ];
                for (name, conn, hash) in &chunk {
                    args.extend([name.to_string(), conn.to_string(), hash.clone()]);
                }
                match self
                    .presence_script(&scripts::REFRESH_SCRIPT, room, &args)
                    .await
                {
                    Ok(v) => {
                        let lost: Vec<String> = redis::from_redis_value(v).unwrap_or_default();
                        for name in lost {
                            if let Some((_, conn, _)) = chunk.iter().find(|(n, ..)| **n == *name) {
                                self.shared.replaced(room, &name, *conn);
                            }
                        }
                    }
                    Err(e) => log::debug!(room = &**room; "presence refresh of {room:?}: {e}"),
                }
            },
        )
        .await;
    }

    /// Ends the names whose time ran out in every room this node has a feed of.
    async fn sweep(&self) {
        let cap = self.settings.presence_cap.to_string();
        let rooms: Vec<Arc<str>> = self.instances.iter().flat_map(|i| i.rooms()).collect();
        futures::StreamExt::for_each_concurrent(futures::stream::iter(rooms), IN_FLIGHT, |room| {
            let cap = cap.clone();
            async move {
                let channel = Self::channel(&room);
                if let Err(e) = self
                    .presence_script(&scripts::SWEEP_SCRIPT, &room, &[channel, cap])
                    .await
                {
                    log::debug!(room = &*room; "presence sweep of {room:?}: {e}");
                }
            }
        })
        .await;
    }

    fn due(at: &Mutex<Instant>, now: Instant, every: Duration) -> bool {
        let mut next = lock(at);
        if now < *next {
            return false;
        }
        *next = now + every;
        true
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for i in &self.instances {
            i.stop();
        }
    }
}

#[async_trait::async_trait]
impl Broker for RedisBroker {
    fn attach(&self, sink: Weak<dyn Deliver>) {
        let _ = self.shared.sink.set(sink);
    }

    async fn subscribe(&self, room: &Arc<str>) -> Result<(), BrokerError> {
        Ok(self.instance(room).subscribe(room).await?)
    }

    fn unsubscribe(&self, room: &str) {
        self.instance(room).unsubscribe(room);
    }

    fn idle(&self, room: &str) {
        self.instance(room).unsubscribe(room);
    }

    async fn publish(&self, msg: NewMessage<'_>) -> Result<StreamPosition, BrokerError> {
        let mut link = self.link(msg.room)?;
        let keys = RoomKeys::new(msg.room);
        let ts = unix_millis();
        let p = Publication {
            room: msg.room.clone(),
            pos: StreamPosition::new(0, Epoch(0)),
            from: msg.from.clone(),
            text: msg.text.into(),
            ts,
            reference: msg.reference.map(Into::into),
        };
        let r = &self.settings.retention;
        let (min_ts, ttl) = match r.age {
            Some(age) => (
                ts.saturating_sub(age.as_millis() as u64),
                age.as_millis() as u64,
            ),
            None => (0, 0),
        };
        let (offset, epoch): (u64, u64) = scripts::PUBLISH_SCRIPT
            .key(&keys.meta)
            .key(&keys.stream)
            .arg(&*link.run_id)
            .arg(if link.lossless { "1" } else { "0" })
            .arg(Epoch::random().0)
            .arg(p.encode())
            .arg(p.bytes())
            .arg(ts)
            .arg(r.messages.max(1))
            .arg(r.bytes)
            .arg(min_ts)
            .arg(ttl)
            .arg(&keys.channel)
            .arg(format!("{}:{}", self.shared.node, msg.origin))
            .invoke_async(&mut link.conn)
            .await
            .map_err(|e| self.failed(msg.room, e))?;
        Ok(StreamPosition::new(offset, Epoch(epoch)))
    }

    async fn history(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        max_bytes: usize,
    ) -> Result<HistoryRead, BrokerError> {
        let mut link = self.link(room)?;
        let count = if max == 0 { 0 } else { max as u64 + 1 };
        let (state, messages) = read_page(&mut link, room, page, count)
            .await
            .map_err(|e| self.failed(room, e))?;
        let oldest = self.settings.retention.age.map_or(0, |age| {
            unix_millis().saturating_sub(age.as_millis() as u64)
        });
        let backwards = matches!(page, Page::Before(_));
        let mut kept: Vec<Arc<Publication>> = messages
            .into_iter()
            .filter(|p| p.ts >= oldest)
            .map(Arc::new)
            .collect();
        if backwards {
            kept.reverse();
        }
        // unwrap: every item is `Ok`.
        let read: Read = collect_page(kept.into_iter().map(Ok), backwards, max, max_bytes).unwrap();
        Ok(HistoryRead { state, read })
    }

    async fn presence_add(
        &self,
        room: &Arc<str>,
        name: &Arc<str>,
        conn: u64,
        token: Option<&str>,
    ) -> Result<Claim, BrokerError> {
        let fresh = super::new_token();
        let fresh_hash = token_hash(&fresh);
        let given = token.map(token_hash).unwrap_or_default();
        let ttl = self.settings.presence_ttl.as_millis() as u64;
        let v = self
            .presence_script(
                &scripts::CLAIM_SCRIPT,
                room,
                &[
                    self.member_args(room, name, conn).as_slice(),
                    &[given, fresh_hash.clone(), ttl.to_string()],
                ]
                .concat(),
            )
            .await?;
        let reply: Vec<String> =
            redis::from_redis_value(v).map_err(|e| self.failed(room, e.into()))?;
        let replaced = match reply.first().map(String::as_str) {
            Some("new") => None,
            Some("resumed") => reply
                .get(1)
                .and_then(|c| c.parse().ok())
                .filter(|&c| c != 0),
            Some("already") => return Err(BrokerError::AlreadyJoined),
            Some("taken") => return Err(BrokerError::NameTaken),
            _ => {
                return Err(BrokerError::Unreachable(format!(
                    "redis {}: unexpected claim reply {reply:?}",
                    self.instance(room).name
                )))
            }
        };
        lock(&self.shared.members)
            .entry(room.clone())
            .or_default()
            .insert(name.clone(), (conn, fresh_hash));
        Ok(Claim {
            token: fresh,
            replaced,
        })
    }

    async fn presence_remove(&self, room: &Arc<str>, name: &str, conn: u64) {
        self.forget_member(room, name, conn);
        if let Err(e) = self
            .presence_script(
                &scripts::RELEASE_SCRIPT,
                room,
                &self.member_args(room, name, conn),
            )
            .await
        {
            // It runs out by itself: this node no longer refreshes it.
            log::debug!(room = &**room; "leave of {name:?} in {room:?}: {e}");
        }
    }

    async fn presence_detach(&self, room: &Arc<str>, name: &str, conn: u64, until: Instant) {
        self.forget_member(room, name, conn);
        let grace = until.saturating_duration_since(Instant::now()).as_millis() as u64;
        if let Err(e) = self
            .presence_script(
                &scripts::DETACH_SCRIPT,
                room,
                &[
                    name.to_string(),
                    self.shared.node.clone(),
                    conn.to_string(),
                    grace.max(1).to_string(),
                ],
            )
            .await
        {
            log::debug!(room = &**room; "grace of {name:?} in {room:?}: {e}");
        }
    }

    async fn presence_list(&self, room: &str, max: usize) -> Names {
        let channel = Self::channel(room);
        let v = match self
            .presence_script(
                &scripts::LIST_SCRIPT,
                room,
                &[
                    channel,
                    self.settings.presence_cap.to_string(),
                    max.to_string(),
                ],
            )
            .await
        {
            Ok(v) => v,
            Err(e) => {
                log::debug!(room = room; "presence of {room:?}: {e}");
                return Names::default();
            }
        };
        let mut items = array(v).unwrap_or_default().into_iter();
        let mut number = || -> u64 {
            items
                .next()
                .and_then(|c| redis::from_redis_value(c).ok())
                .unwrap_or(0)
        };
        let count = number() as usize;
        let version = number();
        let names = items
            .filter_map(|n| redis::from_redis_value::<String>(n).ok())
            .map(Into::into)
            .collect();
        Names {
            names,
            count,
            version,
        }
    }

    async fn expire(&self, now: Instant) {
        if Self::due(&self.next_refresh, now, self.settings.presence_ttl / 3) {
            self.refresh().await;
        }
        if Self::due(&self.next_sweep, now, SWEEP_EVERY) {
            self.sweep().await;
        }
    }

    fn commits(&self) -> &Commits {
        // Nothing to wait for on this node: Redis acknowledged the publish.
        &self.commits
    }

    /// Only with every instance connected: the rooms of one that is down are refused.
    fn ready(&self) -> bool {
        self.instances.iter().all(|i| i.is_up())
    }

    async fn close(&self) -> Result<(), BrokerError> {
        for i in &self.instances {
            i.stop();
        }
        Ok(())
    }
}

impl RedisBroker {
    /// The arguments the claim and release scripts start with: channel, presence cap, name,
    /// node, connection.
    fn member_args(&self, room: &str, name: &str, conn: u64) -> Vec<String> {
        vec![
            Self::channel(room),
            self.settings.presence_cap.to_string(),
            name.to_string(),
            self.shared.node.clone(),
            conn.to_string(),
        ]
    }

    fn forget_member(&self, room: &Arc<str>, name: &str, conn: u64) {
        let mut members = lock(&self.shared.members);
        if let Some(names) = members.get_mut(room) {
            if names.get(name).is_some_and(|(c, _)| *c == conn) {
                names.remove(name);
            }
            if names.is_empty() {
                members.remove(room);
            }
        }
    }
}

#[cfg(test)]
mod tests;
