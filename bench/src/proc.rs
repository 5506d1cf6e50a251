//! Child processes that are always stopped: by PID, with SIGTERM then SIGKILL after a bounded
//! grace period, and killed on drop if an error unwinds past them.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// How often a wait polls its child.
const POLL: Duration = Duration::from_millis(50);
/// Time a stopped server has to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest wait for a started server to accept connections.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process with its output in a log file; killed and reaped on drop.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
    done: Option<ExitStatus>,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log` and no stdin.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.into(),
            child,
            log: log.into(),
            done: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        if self.done.is_none() {
            self.done = self.child.try_wait()?;
        }
        Ok(self.done)
    }

    /// Waits at most `limit` for the process to end.
    pub fn wait_for(&mut self, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; returns the exit status.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(s) = self.exited()? {
            return Ok(s);
        }
        let pid = libc::pid_t::try_from(self.pid()).context("PID out of range")?;
        // SAFETY: kill(2) with a PID of our own unreaped child: it cannot name another process.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if let Some(s) = self.wait_for(grace)? {
            return Ok(s);
        }
        eprintln!(
            "bench: {} (pid {pid}) ignored SIGTERM for {grace:?}; killing it",
            self.name
        );
        self.child.kill()?;
        let s = self.child.wait()?;
        self.done = Some(s);
        Ok(s)
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.done.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback port that was free a moment ago (the server binds it right after).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Waits until `addr` accepts a connection, the process ends, or [`READY_TIMEOUT`] passes.
pub fn wait_listening(p: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(s) = p.exited()? {
            anyhow::bail!(
                "{} exited ({s}) before listening:\n{}",
                p.name,
                p.log_tail(20)
            );
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not listen on {addr} within {READY_TIMEOUT:?}:\n{}",
            p.name,
            p.log_tail(20)
        );
        std::thread::sleep(POLL);
    }
}

/// Raises the soft open-file limit to the hard one (load tests open thousands of sockets; the
/// children inherit it).
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_ends_a_process_and_drop_reaps_it() {
        let dir = std::env::temp_dir().join(format!("bench-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut p = Proc::spawn("sleep", cmd, &dir.join("sleep.log")).unwrap();
        assert_eq!(p.wait_for(Duration::from_millis(100)).unwrap(), None);
        let s = p.stop(Duration::from_secs(5)).unwrap();
        assert!(!s.success());
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two; exit 3"]);
        let mut p = Proc::spawn("sh", cmd, &dir.join("sh.log")).unwrap();
        let s = p.wait_for(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(s.code(), Some(3));
        assert_eq!(p.log_tail(1), "two");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
