//! Hub unit tests: joins, fan-out, resume, name grace and eviction, without sockets.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::broker::MemoryBroker;
use super::store::memory::MemoryStore;
use super::store::Retention;
use super::*;
use async_std::task::block_on;

#[derive(Debug, Default)]
struct Evictions(Mutex<Vec<Arc<str>>>);

impl Evict for Evictions {
    fn evict(&self, room: Arc<str>) {
        self.0.lock().unwrap().push(room);
    }
}

const GRACE: Duration = Duration::from_secs(30);

fn hub(max_rooms: usize) -> Arc<Hub> {
    hub_with(max_rooms, None)
}

/// A hub over a memory store keeping 100 messages (none older than `age`).
fn hub_with(max_rooms: usize, age: Option<Duration>) -> Arc<Hub> {
    let store = Arc::new(MemoryStore::new(Retention {
        messages: 100,
        bytes: 1 << 20,
        age,
    }));
    Hub::new(
        HubConfig {
            max_rooms,
            room_buffer: 64,
            room_buffer_bytes: 1 << 20,
            presence_cap: 100,
            page_messages: 50,
            page_bytes: 1 << 20,
            name_grace: GRACE,
            timestamps: false,
            write_delay: Duration::ZERO,
            hot_write_delay: Duration::ZERO,
            pass_tasks: 1,
            presence_window: Duration::ZERO,
        },
        Arc::new(MemoryBroker::new(store, 100)),
    )
}

fn join(hub: &Hub, room: &str, name: &str, conn: u64) -> Result<Joined, HubError> {
    join_with(hub, room, name, conn, None, None, None).map(|(j, _)| j)
}

fn join_with(
    hub: &Hub,
    room: &str,
    name: &str,
    conn: u64,
    since: Option<u64>,
    epoch: Option<Epoch>,
    token: Option<&str>,
) -> Result<(Joined, Arc<Evictions>), HubError> {
    let evictions = Arc::new(Evictions::default());
    let joined = block_on(hub.join(JoinRequest {
        room,
        name,
        since,
        epoch: epoch.map(|e| e.0),
        token,
        conn,
        evictor: evictions.clone(),
        pusher: None,
        snapshot: true,
    }))?;
    Ok((joined, evictions))
}

/// What is queued for a receiver: `(offset, v1 frame)` of each event.
fn drain(rx: &mut Receiver<EventRef>) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        out.push((ev.offset, ev.wire.v1.text().to_string()));
    }
    out
}

fn presence(events: &[(u64, String)]) -> Vec<&str> {
    events
        .iter()
        .filter(|(o, _)| *o == 0)
        .map(|(_, f)| f.as_str())
        .collect()
}

