//! The history store's crash contract (the module doc of `hub/store/durable.rs`), driven through
//! the real `tidechat` binary and real sockets: what a clean stop, a SIGKILL, a possible power
//! loss and a damaged directory each do to messages, ids, epochs and `recovered`; retention and
//! eviction through the server; and what a sender's echo means. Every test starts its own
//! server(s) on a fresh temporary data directory.
//!
//! Not here: a room whose stored messages do not decode (it starts over with a new epoch, the
//! others keep theirs). Writing such a record needs the store's private layout; the unit test
//! `a_damaged_room_starts_over_and_the_others_keep_theirs` in `durable.rs` covers it.
//!
//! The order "in the OS, then delivered; on disk, then acknowledged" is observed with a small
//! preload library ([`DISK_GATE_C`]) that holds the process's journal writes or fsyncs, so the
//! server needs no test hook.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_std::task;
use async_tungstenite::tungstenite::Message;
use common::msg::*;
use common::node::{listening, Tidechat};
use common::*;
use futures::StreamExt;
use serde_json::{json, Value};
use tidechat::hub::store::durable::LOST_JUMP;
use tidechat::Config;

/// The store's running marker, which holds the boot id of the machine it runs on.
const MARKER: &str = "tidechat.running";

/// Starts the binary on `dir` (rate limits lifted) with `extra` options, and waits until it
/// listens and has opened its store.
fn start(dir: &Path, extra: &[&str]) -> Tidechat {
    launch(dir, extra, &[])
        .unwrap_or_else(|(status, log)| panic!("tidechat exited ({status}): {log}"))
}

/// Starts the binary on `dir` and waits until its store is open (`Ok`) or it has exited
/// (`Err`: its status and stderr).
fn launch(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &OsStr)],
) -> Result<Tidechat, (ExitStatus, String)> {
    let mut args = vec![OsStr::new("--data-dir"), dir.as_os_str()];
    args.extend(extra.iter().map(OsStr::new));
    Tidechat::launch("tidechat", &args, env, listening_and_open)
}

/// Runs the binary on `dir` expecting it to refuse to start: its exit status and stderr.
fn refused(dir: &Path) -> (ExitStatus, String) {
    match launch(dir, &[], &[]) {
        Ok(server) => panic!("tidechat started: {}", server.log()),
        Err(refusal) => refusal,
    }
}

/// The address, once the log says both where it listens and that the store is open.
fn listening_and_open(msgs: &[String]) -> Option<SocketAddr> {
    if !msgs
        .iter()
        .any(|m| m.starts_with("history store") && m.contains(" opened in "))
    {
        return None;
    }
    listening(msgs)
}

/// A random number in `range` from the OS (each run kills at other moments; it is printed so
/// that a failure can be retraced).
fn random_in(range: std::ops::RangeInclusive<u64>) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    range.start() + u64::from_le_bytes(b) % (range.end() - range.start() + 1)
}

// ---------------------------------------------------------------------------------------------
// 1. A clean restart loses nothing.

#[async_std::test]
async fn a_clean_restart_keeps_every_message_its_id_and_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    // The default keeps 500 per room; all 1,000 are to come back.
    let keep = ["--history", "2000"];
    let server = start(dir.path(), &keep);
    let (alice, joined) = joined_at(server.addr, "r", "alice", None).await;
    let epoch = u64_of(&joined, "epoch");
    let (bob, _) = joined_at(server.addr, "r", "bob", None).await;
    // Two senders at once, each waiting for its own echo before its next message.
    let a = task::spawn(send_acked(alice, "r".into(), "alice".into(), 500));
    let b = task::spawn(send_acked(bob, "r".into(), "bob".into(), 500));
    let (mut alice, from_alice) = a.await;
    let (mut bob, from_bob) = b.await;
    let acked = by_id(from_alice.into_iter().chain(from_bob));
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );

    server.sigterm();
    assert_eq!(alice.closed().await, Some(1001));
    assert_eq!(bob.closed().await, Some(1001));
    let status = server.exit_status().await;
    assert!(status.success(), "{status}");
    assert!(
        !dir.path().join(MARKER).exists(),
        "a clean stop removes the running marker"
    );

    let server = start(dir.path(), &keep);
    server.wait_log("after a clean stop");
    let (mut carol, joined) = joined_at(server.addr, "r", "carol", Some((0, epoch))).await;
    assert_eq!(u64_of(&joined, "epoch"), epoch, "the same life of the room");
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(u64_of(&joined, "last_id"), 1000);
    assert_eq!(joined["history"].as_array().unwrap().len(), 50, "one page");
    assert_eq!(joined["more"], true);
    let all = page_all(&mut carol, "r", &joined).await;
    assert_eq!(all, acked.into_values().collect::<Vec<_>>());
    let next = say_acked(&mut carol, "r", "after the restart", "c-1").await;
    assert_eq!(next.id, 1001);
    server.sigterm();
    assert_eq!(carol.closed().await, Some(1001));
    assert!(server.exit_status().await.success());
}

// ---------------------------------------------------------------------------------------------
// 2. A SIGKILL mid-stream loses nothing anyone saw.

/// What one streaming client saw before its server died.
#[derive(Debug, Default)]
struct Seen {
    /// Its own messages, acknowledged by their echo.
    acked: Vec<Msg>,
    /// Every message it received, its own echoes included, in arrival order.
    received: Vec<Msg>,
}

