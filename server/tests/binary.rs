//! Tests of the real `tidechat` binary: it serves; history kept in `./data` by default survives
//! a restart; SIGTERM closes every socket with 1001 and exits 0; a second SIGINT/SIGTERM during the shutdown exits at once (130/143); SIGHUP does not
//! stop it; a stderr nobody reads does not stop it either (log lines are dropped, counted); and
//! nonsense options exit 2 naming the flag.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{ChildStderr, Command, ExitStatus, Stdio};

use async_std::io::{ReadExt, WriteExt};
use common::*;

impl Proc {
    fn signal(&self, name: &str) {
        let pid = self.0.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .unwrap()
            .success());
    }

    async fn exit_status(mut self) -> ExitStatus {
        let status = async_std::task::spawn_blocking(move || {
            let status = self.0.wait().unwrap();
            drop(self);
            status
        });
        async_std::future::timeout(PATIENCE, status)
            .await
            .expect("tidechat did not exit")
    }
}

/// Starts the binary in the working directory `cwd` with JSON logs plus `extra`, and reads its
/// stderr up to the line that gives its address. The rest of stderr is left to the caller,
/// unread. Without `--data-dir` in `extra` its history is in `cwd/data`, the default, so each
/// test gives it a fresh temporary `cwd`.
fn spawn(cwd: &Path, extra: &[&str]) -> (Proc, SocketAddr, BufReader<ChildStderr>) {
    let static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../static");
    let mut args = vec![
        "--bind",
        "127.0.0.1:0",
        "--static-dir",
        static_dir,
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_tidechat"))
            .args(args)
            .current_dir(cwd)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut stderr = BufReader::new(child.0.stderr.take().unwrap());
    // The listening line is among the first few; a bound in case it never comes.
    for _ in 0..100 {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        eprintln!("[tidechat] {}", line.trim_end());
        let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if let Some(rest) = v["msg"]
            .as_str()
            .unwrap()
            .strip_prefix("tidechat listening on http://")
        {
            return (child, rest.parse().unwrap(), stderr);
        }
    }
    panic!("tidechat did not say where it listens");
}

/// Hands the rest of stderr to a thread that echoes it and forwards each message.
fn follow(stderr: BufReader<ChildStderr>) -> async_channel::Receiver<String> {
    let (lines_tx, lines_rx) = async_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("[tidechat] {line}");
            let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
            let _ = lines_tx.send_blocking(v["msg"].as_str().unwrap_or_default().to_string());
        }
    });
    lines_rx
}

/// Waits for a log message that starts with `prefix`.
async fn wait_for(lines: &async_channel::Receiver<String>, prefix: &str) {
    loop {
        let line = async_std::future::timeout(PATIENCE, lines.recv())
            .await
            .unwrap_or_else(|_| panic!("no log line {prefix:?}"))
            .unwrap_or_else(|_| panic!("stderr ended before {prefix:?}"));
        if line.starts_with(prefix) {
            return;
        }
    }
}

/// `from` says `n` messages; `to` must receive every one of them.
async fn chat_works(from: &mut Client, to: &mut Client, n: usize, tag: &str) {
    for i in 0..n {
        from.say("lobby", &format!("{tag} {i}")).await;
    }
    for i in 0..n {
        assert_eq!(to.recv_type("message").await["text"], format!("{tag} {i}"));
    }
}

/// The default `--data-dir` is `data` in the working directory: what was said before a clean
/// stop is there after a start in the same directory, same ids, same epoch, `recovered: true`.
#[async_std::test]
async fn history_in_the_default_data_dir_survives_a_restart() {
    let cwd = tempfile::tempdir().unwrap();
    let (child, addr, stderr) = spawn(cwd.path(), &[]);
    let _lines = follow(stderr);
    let mut alice = join_lobby_at(addr, "alice").await;
    let joined = alice.join("kept", "alice").await;
    let epoch = joined["epoch"].clone();
    for i in 1..=3 {
        alice.say("kept", &format!("m{i}")).await;
        assert_eq!(alice.recv_type("message").await["id"], i);
    }
    child.signal("TERM");
    assert_eq!(alice.closed().await, Some(1001));
    assert!(child.exit_status().await.success());
    assert!(cwd.path().join("data").is_dir(), "no ./data after a run");

    let (child, addr, stderr) = spawn(cwd.path(), &[]);
    let _lines = follow(stderr);
    let mut bob = join_lobby_at(addr, "bob").await;
    bob.send(serde_json::json!({"type": "join", "room": "kept", "name": "bob", "since": 0, "epoch": epoch}))
        .await;
    let joined = bob.recv_type("joined").await;
    assert_eq!(joined["epoch"], epoch, "{joined}");
    assert_eq!(joined["recovered"], true, "{joined}");
    let history: Vec<(u64, String)> = joined["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["text"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        history,
        [(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]
    );
    bob.say("kept", "m4").await;
    assert_eq!(bob.recv_type("message").await["id"], 4);
    child.signal("TERM");
    assert!(child.exit_status().await.success());
}

#[async_std::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let cwd = tempfile::tempdir().unwrap();
    let (child, addr, stderr) = spawn(cwd.path(), &[]);
    let _lines = follow(stderr);
    let mut clients = Vec::new();
    for name in ["alice", "bob"] {
        clients.push(join_lobby_at(addr, name).await);
    }
    child.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.closed().await, Some(1001));
    }
    let status = child.exit_status().await;
    assert!(status.success(), "{status}");
}

