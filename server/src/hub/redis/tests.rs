//! The Redis broker against a real `redis-server` started by each test: the broker contract,
//! then what only a broker that spans nodes does (two brokers on one Redis, the instance list
//! check, placement).

#[path = "../../../tests/common/redis.rs"]
mod fixture;

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_std::task::block_on;

use super::*;
use crate::hub::broker::Delivery;
use crate::hub::broker_contract::{self as contract, Clock};
use crate::hub::record::RoomEvent;
use fixture::{Kind, RedisServer};

fn settings(urls: Vec<String>) -> RedisSettings {
    RedisSettings {
        urls,
        ca: None,
        retention: Retention {
            messages: 100,
            bytes: 1 << 20,
            age: None,
        },
        presence_cap: 100,
        presence_ttl: Duration::from_secs(3),
        timeout: Duration::from_secs(2),
        roundtrip: None,
    }
}

fn say<'a>(room: &'a Arc<str>, who: &'a Arc<str>, text: &'a str, origin: u64) -> NewMessage<'a> {
    NewMessage {
        room,
        from: who,
        text,
        reference: None,
        origin,
    }
}

fn broker(redis: &RedisServer) -> Arc<RedisBroker> {
    block_on(RedisBroker::connect(settings(vec![redis.url()]))).expect("connect")
}

#[test]
fn the_broker_contract_holds_over_redis() {
    for kind in Kind::under_test() {
        let redis = RedisServer::of(kind, &[]);
        contract::publications_are_ordered_delivered_and_kept(&*broker(&redis));
        contract::tickets_become_durable(&*broker(&redis), false);
        contract::names_claims_resumes_and_graces(&*broker(&redis), &Clock::real_time());
    }
}

/// Deliveries of one broker, in order.
#[derive(Default)]
struct Seen {
    events: Mutex<Vec<RoomEvent>>,
    resets: Mutex<Vec<Arc<str>>>,
    replaced: Mutex<Vec<(String, u64)>>,
}

impl Deliver for Seen {
    fn deliver(&self, d: Delivery) {
        self.events.lock().unwrap().push(d.event);
    }
    fn reset(&self, room: &Arc<str>) {
        self.resets.lock().unwrap().push(room.clone());
    }
    fn replaced(&self, _room: &Arc<str>, name: &str, conn: u64) {
        self.replaced.lock().unwrap().push((name.into(), conn));
    }
}

fn attach(b: &RedisBroker) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let weak: Weak<Seen> = Arc::downgrade(&seen);
    b.attach(weak);
    seen
}

fn offsets(seen: &Seen) -> Vec<u64> {
    seen.events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            RoomEvent::Message(p) => Some(p.pos.offset),
            _ => None,
        })
        .collect()
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(std::time::Instant::now() < end, "never: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_nodes_share_one_sequence_and_take_names_from_each_other() {
    let redis = RedisServer::start();
    let (a, b) = (broker(&redis), broker(&redis));
    let (sa, sb) = (attach(&a), attach(&b));
    let room: Arc<str> = "shared".into();
    block_on(a.subscribe(&room)).unwrap();
    block_on(b.subscribe(&room)).unwrap();
    let who: Arc<str> = "x".into();
    for i in 0..20u64 {
        let node = if i % 2 == 0 { &a } else { &b };
        let msg = say(&room, &who, "hi", i);
        assert_eq!(block_on(node.publish(msg)).unwrap().offset, i + 1);
    }
    let all: Vec<u64> = (1..=20).collect();
    eventually("both nodes saw 1..=20", || {
        offsets(&sa) == all && offsets(&sb) == all
    });

    // A token from node A takes the name on node B, and A's holder is told.
    let alice: Arc<str> = "alice".into();
    let claim = block_on(a.presence_add(&room, &alice, 7, None)).unwrap();
    assert_eq!(
        block_on(b.presence_add(&room, &alice, 9, None)).unwrap_err(),
        BrokerError::NameTaken
    );
    let resumed = block_on(b.presence_add(&room, &alice, 9, Some(&claim.token))).unwrap();
    assert_eq!(resumed.replaced, None, "the holder is on the other node");
    eventually("node A was told", || {
        *sa.replaced.lock().unwrap() == [("alice".to_string(), 7)]
    });
    assert!(sb.replaced.lock().unwrap().is_empty());
    assert!(sa.resets.lock().unwrap().is_empty() && sb.resets.lock().unwrap().is_empty());
}

