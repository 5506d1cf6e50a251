//! The real `tidechat` binary as tests run it (durability.rs on a data directory, cluster.rs as
//! several nodes over one Redis): spawned on 127.0.0.1:0 with JSON logs and rate limits lifted,
//! its stderr collected (and echoed with a label, so a failure shows each process's lines),
//! waited for until its log says it is ready, stopped by signal and reaped by PID.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_std::task;
use serde_json::Value;

use super::{Proc, PATIENCE};

/// The real binary, with its stderr collected.
pub struct Tidechat {
    proc: Proc,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// The `msg` of each JSON log line.
pub fn log_messages(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["msg"].as_str().map(str::to_owned))
        .collect()
}

/// The address from the listening line, once it is logged.
pub fn listening(msgs: &[String]) -> Option<SocketAddr> {
    msgs.iter().find_map(|m| {
        m.strip_prefix("tidechat listening on http://")?
            .parse()
            .ok()
    })
}

impl Tidechat {
    /// Starts the binary with `args` and waits until it listens; panics if it exits instead.
    pub fn start<S: AsRef<OsStr>>(label: &str, args: &[S]) -> Self {
        Self::launch(label, args, &[], listening)
            .unwrap_or_else(|(status, log)| panic!("{label} exited ({status}): {log}"))
    }

    /// Starts the binary with `args` and `env`, and waits until `ready` finds the address in
    /// its log messages (`Ok`) or it has exited (`Err`: its status and stderr). `label` marks
    /// its stderr lines in the test's output.
    pub fn launch<S: AsRef<OsStr>>(
        label: &str,
        args: &[S],
        env: &[(&str, &OsStr)],
        ready: fn(&[String]) -> Option<SocketAddr>,
    ) -> Result<Self, (ExitStatus, String)> {
        let (mut proc, log) = spawn(label, args, env);
        let deadline = Instant::now() + PATIENCE;
        loop {
            let msgs = log_messages(&log.lock().unwrap());
            if let Some(addr) = ready(&msgs) {
                return Ok(Tidechat { proc, addr, log });
            }
            if let Some(status) = proc.0.try_wait().unwrap() {
                // stderr is closed by now; the reader thread finishes with it.
                while !log.lock().unwrap().ends_with("<end>") && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let log = log.lock().unwrap().clone();
                return Err((status, log));
            }
            assert!(
                Instant::now() < deadline,
                "{label} neither started nor exited: {}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.proc.0.id()
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.log.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}: {}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn sigterm(&self) {
        let pid = self.proc.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit (bounded) and reaps it.
    pub async fn exit_status(self) -> ExitStatus {
        let mut proc = self.proc;
        let status = task::spawn_blocking(move || {
            let status = proc.0.wait().unwrap();
            drop(proc);
            status
        });
        async_std::future::timeout(PATIENCE, status)
            .await
            .expect("tidechat did not exit")
    }

    /// SIGKILL, and reap.
    pub fn kill(mut self) {
        self.proc.0.kill().unwrap();
        let status = self.proc.0.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
    }
}

fn spawn<S: AsRef<OsStr>>(
    label: &str,
    args: &[S],
    env: &[(&str, &OsStr)],
) -> (Proc, Arc<Mutex<String>>) {
    let static_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../static");
    let mut proc = Proc(
        Command::new(env!("CARGO_BIN_EXE_tidechat"))
            .args(["--bind", "127.0.0.1:0", "--static-dir", static_dir])
            .args([
                "--log-format",
                "json",
                "--rate",
                "1000000",
                "--burst",
                "1000000",
            ])
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = proc.0.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let label = label.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[{label}] {line}");
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
        sink.lock().unwrap().push_str("<end>");
    });
    (proc, log)
}
