//! What operators rely on (README "Operating"): `/healthz` and `/readyz` as probes see them
//! (over real sockets; readiness flipping with a failing history store, during the real
//! binary's graceful shutdown, and with `--redis` while the test's own redis-server is down);
//! the real binary's `--log-format json` lines and their named fields; `--check-config` on the
//! real binary; that the README's table of options is the one clap renders; and that the Grafana
//! dashboard in `docs/` is valid and asks only for metrics the README lists.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_std::io::{BufReader, ReadExt, WriteExt};
use async_std::net::TcpStream;
use async_std::prelude::*;
use async_tungstenite::tungstenite::Message;
use common::node::Tidechat;
use common::redis::RedisServer;
use common::store::TestStore;
use common::*;
use serde_json::Value;
use tidechat::{Config, Server};

// ---------------------------------------------------------------------------------------------
// HTTP as a probe speaks it.

/// A keep-alive HTTP connection to `addr`.
async fn keep_alive(addr: SocketAddr) -> BufReader<TcpStream> {
    BufReader::new(TcpStream::connect(addr).await.unwrap())
}

/// `GET path` on a connection of its own, as most probes send it.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = keep_alive(addr).await;
    async_std::future::timeout(PATIENCE, get_on(&mut tcp, &addr.to_string(), path))
        .await
        .unwrap_or_else(|_| panic!("no answer to GET {path}"))
        .unwrap_or_else(|| panic!("connection closed before the answer to GET {path}"))
}

/// Polls `GET path` (every 20 ms, bounded by PATIENCE) until it answers `status`; returns the
/// body.
async fn until_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (got, body) = get(addr, path).await;
        if got == status {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still answers {got} {body:?}, not {status}"
        );
        async_std::task::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Probes.

#[async_std::test]
async fn readyz_says_503_while_the_history_store_fails_and_ok_once_it_works_again() {
    let config = Config::default();
    let store = TestStore::new(config.retention());
    let s = TestServer::serve(Server::with_store(config, store.clone())).await;
    assert_eq!(get(s.addr, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(s.addr, "/readyz").await, (200, "ok\n".into()));

    store.fail_syncs(true);
    let (mut alice, _) = s.join("r", "alice").await;
    // Appended, so the committer syncs: that sync fails.
    alice.say("r", "not acknowledged").await;
    let body = until_status(s.addr, "/readyz", 503).await;
    assert_eq!(body, "not ready: the history store is unavailable\n");
    assert_eq!(
        get(s.addr, "/healthz").await,
        (200, "ok\n".into()),
        "alive all the same"
    );

    store.fail_syncs(false);
    assert_eq!(until_status(s.addr, "/readyz", 200).await, "ok\n");
    assert_eq!(alice.recv_type("message").await["text"], "not acknowledged");
    s.stop().await;
}

#[async_std::test]
async fn probes_go_through_the_host_check() {
    let s = TestServer::default().await;
    for path in ["/healthz", "/readyz"] {
        let mut tcp = keep_alive(s.addr).await;
        let (status, _) = get_on(&mut tcp, "evil.example", path).await.unwrap();
        assert_eq!(status, 421, "{path}");
    }
    s.stop().await;
}

/// SIGTERM: the listener closes, and a probe on a connection that was already open sees 503
/// while the websockets are being closed (a client that never answers the close frame holds the
/// shutdown for the close bound); `/healthz` stays 200 until the process ends.
#[async_std::test]
async fn readyz_flips_to_503_during_the_graceful_shutdown_of_the_binary() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let node = Tidechat::start(
        "tidechat",
        &["--data-dir", dir, "--shutdown-timeout", "30s"],
    );
    let host = node.addr.to_string();
    let mut probe = keep_alive(node.addr).await;
    assert_eq!(
        get_on(&mut probe, &host, "/readyz").await,
        Some((200, "ok\n".into()))
    );
    let mut mute = raw_upgrade(node.addr, "/ws").await;
    let mut upgraded = [0u8; 12];
    mute.read_exact(&mut upgraded).await.unwrap();
    assert_eq!(&upgraded, b"HTTP/1.1 101");
    node.wait_log("connect #");

    node.sigterm();
    // Polled from the moment of the signal, so the answer is seen however short the window.
    let deadline = Instant::now() + PATIENCE;
    let answer = loop {
        let answer = get_on(&mut probe, &host, "/readyz")
            .await
            .expect("the probe's connection closed before /readyz said 503");
        if answer.0 != 200 || Instant::now() > deadline {
            break answer;
        }
    };
    assert_eq!(answer, (503, "not ready: shutting down\n".into()));
    assert_eq!(
        get_on(&mut probe, &host, "/healthz").await,
        Some((200, "ok\n".into()))
    );
    // The log writer gathers a burst before writing it, so the line may trail the probe.
    node.wait_log("shutting down");
    let status = node.exit_status().await;
    assert!(status.success(), "{status}");
    drop(mute);
}