#[test]
fn a_node_with_another_instance_list_is_refused() {
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let _first = block_on(RedisBroker::connect(settings(vec![r1.url(), r2.url()]))).unwrap();
    let err = block_on(RedisBroker::connect(settings(vec![r2.url(), r1.url()]))).unwrap_err();
    assert!(err.to_string().contains("same --redis list"), "{err:#}");
    let err = block_on(RedisBroker::connect(settings(vec![r1.url()]))).unwrap_err();
    assert!(err.to_string().contains("same --redis list"), "{err:#}");
}

#[test]
fn rooms_spread_over_instances_and_move_little_when_one_is_added() {
    let rooms: Vec<String> = (0..10_000).map(|i| format!("room-{i}")).collect();
    let mut per = [0usize; 4];
    for r in &rooms {
        per[place(r, 4)] += 1;
    }
    for n in per {
        assert!((2_000..3_000).contains(&n), "{per:?}");
    }
    let moved = rooms.iter().filter(|r| place(r, 4) != place(r, 5)).count();
    // Consistent hashing moves about 1/5 of them; a modulo hash would move 4/5.
    assert!((1_500..2_500).contains(&moved), "{moved}");
    assert!(rooms.iter().all(|r| place(r, 1) == 0));
}

#[test]
fn unreachable_redis_is_refused_at_start_and_unavailable_later() {
    let mut redis = RedisServer::start();
    let b = broker(&redis);
    let _seen = attach(&b);
    let room: Arc<str> = "r".into();
    block_on(b.subscribe(&room)).unwrap();
    redis.kill();
    let who: Arc<str> = "x".into();
    let msg = say(&room, &who, "hi", 1);
    eventually("publishes are refused", || {
        matches!(block_on(b.publish(msg)), Err(BrokerError::Unreachable(_)))
    });
    let err = block_on(RedisBroker::connect(settings(vec![redis.url()]))).unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err:#}");
    redis.restart();
    eventually("publishes work again", || block_on(b.publish(msg)).is_ok());
}

#[test]
fn a_node_takes_a_rooms_feed_only_while_it_has_members_there() {
    let redis = RedisServer::start();
    let b = broker(&redis);
    let _seen = attach(&b);
    let room: Arc<str> = "quiet".into();
    let subscribers = || redis.cli(&["PUBSUB", "NUMSUB", "tc:{quiet}"]);
    block_on(b.subscribe(&room)).unwrap();
    assert!(subscribers().ends_with('1'), "{}", subscribers());
    b.idle(&room);
    eventually("the feed ended", || subscribers().ends_with('0'));
    block_on(b.subscribe(&room)).unwrap();
    assert!(subscribers().ends_with('1'), "{}", subscribers());
}

/// A hung Redis (stopped, its sockets still open) is noticed by the command timeout and the
/// PING, not by a closed connection.
#[test]
fn a_hung_redis_is_noticed_within_the_timeout_and_left_behind_when_it_wakes() {
    let redis = RedisServer::start();
    let mut s = settings(vec![redis.url()]);
    s.timeout = Duration::from_secs(1);
    let b = block_on(RedisBroker::connect(s)).unwrap();
    let _seen = attach(&b);
    let room: Arc<str> = "r".into();
    block_on(b.subscribe(&room)).unwrap();
    let who: Arc<str> = "x".into();
    let msg = say(&room, &who, "hi", 1);
    block_on(b.publish(msg)).unwrap();
    let pid = redis.pid().unwrap().to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    signal("-STOP");
    let hung = std::time::Instant::now();
    let first = block_on(b.publish(msg));
    let took = hung.elapsed();
    assert!(
        matches!(first, Err(BrokerError::Unreachable(_))),
        "{first:?}"
    );
    eventually("the instance is marked down", || !b.instances[0].is_up());
    let down = hung.elapsed();
    println!(
        "hung redis: a publish got unavailable after {} ms, the instance was down after {} ms",
        took.as_millis(),
        down.as_millis()
    );
    // Refused at once from now on, not after another timeout.
    let t = std::time::Instant::now();
    assert!(block_on(b.publish(msg)).is_err());
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    signal("-CONT");
    eventually("publishes work again", || block_on(b.publish(msg)).is_ok());
}

