//! The real binary under a low open-file limit (`ulimit -n 64`): it warns at start that the
//! limit cannot hold its caps, and when connections use up every descriptor the accept loop
//! backs off without spinning, says so once (not once per accept), and serves again once
//! connections are closed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// User + system CPU seconds of process `pid` (`/proc/PID/stat` fields 14 and 15).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    let hz: f64 = String::from_utf8_lossy(&hz.stdout).trim().parse().unwrap();
    ticks as f64 / hz
}

/// The next log message (the `msg` of a JSON line), bounded by PATIENCE.
async fn next_msg(lines: &async_channel::Receiver<String>) -> String {
    let line = async_std::future::timeout(PATIENCE, lines.recv())
        .await
        .expect("timed out waiting for a log line")
        .expect("tidechat exited");
    let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
    v["msg"].as_str().unwrap().to_string()
}

#[async_std::test]
async fn out_of_descriptors_backs_off_logs_once_and_recovers() {
    let static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../static");
    // Its default `./data` (the durable store's files take descriptors too) is its own.
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Proc(
        Command::new("sh")
            .args([
                "-c",
                r#"ulimit -n 64 && exec "$0" "$@""#,
                env!("CARGO_BIN_EXE_tidechat"),
                "--bind",
                "127.0.0.1:0",
                "--static-dir",
                static_dir,
                "--log-format",
                "json",
                // The held connections must stay while the test watches the failures.
                "--handshake-timeout",
                "120s",
                "--http-deadline",
                "120s",
                "--max-http-connections-per-ip",
                "1000",
            ])
            .current_dir(cwd.path())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, lines) = async_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[tidechat] {line}");
            let _ = lines_tx.send_blocking(line);
        }
    });
    let mut log = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let msg = next_msg(&lines).await;
        log.push(msg.clone());
        if let Some(rest) = msg.strip_prefix("tidechat listening on http://") {
            break rest.parse().unwrap();
        }
    };
    assert!(
        log.iter()
            .any(|m| m.starts_with("open-file limit 64 is below")),
        "no warning about the low limit: {log:?}"
    );

    // More connections than 64 descriptors can hold; they wait in the backlog.
    let held: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    loop {
        let msg = next_msg(&lines).await;
        let failed = msg.starts_with("accept failed");
        log.push(msg);
        if failed {
            break;
        }
    }
    let cpu_before = cpu_seconds(pid);
    async_std::task::sleep(Duration::from_secs(3)).await;
    let cpu = cpu_seconds(pid) - cpu_before;
    eprintln!("tidechat CPU over 3 s of failing accepts: {cpu:.3} s");
    assert!(
        cpu < 0.5,
        "{cpu:.2} s of CPU in 3 s of failing accepts: a busy loop"
    );

    drop(held);
    loop {
        let msg = next_msg(&lines).await;
        let again = msg.starts_with("accepting connections again after");
        log.push(msg);
        if again {
            break;
        }
    }
    let failures: Vec<_> = log
        .iter()
        .filter(|m| m.starts_with("accept failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{failures:?}");

    // Served again: two clients chat.
    let mut clients = Vec::new();
    for name in ["alice", "bob"] {
        clients.push(join_lobby_at(addr, name).await);
    }
    for i in 0..3 {
        clients[0].say("lobby", &format!("m{i}")).await;
    }
    for i in 0..3 {
        let m = clients[1].recv_type("message").await;
        assert_eq!(m["text"], format!("m{i}"));
    }
}
