//! The durable history store (the default, under `--data-dir`): an embedded fjall database.
//!
//! Two keyspaces: `rooms` maps a room's name to its metadata (a numeric id, its epoch, and the
//! offsets that a power loss may have taken), and `msgs` maps `room id (u32 BE) ++ offset (u64
//! BE)` to the [`Publication::encode`] record. fjall writes every insert to its journal through
//! `write(2)` at once, so what [`HistoryStore::append`] returned is in the OS and survives a
//! crash of the process; [`HistoryStore::sync`] (`persist(SyncAll)`, one fsync) makes it survive
//! a power loss. The committer calls it once per batch.
//!
//! What a stop can lose, and how the store knows:
//! - A clean close syncs and removes the `tidechat.running` marker: nothing is lost.
//! - A process crash leaves the marker, holding this boot's id; on the same boot the OS still
//!   had every write, so nothing is lost either.
//! - After a reboot with the marker still there (a power loss or an OS crash), the messages
//!   appended since the last sync may be gone, and someone may have seen them. Every room then
//!   skips [`LOST_JUMP`] offsets (so no id is used twice) and records them as possibly lost, so
//!   that no resume across them claims `recovered: true`.
//!
//! Retention is exact at once (reads start at the oldest kept offset) and the deletes happen on
//! a background thread, so a room never waits for them.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use super::{collect_page, HistoryStore, Read, Retention, StoreError};
use crate::hub::position::{Epoch, StreamState};
use crate::hub::record::{unix_millis, Publication};
use crate::hub::Page;
use crate::metrics::Level;

/// Offsets every room skips after a possible power loss: more than could have been handed out
/// unsynced ([`super::commits::MAX_UNSYNCED`] is waited for before a publish; this leaves room for a
/// publisher in flight on every connection of a server of ~980,000 connections).
pub const LOST_JUMP: u64 = 1 << 20;

/// The marker a running store keeps in its directory; it holds the boot id.
const RUNNING: &str = "tidechat.running";
/// Each room's last offset at the last clean close, outside fjall's files: a journal that is
/// later cut or damaged (fjall replays up to the first entry it cannot parse and drops the rest
/// silently) cannot take these with it.
const WATERMARKS: &str = "tidechat.watermarks";
const WATERMARKS_HEADER: &str = "tidechat watermarks 1";
/// Messages retention lets go of before they are deleted, in one batch.
const TRIM_BATCH: u64 = 64;
/// How often rooms that are not in memory are checked for `--history-age`.
const AGE_SWEEP: Duration = Duration::from_secs(60);
const META_VERSION: u8 = 1;
/// Metadata length: version, id, epoch, lost-through, last offset at the last clean close.
const META_LEN: usize = 29;

/// What one kept message costs, for retention.
#[derive(Debug, Clone, Copy)]
struct Kept {
    offset: u64,
    bytes: usize,
    ts: u64,
}

#[derive(Debug)]
struct RoomMeta {
    id: u32,
    epoch: Epoch,
    lost_through: u64,
    last: u64,
    /// The oldest offset kept (reads start here; older ones may wait for their delete).
    first: u64,
    /// What is kept, oldest first; loaded while the room is open on this node.
    kept: Option<VecDeque<Kept>>,
    bytes: usize,
    /// Offsets up to here have been handed to the background thread for deletion.
    trimmed: u64,
}

impl RoomMeta {
    fn state(&self) -> StreamState {
        StreamState {
            epoch: self.epoch,
            last: self.last,
            lost_through: self.lost_through,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(META_LEN);
        v.push(META_VERSION);
        v.extend_from_slice(&self.id.to_le_bytes());
        v.extend_from_slice(&self.epoch.0.to_le_bytes());
        v.extend_from_slice(&self.lost_through.to_le_bytes());
        v.extend_from_slice(&self.last.to_le_bytes());
        v
    }

    /// `(id, epoch, lost_through, last offset recorded)`.
    fn decode(v: &[u8]) -> Option<(u32, Epoch, u64, u64)> {
        if v.len() != META_LEN || v[0] != META_VERSION {
            return None;
        }
        let id = u32::from_le_bytes(v[1..5].try_into().ok()?);
        let epoch = u64::from_le_bytes(v[5..13].try_into().ok()?);
        let lost = u64::from_le_bytes(v[13..21].try_into().ok()?);
        let last = u64::from_le_bytes(v[21..29].try_into().ok()?);
        Some((id, Epoch(epoch), lost, last))
    }
}

#[derive(Debug, Default)]
struct Index {
    rooms: HashMap<Arc<str>, RoomMeta>,
    next_id: u32,
}

/// Work for the background thread.
enum Job {
    /// Delete room `id`'s messages `from..=through`.
    Trim {
        id: u32,
        from: u64,
        through: u64,
    },
    Stop,
}

/// What opening the store found, for the start-up log line and the tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub rooms: usize,
    pub messages: u64,
    /// The last stop was not clean.
    pub crashed: bool,
    /// ... and the machine restarted since: unsynced messages may be lost.
    pub power_loss: bool,
    /// Rooms whose stored history could not be read: they start over with a new epoch.
    pub damaged_rooms: Vec<String>,
    pub took: Duration,
}