#[test]
fn the_stream_keeps_exactly_the_retention() {
    let redis = RedisServer::start();
    let mut s = settings(vec![redis.url()]);
    // Each message below counts 64 + 1 + 1 + 10 = 76 bytes (`Publication::bytes`).
    s.retention = Retention {
        messages: 5,
        bytes: 76 * 3,
        age: None,
    };
    let b = block_on(RedisBroker::connect(s.clone())).unwrap();
    let room: Arc<str> = "r".into();
    let who: Arc<str> = "x".into();
    let kept = |b: &RedisBroker| -> Vec<u64> {
        let h = block_on(b.history(&room, Page::Since(0), 100, usize::MAX)).unwrap();
        h.read.messages.iter().map(|p| p.pos.offset).collect()
    };
    for _ in 0..20 {
        let msg = say(&room, &who, "0123456789", 1);
        block_on(b.publish(msg)).unwrap();
    }
    assert_eq!(kept(&b), [18, 19, 20], "the byte cap");
    assert_eq!(redis.cli(&["XLEN", "tc:{r}:s"]), "3");

    s.retention.bytes = 1 << 20;
    let b = block_on(RedisBroker::connect(s)).unwrap();
    for _ in 0..20 {
        let msg = say(&room, &who, "0123456789", 1);
        block_on(b.publish(msg)).unwrap();
    }
    assert_eq!(kept(&b), [36, 37, 38, 39, 40], "the count cap");
    let h = block_on(b.history(&room, Page::Before(39), 2, usize::MAX)).unwrap();
    let before: Vec<u64> = h.read.messages.iter().map(|p| p.pos.offset).collect();
    assert_eq!(
        (before, h.read.more, h.state.last),
        (vec![37, 38], true, 40)
    );
}