/// Sends message after message to `room` as `name`, each only after the previous one's echo,
/// until the connection dies (the server was killed); counts acknowledgements in `acks`.
async fn stream_until_killed(
    mut c: Client,
    room: String,
    name: String,
    round: usize,
    acks: Arc<AtomicUsize>,
) -> Seen {
    let mut seen = Seen::default();
    // Bounded: the test kills the server long before this.
    for i in 0..100_000 {
        let reference = format!("{name}-{round}-{i}");
        let say = json!({
            "type": "say", "room": room, "ref": reference,
            "text": format!("{name} round {round} message {i}"),
        });
        if c.ws
            .send(Message::Text(say.to_string().into()))
            .await
            .is_err()
        {
            return seen;
        }
        loop {
            let frame = async_std::future::timeout(PATIENCE, c.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: neither a frame nor the end"));
            let text = match frame {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return seen,
                Some(Ok(_)) => continue,
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            match v["type"].as_str() {
                Some("message") => {
                    let m = Msg::of(&v);
                    seen.received.push(m.clone());
                    if v["ref"] == reference.as_str() {
                        seen.acked.push(m);
                        acks.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                }
                Some("error") => panic!("{name}: {v}"),
                _ => {}
            }
        }
    }
    panic!("{name}: the server was never killed");
}

#[async_std::test]
async fn a_sigkill_mid_stream_loses_nothing_anyone_saw_and_reuses_no_id() {
    const CLIENTS: usize = 4;
    const KILLS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    // Everything is kept, so that every id ever seen can be looked up after each restart.
    let keep = ["--history", "1000000", "--history-bytes", "1073741824"];
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    let mut epoch: Option<u64> = None;
    // Every message any client saw (acknowledged or only received), by id.
    let mut seen: BTreeMap<u64, Msg> = BTreeMap::new();
    let mut acked = 0;
    // The last id each client saw before the kill.
    let mut last_seen = [0u64; CLIENTS];
    for round in 0..=KILLS {
        let server = start(dir.path(), &keep);
        if round > 0 {
            server.wait_log("after a crash of the process (nothing lost)");
        }
        let resume = epoch.map(|e| (0, e));
        let (mut checker, j) =
            joined_at(server.addr, "s", &format!("checker{round}"), resume).await;
        let e = u64_of(&j, "epoch");
        if let Some(old) = epoch {
            assert_eq!(e, old, "round {round}: a SIGKILL changed the epoch");
            assert_eq!(j["recovered"], true, "round {round}: {j}");
        }
        epoch = Some(e);
        let last = u64_of(&j, "last_id");
        let stored = page_all(&mut checker, "s", &j).await;
        assert_eq!(
            ids(&stored),
            (1..=last).collect::<Vec<_>>(),
            "round {round}: a hole in the history"
        );
        let max_seen = seen.keys().next_back().copied().unwrap_or(0);
        assert!(
            last >= max_seen,
            "round {round}: id {max_seen} was seen, the store ends at {last}"
        );
        let stored = by_id(stored);
        for m in seen.values() {
            assert_eq!(
                stored.get(&m.id),
                Some(m),
                "round {round}: id {} was seen as another message (or is gone)",
                m.id
            );
        }
        let texts: HashSet<&str> = stored.values().map(|m| m.text.as_str()).collect();
        assert_eq!(texts.len(), stored.len(), "a message stored twice");

        if round == KILLS {
            let next = say_acked(&mut checker, "s", "after the last kill", "end").await;
            assert_eq!(next.id, last + 1);
            assert!(next.id > max_seen);
            eprintln!("{acked} acknowledged, {} seen, {last} stored", seen.len());
            server.sigterm();
            assert_eq!(checker.closed().await, Some(1001));
            assert!(server.exit_status().await.success());
            return;
        }
        drop(checker);

        // Each client resumes from the last id it saw. Nothing is lost on the same boot, so
        // the contract says every one of them recovers, and gets exactly the gap.
        let mut clients = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let resume = epoch.filter(|_| round > 0).map(|e| (last_seen[i], e));
            let (mut c, j) = joined_at(server.addr, "s", name, resume).await;
            if round > 0 {
                assert_eq!(j["recovered"], true, "{name} from {}: {j}", last_seen[i]);
                let gap = page_all(&mut c, "s", &j).await;
                assert_eq!(ids(&gap), (last_seen[i] + 1..=last).collect::<Vec<_>>());
                for m in &gap {
                    assert_eq!(&stored[&m.id], m);
                }
            }
            assert_eq!(u64_of(&j, "last_id"), last);
            clients.push(c);
        }
        let acks = Arc::new(AtomicUsize::new(0));
        // After some acknowledgements, and then a moment that is not tied to one.
        let kill_at = random_in(20..=1500) as usize;
        let then = Duration::from_micros(random_in(0..=20_000));
        eprintln!("round {round}: SIGKILL {then:?} after {kill_at} acknowledgements");
        let streams: Vec<_> = clients
            .into_iter()
            .zip(&names)
            .map(|(c, name)| {
                task::spawn(stream_until_killed(
                    c,
                    "s".into(),
                    name.clone(),
                    round,
                    acks.clone(),
                ))
            })
            .collect();
        let deadline = Instant::now() + PATIENCE;
        while acks.load(Ordering::SeqCst) < kill_at {
            assert!(Instant::now() < deadline, "the stream stalled");
            task::sleep(Duration::from_millis(1)).await;
        }
        task::sleep(then).await;
        server.kill();
        for (i, stream) in streams.into_iter().enumerate() {
            let s = stream.await;
            // Live messages follow the joined frame without gap or duplicate.
            let got = ids(&s.received);
            assert_eq!(
                got,
                (last + 1..last + 1 + got.len() as u64).collect::<Vec<_>>(),
                "{}",
                names[i]
            );
            last_seen[i] = got.last().copied().unwrap_or(last);
            acked += s.acked.len();
            for m in s.received {
                if let Some(old) = seen.insert(m.id, m.clone()) {
                    assert_eq!(old, m, "two clients saw different messages under one id");
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A possible power loss.

#[async_std::test]
async fn after_a_possible_power_loss_ids_jump_and_old_resumes_are_not_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let (alice, j) = joined_at(server.addr, "p", "alice", None).await;
    let epoch = u64_of(&j, "epoch");
    let (_alice, acked) = send_acked(alice, "p".into(), "alice".into(), 20).await;
    assert_eq!(ids(&acked), (1..=20).collect::<Vec<_>>());
    let marker = dir.path().join(MARKER);
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        boot.trim(),
        "the running marker holds this boot's id"
    );
    server.kill();

    // This simulates a reboot after a power loss (or an OS crash): a test cannot cut the power,
    // and the store tells a crash of the process from one of the machine only by the boot id
    // in its running marker. Another boot's id there is what the store finds after a reboot.
    std::fs::write(&marker, "00000000-0000-4000-8000-000000000000").unwrap();
    let server = start(dir.path(), &[]);
    server.wait_log("after a machine restart without a clean stop");
    let jump = 20 + LOST_JUMP;

    // A client that saw up to 10: the epoch is the same, what survived is there, but it may
    // have missed messages the power loss took, so not recovered.
    let (mut bob, j) = joined_at(server.addr, "p", "bob", Some((10, epoch))).await;
    assert_eq!(
        u64_of(&j, "epoch"),
        epoch,
        "what survived is still this life's history"
    );
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(u64_of(&j, "last_id"), jump);
    let history: Vec<Msg> = j["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(Msg::of)
        .collect();
    assert_eq!(history, acked[10..].to_vec(), "its history: 11..20");
    // The last id before the loss is not "nothing missed" either: 21.. may have been seen.
    let (mut carol, j) = joined_at(server.addr, "p", "carol", Some((20, epoch))).await;
    assert_eq!(j["recovered"], false, "{j}");
    // A client that is already past the jump missed nothing.
    let (mut dave, j) = joined_at(server.addr, "p", "dave", Some((jump, epoch))).await;
    assert_eq!(j["recovered"], true, "{j}");
    let next = say_acked(&mut dave, "p", "after the reboot", "d-1").await;
    assert_eq!(next.id, jump + 1, "ids continue above last + LOST_JUMP");

    // The possibly lost range is remembered across a clean restart, which jumps no further.
    server.sigterm();
    for c in [&mut bob, &mut carol, &mut dave] {
        assert_eq!(c.closed().await, Some(1001));
    }
    assert!(server.exit_status().await.success());
    let server = start(dir.path(), &[]);
    server.wait_log("after a clean stop");
    let (mut erin, j) = joined_at(server.addr, "p", "erin", Some((20, epoch))).await;
    assert_eq!(u64_of(&j, "epoch"), epoch);
    assert_eq!(j["recovered"], false, "{j}");
    assert_eq!(u64_of(&j, "last_id"), jump + 1);
    let next = say_acked(&mut erin, "p", "after a clean restart", "e-1").await;
    assert_eq!(next.id, jump + 2);
    server.sigterm();
    assert_eq!(erin.closed().await, Some(1001));
    assert!(server.exit_status().await.success());
}

// ---------------------------------------------------------------------------------------------
// 4. Damage.

/// Every file under `dir` and its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    // Bounded by the directory's size; a store holds a few dozen files.
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// The journal files (`*.jnl`, where fjall keeps them: the top of the data directory).
fn journals(dir: &Path) -> Vec<PathBuf> {
    let all = snapshot(dir);
    let found: Vec<PathBuf> = all
        .into_keys()
        .filter(|p| p.extension().is_some_and(|e| e == "jnl"))
        .collect();
    assert!(!found.is_empty(), "no journal in {}", dir.display());
    found
}

/// A data directory holding room `r` with 100 acknowledged messages from alice, stopped
/// cleanly; its epoch.
async fn stopped_store(dir: &Path) -> u64 {
    let server = start(dir, &[]);
    let (alice, j) = joined_at(server.addr, "r", "alice", None).await;
    let (mut alice, acked) = send_acked(alice, "r".into(), "alice".into(), 100).await;
    assert_eq!(acked.len(), 100);
    server.sigterm();
    assert_eq!(alice.closed().await, Some(1001));
    assert!(server.exit_status().await.success());
    u64_of(&j, "epoch")
}

/// The files under `dir` that differ from `before`: changed, and removed.
fn changed_files(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>) -> (Vec<String>, Vec<String>) {
    let after = snapshot(dir);
    let name = |p: &Path| p.strip_prefix(dir).unwrap().display().to_string();
    let changed = after
        .iter()
        .filter(|(p, bytes)| before.get(*p) != Some(*bytes))
        .map(|(p, _)| name(p))
        .collect();
    let removed = before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .map(|p| name(p))
        .collect();
    (changed, removed)
}

/// What is wrong with a refusal to start: it must exit 1, name the data directory, say what
/// to do, and leave every file it did not remove as it was.
fn refusal_problems(
    dir: &Path,
    before: &BTreeMap<PathBuf, Vec<u8>>,
    (status, stderr): &(ExitStatus, String),
) -> Vec<String> {
    let mut wrong = Vec::new();
    if status.code() != Some(1) {
        let last = stderr
            .lines()
            .rev()
            .find(|l| l.contains("panicked") || l.contains("Error"));
        wrong.push(format!("{status} ({last:?})"));
    }
    if !stderr.contains(&dir.display().to_string()) {
        wrong.push("the message does not name the data directory".into());
    }
    if !(stderr.contains("Restore the directory from a backup") && stderr.contains("move it away"))
    {
        wrong.push("the message does not say what to do".into());
    }
    let (changed, _) = changed_files(dir, before);
    if !changed.is_empty() {
        wrong.push(format!("it changed {changed:?}"));
    }
    wrong
}

/// Overwrites one message's text (found by its bytes) in the journal with garbage of the same
/// length: its batch no longer matches its checksum. Returns the journal and its bytes before.
fn damage_one_message(dir: &Path, text: &[u8]) -> (PathBuf, Vec<u8>) {
    let mut found = None;
    for journal in journals(dir) {
        let mut bytes = std::fs::read(&journal).unwrap();
        let Some(at) = bytes.windows(text.len()).position(|w| w == text) else {
            continue;
        };
        assert!(found.is_none(), "the message is in one journal");
        let original = bytes.clone();
        for b in &mut bytes[at..at + text.len()] {
            *b ^= 0xa5;
        }
        std::fs::write(&journal, bytes).unwrap();
        found = Some((journal, original));
    }
    found.expect("the message is in a journal")
}

#[async_std::test]
async fn garbage_in_the_journal_refuses_to_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = stopped_store(dir.path()).await;
    let (journal, original) = damage_one_message(dir.path(), b"alice says 50");
    let before = snapshot(dir.path());
    let refusal = refused(dir.path());
    let wrong = refusal_problems(dir.path(), &before, &refusal);
    assert!(wrong.is_empty(), "{wrong:?}: {}", refusal.1);
    assert!(refusal.1.contains("journal"), "{}", refusal.1);
    // The attempt destroyed nothing: with the damage undone, everything is back.
    std::fs::write(&journal, original).unwrap();
    let server = start(dir.path(), &[]);
    let (mut bob, j) = joined_at(server.addr, "r", "bob", Some((0, epoch))).await;
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(page_all(&mut bob, "r", &j).await.len(), 100);
    server.sigterm();
    assert_eq!(bob.closed().await, Some(1001));
    assert!(server.exit_status().await.success());
}

/// The refusal says "Nothing was changed", but fjall's open removes the superseded version
/// files of its own keyspace (`keyspaces/0/v0..`) before it replays the journal and fails.
/// A refused start changes no file; the only ones it may remove are fjall's superseded version
/// files (`keyspaces/N/vN`, which fjall drops as it opens; the message says so).
#[async_std::test]
async fn a_refused_start_changes_no_file() {
    let dir = tempfile::tempdir().unwrap();
    stopped_store(dir.path()).await;
    damage_one_message(dir.path(), b"alice says 50");
    let before = snapshot(dir.path());
    refused(dir.path());
    let (changed, removed) = changed_files(dir.path(), &before);
    let superseded = |p: &String| {
        let parts: Vec<&str> = p.split('/').collect();
        matches!(parts[..], ["keyspaces", n, v] if n.parse::<u32>().is_ok()
            && v.strip_prefix('v').is_some_and(|v| v.parse::<u32>().is_ok()))
    };
    assert!(changed.is_empty(), "changed {changed:?}");
    assert!(removed.iter().all(superseded), "removed {removed:?}");
}

/// Copies the store in `from` to `to`, keeping the journal's preallocated tail a hole.
fn copy_store(from: &Path, to: &Path) {
    for (path, bytes) in snapshot(from) {
        let dest = to.join(path.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let used = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let f = std::fs::File::create(&dest).unwrap();
        std::io::Write::write_all(&mut &f, &bytes[..used]).unwrap();
        f.set_len(bytes.len() as u64).unwrap();
    }
}

/// How a start went on a damaged store.
#[derive(Debug)]
enum Outcome {
    /// Refused; what is wrong with the refusal (nothing, when it is as documented).
    Refused(Vec<String>),
    /// Started: the messages it has in room `r`, its last id, and whether a resume from 0
    /// was called complete.
    Started {
        messages: usize,
        last_id: u64,
        recovered: bool,
    },
}

/// Starts a copy of a stopped store (100 messages) with 8 bytes of garbage at each of 24 places
/// spread over its journal.
async fn damage_anywhere() -> Vec<(usize, Outcome)> {
    let base = tempfile::tempdir().unwrap();
    let epoch = stopped_store(base.path()).await;
    let journal = journals(base.path()).remove(0);
    let name = journal.strip_prefix(base.path()).unwrap().to_owned();
    let bytes = std::fs::read(&journal).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let mut outcomes = Vec::new();
    for k in 1..=24 {
        let at = used * k / 25;
        let dir = tempfile::tempdir().unwrap();
        copy_store(base.path(), dir.path());
        let mut damaged = std::fs::read(dir.path().join(&name)).unwrap();
        damaged[at..at + 8].copy_from_slice(&[0xff; 8]);
        std::fs::write(dir.path().join(&name), damaged).unwrap();
        let before = snapshot(dir.path());
        let outcome = match launch(dir.path(), &[], &[]) {
            Err(refusal) => Outcome::Refused(refusal_problems(dir.path(), &before, &refusal)),
            Ok(server) => {
                let (mut c, j) = joined_at(server.addr, "r", "bob", Some((0, epoch))).await;
                let messages = page_all(&mut c, "r", &j).await.len();
                server.sigterm();
                c.closed().await;
                server.exit_status().await;
                Outcome::Started {
                    messages,
                    last_id: u64_of(&j, "last_id"),
                    recovered: j["recovered"] == true,
                }
            }
        };
        outcomes.push((at, outcome));
    }
    outcomes
}

/// Damage anywhere in the journal never crashes the start-up: a refusal is always the
/// documented one. (fjall 3.1.13 panics on some damaged lengths, in journal/entry.rs; the
/// store turns that into the same refusal.)
#[async_std::test]
async fn damage_anywhere_in_the_journal_is_refused_as_documented_when_refused() {
    let outcomes = damage_anywhere().await;
    assert!(
        outcomes
            .iter()
            .any(|(_, o)| matches!(o, Outcome::Refused(_))),
        "no damage was refused: {outcomes:?}"
    );
    let wrong: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Refused(p) if !p.is_empty()))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
}

/// Damage anywhere in the journal never makes a server that silently has less: it refuses as
/// documented, or starts with every message, or with what is intact while it hands out no lost
/// id again and calls no resume across the loss complete. (fjall 3.1.13 takes any entry it
/// cannot parse for a torn tail and cuts the journal there; the watermarks a clean stop writes
/// beside the store tell it happened.)
#[async_std::test]
async fn damage_anywhere_in_the_journal_never_starts_with_less_unsaid() {
    let outcomes = damage_anywhere().await;
    let wrong: Vec<_> = outcomes
        .iter()
        .filter(|(_, o)| match o {
            Outcome::Refused(problems) => !problems.is_empty(),
            Outcome::Started {
                messages,
                last_id,
                recovered,
            } => *last_id < 100 || (*messages < 100 && *recovered),
        })
        .collect();
    assert!(wrong.is_empty(), "{} of 24: {wrong:#?}", wrong.len());
}

/// A journal cut short after a clean stop (a half-written or truncated file): fjall replays
/// what is left as if it were all, so the store starts with fewer messages and gives their ids
/// out again. It should refuse, or at least never reuse an id nor claim `recovered`.
///
/// The last offsets a clean stop writes beside the store (`tidechat.watermarks`, not in the
/// journal, so a cut cannot take them) tell the store what it lost.
#[async_std::test]
async fn a_journal_cut_short_is_not_taken_for_the_whole_history() {
    let dir = tempfile::tempdir().unwrap();
    let epoch = stopped_store(dir.path()).await;
    let journal = journals(dir.path()).remove(0);
    let bytes = std::fs::read(&journal).unwrap();
    let used = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    std::fs::write(&journal, &bytes[..used / 2]).unwrap();
    let before = snapshot(dir.path());
    match launch(dir.path(), &[], &[]) {
        Err(refusal) => {
            let wrong = refusal_problems(dir.path(), &before, &refusal);
            assert!(wrong.is_empty(), "{wrong:?}: {}", refusal.1);
        }
        Ok(server) => {
            // A client that had seen message 10 misses some of 11..=100: not recovered.
            let (_early, j) = joined_at(server.addr, "r", "ann", Some((10, epoch))).await;
            assert!(
                u64_of(&j, "last_id") >= 100,
                "ids after the cut are free again: {j}"
            );
            assert_eq!(j["recovered"], false, "{j}");
            // One that had seen all 100 misses nothing.
            let (mut c, j) = joined_at(server.addr, "r", "bob", Some((100, epoch))).await;
            assert_eq!(j["recovered"], true, "{j}");
            let next = say_acked(&mut c, "r", "after the cut", "b-1").await;
            assert!(next.id > 100);
            server.sigterm();
            c.closed().await;
            server.exit_status().await;
        }
    }
}

#[async_std::test]
async fn a_second_tidechat_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), &[]);
    let (alice, _) = joined_at(first.addr, "r", "alice", None).await;
    let (mut alice, _) = send_acked(alice, "r".into(), "alice".into(), 3).await;
    let marker = std::fs::read(dir.path().join(MARKER)).unwrap();

    let (status, stderr) = refused(dir.path());
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another process is using {}",
            dir.path().display()
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(MARKER)).unwrap(),
        marker,
        "the refused one touched the running marker"
    );

    // The first one is unharmed: it still takes messages, and they survive its clean stop.
    let m = say_acked(&mut alice, "r", "still here", "a-x").await;
    assert_eq!(m.id, 4);
    first.sigterm();
    assert_eq!(alice.closed().await, Some(1001));
    assert!(first.exit_status().await.success());
    let server = start(dir.path(), &[]);
    server.wait_log("after a clean stop");
    let (mut bob, j) = joined_at(server.addr, "r", "bob", None).await;
    assert_eq!(u64_of(&j, "last_id"), 4);
    server.sigterm();
    assert_eq!(bob.closed().await, Some(1001));
    assert!(server.exit_status().await.success());
}