pub struct DurableStore {
    dir: PathBuf,
    db: Database,
    rooms: Keyspace,
    msgs: Keyspace,
    retention: Retention,
    index: Mutex<Index>,
    jobs: Mutex<Sender<Job>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    recovery: Recovery,
    /// The active journal, open for syncing (see `sync`).
    journal: Mutex<Option<OpenJournal>>,
    /// Messages kept across rooms, on disk or not yet deleted by retention.
    kept: Level,
}

impl std::fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update of the index is a single step after its checks.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn key(id: u32, offset: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&id.to_be_bytes());
    k[4..].copy_from_slice(&offset.to_be_bytes());
    k
}

fn offset_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(4..12)?.try_into().ok()?))
}

/// What a stored record costs as [`Publication::bytes`] counts it, from its encoded length
/// (the encoding adds 17 bytes of lengths and version to the text fields; `bytes` adds 64 and
/// the room's name).
fn kept_bytes(room: &str, encoded_len: usize) -> usize {
    (encoded_len + 64 + room.len()).saturating_sub(17)
}

/// The server time stored in a record (bytes 1..9), for age retention.
fn ts_of(v: &[u8]) -> u64 {
    v.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// This boot of the machine (Linux), to tell a process crash from a power loss.
fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

impl DurableStore {
    /// Opens (or creates) the store in `dir`, checking every stored message. Fails with a
    /// message naming the directory when the store cannot be opened at all (its journal is
    /// damaged, another process holds it, the disk refuses).
    pub fn open(dir: &Path, retention: Retention) -> Result<Arc<Self>, StoreError> {
        let started = Instant::now();
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Failed(format!("{}: {what}: {e}", dir.display()))
        };
        fs::create_dir_all(dir).map_err(|e| failed("cannot create the data directory", &e))?;
        let marker = dir.join(RUNNING);
        let previous_boot = match fs::read_to_string(&marker) {
            Ok(s) => Some(s.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(failed("cannot read the running marker", &e)),
        };
        let this_boot = boot_id();
        let crashed = previous_boot.is_some();
        let power_loss = crashed && (this_boot.is_none() || previous_boot != this_boot);

        // fjall 3.1 panics on some damaged journal entries (an assertion in its decoder)
        // instead of failing: that is a damaged journal too, refused the same way.
        let db = std::panic::catch_unwind(|| Database::builder(dir).open())
            .map_err(|_| {
                StoreError::Failed(format!(
                    "history store {}: {}",
                    dir.display(),
                    journal_damaged(dir, "the store panicked replaying it")
                ))
            })?
            .map_err(|e| open_error(dir, e))?;
        let rooms = db
            .keyspace("rooms", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(dir, e))?;
        let msgs = db
            .keyspace("msgs", KeyspaceCreateOptions::default)
            .map_err(|e| open_error(dir, e))?;
        let (tx, rx) = mpsc::channel();
        let mut store = DurableStore {
            dir: dir.to_owned(),
            db,
            rooms,
            msgs,
            retention,
            index: Mutex::default(),
            jobs: Mutex::new(tx),
            worker: Mutex::new(None),
            journal: Mutex::new(None),
            kept: Level::default(),
            recovery: Recovery {
                crashed,
                power_loss,
                ..Recovery::default()
            },
        };
        store.load(power_loss)?;
        store.recovery.took = started.elapsed();

        // The marker says "running" from here on, durably, before anything is appended.
        let mut f = fs::File::create(&marker).map_err(|e| failed("cannot write the marker", &e))?;
        f.write_all(this_boot.unwrap_or_default().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| failed("cannot write the marker", &e))?;
        sync_dir(dir).map_err(|e| failed("cannot sync the data directory", &e))?;

        let store = Arc::new(store);
        let worker = {
            let me = Arc::downgrade(&store);
            std::thread::Builder::new()
                .name("tidechat-retention".into())
                .spawn(move || background(me, rx))
                .map_err(|e| failed("cannot start the retention thread", &e))?
        };
        *lock(&store.worker) = Some(worker);
        Ok(store)
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// `room -> (id, epoch, last)` from the last clean close (empty when there is none).
    fn watermarks(&self) -> Result<HashMap<String, (u32, Epoch, u64)>, StoreError> {
        let text = match fs::read_to_string(self.dir.join(WATERMARKS)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
            Err(e) => return Err(self.failed(format!("{WATERMARKS}: {e}"))),
        };
        let mut lines = text.lines();
        if lines.next() != Some(WATERMARKS_HEADER) {
            return Err(self.damaged(WATERMARKS, "not a watermarks file"));
        }
        let mut marks = HashMap::new();
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            let parsed = match f[..] {
                [name, id, epoch, last] => id
                    .parse()
                    .ok()
                    .zip(epoch.parse().ok())
                    .zip(last.parse().ok())
                    .map(|((id, epoch), last)| (name.to_owned(), (id, Epoch(epoch), last))),
                _ => None,
            };
            let (name, mark) = parsed.ok_or_else(|| self.damaged(WATERMARKS, line))?;
            marks.insert(name, mark);
        }
        Ok(marks)
    }

    /// Writes every room's last offset next to the store (at a clean close).
    fn write_watermarks(&self) -> Result<(), StoreError> {
        let mut text = String::from(WATERMARKS_HEADER);
        for (room, m) in lock(&self.index).rooms.iter() {
            // Room names have no spaces or line breaks (`limits::valid_room`).
            text.push_str(&format!("\n{room} {} {} {}", m.id, m.epoch.0, m.last));
        }
        text.push('\n');
        let tmp = self.dir.join(format!("{WATERMARKS}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, self.dir.join(WATERMARKS))?;
            sync_dir(&self.dir)
        };
        write().map_err(|e| self.failed(format!("{WATERMARKS}: {e}")))
    }

    /// Reads every room's metadata and checks every message; rooms whose data cannot be read
    /// start over with a new epoch.
    fn load(&mut self, power_loss: bool) -> Result<(), StoreError> {
        let mut marks = self.watermarks()?;
        let mut metas = Vec::new();
        let mut next_id = 1u32;
        for item in self.rooms.iter() {
            let (k, v) = item.into_inner().map_err(|e| self.damaged("rooms", e))?;
            let name = String::from_utf8_lossy(&k).into_owned();
            match RoomMeta::decode(&v) {
                Some((id, epoch, lost, recorded)) => {
                    next_id = next_id.max(id.saturating_add(1));
                    let recorded = match marks.remove(&name) {
                        Some((i, e, last)) if i == id && e == epoch => recorded.max(last),
                        _ => recorded,
                    };
                    metas.push((name, Some((id, epoch, lost, recorded))));
                }
                None => metas.push((name, None)),
            }
        }
        // Rooms the last clean close knew and the store no longer does: their record went with
        // a damaged journal. Their messages may still be there, under their old id.
        for (name, (id, epoch, last)) in marks {
            log::error!(
                room = name.as_str();
                "history store {}: room {name:?} was lost from the store since its last clean \
                 stop (it had {last} messages); what is left of it is kept",
                self.dir.display()
            );
            self.recovery.damaged_rooms.push(name.clone());
            next_id = next_id.max(id.saturating_add(1));
            metas.push((name, Some((id, epoch, 0, last))));
        }
        let mut index = Index {
            rooms: HashMap::new(),
            next_id,
        };
        for (name, meta) in metas {
            let room: Arc<str> = name.as_str().into();
            let checked = meta
                .ok_or_else(|| "its metadata is malformed".to_owned())
                .and_then(|(id, epoch, lost, recorded)| {
                    self.check_room(&room, id)
                        .map(|(first, last, count)| (id, epoch, lost, recorded, first, last, count))
                });
            let mut meta = match checked {
                Ok((id, epoch, mut lost, recorded, first, last, count)) => {
                    self.recovery.messages += count;
                    if last < recorded {
                        // The store held more at its last clean close: its tail was cut (a
                        // damaged journal). Those ids stay used, and nobody recovers past them.
                        log::error!(
                            room = &*room;
                            "history store {}: room {room:?}: messages {}..={recorded} are \
                             missing (the store held them at its last clean stop); ids continue \
                             after {recorded}",
                            self.dir.display(),
                            last + 1
                        );
                        self.recovery.damaged_rooms.push(room.to_string());
                        lost = lost.max(recorded);
                    }
                    RoomMeta {
                        id,
                        epoch,
                        lost_through: lost,
                        last: last.max(lost),
                        first,
                        kept: None,
                        bytes: 0,
                        trimmed: first.saturating_sub(1),
                    }
                }
                Err(why) => {
                    // Its old id's data stays where it is, unreachable: a new id and epoch
                    // make sure none of it is ever served as this room's history.
                    let id = index.next_id;
                    index.next_id += 1;
                    let epoch = Epoch::random();
                    log::error!(
                        room = &*room;
                        "history store {}: room {room:?}: {why}; its history is dropped and \
                         it starts over with epoch {}",
                        self.dir.display(),
                        epoch.0
                    );
                    self.recovery.damaged_rooms.push(room.to_string());
                    RoomMeta {
                        id,
                        epoch,
                        lost_through: 0,
                        last: 0,
                        first: 1,
                        kept: None,
                        bytes: 0,
                        trimmed: 0,
                    }
                }
            };
            if power_loss {
                meta.lost_through = meta.last + LOST_JUMP;
                meta.last = meta.lost_through;
            }
            self.rooms
                .insert(&*room, meta.encode())
                .map_err(|e| self.failed(e))?;
            index.rooms.insert(room, meta);
        }
        self.recovery.rooms = index.rooms.len();
        self.kept.add(self.recovery.messages);
        self.db
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.failed(e))?;
        *self.index.get_mut().unwrap_or_else(|e| e.into_inner()) = index;
        Ok(())
    }

    /// Reads every message of room `id`: its first and last offsets and count, or why not.
    fn check_room(&self, room: &Arc<str>, id: u32) -> Result<(u64, u64, u64), String> {
        let (mut first, mut last, mut count) = (None, 0, 0);
        for item in self.msgs.prefix(id.to_be_bytes()) {
            let (k, v) = item
                .into_inner()
                .map_err(|e| format!("unreadable data: {e}"))?;
            let offset = offset_of(&k).ok_or("a malformed key")?;
            Publication::decode(room.clone(), offset, Epoch(0), &v)
                .map_err(|e| format!("message {offset}: {e}"))?;
            if offset <= last {
                return Err(format!("message {offset} out of order"));
            }
            first.get_or_insert(offset);
            last = offset;
            count += 1;
        }
        Ok((first.unwrap_or(last + 1), last, count))
    }

    fn failed(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Failed(format!("{}: {e}", self.dir.display()))
    }

    fn damaged(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Damaged {
            file: self.dir.join("keyspaces").display().to_string(),
            what: format!("{what}: {e}"),
        }
    }

    /// Loads what room `meta` keeps, for retention, when it is not in memory yet.
    fn load_kept(&self, room: &str, meta: &mut RoomMeta) -> Result<(), StoreError> {
        if meta.kept.is_some() {
            return Ok(());
        }
        let mut kept = VecDeque::new();
        let mut bytes = 0;
        for item in self
            .msgs
            .range(key(meta.id, meta.first)..=key(meta.id, u64::MAX))
        {
            let (k, v) = item
                .into_inner()
                .map_err(|e| self.damaged(&format!("room {room:?}"), e))?;
            let offset = offset_of(&k).unwrap_or(0);
            let n = kept_bytes(room, v.len());
            bytes += n;
            kept.push_back(Kept {
                offset,
                bytes: n,
                ts: ts_of(&v),
            });
        }
        meta.kept = Some(kept);
        meta.bytes = bytes;
        self.enforce(meta, None);
        Ok(())
    }

    /// Drops what the retention no longer allows from `meta` (and, with `cutoff`, what is
    /// older than it) and has the background thread delete it.
    fn enforce(&self, meta: &mut RoomMeta, cutoff: Option<u64>) -> u64 {
        let Some(kept) = meta.kept.as_mut() else {
            return 0;
        };
        let r = self.retention;
        let mut through = None;
        let mut removed = 0;
        while let Some(front) = kept.front().copied() {
            let over = kept.len() > r.messages || (meta.bytes > r.bytes && kept.len() > 1);
            if !(over || cutoff.is_some_and(|c| front.ts < c)) {
                break;
            }
            kept.pop_front();
            meta.bytes -= front.bytes;
            through = Some(front.offset);
            removed += 1;
        }
        self.kept.sub(removed);
        if let Some(through) = through {
            meta.first = kept.front().map_or(meta.last + 1, |k| k.offset);
            // Deleted in batches, from where the last batch ended: a scan from the room's start
            // would step over every earlier tombstone, each time (measured: +60% server CPU in
            // the chat benchmark, all of it here). Reads start at `first`, so what waits for its
            // batch is never served.
            if through - meta.trimmed >= TRIM_BATCH || cutoff.is_some() {
                let _ = lock(&self.jobs).send(Job::Trim {
                    id: meta.id,
                    from: meta.trimmed + 1,
                    through,
                });
                meta.trimmed = through;
            }
        }
        removed
    }

    /// Deletes room `id`'s messages `from..=through` (the background thread's work).
    fn trim(&self, id: u32, from: u64, through: u64) -> Result<(), StoreError> {
        let keys: Vec<_> = self
            .msgs
            .range(key(id, from)..=key(id, through))
            .map(|item| item.key().map_err(|e| self.failed(e)))
            .collect::<Result<_, _>>()?;
        if keys.is_empty() {
            return Ok(());
        }
        let mut batch = self.db.batch();
        for k in keys {
            batch.remove(&self.msgs, k);
        }
        batch.commit().map_err(|e| self.failed(e))
    }

    /// Age retention for the rooms not in memory (theirs is checked as they are used).
    fn sweep_age(&self, cutoff: u64) -> Result<(), StoreError> {
        let rooms: Vec<(Arc<str>, u32, u64)> = lock(&self.index)
            .rooms
            .iter()
            .filter(|(_, m)| m.kept.is_none())
            .map(|(name, m)| (name.clone(), m.id, m.first))
            .collect();
        for (room, id, first) in rooms {
            let (mut through, mut old) = (None, 0);
            for item in self.msgs.range(key(id, first)..=key(id, u64::MAX)) {
                let (k, v) = item.into_inner().map_err(|e| self.failed(e))?;
                if ts_of(&v) >= cutoff {
                    break;
                }
                through = offset_of(&k);
                old += 1;
            }
            let Some(through) = through else { continue };
            let from = {
                let mut index = lock(&self.index);
                let Some(meta) = index.rooms.get_mut(&room) else {
                    continue;
                };
                if meta.kept.is_some() {
                    // Opened meanwhile: its own checks take over.
                    continue;
                }
                meta.first = meta.first.max(through + 1);
                self.kept.sub(old);
                let from = meta.trimmed + 1;
                meta.trimmed = meta.trimmed.max(through);
                from
            };
            self.trim(id, from, through)?;
        }
        Ok(())
    }
}

/// The background thread: deletes what retention dropped, sweeps ages, until the store stops.
fn background(store: std::sync::Weak<DurableStore>, jobs: Receiver<Job>) {
    let mut next_sweep = Instant::now() + AGE_SWEEP;
    loop {
        let job = jobs.recv_timeout(next_sweep.saturating_duration_since(Instant::now()));
        let Some(store) = store.upgrade() else { return };
        match job {
            Ok(Job::Trim { id, from, through }) => {
                if let Err(e) = store.trim(id, from, through) {
                    log::warn!("history retention: {e}");
                }
            }
            Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                next_sweep = Instant::now() + AGE_SWEEP;
                if let Some(age) = store.retention.age {
                    let cutoff = unix_millis().saturating_sub(age.as_millis() as u64);
                    if let Err(e) = store.sweep_age(cutoff) {
                        log::warn!("history retention: {e}");
                    }
                }
            }
        }
    }
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        // The background thread holds only a weak reference: tell it to go now.
        let _ = lock(&self.jobs).send(Job::Stop);
    }
}