#[test]
fn a_message_reaches_every_member_in_order_with_its_sender() {
    let hub = hub(10);
    let mut a = join(&hub, "r", "alice", 1).unwrap();
    let mut b = join(&hub, "r", "bob", 2).unwrap();
    assert_eq!(drain(&mut a.rx).len(), 1, "alice saw bob join");
    for i in 1..=3 {
        let pos = block_on(hub.say("r", "alice", 1, &format!("m{i}"), None)).unwrap();
        assert_eq!(pos, StreamPosition::new(i, a.state.epoch));
    }
    for rx in [&mut a.rx, &mut b.rx] {
        let got = drain(rx);
        assert_eq!(got.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(
            got[0].1.contains(r#""from":"alice","text":"m1""#),
            "{}",
            got[0].1
        );
    }
    assert_eq!(
        block_on(hub.say("r", "bob", 1, "x", None)),
        Err(HubError::NotInRoom)
    );
    assert_eq!(
        block_on(hub.say("nowhere", "bob", 2, "x", None)),
        Err(HubError::NotInRoom)
    );
    let stats = hub.stats();
    assert_eq!(
        (stats.rooms, stats.members, stats.receivers, stats.messages),
        (1, 2, 2, 3)
    );
}

#[test]
fn a_join_sees_history_and_a_resume_gets_exactly_its_gap() {
    let hub = hub(10);
    let a = join(&hub, "r", "alice", 1).unwrap();
    for i in 1..=5 {
        block_on(hub.say("r", "alice", 1, &format!("m{i}"), None)).unwrap();
    }
    let b = join(&hub, "r", "bob", 2).unwrap();
    assert_eq!(b.state.last, 5);
    assert_eq!(b.history.len(), 5);
    assert!(!b.recovered, "a fresh join recovers nothing");
    let epoch = a.state.epoch;
    let (c, _) = join_with(&hub, "r", "carol", 3, Some(3), Some(epoch), None).unwrap();
    let got: Vec<u64> = c.history.iter().map(|p| p.pos.offset).collect();
    assert_eq!((got, c.recovered), (vec![4, 5], true));
    let (d, _) = join_with(&hub, "r", "dave", 4, Some(5), Some(epoch), None).unwrap();
    assert!(d.history.is_empty() && d.recovered);
    let other = Epoch(epoch.0 ^ 1);
    let (e, _) = join_with(&hub, "r", "eve", 5, Some(3), Some(other), None).unwrap();
    assert!(!e.recovered, "another epoch");
    assert_eq!(e.history.len(), 5, "the latest page instead");
    let (f, _) = join_with(&hub, "r", "fay", 6, Some(9), Some(epoch), None).unwrap();
    assert!(!f.recovered, "ids from the future");
}

#[test]
fn names_are_unique_and_a_token_takes_one_back_quietly() {
    let hub = hub(10);
    let (a, old) = join_with(&hub, "r", "alice", 1, None, None, None).unwrap();
    let mut bob = join(&hub, "r", "bob", 2).unwrap();
    drain(&mut bob.rx);
    assert_eq!(join(&hub, "r", "alice", 3).err(), Some(HubError::NameTaken));
    assert_eq!(
        join(&hub, "r", "alice", 1).err(),
        Some(HubError::AlreadyJoined)
    );
    let wrong = "0".repeat(a.token.len());
    assert!(join_with(&hub, "r", "alice", 3, None, None, Some(&wrong)).is_err());
    let (again, _) = join_with(&hub, "r", "alice", 3, None, None, Some(&a.token)).unwrap();
    assert_ne!(again.token, a.token, "a new token each time");
    assert_eq!(
        *old.0.lock().unwrap(),
        vec![Arc::<str>::from("r")],
        "the old one was told"
    );
    assert!(presence(&drain(&mut bob.rx)).is_empty(), "no flicker");
    // The old connection's late leave does not remove the new holder.
    block_on(hub.leave("r", "alice", 1));
    assert_eq!(join(&hub, "r", "alice", 4).err(), Some(HubError::NameTaken));
}

#[test]
fn a_dropped_name_waits_out_its_grace_for_its_token() {
    let hub = hub(10);
    let a = join(&hub, "r", "alice", 1).unwrap();
    let mut bob = join(&hub, "r", "bob", 2).unwrap();
    drain(&mut bob.rx);
    block_on(hub.disconnect("r", "alice", 1));
    assert_eq!(
        join(&hub, "r", "alice", 3).err(),
        Some(HubError::NameTaken),
        "a stranger"
    );
    block_on(hub.tick(Instant::now() + GRACE / 2));
    assert!(drain(&mut bob.rx).is_empty(), "no left within the grace");
    let (back, _) = join_with(&hub, "r", "alice", 4, None, None, Some(&a.token)).unwrap();
    assert!(drain(&mut bob.rx).is_empty(), "no joined either");
    block_on(hub.tick(Instant::now() + 2 * GRACE));
    assert!(
        drain(&mut bob.rx).is_empty(),
        "the resumed name's old grace is void"
    );

    block_on(hub.disconnect("r", "alice", 4));
    block_on(hub.tick(Instant::now() + GRACE + Duration::from_secs(1)));
    let events = drain(&mut bob.rx);
    assert_eq!(presence(&events).len(), 1, "{events:?}");
    assert!(events[0].1.contains(r#""name":"alice","event":"left""#));
    assert!(join_with(&hub, "r", "alice", 5, None, None, Some(&back.token)).is_ok());

    // An explicit leave frees the name at once.
    block_on(hub.leave("r", "alice", 5));
    assert!(presence(&drain(&mut bob.rx))[1].contains("left"));
    assert!(join(&hub, "r", "alice", 6).is_ok());
}

#[test]
fn the_longest_idle_room_is_evicted_and_a_busy_one_never() {
    let hub = hub(2);
    // A connection drops its receiver when it leaves.
    drop(join(&hub, "a", "x", 1).unwrap());
    block_on(hub.say("a", "x", 1, "old", None)).unwrap();
    block_on(hub.leave("a", "x", 1));
    drop(join(&hub, "b", "x", 2).unwrap());
    block_on(hub.leave("b", "x", 2));
    let _b2 = join(&hub, "b", "y", 3).unwrap();
    // `a` went idle first and `b` is busy again: `c` takes `a`'s place.
    let c = join(&hub, "c", "x", 4).unwrap();
    assert_eq!(c.state.last, 0);
    drop(c);
    assert_eq!(hub.stats().rooms, 2);
    // Both rooms are busy: nothing to evict.
    assert_eq!(join(&hub, "d", "x", 5).err(), Some(HubError::ServerFull));
    assert_eq!(hub.stats().rooms, 2);
    // In memory, `a` lost its history with its place; it comes back as a new life.
    block_on(hub.leave("c", "x", 4));
    let a2 = join(&hub, "a", "x", 6).unwrap();
    assert_eq!(a2.state.last, 0);
    assert!(a2.history.is_empty());
    let stats = hub.stats();
    assert_eq!((stats.members, stats.receivers), (2, 2));
}

/// Joins, messages and leaves on more rooms than the hub holds, from several threads: a member
/// can always publish (its room is in the map), a full hub refuses rather than evicting a busy
/// room, and nothing is left behind.
#[test]
fn joins_racing_evictions_never_strand_a_member() {
    let hub = hub(3);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let hub = hub.clone();
            std::thread::spawn(move || {
                let (mut seed, mut full) = (t * 7919 + 1, 0);
                for i in 0..2_000u64 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let room = format!("r{}", (seed >> 33) % 7);
                    let conn = t * 1_000_000 + i + 1;
                    match join(&hub, &room, "n", conn) {
                        Ok(joined) => {
                            block_on(hub.say(&room, "n", conn, "x", None))
                                .expect("a member's room is in the map");
                            drop(joined);
                            block_on(hub.leave(&room, "n", conn));
                        }
                        Err(HubError::ServerFull | HubError::NameTaken) => full += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                full
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = hub.stats();
    assert!(stats.rooms <= 3, "{stats:?}");
    assert_eq!((stats.members, stats.receivers), (0, 0), "{stats:?}");
}

/// `--history-age` reaches the store through the hub's housekeeping tick.
#[test]
fn old_messages_leave_the_history_on_the_tick() {
    let hub = hub_with(10, Some(Duration::from_millis(300)));
    let _a = join(&hub, "r", "alice", 1).unwrap();
    block_on(hub.say("r", "alice", 1, "old", None)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    block_on(hub.say("r", "alice", 1, "new", None)).unwrap();
    block_on(hub.tick(Instant::now()));
    let b = join(&hub, "r", "bob", 2).unwrap();
    let texts: Vec<&str> = b.history.iter().map(|p| &*p.text).collect();
    assert_eq!(texts, ["new"]);
    assert_eq!(b.state.last, 2);
}

/// Counts the pushes it gets.
#[derive(Debug, Default)]
struct Pushes {
    n: std::sync::atomic::AtomicUsize,
}

impl Push for Pushes {
    fn push(&self, room: &str, _: &store::Commits, _: &mut crate::metrics::PassTally) {
        assert_eq!(room, "big");
        self.n.fetch_add(1, Ordering::SeqCst);
    }
}

/// A big room's direct-write pass is split over the executor's threads, and every member that
/// takes direct writes gets the room's news exactly once per pass.
#[test]
fn a_big_rooms_pass_reaches_every_member_once_split_over_tasks() {
    let mut config = hub(10).config.clone();
    config.pass_tasks = 3;
    config.presence_cap = 0;
    let store = Arc::new(MemoryStore::new(Retention {
        messages: 100,
        bytes: 1 << 20,
        age: None,
    }));
    let hub = Hub::new(config, Arc::new(MemoryBroker::new(store, 0)));
    let members = 3 * PASS_CHUNK + 7;
    let mut pushes = Vec::new();
    let mut keep = Vec::new();
    for conn in 1..=members as u64 {
        let p = Arc::new(Pushes::default());
        let name = format!("m{conn}");
        keep.push(
            block_on(hub.join(JoinRequest {
                room: "big",
                name: &name,
                since: None,
                epoch: None,
                token: None,
                conn,
                evictor: Arc::new(Evictions::default()),
                pusher: Some(p.clone()),
                snapshot: false,
            }))
            .unwrap(),
        );
        pushes.push(p);
    }
    block_on(hub.say("big", "m1", 1, "hello", None)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let count = |n: usize| {
        pushes
            .iter()
            .filter(|p| p.n.load(Ordering::SeqCst) == n)
            .count()
    };
    while count(1) < members {
        assert!(
            Instant::now() < deadline,
            "{} of {members} pushed",
            count(1)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(count(1), members, "none twice");
}