#[async_std::test]
async fn sighup_does_not_stop_the_server() {
    let cwd = tempfile::tempdir().unwrap();
    let (child, addr, stderr) = spawn(cwd.path(), &[]);
    let lines = follow(stderr);
    let mut alice = join_lobby_at(addr, "alice").await;
    let mut bob = join_lobby_at(addr, "bob").await;
    child.signal("HUP");
    wait_for(&lines, "SIGHUP ignored").await;
    chat_works(&mut alice, &mut bob, 5, "after SIGHUP").await;
    let mut carol = join_lobby_at(addr, "carol").await;
    chat_works(&mut carol, &mut bob, 5, "new after SIGHUP").await;
    child.signal("TERM");
    assert_eq!(alice.closed().await, Some(1001));
    assert!(child.exit_status().await.success());
}

/// A client that never answers the server's close holds the graceful shutdown (up to the close
/// bound); a second signal then ends the process at once with 128 + the signal's number.
async fn second_signal_exits_at_once(signal: &str, code: i32) {
    let cwd = tempfile::tempdir().unwrap();
    let (child, addr, stderr) = spawn(cwd.path(), &[]);
    let lines = follow(stderr);
    let mut mute = raw_upgrade(addr, "/ws").await;
    let mut upgraded = [0u8; 12];
    mute.read_exact(&mut upgraded).await.unwrap();
    assert_eq!(&upgraded, b"HTTP/1.1 101");
    wait_for(&lines, "connect #").await;
    child.signal(signal);
    wait_for(&lines, "shutting down").await;
    child.signal(signal);
    let status = child.exit_status().await;
    assert_eq!(status.code(), Some(code), "{status}");
    drop(mute);
}

#[async_std::test]
async fn second_sigterm_exits_143() {
    second_signal_exits_at_once("TERM", 143).await;
}

#[async_std::test]
async fn second_sigint_exits_130() {
    second_signal_exits_at_once("INT", 130).await;
}

/// With stderr a pipe nobody reads, logging used to block the executor thread in its write, so
/// the whole server stopped once the pipe (64 KiB) was full.
#[async_std::test]
async fn unread_stderr_does_not_stop_the_server() {
    let cwd = tempfile::tempdir().unwrap();
    let (child, addr, stderr) = spawn(cwd.path(), &["--log-level", "debug"]);
    // Refused handshakes log a line each at debug (with the Origin, cut to 100 characters):
    // 6,000 of them write ~1.2 MiB, far more than the pipe and the log queue hold.
    let origin = format!("http://{}.example", "o".repeat(90));
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: {origin}\r\n\r\n"
    );
    // A connection per request: async-h1 does not keep a connection alive after an upgrade
    // request. Eight at a time.
    let (workers, per_worker) = (8, 750);
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let request = request.clone();
            async_std::task::spawn(async move {
                for _ in 0..per_worker {
                    let mut tcp = async_std::net::TcpStream::connect(addr).await.unwrap();
                    tcp.write_all(request.as_bytes()).await.unwrap();
                    let mut status = [0u8; 12];
                    async_std::future::timeout(PATIENCE, tcp.read_exact(&mut status))
                        .await
                        .expect("the server stopped answering")
                        .unwrap();
                    assert_eq!(&status, b"HTTP/1.1 403");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await;
    }

    let mut alice = join_lobby_at(addr, "alice").await;
    let mut bob = join_lobby_at(addr, "bob").await;
    chat_works(&mut alice, &mut bob, 20, "with stderr full").await;

    // Now read stderr: the writer catches up and reports what it dropped.
    let all = std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    child.signal("TERM");
    assert_eq!(alice.closed().await, Some(1001));
    assert!(child.exit_status().await.success());
    let text = all.join().unwrap();
    let dropped = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .find(|m| m.contains("log lines dropped"))
        .expect("a dropped-lines line");
    let n: u64 = dropped.split(' ').next().unwrap().parse().unwrap();
    assert!(n > 0, "{dropped}");
    assert!(
        text.contains("tidechat stopped"),
        "lines after the stall are written again"
    );
}

#[test]
fn nonsense_options_exit_2_naming_the_flag() {
    for (flag, value) in [
        ("--ping-interval", "0s"),
        ("--max-connections-per-ip", "0"),
        ("--room-buffer-bytes", "0"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tidechat"))
            .args(["--bind", "127.0.0.1:0", flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(flag), "{flag} {value}: {stderr}");
    }
}
