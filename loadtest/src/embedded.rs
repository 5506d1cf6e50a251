//! The tidechat server the load test starts itself when no `--host` is given: in a child process
//! (this program's `serve` subcommand; default, so its CPU and memory are measured apart) or on
//! threads of this process (tests). Like the binary it keeps history in the durable store by
//! default, but in a fresh temporary directory of its own, removed when it stops, so runs never
//! share or accumulate history; `--server-arg --data-dir --server-arg DIR|none` chooses.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// tidechat options for load: the per-connection rate limit, the connection caps and the
/// per-address caps (every client comes from one loopback address, up to 1,000 handshakes at
/// once) raised so they measure the server, not its abuse protection.
pub const LOAD_ARGS: &[&str] = &[
    "--rate",
    "1000000",
    "--burst",
    "1000000",
    "--max-connections",
    "200000",
    "--max-rooms",
    "100000",
    "--max-connections-per-ip",
    "200000",
    "--handshake-rate-per-ip",
    "1000000",
    "--handshake-burst-per-ip",
    "1000000",
    "--max-http-connections",
    "20000",
    "--max-http-connections-per-ip",
    "20000",
];

/// Name of the thread that runs the embedded server's accept loop.
pub const SERVER_THREAD: &str = "tidechat-server";

/// Where the embedded tidechat listens: a free loopback port.
const LOOPBACK_ANY_PORT: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 0),
);

/// The tidechat config used by the embedded server, from [`LOAD_ARGS`] plus `extra` options.
pub fn load_config(extra: &[String]) -> anyhow::Result<tidechat::Config> {
    let mut argv: Vec<String> = vec!["tidechat".into(), "--bind".into(), "127.0.0.1:0".into()];
    argv.extend(LOAD_ARGS.iter().map(|s| s.to_string()));
    argv.extend(extra.iter().cloned());
    let args = tidechat::config::Args::try_parse_from(argv)?;
    Ok(args.into_config()?)
}

/// Whether `extra` (tidechat options) says where history goes.
fn names_data_dir(extra: &[String]) -> bool {
    extra
        .iter()
        .any(|a| a == "--data-dir" || a.starts_with("--data-dir="))
}

/// `extra` plus `--data-dir` = a fresh temporary directory (and that directory, removed when
/// dropped), unless `extra` names one. The directory beats `TIDECHAT_DATA_DIR` in the
/// environment, which may name a real server's data.
pub fn with_own_data_dir(
    extra: &[String],
) -> anyhow::Result<(Vec<String>, Option<tempfile::TempDir>)> {
    let mut args = extra.to_vec();
    if names_data_dir(extra) {
        return Ok((args, None));
    }
    let dir = tempfile::Builder::new()
        .prefix("tidechat-loadtest-")
        .tempdir()
        .context("creating the embedded server's data directory")?;
    args.push("--data-dir".into());
    args.push(dir.path().to_string_lossy().into_owned());
    Ok((args, Some(dir)))
}

/// A running embedded server; stopped on drop.
pub struct Embedded {
    pub addr: SocketAddr,
    /// The child's PID in process mode.
    pub pid: Option<u32>,
    /// Where its history is, when this program chose it.
    pub data_dir: Option<std::path::PathBuf>,
    child: Option<Child>,
    stop: Option<futures::channel::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Removed on drop, after the server has stopped (fields drop after [`Drop::drop`]).
    _data: Option<tempfile::TempDir>,
}

impl Embedded {
    /// Serves on threads of this process, with [`LOAD_ARGS`] and `extra` (plus a data directory
    /// of its own unless `extra` names one).
    pub fn start_thread(extra: &[String]) -> anyhow::Result<Self> {
        let (args, data) = with_own_data_dir(extra)?;
        // Opened here, so a store (or a Redis) that cannot be opened is this call's error.
        let config = load_config(&args)?;
        let backlog = config.backlog;
        let server = async_std::task::block_on(tidechat::Server::open(config))?;
        // The binary's listener, `--backlog` and all, so a connect storm meets the same queue.
        let listener = tidechat::listen::bind(LOOPBACK_ANY_PORT, backlog)?;
        let addr = listener.local_addr()?;
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(SERVER_THREAD.into())
            .spawn(move || {
                let shutdown = async move {
                    let _ = rx.await;
                };
                if let Err(e) = async_std::task::block_on(server.run(listener, shutdown)) {
                    log::error!("embedded tidechat: {e}");
                }
            })?;
        Ok(Self {
            addr,
            pid: None,
            data_dir: data.as_ref().map(|d| d.path().to_owned()),
            child: None,
            stop: Some(tx),
            thread: Some(thread),
            _data: data,
        })
    }

    /// Runs `exe serve [extra]` (plus a data directory of its own unless `extra` names one) and
    /// waits for the address it prints.
    pub fn start_process(exe: &Path, extra: &[String]) -> anyhow::Result<Self> {
        let (args, data) = with_own_data_dir(extra)?;
        let mut child = Command::new(exe)
            .arg("serve")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {} serve", exe.display()))?;
        let pid = child.id();
        // unwrap: stdout was piped above.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line)?;
        let addr: SocketAddr = match line.trim().strip_prefix("listening ") {
            Some(a) => a.parse()?,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                anyhow::bail!("embedded server did not start: {line:?}");
            }
        };
        Ok(Self {
            addr,
            pid: Some(pid),
            data_dir: data.as_ref().map(|d| d.path().to_owned()),
            child: Some(child),
            stop: None,
            thread: None,
            _data: data,
        })
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(mut child) = self.child.take() {
            // Closing its stdin asks it to shut down; it is killed if it has not after a while.
            drop(child.stdin.take());
            let deadline = std::time::Instant::now() + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

/// The `serve` subcommand: tidechat on 127.0.0.1:0 with [`LOAD_ARGS`] and `extra`, printing
/// `listening ADDR` on stdout, until stdin closes.
pub fn serve(extra: &[String]) -> anyhow::Result<()> {
    crate::sys::raise_nofile();
    let config = load_config(extra)?;
    // The executor size the tidechat binary would use (`--threads`), set before async-std starts.
    let argv = ["tidechat".to_string()]
        .into_iter()
        .chain(extra.iter().cloned());
    let threads = tidechat::config::Args::try_parse_from(argv)?.executor_threads();
    std::env::set_var("ASYNC_STD_THREAD_COUNT", threads.to_string());
    // Before the address is printed: the parent then knows the store is open (or sees why not).
    // `open`: with `--server-arg=--redis=URL` it connects to Redis first.
    let backlog = config.backlog;
    let server = async_std::task::block_on(tidechat::Server::open(config))?;
    let listener = tidechat::listen::bind(LOOPBACK_ANY_PORT, backlog)?;
    println!("listening {}", listener.local_addr()?);
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    async_std::task::block_on(server.run(listener, async move {
        let _ = rx.await;
    }))?;
    Ok(())
}