/// `rediss://`: TLS to Redis, with the server certificate checked against `--redis-ca`.
#[test]
fn rediss_connects_over_tls_to_a_server_the_ca_vouches_for() {
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (certs.path().join("c.pem"), certs.path().join("k.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    // A free loopback port for the TLS listener (the plain one stays a unix socket).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let (c, k) = (
        cert_file.to_str().unwrap().to_string(),
        key_file.to_str().unwrap().to_string(),
    );
    let redis = RedisServer::start_with(&[
        "--bind",
        "127.0.0.1",
        "--tls-port",
        &port,
        "--tls-cert-file",
        &c,
        "--tls-key-file",
        &k,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://localhost:{port}/0");
    let mut s = settings(vec![url.clone()]);
    s.ca = Some(cert.pem().into_bytes());
    let b = block_on(RedisBroker::connect(s.clone())).expect("a TLS connection");
    let room: Arc<str> = "r".into();
    let who: Arc<str> = "x".into();
    let msg = say(&room, &who, "over tls", 1);
    assert_eq!(block_on(b.publish(msg)).unwrap().offset, 1);
    assert_eq!(redis.cli(&["XLEN", "tc:{r}:s"]), "1");
    drop(b);

    // Another CA's certificate: refused, and the start says why.
    let other = rcgen::KeyPair::generate().unwrap();
    let stranger = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&other)
        .unwrap();
    s.ca = Some(stranger.pem().into_bytes());
    let err = block_on(RedisBroker::connect(s)).unwrap_err();
    assert!(err.to_string().contains("cannot reach"), "{err:#}");
}

#[derive(Debug, Default)]
struct NoEvict;

impl crate::hub::Evict for NoEvict {
    fn evict(&self, _room: Arc<str>) {}
}

/// A joiner's receiver exists before its member list is read, and presence comes back from
/// Redis later: the writer must skip the changes the list already shows (its own join among
/// them), and show the later ones.
#[test]
fn a_joiner_sees_the_presence_changes_after_its_member_list_and_only_those() {
    use crate::hub::{Hub, HubConfig, JoinRequest};
    let redis = RedisServer::start();
    let hub = Hub::new(
        HubConfig {
            max_rooms: 10,
            room_buffer: 64,
            room_buffer_bytes: 1 << 20,
            presence_cap: 100,
            page_messages: 50,
            page_bytes: 1 << 20,
            name_grace: Duration::from_secs(1),
            timestamps: false,
            write_delay: Duration::ZERO,
            hot_write_delay: Duration::ZERO,
            pass_tasks: 1,
            presence_window: Duration::ZERO,
        },
        broker(&redis),
    );
    let join = |name: &str, conn: u64| {
        block_on(hub.join(JoinRequest {
            room: "r",
            name,
            since: None,
            epoch: None,
            token: None,
            conn,
            evictor: Arc::new(NoEvict),
            pusher: None,
            snapshot: true,
        }))
        .unwrap()
    };
    let mut alice = join("alice", 1);
    assert_eq!(alice.members, [Arc::<str>::from("alice")]);
    let bob = join("bob", 2);
    assert_eq!(bob.member_count, 2);
    block_on(hub.say("r", "bob", 2, "marker", None)).unwrap();
    let mut seen = Vec::new();
    eventually("alice's receiver got the marker", || {
        while let Ok(ev) = alice.rx.try_recv() {
            seen.push(ev);
        }
        seen.iter().any(|e| e.offset == 1)
    });
    let shown: Vec<(u64, bool)> = seen
        .iter()
        .map(|e| (e.presence, e.presence <= alice.presence_version))
        .collect();
    // Alice's own join is numbered at or below her list's number (skipped by her writer);
    // bob's is above it (shown).
    let presence: Vec<&(u64, bool)> = shown.iter().filter(|(n, _)| *n != 0).collect();
    assert!(
        presence.iter().any(|(_, skipped)| !skipped),
        "bob's join is shown: {shown:?}"
    );
    assert!(
        seen.iter()
            .filter(|e| e.presence != 0 && e.presence <= alice.presence_version)
            .all(|e| e.wire.v1.text().contains("alice")),
        "only alice's own join is skipped"
    );
    assert!(bob.presence_version > alice.presence_version);
}

/// A node that stalls past the presence ttl is swept (the others see `left`); when it comes
/// back, its refresh puts its members back and announces them again, so nobody goes on seeing
/// messages from someone they were told had left.
#[test]
fn a_node_back_from_a_stall_announces_its_members_again() {
    let redis = RedisServer::start();
    let (a, b) = (broker(&redis), broker(&redis));
    let (_sa, sb) = (attach(&a), attach(&b));
    let room: Arc<str> = "stall".into();
    block_on(a.subscribe(&room)).unwrap();
    block_on(b.subscribe(&room)).unwrap();
    let bob: Arc<str> = "bob".into();
    block_on(a.presence_add(&room, &bob, 1, None)).unwrap();
    let presence = |joined: bool| {
        sb.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, RoomEvent::Presence { name, joined: j, .. } if &**name == "bob" && *j == joined))
            .count()
    };
    eventually("B saw bob join", || presence(true) == 1);
    // A stalls: it neither refreshes nor sweeps; B sweeps once a second.
    eventually("B saw bob leave once the ttl ran out", || {
        block_on(b.expire(std::time::Instant::now()));
        presence(false) == 1
    });
    assert_eq!(block_on(b.presence_list(&room, 10)).count, 0);
    // A is back: its next refresh (due every ttl/3).
    block_on(a.expire(std::time::Instant::now() + Duration::from_secs(60)));
    eventually("B saw bob join again", || presence(true) == 2);
    assert_eq!(block_on(b.presence_list(&room, 10)).count, 1);
}
