//! Presence coalescing: a room's presence changes go out as at most about one frame per window.
//!
//! While a room fills, every join used to send a `presence` frame to every member: 1,000 joins
//! were ~500,000 frames and as many socket writes. Here the first change after a quiet window
//! goes out at once (an ordinary join shows without delay), and the changes that follow within
//! `--presence-window` are gathered per room and go out together when the hub's presence timer
//! flushes them: one event per room per window, whatever the number of joins.
//!
//! A batch keeps one change per name, the last one (join then leave = `left`), with the number
//! of the last change it holds and the room's member count after it. Dropping a name whose
//! join and leave both fell in one batch would be wrong: a joiner whose member list was read
//! between the two shows it and needs the `left`. So applying a batch is idempotent with set
//! semantics (a join of a listed name or a leave of an absent one changes nothing; the count
//! is absolute), and a batch that straddles a joiner's member list version (the writer skips
//! only events wholly at or below it) leaves that joiner with the exact set: the batch covers
//! a contiguous run of the room's changes, so for every name whose last change in it is at or
//! below the version, the list already shows that change's result.
//!
//! A flush costs one frame per member, so a big room waits longer: one window per
//! [`MEMBERS_PER_WINDOW`] members, at most [`MAX_WINDOWS`] windows (1 s by default for 1,000
//! members). A filling room then sends about the same number of presence frames a second
//! whatever its size, up to that cap, instead of a number that grows with its members.
//!
//! One change renders as the single-change `presence` frame clients have always known; several
//! as a `presence_batch` frame (README, Protocol v1).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::{v1, Wire};

/// One name's change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub name: Arc<str>,
    pub joined: bool,
}

/// A room's gathered presence changes, ready to render.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    /// At most one change per name, the last one seen.
    pub changes: Vec<Change>,
    /// The highest presence number among them (0: unnumbered).
    pub number: u64,
    /// The room's member count after the last change, where the broker said.
    pub count: Option<usize>,
    /// Where each name's change is in `changes`.
    index: HashMap<Arc<str>, usize>,
}

impl Batch {
    /// Adds a change; a later change of the same name replaces the earlier one.
    pub fn add(&mut self, name: &Arc<str>, joined: bool, number: u64, count: Option<usize>) {
        match self.index.get(name) {
            Some(&i) => self.changes[i].joined = joined,
            None => {
                self.index.insert(name.clone(), self.changes.len());
                self.changes.push(Change {
                    name: name.clone(),
                    joined,
                });
            }
        }
        self.number = self.number.max(number);
        if count.is_some() {
            self.count = count;
        }
    }

    /// The frames this batch goes out as (protocol v1 only: seed clients see no presence).
    pub fn render(&self, room: &str) -> Wire {
        let v1 = match self.changes.as_slice() {
            [one] => v1::presence(room, &one.name, one.joined),
            many => {
                let names = |joined: bool| -> Vec<&str> {
                    many.iter()
                        .filter(|c| c.joined == joined)
                        .map(|c| &*c.name)
                        .collect()
                };
                v1::presence_batch(room, names(true), names(false), self.count)
            }
        };
        Wire {
            v1: v1.into(),
            seed: None,
        }
    }
}

/// Members per window of a room's wait (see the module's doc).
pub const MEMBERS_PER_WINDOW: usize = 250;
/// The most windows a room waits, however big.
pub const MAX_WINDOWS: u32 = 4;

/// How long a room of `members` waits between presence events (`None`: its size is unknown).
pub fn room_window(window: Duration, members: Option<usize>) -> Duration {
    let windows = members.map_or(1, |m| m.div_ceil(MEMBERS_PER_WINDOW).max(1));
    window * (windows as u32).min(MAX_WINDOWS)
}

/// Per room: when its last presence event went out, what waits for the next flush, and the
/// room's last known size.
#[derive(Debug)]
struct RoomPresence {
    sent: Instant,
    pending: Option<Batch>,
    members: Option<usize>,
}

impl RoomPresence {
    fn window(&self, window: Duration) -> Duration {
        room_window(window, self.members)
    }
}

/// The hub's presence batches, by room.
#[derive(Debug)]
pub struct PresenceBatches {
    window: Duration,
    rooms: Mutex<HashMap<Arc<str>, RoomPresence>>,
}

