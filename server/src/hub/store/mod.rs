//! History stores: where each room's messages are kept for joins, resumes and history pages.
//!
//! The in-memory broker appends every publication to a [`HistoryStore`] (under the room's
//! publish lock, so offsets are appended in order) before it delivers it. Two stores implement
//! it: [`memory::MemoryStore`] (`--data-dir none`: a ring per room, lost on restart and on
//! eviction) and the durable store under `--data-dir` (the default). Durability is the
//! [`Commits`] tracker's business: a durable store hands each append to the OS at once and makes
//! batches durable with one sync each, on the committer thread.

pub mod commits;
pub mod durable;
pub mod memory;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use commits::Commits;

use super::position::StreamState;
use super::record::Publication;
use super::Page;

/// How much history each room keeps; the oldest messages go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub messages: usize,
    /// Bytes as [`Publication::bytes`] counts them.
    pub bytes: usize,
    /// Messages older than this go (checked in the background); `None` keeps them.
    pub age: Option<Duration>,
}

/// Why a store could not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store failed (an I/O error, a full disk); the message says where.
    #[error("history store: {0}")]
    Failed(String),
    /// Data that does not read back as what was written.
    #[error("history store: damaged data in {file}: {what}")]
    Damaged { file: String, what: String },
    /// An append out of order (a bug in the caller, refused rather than stored).
    #[error("history store: offset {got} appended to room {room:?} after {last}")]
    OutOfOrder { room: String, last: u64, got: u64 },
}

/// What a page read returned: messages oldest first, and whether the caps cut it.
#[derive(Debug, Default)]
pub struct Read {
    pub messages: Vec<Arc<Publication>>,
    pub more: bool,
}

/// Where rooms' messages are kept. Every method is quick (memory, or the OS page cache for the
/// durable store), except [`HistoryStore::sync`], which only the committer calls.
pub trait HistoryStore: Send + Sync + fmt::Debug {
    /// The room's stream, creating it (with a new epoch) when the store has none.
    fn open(&self, room: &Arc<str>) -> Result<StreamState, StoreError>;

    /// Appends a publication whose offset is the room's `last + 1` (of the epoch [`Self::open`]
    /// gave). A durable store has handed it to the OS when this returns.
    fn append(&self, p: &Arc<Publication>) -> Result<(), StoreError>;

    /// Up to `max` messages (and about `max_bytes` of them, though always one when there is
    /// one, so that paging makes progress) from where `page` says, oldest first.
    fn read(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        max_bytes: usize,
    ) -> Result<Read, StoreError>;

    /// Applies the retention's age limit to every room (counts and bytes are applied as
    /// messages are appended); returns how many messages went.
    fn expire(&self, now_ms: u64) -> Result<u64, StoreError>;

    /// The room left this node's memory (evicted at `--max-rooms`): the memory store lets its
    /// history go, the durable store keeps it on disk.
    fn forget(&self, room: &str);

    /// Whether appends need [`Self::sync`] to be durable (false: nothing outlives the process).
    fn durable(&self) -> bool;

    /// Makes everything appended so far durable.
    fn sync(&self) -> Result<(), StoreError>;

    /// A clean shutdown: everything synced and the store marked as closed cleanly.
    fn close(&self) -> Result<(), StoreError>;

    /// Messages kept, across rooms, where the store keeps count (for `/metrics`).
    fn messages(&self) -> Option<u64> {
        None
    }
}

/// Takes messages for a page from `kept` (newest last) while the caps allow: the shared rule of
/// every store.
pub fn take_page<'a>(
    kept: impl DoubleEndedIterator<Item = &'a Arc<Publication>>,
    page: Page,
    max: usize,
    max_bytes: usize,
) -> Read {
    let ok = |p: &Arc<Publication>| Ok::<_, StoreError>(p.clone());
    let read = match page {
        Page::Since(since) => collect_page(
            kept.filter(|p| p.pos.offset > since).map(ok),
            false,
            max,
            max_bytes,
        ),
        Page::Before(before) => collect_page(
            kept.rev().filter(|p| p.pos.offset < before).map(ok),
            true,
            max,
            max_bytes,
        ),
    };
    // unwrap: every item above is `Ok`.
    read.unwrap()
}

/// Collects a page from `items`, which run in the page's direction (`backwards`: newest
/// first), while the caps allow; the result is oldest first.
pub fn collect_page(
    items: impl Iterator<Item = Result<Arc<Publication>, StoreError>>,
    backwards: bool,
    max: usize,
    max_bytes: usize,
) -> Result<Read, StoreError> {
    let (mut messages, mut bytes, mut more) = (Vec::new(), 0, false);
    for p in items {
        let p = p?;
        let n = p.bytes();
        if messages.len() >= max || (!messages.is_empty() && bytes + n > max_bytes) {
            more = true;
            break;
        }
        bytes += n;
        messages.push(p);
    }
    if backwards {
        messages.reverse();
    }
    Ok(Read { messages, more })
}

#[cfg(test)]
pub mod contract;