// ---------------------------------------------------------------------------------------------
// 5. Retention and eviction through the server.

/// The binary's defaults with history in `data_dir` (`None`: memory), rate limits lifted.
fn config_in(data_dir: Option<&Path>) -> Config {
    Config {
        data_dir: data_dir.map(Path::to_owned),
        rate: 1e6,
        burst: 1_000_000,
        ..Config::default()
    }
}

#[async_std::test]
async fn history_by_count_keeps_the_newest_and_still_does_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        history: 10,
        ..config_in(Some(dir.path()))
    };
    let s = TestServer::start(config()).await;
    let (mut alice, j) = s.join("r", "alice").await;
    let epoch = u64_of(&j, "epoch");
    for i in 1..=25 {
        say_acked(&mut alice, "r", &format!("m{i}"), &format!("a{i}")).await;
    }
    let (bob, j) = s.join("r", "bob").await;
    let kept = history_of(&j);
    assert_eq!(ids(&kept), (16..=25).collect::<Vec<_>>());
    drop((alice, bob));
    s.stop().await;

    let s = TestServer::start(config()).await;
    let (_carol, j) = s.join("r", "carol").await;
    assert_eq!(history_of(&j), kept);
    let mut dave = s.connect().await;
    let j = join(&mut dave, "r", "dave", Some((0, epoch))).await;
    assert_eq!(j["recovered"], false, "1..15 are gone: {j}");
    assert_eq!(history_of(&j), kept);
    let next = say_acked(&mut dave, "r", "m26", "d26").await;
    assert_eq!(next.id, 26);
    let (_erin, j) = s.join("r", "erin").await;
    assert_eq!(ids(&history_of(&j)), (17..=26).collect::<Vec<_>>());
}