/// With `--redis`: 503 within moments of the test's redis-server being killed (the node's
/// connections to it break), 200 again once it is back and the node has reconnected.
#[async_std::test]
async fn readyz_follows_redis_down_and_back() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let node = Tidechat::start("node", &["--data-dir", "none", "--redis", &url]);
    assert_eq!(get(node.addr, "/readyz").await, (200, "ok\n".into()));

    redis.kill();
    let body = until_status(node.addr, "/readyz", 503).await;
    assert_eq!(body, "not ready: redis is unavailable\n");
    assert_eq!(get(node.addr, "/healthz").await, (200, "ok\n".into()));

    redis.restart();
    assert_eq!(until_status(node.addr, "/readyz", 200).await, "ok\n");
    // Ready means it takes messages.
    let mut alice = join_lobby_at(node.addr, "alice").await;
    alice.say("lobby", "back").await;
    assert_eq!(alice.recv_type("message").await["text"], "back");
    node.sigterm();
    assert!(node.exit_status().await.success());
}

// ---------------------------------------------------------------------------------------------
// Logs.

/// Every line of the binary's stderr so far, each of which must be a JSON object with `level`,
/// `time` and `msg`.
fn json_lines(node: &Tidechat) -> Vec<Value> {
    node.log()
        .lines()
        .filter(|l| *l != "<end>")
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert!(
                v["level"].is_u64() && v["time"].is_u64() && v["msg"].is_string(),
                "{l}"
            );
            v
        })
        .collect()
}