/// An open error, with what an operator can do about it.
fn open_error(dir: &Path, e: fjall::Error) -> StoreError {
    let what = match &e {
        fjall::Error::JournalRecovery(_) => journal_damaged(dir, &format!("{e:?}")),
        fjall::Error::Locked => format!(
            "another process is using {} (each tidechat needs its own --data-dir)",
            dir.display()
        ),
        _ => format!("{e:?}"),
    };
    StoreError::Failed(format!("history store {}: {what}", dir.display()))
}

/// What a journal that cannot be replayed means, and what to do.
fn journal_damaged(dir: &Path, why: &str) -> String {
    format!(
        "the journal (the *.jnl files in {}) is damaged and cannot be replayed: {why}. \
         No data file was changed (fjall may have dropped superseded version files). Restore \
         the directory from a backup, or move it away to start with empty history",
        dir.display()
    )
}

/// The journal fjall appends to now: the highest-numbered `N.jnl` in the store's directory
/// (fjall 3's layout; `None` if it has none, and then fjall's own sync is used).
fn active_journal(dir: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let n = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            if best.as_ref().is_none_or(|(b, _)| n > *b) {
                best = Some((n, path));
            }
        }
    }
    Ok(best)
}

/// Whether journal `n` may have been sealed: fjall names the journal that follows `N.jnl`
/// `N+1.jnl` (`journal::writer::Writer::rotate`), so while that does not exist `n` is still the
/// active one. One failed lookup instead of reading the directory on every sync; anything but
/// "not found" counts as sealed, so the caller reads the directory and sees for itself.
fn journal_sealed(dir: &Path, n: u64) -> bool {
    match fs::symlink_metadata(dir.join(format!("{}.jnl", n + 1))) {
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
        Ok(_) => true,
    }
}