/// What the caller does with a change it added.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// Send this now (the room was quiet for a window, or there is no window).
    Now(Batch),
    /// Kept for the next flush.
    Held,
}

impl PresenceBatches {
    /// Batches over `window`; `Duration::ZERO` sends every change at once, as before batching.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            rooms: Mutex::default(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// The lock under which changes are added and batches are taken; the caller broadcasts
    /// what it gets while holding it, so a room's presence events keep their order.
    pub fn lock(&self) -> Guard<'_> {
        Guard {
            window: self.window,
            rooms: self.rooms.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// The locked batches (see [`PresenceBatches::lock`]).
pub struct Guard<'a> {
    window: Duration,
    rooms: MutexGuard<'a, HashMap<Arc<str>, RoomPresence>>,
}

impl Guard<'_> {
    /// Adds a change of `room` at `now`.
    pub fn add(
        &mut self,
        room: &Arc<str>,
        name: &Arc<str>,
        joined: bool,
        number: u64,
        count: Option<usize>,
        now: Instant,
    ) -> Added {
        let one = || {
            let mut b = Batch::default();
            b.add(name, joined, number, count);
            b
        };
        if self.window.is_zero() {
            return Added::Now(one());
        }
        let window = self.window;
        match self.rooms.get_mut(room) {
            Some(r) => {
                if count.is_some() {
                    r.members = count;
                }
                let wait = r.window(window);
                match &mut r.pending {
                    Some(b) => {
                        b.add(name, joined, number, count);
                        Added::Held
                    }
                    None if now.duration_since(r.sent) < wait => {
                        r.pending = Some(one());
                        Added::Held
                    }
                    None => {
                        r.sent = now;
                        Added::Now(one())
                    }
                }
            }
            None => {
                self.rooms.insert(
                    room.clone(),
                    RoomPresence {
                        sent: now,
                        pending: None,
                        members: count,
                    },
                );
                Added::Now(one())
            }
        }
    }

    /// Takes the pending batches that are due (they go out now, at `now`), and forgets the
    /// rooms that were quiet for their whole wait. Called every window: a room of one window
    /// sends whatever it holds; a bigger room's batch is due half a window before its wait
    /// ends, so a flush that comes a little early does not put it off by a whole window.
    pub fn take(&mut self, now: Instant) -> Vec<(Arc<str>, Batch)> {
        let mut out = Vec::new();
        let window = self.window;
        self.rooms.retain(|room, r| {
            let wait = r.window(window);
            let since = now.duration_since(r.sent);
            if r.pending.is_some() && (wait == window || since + window / 2 >= wait) {
                if let Some(b) = r.pending.take() {
                    r.sent = now;
                    out.push((room.clone(), b));
                }
                return true;
            }
            r.pending.is_some() || since < wait
        });
        out
    }

    /// Takes `room`'s pending batch, if any (it goes out now, at `now`): a message must not
    /// overtake the presence changes that came before it.
    pub fn take_room(&mut self, room: &str, now: Instant) -> Option<Batch> {
        let r = self.rooms.get_mut(room)?;
        let b = r.pending.take()?;
        r.sent = now;
        Some(b)
    }

    /// Rooms with batches or a recent event (for tests that check nothing is kept).
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn name(s: &str) -> Arc<str> {
        s.into()
    }

    fn frame(b: &Batch) -> Value {
        serde_json::from_str(b.render("r").v1.text()).unwrap()
    }

    /// The last change of a name wins; the number is the highest, the count the last given.
    #[test]
    fn a_batch_keeps_each_names_last_change() {
        let mut b = Batch::default();
        b.add(&name("a"), true, 5, Some(1));
        b.add(&name("b"), true, 6, Some(2));
        b.add(&name("a"), false, 7, Some(1));
        b.add(&name("c"), false, 8, Some(0));
        b.add(&name("c"), true, 9, Some(1));
        assert_eq!(b.number, 9);
        assert_eq!(
            frame(&b),
            json!({"type": "presence_batch", "room": "r", "joined": ["b", "c"], "left": ["a"],
                   "member_count": 1})
        );
        let mut one = Batch::default();
        one.add(&name("a"), true, 1, Some(1));
        one.add(&name("a"), false, 2, Some(0));
        assert_eq!(
            frame(&one),
            json!({"type": "presence", "room": "r", "name": "a", "event": "left"})
        );
    }