#[async_std::test]
async fn history_by_bytes_drops_the_oldest_and_counts_the_same_after_a_restart() {
    use tidechat::hub::position::{Epoch, StreamPosition};
    use tidechat::hub::record::Publication;
    let text = "x".repeat(200);
    // Every message below costs the same (refs of one length): room for three and a half.
    let per = Publication {
        room: "r".into(),
        pos: StreamPosition::new(1, Epoch(1)),
        from: "alice".into(),
        text: text.as_str().into(),
        ts: 0,
        reference: Some("a-001".into()),
    }
    .bytes();
    let dir = tempfile::tempdir().unwrap();
    let config = || Config {
        history_bytes: per * 7 / 2,
        ..config_in(Some(dir.path()))
    };
    let s = TestServer::start(config()).await;
    let (mut alice, _) = s.join("r", "alice").await;
    for i in 1..=10 {
        say_acked(&mut alice, "r", &text, &format!("a-{i:03}")).await;
    }
    let (bob, j) = s.join("r", "bob").await;
    let kept = history_of(&j);
    assert_eq!(ids(&kept), vec![8, 9, 10]);
    drop((alice, bob));
    s.stop().await;

    // Reopened, the store counts the bytes from what it reads back: the same three.
    let s = TestServer::start(config()).await;
    let (mut carol, j) = s.join("r", "carol").await;
    assert_eq!(history_of(&j), kept);
    say_acked(&mut carol, "r", &text, "c-011").await;
    let (_dave, j) = s.join("r", "dave").await;
    assert_eq!(ids(&history_of(&j)), vec![9, 10, 11]);
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// With `--history-age 1s`, the old messages go while someone keeps talking, and no message
/// younger than the age goes with them.
async fn history_by_age(data_dir: Option<&Path>) {
    const AGE: Duration = Duration::from_secs(1);
    let s = TestServer::start(Config {
        history_age: Some(AGE),
        ..config_in(data_dir)
    })
    .await;
    let (mut alice, _) = s.join("r", "alice").await;
    let mut said = Vec::new();
    for i in 0..3 {
        said.push(say_acked(&mut alice, "r", &format!("old {i}"), &format!("o{i}")).await);
    }
    let old_last = said.last().unwrap().id;
    // A message every 100 ms or slower: at least 4 s, four times the age, and never more
    // messages than one page (50) holds, so the page shows everything kept.
    for i in 0..40 {
        said.push(say_acked(&mut alice, "r", &format!("new {i}"), &format!("n{i}")).await);
        let mut c = s.connect().await;
        let j = join(&mut c, "r", &format!("w{i}"), None).await;
        // The history was read before this, so every message younger than AGE by now was
        // younger than AGE then, and must be there.
        let cutoff = unix_millis() - AGE.as_millis() as u64;
        let kept = history_of(&j);
        for m in said.iter().filter(|m| m.ts >= cutoff) {
            assert!(kept.contains(m), "{m:?} is younger than the age and gone");
        }
        assert_eq!(j["more"], false, "one page holds everything kept");
        if kept.iter().all(|m| m.id > old_last) {
            assert!(!kept.is_empty());
            return;
        }
        task::sleep(Duration::from_millis(100)).await;
    }
    panic!("messages older than {AGE:?} are still kept after 4 s");
}

#[async_std::test]
async fn history_by_age_with_the_durable_store() {
    let dir = tempfile::tempdir().unwrap();
    history_by_age(Some(dir.path())).await;
}

#[async_std::test]
async fn history_by_age_in_memory() {
    history_by_age(None).await;
}

/// Leaves `room` and waits for the `left` reply.
async fn leave(c: &mut Client, room: &str) {
    c.send(json!({"type": "leave", "room": room})).await;
    let v = c.recv_type("left").await;
    assert_eq!(v["room"], room);
}

/// Room A gets five messages and goes idle; B and C are used at `--max-rooms 2`, which evicts A
/// (the longest idle) from memory; then A is joined again with `since: 0` and its old epoch.
/// Returns A's first epoch, the rejoin's `joined` and the id the next message gets.
async fn evict_and_rejoin(data_dir: Option<&Path>) -> (u64, Value, u64) {
    let s = TestServer::start(Config {
        max_rooms: 2,
        ..config_in(data_dir)
    })
    .await;
    let (mut alice, j) = s.join("A", "alice").await;
    let epoch = u64_of(&j, "epoch");
    for i in 1..=5 {
        say_acked(&mut alice, "A", &format!("a{i}"), &format!("a{i}")).await;
    }
    leave(&mut alice, "A").await;
    alice.join("B", "alice").await;
    leave(&mut alice, "B").await;
    alice.join("C", "alice").await;
    assert_eq!(s.state.stats().hub.rooms, 2, "one room was evicted");
    leave(&mut alice, "C").await;
    let j = join(&mut alice, "A", "alice", Some((0, epoch))).await;
    let next = say_acked(&mut alice, "A", "a6", "a6").await;
    (epoch, j, next.id)
}

#[async_std::test]
async fn an_evicted_room_gets_its_history_back_from_the_durable_store() {
    let dir = tempfile::tempdir().unwrap();
    let (epoch, j, next) = evict_and_rejoin(Some(dir.path())).await;
    assert_eq!(u64_of(&j, "epoch"), epoch, "{j}");
    assert_eq!(j["recovered"], true, "{j}");
    assert_eq!(ids(&history_of(&j)), vec![1, 2, 3, 4, 5]);
    assert_eq!(next, 6);
}

#[async_std::test]
async fn an_evicted_room_in_memory_starts_a_new_epoch() {
    let (epoch, j, next) = evict_and_rejoin(None).await;
    assert_ne!(u64_of(&j, "epoch"), epoch, "{j}");
    assert_eq!(j["recovered"], false, "{j}");
    assert!(history_of(&j).is_empty(), "{j}");
    assert_eq!(next, 1);
}

// ---------------------------------------------------------------------------------------------
// 6. The sender's acknowledgement.

async fn sender_and_others_get_the_message(data_dir: Option<&Path>) {
    let s = TestServer::start(config_in(data_dir)).await;
    let (mut alice, _) = s.join("r", "alice").await;
    let (mut bob, _) = s.join("r", "bob").await;
    assert_eq!(alice.recv_type("presence").await["name"], "bob");
    let echo = say_acked(&mut alice, "r", "hello", "h1").await;
    assert_eq!(
        (echo.id, echo.from.as_str(), echo.text.as_str()),
        (1, "alice", "hello")
    );
    let got = bob.recv_type("message").await;
    assert_eq!(Msg::of(&got), echo);
}

#[async_std::test]
async fn with_the_durable_store_the_sender_and_the_others_get_the_message() {
    let dir = tempfile::tempdir().unwrap();
    sender_and_others_get_the_message(Some(dir.path())).await;
}

#[async_std::test]
async fn in_memory_the_sender_and_the_others_get_the_message() {
    sender_and_others_get_the_message(None).await;
}

/// A preload library that makes the disk look busy, with no hook in the server: while the file
/// named by `FSYNC_GATE` exists, every `fsync` and `fdatasync` of the process waits; while the
/// file named by `JOURNAL_WRITE_GATE` exists, every `write` to a `*.jnl` file waits. Each wait
/// is at most 30 s, and creates `<gate>.held` when it begins, so a test knows it is holding.
const DISK_GATE_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void hold(const char *var) {
    const char *gate = getenv(var);
    if (gate == NULL || access(gate, F_OK) != 0) return;
    char held[4096];
    snprintf(held, sizeof held, "%s.held", gate);
    close(open(held, O_CREAT | O_WRONLY, 0600));
    for (int i = 0; i < 30000 && access(gate, F_OK) == 0; i++) usleep(1000);
}

static int is_journal(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n < 4) return 0;
    path[n] = 0;
    return strcmp(path + n - 4, ".jnl") == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    hold("FSYNC_GATE");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (real == NULL) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    hold("FSYNC_GATE");
    return real(fd);
}