/// The active journal as [`DurableStore::sync`] keeps it between syncs.
#[derive(Debug)]
struct OpenJournal {
    number: u64,
    file: fs::File,
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl HistoryStore for DurableStore {
    fn open(&self, room: &Arc<str>) -> Result<StreamState, StoreError> {
        let mut index = lock(&self.index);
        if let Some(mut meta) = index.rooms.remove(room) {
            let loaded = self.load_kept(room, &mut meta);
            let state = meta.state();
            index.rooms.insert(room.clone(), meta);
            loaded?;
            return Ok(state);
        }
        let id = index.next_id;
        index.next_id = id
            .checked_add(1)
            .ok_or_else(|| self.failed("out of room ids"))?;
        let meta = RoomMeta {
            id,
            epoch: Epoch::random(),
            lost_through: 0,
            last: 0,
            first: 1,
            kept: Some(VecDeque::new()),
            bytes: 0,
            trimmed: 0,
        };
        // In the journal before any message of the room, so no message outlives its room.
        self.rooms
            .insert(&**room, meta.encode())
            .map_err(|e| self.failed(e))?;
        let state = meta.state();
        index.rooms.insert(room.clone(), meta);
        Ok(state)
    }

    fn append(&self, p: &Arc<Publication>) -> Result<(), StoreError> {
        let mut index = lock(&self.index);
        let Some(meta) = index.rooms.get_mut(&p.room) else {
            return Err(StoreError::OutOfOrder {
                room: p.room.to_string(),
                last: 0,
                got: p.pos.offset,
            });
        };
        if p.pos.offset != meta.last + 1 || p.pos.epoch != meta.epoch {
            return Err(StoreError::OutOfOrder {
                room: p.room.to_string(),
                last: meta.last,
                got: p.pos.offset,
            });
        }
        let value = p.encode();
        self.msgs
            .insert(key(meta.id, p.pos.offset), value.as_slice())
            .map_err(|e| self.failed(e))?;
        meta.last = p.pos.offset;
        self.kept.add(1);
        if meta.kept.is_none() {
            // Appends come after `open`, which loads it; this is only a safety net.
            meta.kept = Some(VecDeque::new());
        }
        let n = kept_bytes(&p.room, value.len());
        if let Some(kept) = meta.kept.as_mut() {
            kept.push_back(Kept {
                offset: p.pos.offset,
                bytes: n,
                ts: p.ts,
            });
        }
        meta.bytes += n;
        if meta.first > meta.last {
            meta.first = meta.last;
        }
        self.enforce(meta, None);
        Ok(())
    }

    fn read(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        max_bytes: usize,
    ) -> Result<Read, StoreError> {
        let (id, epoch, first) = match lock(&self.index).rooms.get(room) {
            Some(m) => (m.id, m.epoch, m.first),
            None => return Ok(Read::default()),
        };
        let decode = |item: fjall::Guard| -> Result<Arc<Publication>, StoreError> {
            let (k, v) = item
                .into_inner()
                .map_err(|e| self.damaged(&format!("room {room:?}"), e))?;
            let offset = offset_of(&k).unwrap_or(0);
            Publication::decode(room.clone(), offset, epoch, &v)
                .map(Arc::new)
                .map_err(|e| self.damaged(&format!("room {room:?} message {offset}"), e))
        };
        match page {
            Page::Since(since) => {
                let from = first.max(since.saturating_add(1));
                let items = self.msgs.range(key(id, from)..=key(id, u64::MAX));
                collect_page(items.map(decode), false, max, max_bytes)
            }
            Page::Before(before) => {
                if before <= first {
                    return Ok(Read::default());
                }
                let items = self.msgs.range(key(id, first)..key(id, before)).rev();
                collect_page(items.map(decode), true, max, max_bytes)
            }
        }
    }

    fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        let Some(age) = self.retention.age else {
            return Ok(0);
        };
        let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
        let mut index = lock(&self.index);
        let mut removed = 0;
        for meta in index.rooms.values_mut() {
            if meta.kept.is_some() {
                removed += self.enforce(meta, Some(cutoff));
            }
        }
        Ok(removed)
    }

