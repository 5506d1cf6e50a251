//! Smoke test of the real `tidechat` binary: it serves, and SIGTERM closes every socket with
//! 1001 and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::*;

/// Kills and reaps the child if the test fails before it exits by itself.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[async_std::test]
async fn sigterm_closes_sockets_with_1001_and_exits_0() {
    let static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../static");
    let mut child = Proc(
        Command::new(env!("CARGO_BIN_EXE_tidechat"))
            .args([
                "--bind",
                "127.0.0.1:0",
                "--static-dir",
                static_dir,
                "--log-format",
                "json",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, lines_rx) = async_channel::unbounded::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[tidechat] {line}");
            let _ = lines_tx.send_blocking(line);
        }
    });
    let addr: std::net::SocketAddr = loop {
        let line = async_std::future::timeout(PATIENCE, lines_rx.recv())
            .await
            .unwrap()
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).expect("log lines are JSON");
        if let Some(rest) = v["msg"]
            .as_str()
            .unwrap()
            .strip_prefix("tidechat listening on http://")
        {
            break rest.parse().unwrap();
        }
    };
    let mut clients = Vec::new();
    for name in ["alice", "bob"] {
        let std = std::net::TcpStream::connect(addr).unwrap();
        let raw = std.try_clone().unwrap();
        let (ws, _) = async_tungstenite::client_async(
            format!("ws://{addr}/ws"),
            async_std::net::TcpStream::from(std),
        )
        .await
        .unwrap();
        let mut c = Client { ws, raw };
        c.recv().await;
        c.join("lobby", name).await;
        clients.push(c);
    }
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    for c in &mut clients {
        assert_eq!(c.closed().await, Some(1001));
    }
    let status = async_std::task::spawn_blocking(move || {
        let status = child.0.wait().unwrap();
        drop(child);
        status
    });
    let status = async_std::future::timeout(PATIENCE, status)
        .await
        .expect("tidechat did not exit");
    assert!(status.success(), "{status}");
}
