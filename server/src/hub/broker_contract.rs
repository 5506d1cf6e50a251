//! The contract every [`Broker`] passes, run here against the memory broker over both history
//! stores; `hub::redis::tests` runs the same functions against the Redis broker.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::broker::{Broker, BrokerError, Deliver, Delivery, MemoryBroker, NewMessage};
use super::position::StreamPosition;
use super::record::RoomEvent;
use super::store::durable::DurableStore;
use super::store::memory::MemoryStore;
use super::store::{HistoryStore, Retention};
use super::Page;
use async_std::task::block_on;

const RETENTION: Retention = Retention {
    messages: 100,
    bytes: 1 << 20,
    age: None,
};

/// What the broker handed back, in order.
#[derive(Default)]
struct Sink(Mutex<Vec<Delivery>>);

impl Deliver for Sink {
    fn deliver(&self, d: Delivery) {
        self.0.lock().unwrap().push(d);
    }

    fn reset(&self, room: &Arc<str>) {
        panic!("reset of {room:?} in a contract test");
    }

    fn replaced(&self, room: &Arc<str>, name: &str, conn: u64) {
        panic!("{name:?} of #{conn} replaced in {room:?} in a contract test");
    }
}

impl Sink {
    fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn attach(broker: &dyn Broker) -> Arc<Sink> {
    let sink = Arc::new(Sink::default());
    let weak: Weak<Sink> = Arc::downgrade(&sink);
    broker.attach(weak);
    sink
}

fn say<'a>(room: &'a Arc<str>, from: &'a Arc<str>, text: &'a str, origin: u64) -> NewMessage<'a> {
    NewMessage {
        room,
        from,
        text,
        reference: Some("n1"),
        origin,
    }
}