    fn forget(&self, room: &str) {
        if let Some(meta) = lock(&self.index).rooms.get_mut(room) {
            meta.kept = None;
            meta.bytes = 0;
        }
    }

    fn durable(&self) -> bool {
        true
    }

    fn sync(&self) -> Result<(), StoreError> {
        // fjall's own `persist(SyncAll)` holds its journal lock through the fsync, so every
        // append (and so every delivery, in every room) would wait for the disk. Inserts have
        // already written their entries to the OS; an fsync of the active journal through a
        // descriptor of our own makes them durable without that lock. fjall syncs a journal
        // itself when it seals it, so the newest one (highest number) is the only one to sync:
        // every entry that took a ticket before this call is in it or in a sealed one, and a
        // journal it went to existed before the ticket, so before the lookup below.
        let mut cached = lock(&self.journal);
        let journal = match cached.take() {
            Some(j) if !journal_sealed(&self.dir, j.number) => j,
            _ => {
                let Some((number, path)) = active_journal(&self.dir).map_err(|e| self.failed(e))?
                else {
                    return self
                        .db
                        .persist(PersistMode::SyncAll)
                        .map_err(|e| self.failed(e));
                };
                let file = fs::File::open(&path).map_err(|e| self.failed(e))?;
                OpenJournal { number, file }
            }
        };
        let synced = journal.file.sync_data();
        *cached = Some(journal);
        synced.map_err(|e| self.failed(format!("syncing the journal: {e}")))
    }