/// Waits (bounded) for a line that `pred` accepts and returns it.
fn wait_line(node: &Tidechat, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = json_lines(node).into_iter().find(&pred) {
            return v;
        }
        assert!(Instant::now() < deadline, "no {what} line:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn msg(v: &Value) -> &str {
    v["msg"].as_str().unwrap()
}

/// The request line for `route` with `status`.
fn request_line(node: &Tidechat, route: &str, status: u16) -> Value {
    wait_line(node, &format!("{route} {status} request"), |v| {
        v["route"] == route && v["status"] == status && v.get("method").is_some()
    })
}

/// Sends `n` 16 KiB messages to `room`, one at a time (each after the echo of the last: with
/// `--room-buffer-bytes` at four of them, nobody who reads may fall behind).
async fn say_big(c: &mut Client, room: &str, n: usize) {
    let text = "z".repeat(16 * 1024 - 64);
    for _ in 0..n {
        c.say(room, &text).await;
        c.recv_type("message").await;
    }
}

#[async_std::test]
async fn json_log_lines_carry_stable_fields_and_nothing_per_websocket_message() {
    // Debug, so that the lines with a room are on too; rooms that hold 64 KiB of events, so
    // that a client that stops reading lags soon.
    let node = Tidechat::start(
        "tidechat",
        &[
            "--data-dir",
            "none",
            "--log-level",
            "debug",
            "--room-buffer-bytes",
            "65536",
            "--write-timeout",
            "120s",
        ],
    );
    let addr = node.addr;

    // HTTP requests: one line each, at info; probes at debug.
    assert_eq!(get(addr, "/").await.0, 200);
    assert_eq!(get(addr, "/app.js").await.0, 200);
    assert_eq!(get(addr, "/no/such/file").await.0, 404);
    assert_eq!(get(addr, "/stats").await.0, 200);
    assert_eq!(get(addr, "/healthz").await.0, 200);
    for (route, status) in [
        ("page", 200),
        ("static", 200),
        ("other", 404),
        ("stats", 200),
    ] {
        let v = request_line(&node, route, status);
        assert_eq!(v["level"], 30, "{v}");
        assert_eq!(v["method"], "GET", "{v}");
        assert!(v["ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{v}");
        assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    }
    assert_eq!(request_line(&node, "healthz", 200)["level"], 20);

    // A refused handshake: its request line, and at debug why.
    let mut foreign = TcpStream::connect(addr).await.unwrap();
    let upgrade = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Origin: http://evil.example\r\n\r\n"
    );
    foreign.write_all(upgrade.as_bytes()).await.unwrap();
    let mut status = [0u8; 12];
    foreign.read_exact(&mut status).await.unwrap();
    assert_eq!(&status, b"HTTP/1.1 403");
    assert_eq!(request_line(&node, "ws", 403)["level"], 30);
    let refused = wait_line(&node, "refused origin", |v| v["reason"] == "origin");
    assert_eq!(
        (refused["route"].as_str(), refused["level"].as_u64()),
        (Some("ws"), Some(20))
    );
    assert!(refused["peer"].is_string(), "{refused}");

    // Connects: conn, peer, route.
    let mut alice = join_lobby_at(addr, "alice").await;
    let (seed_ws, _) = async_tungstenite::client_async(
        format!("ws://{addr}/chatSocket"),
        TcpStream::connect(addr).await.unwrap(),
    )
    .await
    .unwrap();
    let mut seed = Client {
        ws: seed_ws,
        raw: std::net::TcpStream::connect(addr).unwrap(),
    };
    // The seed user's arrival, which may come a presence window later: before anything that
    // expects a reply next.
    assert_eq!(alice.recv_type("presence").await["event"], "joined");
    let connect = |route: &'static str| {
        wait_line(&node, &format!("{route} connect"), move |v| {
            msg(v).starts_with("connect #") && v["route"] == route
        })
    };
    let (a, s) = (connect("ws"), connect("chatSocket"));
    for v in [&a, &s] {
        assert_eq!(v["level"], 30, "{v}");
        assert!(v["conn"].is_u64(), "{v}");
        assert!(v["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    }
    // The extra socket opened for `raw` above is a plain HTTP connection that sends nothing.
    drop(std::mem::replace(
        &mut seed.raw,
        std::net::TcpStream::connect(addr).unwrap(),
    ));

    // Chat in both protocols: not one line for it.
    let before = json_lines(&node).len();
    for i in 0..10 {
        alice.say("lobby", &format!("from alice {i}")).await;
        alice.recv_type("message").await;
        assert_eq!(seed_text(&mut seed).await, format!("alice: from alice {i}"));
        seed.send_text(&format!("from seed {i}")).await;
        assert_eq!(
            alice.recv_type("message").await["text"],
            format!("from seed {i}")
        );
        assert!(seed_text(&mut seed)
            .await
            .ends_with(&format!(": from seed {i}")));
    }
    assert_eq!(get(addr, "/stats").await.0, 200);
    let marker = |v: &Value| v["route"] == "stats";
    wait_line(&node, "marker", |v| {
        marker(v) && json_lines(&node).iter().filter(|w| marker(w)).count() == 2
    });
    let during: Vec<Value> = json_lines(&node).split_off(before);
    assert!(
        during.len() == 1 && marker(&during[0]),
        "lines during websocket traffic: {during:?}"
    );

    // A slow consumer: its room at debug, its close code and reason at info.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut slow = ws_over(socket.into(), addr).await;
    slow.join("busy", "slow").await;
    let slow_conn = wait_line(&node, "slow's connect", |v| {
        msg(v).starts_with("connect #") && v["conn"] != a["conn"] && v["conn"] != s["conn"]
    })["conn"]
        .clone();
    alice.join("busy", "alice").await;
    // Far more than the socket buffers hold, so its writer blocks, and the room moves on.
    say_big(&mut alice, "busy", 1500).await;
    let (_, code) = slow.texts_until_close().await;
    assert_eq!(code, Some(4008));
    let lagged = wait_line(&node, "lagged", |v| msg(v).contains("lagged"));
    assert_eq!(
        (&lagged["conn"], lagged["room"].as_str()),
        (&slow_conn, Some("busy"))
    );
    let gone = wait_line(&node, "slow's disconnect", |v| {
        msg(v).starts_with("disconnect #") && v["conn"] == slow_conn
    });
    assert_eq!(gone["code"], 4008, "{gone}");
    assert_eq!(gone["reason"], "slow consumer", "{gone}");
    assert_eq!(gone["route"], "ws", "{gone}");

    // A client that closes: no code of the server's.
    alice.ws.close(None).await.unwrap();
    while alice.ws.next().await.is_some() {}
    let bye = wait_line(&node, "alice's disconnect", |v| {
        msg(v).starts_with("disconnect #") && v["conn"] == a["conn"]
    });
    assert_eq!(bye["reason"], "client closed", "{bye}");
    assert!(bye.get("code").is_none(), "{bye}");

    // Shutdown closes the rest with 1001.
    node.sigterm();
    assert_eq!(seed.closed().await, Some(1001));
    let shut = wait_line(&node, "seed's disconnect", |v| {
        msg(v).starts_with("disconnect #") && v["conn"] == s["conn"]
    });
    assert_eq!(
        (shut["code"].as_u64(), shut["route"].as_str()),
        (Some(1001), Some("chatSocket"))
    );
    assert!(node.exit_status().await.success());
}

/// The next text frame of a `/chatSocket` client.
async fn seed_text(c: &mut Client) -> String {
    loop {
        match c.next().await {
            Some(Message::Text(t)) => return t.to_string(),
            Some(Message::Ping(_)) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// --check-config.

/// What a run of the binary gave: its exit status, stdout and stderr.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the binary with `args` in `cwd`, with the environment's `TIDECHAT_*` variables removed
/// (the test runner's own, e.g. `TIDECHAT_TEST_VALKEY`, would be refused as unknown) and `env`
/// added; killed if it has not exited within PATIENCE (a check that served instead).
fn run_binary(cwd: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tidechat"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TIDECHAT_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = Proc(cmd.spawn().unwrap());
    let read = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.0.stdout.take().unwrap()));
    let err = read(Box::new(child.0.stderr.take().unwrap()));
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tidechat {args:?} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    Ran {
        code: status.code(),
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

/// The options of the README's table, in its order.
fn table_options(table: &str) -> Vec<String> {
    table
        .lines()
        .filter_map(|l| l.strip_prefix("| `--"))
        .map(|l| format!("--{}", &l[..l.find('`').unwrap()]))
        .collect()
}

#[test]
fn check_config_prints_every_option_with_its_value_and_source_and_exits_0() {
    let cwd = tempfile::tempdir().unwrap();
    // The port of a running server: the check must not need it.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bind = busy.local_addr().unwrap().to_string();
    let ran = run_binary(
        cwd.path(),
        &[
            "--check-config",
            "--bind",
            &bind,
            "--max-rooms",
            "7",
            "--data-dir",
            "new/history",
        ],
        &[("TIDECHAT_RATE", "5")],
    );
    assert_eq!(ran.code, Some(0), "{}{}", ran.stdout, ran.stderr);
    assert_eq!(ran.stderr, "");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines[0].ends_with("the configuration is valid"),
        "{}",
        ran.stdout
    );
    let line = |option: &str| -> Vec<String> {
        let found: Vec<&&str> = lines
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(option))
            .collect();
        assert_eq!(found.len(), 1, "{option}:\n{}", ran.stdout);
        found[0]
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    // Every option the README lists, once.
    let options = table_options(&tidechat::options_doc::markdown());
    for option in options.iter().filter(|o| *o != "--check-config") {
        line(option);
    }
    assert_eq!(line("--bind"), [bind.as_str(), "flag"]);
    assert_eq!(line("--max-rooms"), ["7", "flag"]);
    assert_eq!(line("--rate"), ["5", "env", "TIDECHAT_RATE"]);
    assert_eq!(line("--history"), ["500", "default"]);
    assert_eq!(line("--redis"), ["(none)", "default"]);
    let history = lines.iter().find(|l| l.starts_with("history:")).unwrap();
    let dir = std::fs::canonicalize(cwd.path()).unwrap();
    assert!(
        history.contains(&format!(
            "{}/new/history (to be created in {}",
            dir.display(),
            dir.display()
        )),
        "{history}"
    );
    assert_eq!(
        std::fs::read_dir(cwd.path()).unwrap().count(),
        0,
        "the check created or left something"
    );
}

#[test]
fn check_config_with_redis_neither_connects_nor_shows_a_password() {
    let cwd = tempfile::tempdir().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let urls = format!("redis://tc:s3cret@127.0.0.1:{port}/0,unix:///nowhere/r.sock?pass=s3cret");
    let ran = run_binary(cwd.path(), &["--check-config", "--redis", &urls], &[]);
    assert_eq!(ran.code, Some(0), "{}{}", ran.stdout, ran.stderr);
    assert!(!ran.stdout.contains("s3cret"), "{}", ran.stdout);
    assert!(
        ran.stdout.contains(&format!(
            "redis://***@127.0.0.1:{port}/0,unix:///nowhere/r.sock?pass=***"
        )),
        "{}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("history: in Redis (not contacted"),
        "{}",
        ran.stdout
    );
}

#[test]
fn check_config_exits_2_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "not a directory, nor a certificate").unwrap();
    let under_file = file.join("history");
    let (under_file, file) = (under_file.to_str().unwrap(), file.to_str().unwrap());
    let empty = tempfile::tempdir().unwrap();
    let page_only = tempfile::tempdir().unwrap();
    std::fs::write(page_only.path().join("index.html"), "<!doctype html>").unwrap();
    let (empty, page_only) = (
        empty.path().to_str().unwrap(),
        page_only.path().to_str().unwrap(),
    );
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (&["--max-rooms", "0"], &[], "--max-rooms must be at least 1"),
        (
            &["--max-rooms", "lots"],
            &[],
            "invalid value 'lots' for '--max-rooms",
        ),
        (
            &["--no-such-flag"],
            &[],
            "unexpected argument '--no-such-flag'",
        ),
        (
            &["--idle-timeout", "30s"],
            &[],
            "--idle-timeout (30s) must be longer than --ping-interval",
        ),
        (
            &[],
            &[("TIDECHAT_MAX_ROOMS", "0")],
            "--max-rooms must be at least 1",
        ),
        (
            &[],
            &[("TIDECHAT_MAX_ROOM", "5")],
            "TIDECHAT_MAX_ROOM is set, but no option reads it",
        ),
        (&["--data-dir", under_file], &[], "is not a directory"),
        (&["--static-dir", empty], &[], "no index.html there"),
        (&["--static-dir", page_only], &[], "no status.html there"),
        (
            &["--redis", "http://127.0.0.1:6379"],
            &[],
            "--redis \"http://127.0.0.1:6379\"",
        ),
        (&["--redis-ca", file], &[], "--redis-ca: no PEM certificate"),
    ];
    for (args, env, reason) in cases {
        let mut argv = vec!["--check-config"];
        argv.extend_from_slice(args);
        let ran = run_binary(tmp.path(), &argv, env);
        assert_eq!(
            ran.code,
            Some(2),
            "{args:?} {env:?}: {}{}",
            ran.stdout,
            ran.stderr
        );
        assert!(
            ran.stderr.contains(reason),
            "{args:?} {env:?}: {}",
            ran.stderr
        );
        assert_eq!(ran.stdout, "", "{args:?} {env:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// The README.

#[test]
fn the_readme_table_of_options_is_the_one_clap_renders() {
    use tidechat::options_doc::{markdown, BEGIN, END};
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let begin = readme
        .find(&format!("{BEGIN}\n"))
        .expect("README.md: no options:begin line")
        + BEGIN.len()
        + 1;
    let end = begin
        + readme[begin..]
            .find(&format!("{END}\n"))
            .expect("README.md: no options:end line");
    let table = markdown();
    assert!(
        readme[begin..end] == table,
        "README.md's table of options is not what the clap definitions say: run \
         scripts/readme-options\n--- README:\n{}\n--- clap:\n{table}",
        &readme[begin..end]
    );
    // And it lists what --help lists.
    let help = run_binary(std::path::Path::new("."), &["--help"], &[]);
    assert_eq!(help.code, Some(0));
    let mut in_help: Vec<String> = help
        .stdout
        .lines()
        // Option lines only: clap indents them by 2 to 6 spaces and their wrapped descriptions
        // by 10 (how a description wraps depends on the terminal's width).
        .filter(|l| l.len() - l.trim_start().len() <= 6)
        .filter_map(|l| l.trim_start().split(", ").last()?.strip_prefix("--"))
        .map(|l| format!("--{}", l.split([' ', '=']).next().unwrap()))
        .filter(|o| o != "--help" && o != "--version")
        .collect();
    let mut in_table = table_options(&table);
    in_help.sort();
    in_table.sort();
    assert_eq!(in_help, in_table);
}

/// The metric names the README lists (between its metrics:begin and metrics:end lines), with
/// their kinds.
fn readme_metrics() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let list = readme
        .split_once("<!-- metrics:begin -->\n")
        .and_then(|(_, rest)| rest.split_once("<!-- metrics:end -->"))
        .expect("README.md: no metrics:begin/metrics:end lines")
        .0;
    list.lines()
        .map(|l| {
            let rest = l
                .strip_prefix("- `")
                .unwrap_or_else(|| panic!("README metrics: {l}"));
            let (name, rest) = rest.split_once('`').unwrap();
            let name = name.split('{').next().unwrap().to_string();
            let kind = rest
                .split_whitespace()
                .next()
                .unwrap()
                .trim_end_matches(':');
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "README metrics: {l}"
            );
            (name, kind.to_string())
        })
        .collect()
}

#[test]
fn the_grafana_dashboard_is_valid_and_uses_only_the_listed_metrics() {
    let metrics = readme_metrics();
    assert_eq!(metrics.len(), 21, "{metrics:?}");
    // A histogram is queried through its series.
    let known: Vec<String> = metrics
        .iter()
        .flat_map(|(name, kind)| match kind.as_str() {
            "histogram" => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
            _ => vec![name.clone()],
        })
        .collect();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/grafana-dashboard.json"
    );
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(dash["uid"], "tidechat");
    assert!(
        dash["title"].is_string() && dash["schemaVersion"].is_u64(),
        "{dash}"
    );
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = std::collections::HashSet::new();
    let mut used = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "{title}: id twice");
        assert!(
            ["timeseries", "stat"].contains(&p["type"].as_str().unwrap()),
            "{title}"
        );
        let grid = &p["gridPos"];
        for k in ["h", "w", "x", "y"] {
            assert!(grid[k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "{title}"
        );
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no queries");
        for t in targets {
            assert!(t["refId"].is_string(), "{title}");
            let expr = t["expr"].as_str().unwrap();
            let names: Vec<&str> = expr
                .match_indices("tidechat_")
                .map(|(i, _)| {
                    let rest = &expr[i..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(rest.len());
                    &rest[..end]
                })
                .collect();
            assert!(!names.is_empty(), "{title}: {expr}");
            for n in names {
                assert!(
                    known.iter().any(|k| k == n),
                    "{title}: {n} is not a listed metric"
                );
                used.insert(n.to_string());
            }
        }
    }
    // What the dashboard is for: connections, messages and deliveries per second, fan-out
    // quantiles, closes by code, the broker.
    for needed in [
        "tidechat_connections_open",
        "tidechat_messages_published_total",
        "tidechat_frames_sent_total",
        "tidechat_fanout_seconds_bucket",
        "tidechat_closes_total",
        "tidechat_broker_up",
        "tidechat_broker_roundtrip_seconds_bucket",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard does not show {needed}"
        );
    }
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains("histogram_quantile(0.99, sum by (le) (rate(tidechat_fanout_seconds_bucket")
    );
    assert!(
        text.contains("histogram_quantile(0.5, sum by (le) (rate(tidechat_fanout_seconds_bucket")
    );
}
