//! The in-memory history store (`--data-dir none`): one ring of shared publications per room.
//! Nothing survives a restart, and an evicted room's history goes with it (its next life gets a
//! new epoch, so no client mistakes it for the old one).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{take_page, HistoryStore, Read, Retention, StoreError};
use crate::hub::position::{Epoch, StreamState};
use crate::hub::record::Publication;
use crate::hub::Page;
use crate::metrics::Level;

#[derive(Debug)]
pub struct MemoryStore {
    retention: Retention,
    rooms: Mutex<HashMap<Arc<str>, Ring>>,
    /// Messages kept across rooms (changed under the `rooms` lock).
    kept: Level,
}

#[derive(Debug)]
struct Ring {
    state: StreamState,
    kept: VecDeque<Arc<Publication>>,
    bytes: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves a ring consistent before anything can panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    pub fn new(retention: Retention) -> Self {
        Self {
            retention,
            rooms: Mutex::default(),
            kept: Level::default(),
        }
    }
}

impl HistoryStore for MemoryStore {
    fn open(&self, room: &Arc<str>) -> Result<StreamState, StoreError> {
        let mut rooms = lock(&self.rooms);
        let ring = rooms.entry(room.clone()).or_insert_with(|| Ring {
            state: StreamState::empty(Epoch::random()),
            kept: VecDeque::new(),
            bytes: 0,
        });
        Ok(ring.state)
    }

    fn append(&self, p: &Arc<Publication>) -> Result<(), StoreError> {
        let mut rooms = lock(&self.rooms);
        let Some(ring) = rooms.get_mut(&p.room) else {
            return Err(StoreError::OutOfOrder {
                room: p.room.to_string(),
                last: 0,
                got: p.pos.offset,
            });
        };
        if p.pos.offset != ring.state.last + 1 || p.pos.epoch != ring.state.epoch {
            return Err(StoreError::OutOfOrder {
                room: p.room.to_string(),
                last: ring.state.last,
                got: p.pos.offset,
            });
        }
        ring.state.last = p.pos.offset;
        ring.bytes += p.bytes();
        ring.kept.push_back(p.clone());
        self.kept.add(1);
        let r = self.retention;
        while ring.kept.len() > r.messages || (ring.bytes > r.bytes && ring.kept.len() > 1) {
            // unwrap: the loop condition says the ring is not empty.
            let old = ring.kept.pop_front().unwrap();
            ring.bytes -= old.bytes();
            self.kept.sub(1);
        }
        Ok(())
    }

    fn read(
        &self,
        room: &Arc<str>,
        page: Page,
        max: usize,
        max_bytes: usize,
    ) -> Result<Read, StoreError> {
        let rooms = lock(&self.rooms);
        let Some(ring) = rooms.get(room) else {
            return Ok(Read::default());
        };
        // The ring is in offset order: start the scan at the page's edge.
        let kept = &ring.kept;
        let read = match page {
            Page::Since(since) => {
                let from = kept.partition_point(|p| p.pos.offset <= since);
                take_page(kept.range(from..), page, max, max_bytes)
            }
            Page::Before(before) => {
                let to = kept.partition_point(|p| p.pos.offset < before);
                take_page(kept.range(..to), page, max, max_bytes)
            }
        };
        Ok(read)
    }

    fn expire(&self, now_ms: u64) -> Result<u64, StoreError> {
        let Some(age) = self.retention.age else {
            return Ok(0);
        };
        let cutoff = now_ms.saturating_sub(age.as_millis() as u64);
        let mut removed = 0;
        for ring in lock(&self.rooms).values_mut() {
            while ring.kept.front().is_some_and(|p| p.ts < cutoff) {
                // unwrap: just checked.
                let old = ring.kept.pop_front().unwrap();
                ring.bytes -= old.bytes();
                removed += 1;
            }
        }
        self.kept.sub(removed);
        Ok(removed)
    }

    fn forget(&self, room: &str) {
        if let Some(ring) = lock(&self.rooms).remove(room) {
            self.kept.sub(ring.kept.len() as u64);
        }
    }

    fn durable(&self) -> bool {
        false
    }

    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn messages(&self) -> Option<u64> {
        Some(self.kept.get())
    }
}