ssize_t write(int fd, const void *buf, size_t len) {
    static ssize_t (*real)(int, const void *, size_t);
    if (real == NULL) real = (ssize_t (*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    if (getenv("JOURNAL_WRITE_GATE") != NULL && is_journal(fd)) hold("JOURNAL_WRITE_GATE");
    return real(fd, buf, len);
}
"#;

/// The real binary with [`DISK_GATE_C`] preloaded, and its two gates.
struct GatedDisk {
    _work: tempfile::TempDir,
    library: PathBuf,
    fsync: PathBuf,
    journal_write: PathBuf,
    data: PathBuf,
}

impl GatedDisk {
    /// Builds the library with the system C compiler (the one Rust links with).
    fn new() -> Self {
        let work = tempfile::tempdir().unwrap();
        let source = work.path().join("disk_gate.c");
        let library = work.path().join("disk_gate.so");
        std::fs::write(&source, DISK_GATE_C).unwrap();
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&library)
            .arg(&source)
            .arg("-ldl")
            .output()
            .expect("this test needs a C compiler (cc)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        GatedDisk {
            fsync: work.path().join("fsync"),
            journal_write: work.path().join("journal-write"),
            data: work.path().join("data"),
            library,
            _work: work,
        }
    }

    fn start(&self, extra: &[&str]) -> Tidechat {
        let env = [
            ("LD_PRELOAD", self.library.as_os_str()),
            ("FSYNC_GATE", self.fsync.as_os_str()),
            ("JOURNAL_WRITE_GATE", self.journal_write.as_os_str()),
        ];
        launch(&self.data, extra, &env).unwrap_or_else(|(s, log)| panic!("{s}: {log}"))
    }

    fn close(gate: &Path) {
        std::fs::write(gate, b"").unwrap();
    }

    fn open(gate: &Path) {
        std::fs::remove_file(gate).unwrap();
    }

    /// Waits (bounded) until the server is held at `gate`.
    async fn held(gate: &Path) {
        let held = gate.with_extension("held");
        let deadline = Instant::now() + PATIENCE;
        while !held.exists() {
            assert!(
                Instant::now() < deadline,
                "nothing was held at {}",
                gate.display()
            );
            task::sleep(Duration::from_millis(5)).await;
        }
        std::fs::remove_file(held).unwrap();
    }
}

/// Whether `c` gets a `message` within `wait` (one that must not come yet: when it is wrongly
/// sent at once it comes within milliseconds, and when it is right it cannot come at all).
async fn message_within(c: &mut Client, wait: Duration) -> Option<Value> {
    async_std::future::timeout(wait, c.recv_type("message"))
        .await
        .ok()
}

fn say_frame(text: &str, reference: &str) -> Value {
    json!({"type": "say", "room": "r", "text": text, "ref": reference})
}

/// Alice and bob in room `r` of `server`; alice has seen bob come.
async fn alice_and_bob(server: &Tidechat) -> (Client, Client) {
    let (mut alice, _) = joined_at(server.addr, "r", "alice", None).await;
    let (bob, _) = joined_at(server.addr, "r", "bob", None).await;
    assert_eq!(alice.recv_type("presence").await["name"], "bob");
    (alice, bob)
}

/// While the disk holds the sync of alice's message, bob gets it and alice's echo waits; when
/// the disk is back the echo comes.
#[async_std::test]
async fn the_echo_waits_for_the_disk_and_the_others_do_not() {
    let disk = GatedDisk::new();
    let server = disk.start(&[]);
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    GatedDisk::close(&disk.fsync);
    alice.send(say_frame("first", "a1")).await;
    let got = Msg::of(&bob.recv_type("message").await);
    assert_eq!(
        (got.id, got.text.as_str()),
        (1, "first"),
        "bob waited for the disk"
    );
    GatedDisk::held(&disk.fsync).await;
    assert!(
        message_within(&mut alice, Duration::from_millis(500))
            .await
            .is_none(),
        "alice's echo came before the sync"
    );
    GatedDisk::open(&disk.fsync);
    let echo = alice.recv_type("message").await;
    assert_eq!(Msg::of(&echo), got);
    assert_eq!(echo["ref"], "a1");
    server.sigterm();
    assert_eq!(alice.closed().await, Some(1001));
    assert_eq!(bob.closed().await, Some(1001));
    assert!(server.exit_status().await.success());
}

/// A message reaches the OS (the journal's `write`) before anyone gets it, which is what makes
/// a SIGKILL lose nothing anyone saw.
#[async_std::test]
async fn a_message_is_written_to_the_journal_before_anyone_gets_it() {
    let disk = GatedDisk::new();
    let server = disk.start(&[]);
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    GatedDisk::close(&disk.journal_write);
    alice.send(say_frame("first", "a1")).await;
    GatedDisk::held(&disk.journal_write).await;
    assert!(
        message_within(&mut bob, Duration::from_millis(500))
            .await
            .is_none(),
        "bob got the message before it was written"
    );
    GatedDisk::open(&disk.journal_write);
    assert_eq!(Msg::of(&bob.recv_type("message").await).id, 1);
    assert_eq!(alice.recv_type("message").await["ref"], "a1");
    server.sigterm();
    assert_eq!(alice.closed().await, Some(1001));
    assert_eq!(bob.closed().await, Some(1001));
    assert!(server.exit_status().await.success());
}

/// "Delivery to the other members does not wait for the disk", also while a sync is slow.
/// (fjall 3.1's own `persist` holds its journal lock through the fsync, which made every append,
/// and so every delivery, wait for it; the store syncs the journal through its own descriptor.)
#[async_std::test]
async fn a_slow_sync_holds_back_no_delivery() {
    let disk = GatedDisk::new();
    let server = disk.start(&[]);
    let (mut alice, mut bob) = alice_and_bob(&server).await;
    GatedDisk::close(&disk.fsync);
    alice.send(say_frame("first", "a1")).await;
    assert_eq!(Msg::of(&bob.recv_type("message").await).id, 1);
    GatedDisk::held(&disk.fsync).await;
    // The committer is in its fsync now.
    alice.send(say_frame("second", "a2")).await;
    let second = message_within(&mut bob, Duration::from_secs(2)).await;
    GatedDisk::open(&disk.fsync);
    assert!(second.is_some(), "bob's delivery waited for the disk");
}
