//! The contract every [`HistoryStore`] passes: each test takes a factory for a fresh store (or
//! a reopened one, for the durable store) so the same suite runs against every implementation.

use std::sync::Arc;
use std::time::Duration;

use super::{HistoryStore, Retention, StoreError};
use crate::hub::position::{Epoch, StreamPosition};
use crate::hub::record::Publication;
use crate::hub::Page;

pub const RETENTION: Retention = Retention {
    messages: 100,
    bytes: 1 << 20,
    age: None,
};

pub fn publication(
    room: &Arc<str>,
    offset: u64,
    epoch: Epoch,
    text: &str,
    ts: u64,
) -> Arc<Publication> {
    Arc::new(Publication {
        room: room.clone(),
        pos: StreamPosition::new(offset, epoch),
        from: "bob".into(),
        text: text.into(),
        ts,
        reference: offset
            .is_multiple_of(2)
            .then(|| format!("r{offset}").into()),
    })
}

/// Appends `n` messages to `room` after what it holds; returns them.
pub fn fill(store: &dyn HistoryStore, room: &Arc<str>, n: u64, ts: u64) -> Vec<Arc<Publication>> {
    let state = store.open(room).unwrap();
    (state.last + 1..=state.last + n)
        .map(|o| {
            let p = publication(room, o, state.epoch, &format!("m{o}"), ts);
            store.append(&p).unwrap();
            p
        })
        .collect()
}

fn offsets(read: &super::Read) -> Vec<u64> {
    read.messages.iter().map(|p| p.pos.offset).collect()
}

pub fn new_rooms_start_empty_with_a_stable_epoch(store: &dyn HistoryStore) {
    let room: Arc<str> = "a".into();
    let s = store.open(&room).unwrap();
    assert_eq!((s.last, s.lost_through), (0, 0));
    assert_eq!(store.open(&room).unwrap().epoch, s.epoch);
    assert_ne!(store.open(&"b".into()).unwrap().epoch, s.epoch);
    let read = store
        .read(&room, Page::Before(u64::MAX), 10, 1 << 20)
        .unwrap();
    assert!(read.messages.is_empty() && !read.more);
}

pub fn pages_follow_offsets_and_caps(store: &dyn HistoryStore) {
    let room: Arc<str> = "pages".into();
    let written = fill(store, &room, 30, 1);
    let all = store.read(&room, Page::Since(0), 100, 1 << 20).unwrap();
    assert_eq!(offsets(&all), (1..=30).collect::<Vec<_>>());
    assert_eq!(&all.messages, &written, "what was written reads back");
    assert!(!all.more);
    let since = store.read(&room, Page::Since(10), 5, 1 << 20).unwrap();
    assert_eq!((offsets(&since), since.more), ((11..=15).collect(), true));
    let latest = store
        .read(&room, Page::Before(u64::MAX), 5, 1 << 20)
        .unwrap();
    assert_eq!((offsets(&latest), latest.more), ((26..=30).collect(), true));
    let before = store.read(&room, Page::Before(4), 5, 1 << 20).unwrap();
    assert_eq!((offsets(&before), before.more), (vec![1, 2, 3], false));
    let tail = store.read(&room, Page::Since(28), 5, 1 << 20).unwrap();
    assert_eq!((offsets(&tail), tail.more), (vec![29, 30], false));
    // Bytes: one message always goes, so paging makes progress.
    let one = store.read(&room, Page::Since(0), 100, 1).unwrap();
    assert_eq!((offsets(&one), one.more), (vec![1], true));
    let size = written[0].bytes();
    let three = store
        .read(&room, Page::Since(0), 100, 3 * size + 2)
        .unwrap();
    assert_eq!(offsets(&three), vec![1, 2, 3]);
}

