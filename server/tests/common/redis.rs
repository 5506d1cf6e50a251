//! A real `redis-server` (or `valkey-server`) for tests, on a unix socket in its own temporary
//! directory: no TCP port, no RDB snapshots and no AOF unless a test asks for them, killed by PID
//! when the test ends whichever way. Tests of the Redis broker start one each, so nothing is
//! shared between tests and nothing outside the machine is touched.
//!
//! Std and `tempfile` only, nothing from `common/mod.rs`: unit tests in `src` include this same
//! file with `#[path]`.
//!
//! Nothing is skipped: a missing `redis-server` fails the test with a message naming
//! `scripts/test`, which installs it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a start, a stop or a command may take before the test fails: generous (two shared
/// cores, other tests running), never a performance bound.
const PATIENCE: Duration = Duration::from_secs(20);

/// Which server implementation to run. Both speak the same protocol and take the same options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Valkey,
}

impl Kind {
    /// The kinds a suite runs against: Redis always, Valkey too when `scripts/test` installed
    /// it (it sets `TIDECHAT_TEST_VALKEY=1`; Debian ships `valkey-server` from trixie on).
    pub fn under_test() -> Vec<Kind> {
        let mut kinds = vec![Kind::Redis];
        if std::env::var("TIDECHAT_TEST_VALKEY").is_ok_and(|v| v == "1") {
            kinds.push(Kind::Valkey);
        }
        kinds
    }

    pub fn server_binary(self) -> &'static str {
        match self {
            Kind::Redis => "redis-server",
            Kind::Valkey => "valkey-server",
        }
    }

    pub fn cli_binary(self) -> &'static str {
        match self {
            Kind::Redis => "redis-cli",
            Kind::Valkey => "valkey-cli",
        }
    }
}

/// One running (or stopped, between `kill`/`stop` and `restart`) server.
pub struct RedisServer {
    kind: Kind,
    /// Holds the socket, the server's log and whatever it persists (`--dir`).
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A Redis without persistence (`--save '' --appendonly no`).
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A Redis with `extra` options after the defaults (later options win, so e.g.
    /// `["--appendonly", "yes", "--appendfsync", "always"]` turns the AOF on).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::of(Kind::Redis, extra)
    }

    /// The same with `valkey-server`.
    pub fn valkey() -> Self {
        Self::of(Kind::Valkey, &[])
    }

    /// A server of `kind` with `extra` options.
    pub fn of(kind: Kind, extra: &[&str]) -> Self {
        let mut server = RedisServer {
            kind,
            dir: tempfile::Builder::new()
                .prefix("tc-redis")
                .tempdir()
                .expect("a temporary directory for redis"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        server.launch();
        server
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The unix socket it listens on (also after a kill: `restart` uses the same one).
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The `--redis` URL of this server: `unix:///...`.
    pub fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Its data directory (`--dir`: AOF and RDB files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the server logged so far (every start appends to the same file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL by PID, and reap: what a crash of Redis does (nothing written after its last
    /// fsync survives, the socket file stays behind).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("SIGKILL redis");
            child.wait().expect("reap redis");
        }
    }

    /// SIGTERM by PID, and wait (bounded) for the exit: Redis's own clean shutdown, which
    /// writes what its persistence settings say it should (with `--save ''` and no AOF:
    /// nothing). Returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("redis is not running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for redis") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis did not exit within {PATIENCE:?} of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts it again on the same socket and directory with the same options (stopping it
    /// first with SIGTERM if it is still running), and waits until it answers PING, i.e. until
    /// it has loaded whatever it persisted.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.launch();
    }

    /// Runs one command through the server's CLI (`redis-cli -s SOCKET ARGS...`) and returns
    /// its output, trimmed; fails the test when the CLI fails or answers an error (`ERR ...`).
    /// Synchronous: for looking at or poking the server from a test, not for traffic.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(self.kind.cli_binary())
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "running {}: {e} ({} comes with {}: run scripts/test, which installs it)",
                    self.kind.cli_binary(),
                    self.kind.cli_binary(),
                    self.kind.server_binary()
                )
            });
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success() && !stdout.starts_with("ERR") && !stdout.starts_with("WRONGTYPE"),
            "{} {args:?}: {}\n{stdout}\n{}",
            self.kind.cli_binary(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// The number of keys in database 0 (`DBSIZE`).
    pub fn dbsize(&self) -> u64 {
        let out = self.cli(&["DBSIZE"]);
        out.parse()
            .unwrap_or_else(|_| panic!("DBSIZE answered {out:?}"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "redis is already running");
        let socket = self.socket();
        // A socket file left by a SIGKILL must not be taken for the new server's.
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("redis log file");
        let binary = self.kind.server_binary();
        let child = Command::new(binary)
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", ""])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("redis log file"))
            .stderr(log)
            .spawn();
        let mut child = match child {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("{binary} is missing: run scripts/test, which installs it")
            }
            Err(e) => panic!("starting {binary}: {e}"),
        };
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for redis") {
                panic!("{binary} exited at start ({status}):\n{}", self.log());
            }
            if ping(&socket) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{binary} did not answer PING within {PATIENCE:?}:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child = Some(child);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether a server on `socket` answers PING with PONG (not with `-LOADING`, which it says
/// while it reads its AOF).
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    s.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