/// Every publication gets the next position, comes back for delivery in order, and is in the
/// history.
pub fn publications_are_ordered_delivered_and_kept(broker: &dyn Broker) {
    let sink = attach(broker);
    let (room, bob): (Arc<str>, Arc<str>) = ("r".into(), "bob".into());
    block_on(broker.subscribe(&room)).unwrap();
    let epoch = block_on(broker.history(&room, Page::Before(u64::MAX), 0, 0))
        .unwrap()
        .state
        .epoch;
    for i in 1..=5 {
        let pos = block_on(broker.publish(say(&room, &bob, &format!("m{i}"), 7))).unwrap();
        assert_eq!(pos, StreamPosition::new(i, epoch));
    }
    let delivered = wait_for(&sink, 5);
    let offsets: Vec<u64> = delivered
        .iter()
        .map(|d| match &d.event {
            RoomEvent::Message(p) => {
                assert_eq!(
                    (&*p.from, p.reference.as_deref(), d.origin),
                    ("bob", Some("n1"), 7)
                );
                p.pos.offset
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(offsets, vec![1, 2, 3, 4, 5]);
    let h = block_on(broker.history(&room, Page::Since(2), 10, 1 << 20)).unwrap();
    assert_eq!(h.state.last, 5);
    let texts: Vec<&str> = h.read.messages.iter().map(|p| &*p.text).collect();
    assert_eq!(texts, ["m3", "m4", "m5"]);
    assert!(h.state.recovers(2, epoch, Some(3)));
}

/// A sender's echo can wait for its ticket: tickets of a durable store become durable.
pub fn tickets_become_durable(broker: &dyn Broker, durable: bool) {
    let sink = attach(broker);
    let (room, bob): (Arc<str>, Arc<str>) = ("t".into(), "bob".into());
    block_on(broker.subscribe(&room)).unwrap();
    block_on(broker.publish(say(&room, &bob, "x", 1))).unwrap();
    let d = wait_for(&sink, 1);
    let ticket = d[0].ticket;
    assert_eq!(ticket > 0, durable, "ticket {ticket}");
    async_std::task::block_on(async_std::future::timeout(
        Duration::from_secs(10),
        broker.commits().wait(ticket),
    ))
    .expect("the ticket became durable");
}

/// Time as a broker sees it. The memory broker runs on the `now` given to `expire`, so its
/// clock is virtual; a broker over Redis keeps Redis's time, so its graces really run (short).
pub struct Clock {
    real: bool,
    virtual_now: Mutex<Instant>,
}

impl Clock {
    pub fn virtual_time() -> Self {
        Self {
            real: false,
            virtual_now: Mutex::new(Instant::now()),
        }
    }

    pub fn real_time() -> Self {
        Self {
            real: true,
            virtual_now: Mutex::new(Instant::now()),
        }
    }

    /// The name grace the test uses.
    fn grace(&self) -> Duration {
        if self.real {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(30)
        }
    }

    fn now(&self) -> Instant {
        if self.real {
            Instant::now()
        } else {
            *self.virtual_now.lock().unwrap()
        }
    }

    /// Lets `d` pass, then runs the broker's housekeeping (for a real clock, long enough for
    /// one round of it).
    fn advance(&self, broker: &dyn Broker, d: Duration) {
        if self.real {
            std::thread::sleep(d);
            let end = Instant::now() + Duration::from_millis(1100);
            while Instant::now() < end {
                block_on(broker.expire(Instant::now()));
                std::thread::sleep(Duration::from_millis(50));
            }
        } else {
            *self.virtual_now.lock().unwrap() += d;
            block_on(broker.expire(self.now()));
        }
    }
}

/// Waits (bounded) until `n` deliveries arrived, and takes them.
fn wait_for(sink: &Sink, n: usize) -> Vec<Delivery> {
    let end = Instant::now() + Duration::from_secs(10);
    while sink.0.lock().unwrap().len() < n && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    sink.take()
}

/// Everything delivered in `room` before a marker message published now (a broker delivers a
/// room's events in order, so this is all there is so far).
fn settle(broker: &dyn Broker, sink: &Sink, room: &Arc<str>) -> Vec<Delivery> {
    let fence: Arc<str> = "fence".into();
    block_on(broker.publish(say(room, &fence, "fence", 0))).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let got = sink.take();
        if let Some(i) = got
            .iter()
            .position(|d| matches!(&d.event, RoomEvent::Message(p) if &*p.text == "fence"))
        {
            let mut got = got;
            got.truncate(i);
            return got;
        }
        assert!(Instant::now() < end, "the marker message never came back");
        sink.0.lock().unwrap().splice(0..0, got);
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn is_presence(events: &[Delivery], joined: bool) -> bool {
    matches!(
        events,
        [Delivery {
            event: RoomEvent::Presence { joined: j, .. },
            ..
        }] if *j == joined
    )
}

/// Names: unique per room, taken back with the token, reserved through a grace.
pub fn names_claims_resumes_and_graces(broker: &dyn Broker, clock: &Clock) {
    let sink = attach(broker);
    let (room, alice): (Arc<str>, Arc<str>) = ("p".into(), "alice".into());
    block_on(broker.subscribe(&room)).unwrap();
    let claim = block_on(broker.presence_add(&room, &alice, 1, None)).unwrap();
    assert!(is_presence(&settle(broker, &sink, &room), true));
    assert_eq!(
        block_on(broker.presence_add(&room, &alice, 2, None)).unwrap_err(),
        BrokerError::NameTaken
    );
    assert_eq!(
        block_on(broker.presence_add(&room, &alice, 1, None)).unwrap_err(),
        BrokerError::AlreadyJoined
    );
    let resumed = block_on(broker.presence_add(&room, &alice, 2, Some(&claim.token))).unwrap();
    assert_eq!(resumed.replaced, Some(1));
    assert!(
        settle(broker, &sink, &room).is_empty(),
        "a resume is no presence change"
    );
    let list = block_on(broker.presence_list(&room, 10));
    assert_eq!((list.count, list.names.len()), (1, 1));

    // Gone without leaving: reserved until the grace ends, then one `left`.
    let grace = clock.grace();
    block_on(broker.presence_detach(&room, &alice, 2, clock.now() + grace));
    assert_eq!(
        block_on(broker.presence_add(&room, &alice, 3, None)).unwrap_err(),
        BrokerError::NameTaken
    );
    clock.advance(broker, grace / 3);
    assert!(settle(broker, &sink, &room).is_empty());
    let back = block_on(broker.presence_add(&room, &alice, 4, Some(&resumed.token))).unwrap();
    assert_eq!(back.replaced, None, "nobody held it");
    clock.advance(broker, grace);
    assert!(
        settle(broker, &sink, &room).is_empty(),
        "the resume ended the grace"
    );
    block_on(broker.presence_detach(&room, &alice, 4, clock.now() + grace));
    clock.advance(broker, grace + Duration::from_millis(100));
    assert!(is_presence(&settle(broker, &sink, &room), false));
    assert_eq!(block_on(broker.presence_list(&room, 10)).count, 0);

    // A leave frees it at once.
    block_on(broker.presence_add(&room, &alice, 5, None)).unwrap();
    block_on(broker.presence_remove(&room, &alice, 5));
    assert_eq!(settle(broker, &sink, &room).len(), 2);
    block_on(broker.presence_add(&room, &alice, 6, None)).unwrap();
}

/// Runs every contract test, each on a fresh broker from `new` (a broker delivers to the one
/// sink it was attached to).
fn all(new: &dyn Fn() -> MemoryBroker, durable: bool) {
    publications_are_ordered_delivered_and_kept(&new());
    tickets_become_durable(&new(), durable);
    names_claims_resumes_and_graces(&new(), &Clock::virtual_time());
}

#[test]
fn memory_broker_over_the_memory_store() {
    all(
        &|| MemoryBroker::new(Arc::new(MemoryStore::new(RETENTION)), 100),
        false,
    );
}

#[test]
fn memory_broker_over_the_durable_store() {
    let dirs = Mutex::new(Vec::new());
    all(
        &|| {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn HistoryStore> = DurableStore::open(dir.path(), RETENTION).unwrap();
            dirs.lock().unwrap().push(dir);
            MemoryBroker::new(store, 100)
        },
        true,
    );
}