    fn close(&self) -> Result<(), StoreError> {
        let _ = lock(&self.jobs).send(Job::Stop);
        if let Some(worker) = lock(&self.worker).take() {
            let _ = worker.join();
        }
        self.sync()?;
        // After the sync: a store that later loses its tail (a damaged journal) still never
        // hands out an id twice.
        self.write_watermarks()?;
        fs::remove_file(self.dir.join(RUNNING)).map_err(|e| self.failed(e))?;
        sync_dir(&self.dir).map_err(|e| self.failed(e))
    }

    fn messages(&self) -> Option<u64> {
        Some(self.kept.get())
    }
}

#[cfg(test)]
mod tests {
    use super::super::contract::*;
    use super::*;

    fn open(dir: &Path, retention: Retention) -> Arc<DurableStore> {
        DurableStore::open(dir, retention).unwrap()
    }

    #[test]
    fn basic_contract() {
        let dirs = std::cell::RefCell::new(Vec::new());
        basic(&|| {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path(), RETENTION);
            dirs.borrow_mut().push(dir);
            Box::new(ArcStore(store))
        });
    }

    #[test]
    fn retention_contract() {
        let dir = tempfile::tempdir().unwrap();
        retention_by_count_and_bytes(&*open(dir.path(), count_retention()));
        let dir = tempfile::tempdir().unwrap();
        retention_by_age(&*open(dir.path(), age_retention()));
    }

    /// `Box<dyn HistoryStore>` over the `Arc` the store is opened in.
    #[derive(Debug)]
    struct ArcStore(Arc<DurableStore>);

    impl HistoryStore for ArcStore {
        fn open(&self, room: &Arc<str>) -> Result<StreamState, StoreError> {
            self.0.open(room)
        }
        fn append(&self, p: &Arc<Publication>) -> Result<(), StoreError> {
            self.0.append(p)
        }
        fn read(&self, r: &Arc<str>, p: Page, m: usize, b: usize) -> Result<Read, StoreError> {
            self.0.read(r, p, m, b)
        }
        fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
            self.0.expire(now_ms)
        }
        fn forget(&self, room: &str) {
            self.0.forget(room)
        }
        fn durable(&self) -> bool {
            self.0.durable()
        }
        fn sync(&self) -> Result<(), StoreError> {
            self.0.sync()
        }
        fn close(&self) -> Result<(), StoreError> {
            self.0.close()
        }
    }

    fn reopen(dir: &Path, store: Arc<DurableStore>, clean: bool) -> Arc<DurableStore> {
        if clean {
            store.close().unwrap();
        }
        let worker = lock(&store.worker).take();
        drop(store);
        if let Some(w) = worker {
            w.join().unwrap();
        }
        open(dir, RETENTION)
    }

    #[test]
    fn history_epochs_and_ids_survive_a_clean_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), RETENTION);
        let room: Arc<str> = "r".into();
        let before = store.open(&room).unwrap();
        let written = fill(&*store, &room, 20, 7);
        let store = reopen(dir.path(), store, true);
        assert_eq!(store.recovery().messages, 20);
        assert!(!store.recovery().crashed);
        let after = store.open(&room).unwrap();
        assert_eq!(
            (after.epoch, after.last, after.lost_through),
            (before.epoch, 20, 0)
        );
        let read = store.read(&room, Page::Since(0), 100, 1 << 20).unwrap();
        assert_eq!(read.messages, written);
        fill(&*store, &room, 1, 8);
        assert_eq!(store.open(&room).unwrap().last, 21);
    }

    #[test]
    fn a_sync_follows_the_journal_when_fjall_seals_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), RETENTION);
        let room: Arc<str> = "r".into();
        fill(&*store, &room, 1, 1);
        store.sync().unwrap();
        let synced = || lock(&store.journal).as_ref().map(|j| j.number);
        let first = synced().expect("the first sync opened the active journal");
        assert_eq!(active_journal(dir.path()).unwrap().unwrap().0, first);
        // fjall seals its journal at a flush once it holds more than 64 MB.
        let state = store.open(&room).unwrap();
        // Letters that do not compress, in case fjall compresses its journal.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let text: String = (0..64 << 10)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        for o in state.last + 1..=state.last + 1_000 {
            store
                .append(&publication(&room, o, state.epoch, &text, 2))
                .unwrap();
        }
        store.msgs.rotate_memtable_and_wait().unwrap();
        let newest = active_journal(dir.path()).unwrap().unwrap().0;
        assert!(newest > first, "fjall sealed journal {first}");
        fill(&*store, &room, 1, 3);
        store.sync().unwrap();
        assert_eq!(
            synced(),
            Some(newest),
            "the sync went to the sealed journal"
        );
    }

    #[test]
    fn an_unclean_stop_on_the_same_boot_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), RETENTION);
        let room: Arc<str> = "r".into();
        let epoch = store.open(&room).unwrap().epoch;
        fill(&*store, &room, 5, 1);
        // Not closed: the marker stays, as after a crash of the process.
        let store = reopen(dir.path(), store, false);
        assert!(store.recovery().crashed && !store.recovery().power_loss);
        let s = store.open(&room).unwrap();
        assert_eq!((s.epoch, s.last, s.lost_through), (epoch, 5, 0));
    }

    #[test]
    fn after_a_possible_power_loss_ids_jump_and_the_gap_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), RETENTION);
        let room: Arc<str> = "r".into();
        let epoch = store.open(&room).unwrap().epoch;
        fill(&*store, &room, 5, 1);
        store.sync().unwrap();
        let worker = lock(&store.worker).take();
        drop(store);
        worker.unwrap().join().unwrap();
        // Another boot wrote the marker: the OS may have lost what was not synced.
        fs::write(dir.path().join(RUNNING), "another-boot").unwrap();
        let store = open(dir.path(), RETENTION);
        assert!(store.recovery().power_loss);
        let s = store.open(&room).unwrap();
        assert_eq!(s.epoch, epoch, "what survived is still this life's history");
        assert_eq!((s.last, s.lost_through), (5 + LOST_JUMP, 5 + LOST_JUMP));
        assert!(
            !s.recovers(5, epoch, None),
            "a client at 5 may have missed lost messages"
        );
        let next = fill(&*store, &room, 1, 2);
        assert_eq!(next[0].pos.offset, 6 + LOST_JUMP);
        let read = store.read(&room, Page::Since(0), 100, 1 << 20).unwrap();
        assert_eq!(read.messages.len(), 6);
    }

    #[test]
    fn a_damaged_room_starts_over_and_the_others_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), RETENTION);
        let (good, bad): (Arc<str>, Arc<str>) = ("good".into(), "bad".into());
        let good_epoch = store.open(&good).unwrap().epoch;
        let bad_epoch = store.open(&bad).unwrap().epoch;
        fill(&*store, &good, 3, 1);
        fill(&*store, &bad, 3, 1);
        // A record that does not decode, written where room `bad` keeps message 2.
        let id = lock(&store.index).rooms[&bad].id;
        store.msgs.insert(key(id, 2), &b"\x09garbage"[..]).unwrap();
        let store = reopen(dir.path(), store, true);
        assert_eq!(store.recovery().damaged_rooms, vec!["bad".to_owned()]);
        let s = store.open(&bad).unwrap();
        assert_ne!(s.epoch, bad_epoch);
        assert_eq!(s.last, 0);
        assert!(store
            .read(&bad, Page::Since(0), 100, 1 << 20)
            .unwrap()
            .messages
            .is_empty());
        let g = store.open(&good).unwrap();
        assert_eq!((g.epoch, g.last), (good_epoch, 3));
    }

    #[test]
    fn a_tail_lost_after_a_clean_close_never_gives_its_ids_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), RETENTION);
        let room: Arc<str> = "r".into();
        let epoch = store.open(&room).unwrap().epoch;
        fill(&*store, &room, 5, 1);
        store.close().unwrap();
        // What a cut journal does: the newest messages are gone, the room's record is not.
        let id = lock(&store.index).rooms[&room].id;
        for offset in [4, 5] {
            store.msgs.remove(key(id, offset)).unwrap();
        }
        store.sync().unwrap();
        let store = reopen(dir.path(), store, false);
        assert_eq!(store.recovery().damaged_rooms, vec!["r".to_owned()]);
        let s = store.open(&room).unwrap();
        assert_eq!((s.epoch, s.last, s.lost_through), (epoch, 5, 5));
        assert!(!s.recovers(3, epoch, None));
        assert_eq!(fill(&*store, &room, 1, 2)[0].pos.offset, 6);
    }

    /// Rooms not in memory get `--history-age` from the background sweep.
    #[test]
    fn the_age_sweep_reaches_rooms_out_of_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), age_retention());
        let (old, kept): (Arc<str>, Arc<str>) = ("old".into(), "kept".into());
        fill(&*store, &old, 3, 1_000);
        fill(&*store, &old, 2, 5_000);
        fill(&*store, &kept, 2, 1_000);
        store.forget(&old);
        store.sweep_age(4_000).unwrap();
        let offsets = |room: &Arc<str>| -> Vec<u64> {
            let read = store.read(room, Page::Since(0), 100, 1 << 20).unwrap();
            read.messages.iter().map(|p| p.pos.offset).collect()
        };
        assert_eq!(offsets(&old), vec![4, 5]);
        assert_eq!(
            offsets(&kept),
            vec![1, 2],
            "a room in memory is left to its own checks"
        );
        // Deleted, not only hidden: a reopen finds the same.
        let store = reopen(dir.path(), store, true);
        assert_eq!(store.recovery().messages, 4);
    }

    #[test]
    fn retention_survives_eviction_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), count_retention());
        let room: Arc<str> = "r".into();
        fill(&*store, &room, 25, 1);
        store.forget(&room);
        fill(&*store, &room, 5, 1);
        let read = store.read(&room, Page::Since(0), 100, 1 << 20).unwrap();
        let offsets: Vec<u64> = read.messages.iter().map(|p| p.pos.offset).collect();
        assert_eq!(offsets, (21..=30).collect::<Vec<_>>());
    }
}