    /// The first change after a quiet window goes at once, the next ones wait for the flush,
    /// and a room quiet for a window is forgotten.
    #[test]
    fn leading_change_goes_at_once_and_the_rest_wait() {
        let w = Duration::from_millis(50);
        let batches = PresenceBatches::new(w);
        let t0 = Instant::now();
        let room = name("r");
        let mut g = batches.lock();
        assert!(matches!(
            g.add(&room, &name("a"), true, 1, None, t0),
            Added::Now(_)
        ));
        assert_eq!(g.add(&room, &name("b"), true, 2, None, t0), Added::Held);
        assert_eq!(g.add(&room, &name("c"), true, 3, None, t0), Added::Held);
        let out = g.take(t0 + Duration::from_millis(10));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.changes.len(), 2);
        assert_eq!(out[0].1.number, 3);
        // Within a window of that flush: held again.
        let t1 = t0 + Duration::from_millis(30);
        assert_eq!(g.add(&room, &name("d"), true, 4, None, t1), Added::Held);
        assert_eq!(g.take(t1).len(), 1);
        // A message takes its room's batch out of turn; the window goes on from then.
        let t2 = t1 + Duration::from_millis(10);
        assert_eq!(g.add(&room, &name("f"), true, 6, None, t2), Added::Held);
        assert!(g.take_room("other", t2).is_none());
        assert_eq!(g.take_room(&room, t2).map(|b| b.number), Some(6));
        assert!(g.take_room(&room, t2).is_none());
        assert_eq!(g.add(&room, &name("g"), true, 7, None, t2), Added::Held);
        assert_eq!(g.take(t2).len(), 1);
        assert!(g.take(t2 + w).is_empty());
        assert_eq!(g.rooms(), 0);
        assert!(matches!(
            g.add(&room, &name("e"), true, 5, None, t1 + w),
            Added::Now(_)
        ));
        drop(g);
        let none = PresenceBatches::new(Duration::ZERO);
        let mut g = none.lock();
        for n in 1..4 {
            assert!(matches!(
                g.add(&room, &name("a"), n % 2 == 1, n, None, t0),
                Added::Now(_)
            ));
        }
        assert_eq!(g.rooms(), 0);
    }

    /// A big room waits a window per 250 members, at most four: its batches go out less often.
    #[test]
    fn a_big_room_waits_longer() {
        let w = Duration::from_millis(50);
        assert_eq!(room_window(w, None), w);
        assert_eq!(room_window(w, Some(0)), w);
        assert_eq!(room_window(w, Some(250)), w);
        assert_eq!(room_window(w, Some(251)), w * 2);
        assert_eq!(room_window(w, Some(1_000)), w * 4);
        assert_eq!(room_window(w, Some(100_000)), w * 4);

        let batches = PresenceBatches::new(w);
        let (big, small) = (name("big"), name("small"));
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut g = batches.lock();
        assert!(matches!(
            g.add(&big, &name("a"), true, 1, Some(1_000), t0),
            Added::Now(_)
        ));
        assert!(matches!(
            g.add(&small, &name("a"), true, 1, Some(10), t0),
            Added::Now(_)
        ));
        // Past one window the small room is quiet again; the big one is not.
        assert!(matches!(
            g.add(&small, &name("b"), true, 2, Some(11), at(60)),
            Added::Now(_)
        ));
        assert_eq!(
            g.add(&big, &name("b"), true, 2, Some(1_001), at(60)),
            Added::Held
        );
        assert_eq!(
            g.add(&small, &name("c"), true, 3, Some(12), at(70)),
            Added::Held
        );
        // The small room's batch goes at the next flush, the big room's only near its 200 ms.
        let names = |out: Vec<(Arc<str>, Batch)>| -> Vec<String> {
            out.into_iter().map(|(r, _)| r.to_string()).collect()
        };
        assert_eq!(names(g.take(at(100))), ["small"]);
        assert!(g.take(at(150)).is_empty());
        assert_eq!(names(g.take(at(180))), ["big"]);
        // Quiet rooms are forgotten after their own wait.
        assert!(g.take(at(260)).is_empty());
        assert_eq!(g.rooms(), 1);
        assert!(g.take(at(400)).is_empty());
        assert_eq!(g.rooms(), 0);
    }
}
