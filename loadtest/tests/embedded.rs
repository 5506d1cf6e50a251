//! The embedded server's history: by default the durable store in a fresh temporary directory
//! of its own (two at once never share one), removed when it stops; `--data-dir` among the
//! server options chooses instead (`none`: in memory), in both server modes.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use loadtest::embedded::Embedded;

/// The durable store's marker while it is open (see `server/src/hub/store/durable.rs`).
const RUNNING: &str = "tidechat.running";

/// `GET /stats`: answered only by a server that is up.
fn stats(addr: SocketAddr) -> String {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        tcp,
        "GET /stats HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    reply
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// A server started with `start` keeps its history in a temporary directory with the durable
/// store open in it, and the directory is gone once the server stopped.
fn own_durable_dir(start: impl Fn() -> Embedded) {
    let a = start();
    let b = start();
    stats(a.addr);
    stats(b.addr);
    let (da, db) = (a.data_dir.clone().unwrap(), b.data_dir.clone().unwrap());
    assert_ne!(da, db, "two servers, one data directory");
    for d in [&da, &db] {
        assert!(d.join(RUNNING).is_file(), "no durable store open in {d:?}");
    }
    drop(a);
    assert!(!da.exists(), "{da:?} left behind");
    stats(b.addr);
    drop(b);
    assert!(!db.exists(), "{db:?} left behind");
}

#[test]
fn thread_mode_gets_a_durable_store_of_its_own() {
    own_durable_dir(|| Embedded::start_thread(&[]).unwrap());
}

#[test]
fn process_mode_gets_a_durable_store_of_its_own() {
    let exe = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    own_durable_dir(|| Embedded::start_process(exe, &[]).unwrap());
}

#[test]
fn a_named_data_dir_is_used_and_kept() {
    let exe = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    for (mode, glued) in [("thread", false), ("process", true)] {
        let mine = tempfile::tempdir().unwrap();
        let dir = mine.path().join("history");
        let extra = if glued {
            vec![format!("--data-dir={}", dir.display())]
        } else {
            args(&["--data-dir", dir.to_str().unwrap()])
        };
        let s = if mode == "thread" {
            Embedded::start_thread(&extra).unwrap()
        } else {
            Embedded::start_process(exe, &extra).unwrap()
        };
        stats(s.addr);
        assert_eq!(s.data_dir, None, "{mode}");
        assert!(dir.join(RUNNING).is_file(), "{mode}: not in {dir:?}");
        drop(s);
        assert!(dir.is_dir(), "{mode}: the caller's directory was removed");
        assert!(!dir.join(RUNNING).exists(), "{mode}: not closed cleanly");
    }
}

#[test]
fn data_dir_none_keeps_history_in_memory() {
    let exe = Path::new(env!("CARGO_BIN_EXE_loadtest"));
    let cwd = std::env::current_dir().unwrap();
    let none = args(&["--data-dir", "none"]);
    for s in [
        Embedded::start_thread(&none).unwrap(),
        Embedded::start_process(exe, &none).unwrap(),
    ] {
        stats(s.addr);
        assert_eq!(s.data_dir, None);
        // Not the binary's default either.
        assert!(!cwd.join("data").join(RUNNING).exists());
    }
}