pub fn appends_out_of_order_are_refused(store: &dyn HistoryStore) {
    let room: Arc<str> = "order".into();
    let s = store.open(&room).unwrap();
    fill(store, &room, 2, 1);
    for (offset, epoch) in [(2, s.epoch), (4, s.epoch), (3, Epoch(s.epoch.0 ^ 1))] {
        let p = publication(&room, offset, epoch, "x", 1);
        assert!(
            matches!(store.append(&p), Err(StoreError::OutOfOrder { .. })),
            "{offset}"
        );
    }
    fill(store, &room, 1, 1);
    assert_eq!(store.open(&room).unwrap().last, 3);
}

pub fn rooms_are_independent(store: &dyn HistoryStore) {
    let (a, b): (Arc<str>, Arc<str>) = ("x".into(), "x2".into());
    fill(store, &a, 3, 1);
    fill(store, &b, 5, 1);
    assert_eq!(store.open(&a).unwrap().last, 3);
    let read = store.read(&b, Page::Since(0), 100, 1 << 20).unwrap();
    assert_eq!(offsets(&read), vec![1, 2, 3, 4, 5]);
    assert!(read.messages.iter().all(|p| p.room == b));
}

/// Needs a store with [`RETENTION`] but `messages: 10` and `bytes` room for about 20.
pub fn retention_by_count_and_bytes(store: &dyn HistoryStore) {
    let room: Arc<str> = "keep".into();
    fill(store, &room, 25, 1);
    let read = store.read(&room, Page::Since(0), 100, 1 << 20).unwrap();
    assert_eq!(offsets(&read), (16..=25).collect::<Vec<_>>(), "count");
    let big: Arc<str> = "big".into();
    let s = store.open(&big).unwrap();
    for o in 1..=4 {
        let p = publication(&big, o, s.epoch, &"x".repeat(600), 1);
        store.append(&p).unwrap();
    }
    // ~2,000 bytes of retention: two 600-byte messages fit, three do not.
    let read = store.read(&big, Page::Since(0), 100, 1 << 20).unwrap();
    assert_eq!(offsets(&read), vec![3, 4], "bytes");
    assert_eq!(store.open(&big).unwrap().last, 4, "ids go on");
}

/// Needs a store with an age of 1 s.
pub fn retention_by_age(store: &dyn HistoryStore) {
    let room: Arc<str> = "old".into();
    fill(store, &room, 3, 1_000);
    fill(store, &room, 2, 5_000);
    assert_eq!(store.expire(5_500).unwrap(), 3);
    let read = store.read(&room, Page::Since(0), 100, 1 << 20).unwrap();
    assert_eq!(offsets(&read), vec![4, 5]);
    assert_eq!(store.open(&room).unwrap().last, 5);
}

pub fn age_retention() -> Retention {
    Retention {
        age: Some(Duration::from_secs(1)),
        ..RETENTION
    }
}

pub fn count_retention() -> Retention {
    Retention {
        messages: 10,
        bytes: 2_000,
        age: None,
    }
}

/// Runs every test that needs only a fresh store with [`RETENTION`].
pub fn basic(new: &dyn Fn() -> Box<dyn HistoryStore>) {
    new_rooms_start_empty_with_a_stable_epoch(&*new());
    pages_follow_offsets_and_caps(&*new());
    appends_out_of_order_are_refused(&*new());
    rooms_are_independent(&*new());
}

mod memory {
    use super::*;
    use crate::hub::store::memory::MemoryStore;

    #[test]
    fn basic_contract() {
        basic(&|| Box::new(MemoryStore::new(RETENTION)));
    }

    #[test]
    fn retention_contract() {
        retention_by_count_and_bytes(&MemoryStore::new(count_retention()));
        retention_by_age(&MemoryStore::new(age_retention()));
    }

    /// Memory only: an evicted room's next life is a new one.
    #[test]
    fn forget_starts_a_new_epoch() {
        let store = MemoryStore::new(RETENTION);
        let room: Arc<str> = "gone".into();
        let before = store.open(&room).unwrap();
        fill(&store, &room, 3, 1);
        store.forget(&room);
        let after = store.open(&room).unwrap();
        assert_ne!(after.epoch, before.epoch);
        assert_eq!(after.last, 0);
    }
}
